"""The ``attnkit`` command: thin argument parsing over library functions.

Each area contributes its subcommands through a ``register(subparsers)`` function in its own
``commands`` module, so this file stays small and areas stay independent. This file adds what
spans areas: ``--version``, ``--debug``, ``attnkit list`` and the error handling: a user error
(:class:`attnkit.UsageError`, a bad value, a missing or unreadable file) is one line on stderr
and exit status 2; ``--debug`` or ``ATTNKIT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence

from attnkit import __version__

COMMAND_MODULES = (
    "attnkit.bench.commands",
    "attnkit.train.commands",
    "attnkit.explain.commands",
    "attnkit.export.commands",
    "attnkit.demo",
    "attnkit.hf_commands",  # last: adds --hf to the commands above
)


def _listing(what: str) -> dict[str, str]:
    """``{name: one-line description}`` of tasks, presets, attention kinds or backends."""
    if what == "tasks":
        from attnkit.tasks import list_tasks

        return list_tasks()
    if what == "presets":
        from attnkit.models import PRESETS

        return {name: summary for name, (_, summary) in PRESETS.items()}
    if what == "kinds":
        from attnkit.layers import list_attention_kinds

        return list_attention_kinds()
    from attnkit.backends import get_backend, list_backends

    def summary(name: str) -> str:
        backend = get_backend(name)
        doc = (type(backend).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else name

    return {name: summary(name) for name in list_backends()}


_LISTS = ("tasks", "presets", "kinds", "backends")


def _cmd_list(args: argparse.Namespace) -> int:
    items = _listing(args.what)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    width = max(map(len, items), default=0)
    for name, summary in items.items():
        print(f"{name:<{width}}  {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnkit", description="Attention that is fast, correct and visible.",
        epilog="Errors print one line; --debug (anywhere) or ATTNKIT_DEBUG=1 shows the full "
               "traceback.")
    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    p = sub.add_parser("list", help="list tasks, presets, attention kinds or backends",
                       description="One line per entry: the name and what it is.")
    p.add_argument("what", choices=_LISTS)
    p.add_argument("--json", action="store_true", help="print a JSON object instead")
    p.set_defaults(handler=_cmd_list)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: shown as one line (exit 2) unless debugging."""
    from safetensors import SafetensorError

    from attnkit.errors import UsageError

    types: list[type[BaseException]] = [UsageError, ValueError, OSError, ImportError,
                                        SafetensorError, json.JSONDecodeError]
    return tuple(types)


def _describe(err: BaseException) -> str:
    """One line: the message, with the path for OS errors that only carry it as an attribute."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split()) or type(err).__name__


def _run(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace,
         debug: bool) -> int:
    try:
        return int(handler(args) or 0)
    except BrokenPipeError:  # the reader went away (e.g. `attnkit list tasks | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as err:
        message = str(err) or "interrupted"
        _print_error(args.command, message)
        return 130
    except _user_error_types() as err:
        if debug:
            raise
        _print_error(args.command, _describe(err))
        return 2


def _print_error(command: str, message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 speaks
        print(f"attnkit {command}: error: {message}" if not message.startswith("SIG")
              else f"attnkit {command}: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug may be given anywhere (after the subcommand too).
    debug = "--debug" in argv or os.environ.get("ATTNKIT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    return _run(args.handler, args, debug)


if __name__ == "__main__":
    sys.exit(main())
