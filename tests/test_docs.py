"""The docs stay true: their Python blocks run, quoted commands parse, links resolve.

Every ``python`` block of README.md, CONTRIBUTING.md, CHANGELOG.md and docs/*.md runs in a fresh
interpreter, as a reader would paste it. A block that cannot run as it stands (it needs a
trained run, a model built elsewhere or minutes of CPU) is marked by an HTML comment on the line
before its fence::

    <!-- docs-test: skip (needs a trained run directory) -->

and is then only parsed (``compile``). A block whose task data is not installed skips with the
install command that attnkit's ``MissingDataError`` names, as the task tests do.

A repository path quoted in code (``tests/test_masks.py``, ``layers/registry.py``,
``configs/listops.yaml``) on a reference page must exist, so a moved or renamed file shows up
here; CHANGELOG.md is history and may name files that are gone.

Every ``attnkit ...`` line of a shell block (no language, ``bash``, ``sh``, ``console``) must be
accepted by the CLI's own argument parser, so a renamed subcommand or option shows up here.
Optional parts may be written in brackets (``[--png DIR]``) and ``...`` stands for more of the
same; both are dropped before parsing.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from attnkit.cli import build_parser

markdown_it = pytest.importorskip(
    "markdown_it", reason="needs markdown-it-py: pip install 'attnkit[test]'")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP_MARKER = "docs-test: skip"
SHELL_LANGUAGES = {"", "bash", "sh", "console", "shell"}
# A quoted repository path: a word with a slash and a file extension.
QUOTED_PATH = re.compile(r"^[\w./-]+/[\w.-]+\.(?:py|yaml|yml|md|csv|png|txt|toml|json)$")
# Quoted paths inside a run directory written by `attnkit train`, not in the repository.
RUN_DIR_PARTS = ("checkpoints/", "best/", "runs/", "RUN_DIR/", "tensorboard/")
# `attnkit ARGS`, also as `python -m attnkit.cli ARGS` or under torchrun (`-m attnkit.cli ARGS`).
COMMAND = re.compile(r"(?:^|\s)(?:attnkit|-m attnkit\.cli)\s+(?P<args>.*)")


def markdown_pages() -> list[Path]:
    """README, CONTRIBUTING, CHANGELOG and every docs page that exists."""
    top = [ROOT / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")]
    return [p for p in top if p.exists()] + sorted((ROOT / "docs").glob("*.md"))


@dataclass(frozen=True)
class CodeBlock:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str
    skip_reason: str | None  # set when the block is marked as not runnable

    def label(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _parse(text: str) -> list:
    return markdown_it.MarkdownIt("commonmark").enable("table").parse(text)


def code_blocks(page: Path) -> list[CodeBlock]:
    tokens = _parse(page.read_text(encoding="utf-8"))
    blocks = []
    for i, token in enumerate(tokens):
        if token.type != "fence" or token.map is None:
            continue
        previous = tokens[i - 1] if i else None
        skip_reason = None
        if previous is not None and previous.type == "html_block" and (
                SKIP_MARKER in previous.content):
            skip_reason = previous.content.strip().removeprefix("<!--").removesuffix("-->").strip()
        language = token.info.split()[0] if token.info.strip() else ""
        blocks.append(CodeBlock(page, token.map[0] + 1, language, token.content, skip_reason))
    return blocks


def cli_commands(page: Path) -> list[tuple[int, str]]:
    """(line of the block, arguments) of every ``attnkit`` command in the page's shell blocks."""
    commands = []
    for block in code_blocks(page):
        if block.language not in SHELL_LANGUAGES:
            continue
        for line in block.source.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            match = COMMAND.search(line)
            if match and not line.startswith("#"):
                commands.append((block.line, match.group("args")))
    return commands


def cli_error(arguments: str) -> str | None:
    """The parser's complaint about ``attnkit ARGUMENTS``, or None when it accepts them."""
    argv = [a for a in shlex.split(arguments.replace("[", " ").replace("]", " ")) if a != "..."]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exit_:
        if exit_.code:  # --help exits with 0
            return stderr.getvalue().strip().splitlines()[-1]
    return None


def relative_links(page: Path) -> list[str]:
    """Targets of the page's links and images that point into the repository."""
    targets = []
    for token in _parse(page.read_text(encoding="utf-8")):
        for child in token.children or []:
            target = child.attrs.get("href") if child.type == "link_open" else (
                child.attrs.get("src") if child.type == "image" else None)
            if not isinstance(target, str):
                continue
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or not parts.path:  # web links, mailto:, #anchors
                continue
            targets.append(unquote(parts.path))
    return targets


def broken_links(page: Path) -> list[str]:
    return [t for t in relative_links(page) if not (page.parent / t).exists()]


def quoted_paths(page: Path) -> list[str]:
    """Repository paths written in the page's inline code spans."""
    paths = []
    for token in _parse(page.read_text(encoding="utf-8")):
        for child in token.children or []:
            if child.type == "code_inline":
                paths += [word for word in re.split(r"[\s:,()]+", child.content)
                          if QUOTED_PATH.match(word) and not word.startswith(RUN_DIR_PARTS)]
    return paths


def missing_quoted_paths(page: Path) -> list[str]:
    """Quoted paths found neither from the repository root, nor ``src/attnkit``, nor the page."""
    bases = (ROOT, ROOT / "src" / "attnkit", ROOT / "src", page.parent)
    return [p for p in quoted_paths(page) if not any((base / p).exists() for base in bases)]


PYTHON_BLOCKS = [b for page in markdown_pages() for b in code_blocks(page)
                 if b.language == "python"]


def test_the_readme_has_runnable_python_blocks() -> None:
    tour = [b for b in PYTHON_BLOCKS if b.page == README and b.skip_reason is None]
    assert tour, "README.md lost its tour"


@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if b.skip_reason is None],
                         ids=CodeBlock.label)
def test_python_block_runs_in_a_fresh_interpreter(block: CodeBlock, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", block.source], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "MissingDataError" in result.stderr:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, (
        f"{block.label()} failed in a fresh interpreter:\n{result.stderr[-3000:]}")


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=CodeBlock.label)
def test_python_block_is_valid_python(block: CodeBlock) -> None:
    compile(block.source, block.label(), "exec")


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to missing files"


@pytest.mark.parametrize("page", [p for p in markdown_pages() if p.name != "CHANGELOG.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_repository_path_exists(page: Path) -> None:
    assert missing_quoted_paths(page) == [], (
        f"{page.relative_to(ROOT)} names files that do not exist (moved or renamed?)")


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_command_is_accepted_by_the_cli(page: Path) -> None:
    errors = [f"line {line}: attnkit {args}\n    {error}" for line, args in cli_commands(page)
              if (error := cli_error(args)) is not None]
    assert errors == [], f"{page.relative_to(ROOT)} quotes commands the CLI refuses:\n" + (
        "\n".join(errors))


def test_every_result_file_under_docs_is_linked_from_a_page() -> None:
    """docs/ keeps only what a page cites; superseded runs are deleted (git keeps them)."""
    linked = {(page.parent / t).resolve() for page in markdown_pages()
              for t in relative_links(page)}
    orphans = [str(f.relative_to(ROOT)) for f in sorted((ROOT / "docs").rglob("*"))
               if f.is_file() and f.parent != ROOT / "docs" and f.resolve() not in linked]
    assert orphans == [], f"files under docs/ that no page links (delete or cite them): {orphans}"


def test_the_readme_links_every_docs_page() -> None:
    linked = {(README.parent / t).resolve() for t in relative_links(README)}
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md"))
               if p.resolve() not in linked]
    assert missing == [], f"README.md does not link these docs pages: {missing}"


# The checks above must be able to fail: run them on pages written to fail them.


def test_the_checks_catch_a_missing_link_a_failing_block_and_a_bad_command(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("x\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [gone](missing.csv) ![plot](plots/none.png) [web](https://example.org)"
        " [anchor](#top) [ok with anchor](there.md#x)\n\n"
        "<!-- docs-test: skip (needs a trained run) -->\n"
        "```python\nload_run('runs/x')\n```\n\n"
        "```python\nraise SystemExit(3)\n```\n\n"
        "```bash\nOMP_NUM_THREADS=1 attnkit bench kinds --small \\\n    --no-such-option 1\n"
        "attnkit explain RUN_DIR [--png DIR]   # fine\n```\n\n"
        "See `layers/registry.py`, `layers/gone.py`, `RUN_DIR/best/model.safetensors`.\n",
        encoding="utf-8")
    assert broken_links(page) == ["missing.csv", "plots/none.png"]
    skipped, runnable, _shell = code_blocks(page)
    assert skipped.skip_reason == "docs-test: skip (needs a trained run)"
    assert runnable.skip_reason is None and runnable.line == 8
    commands = cli_commands(page)
    assert [args for _, args in commands] == [
        "bench kinds --small      --no-such-option 1", "explain RUN_DIR [--png DIR]"]
    assert "--no-such-option" in (cli_error(commands[0][1]) or "")
    assert cli_error(commands[1][1]) is None
    assert missing_quoted_paths(page) == ["layers/gone.py"]
    result = subprocess.run([sys.executable, "-c", runnable.source], capture_output=True)
    assert result.returncode == 3
