"""Tasks with real data that ships in packages (no network at run time)."""

from attnkit.tasks import digits  # noqa: F401  (registers "digits")
from attnkit.tasks.base import MissingDataError, Task, get_task, list_tasks, register_task

__all__ = ["MissingDataError", "Task", "get_task", "list_tasks", "register_task"]

# isort: split
# Importing a task module registers its task(s) with register_task.
from attnkit.tasks import (  # noqa: F401
    bible_documents,
    fashion_mnist,
    listops,
    pathfinder,
    pixel_sequences,
    shakespeare,
    spoken_digits,
    synthetic,
    translation,
)
