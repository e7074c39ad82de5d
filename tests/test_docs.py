"""The docs stay true: the README's Python blocks run, and every relative link points to a file.

A Python block that cannot run as it stands (it needs a trained run, a dataset or minutes of
CPU) is marked by an HTML comment on the line before its fence::

    <!-- docs-test: skip (needs a trained run directory) -->

and is then only parsed, never run. Every other ``python`` block of README.md runs in a fresh
interpreter, as a reader would paste it; the Python blocks of the other pages are parsed
(``compile``), so a syntax error is caught there too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

markdown_it = pytest.importorskip(
    "markdown_it", reason="needs markdown-it-py: pip install 'attnkit[test]'")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP_MARKER = "docs-test: skip"


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


README_PYTHON = [b for b in code_blocks(README) if b.language == "python"]
OTHER_PYTHON = [b for page in markdown_pages() if page != README
                for b in code_blocks(page) if b.language == "python"]


def test_the_readme_has_runnable_python_blocks() -> None:
    assert [b for b in README_PYTHON if b.skip_reason is None], "README.md lost its tour"


@pytest.mark.parametrize("block", [b for b in README_PYTHON if b.skip_reason is None],
                         ids=CodeBlock.label)
def test_readme_python_block_runs_in_a_fresh_interpreter(block: CodeBlock, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", block.source], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"{block.label()} failed in a fresh interpreter:\n{result.stderr[-3000:]}")


@pytest.mark.parametrize("block", README_PYTHON + OTHER_PYTHON, ids=CodeBlock.label)
def test_python_block_is_valid_python(block: CodeBlock) -> None:
    compile(block.source, block.label(), "exec")


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to missing files"


def test_the_readme_links_every_docs_page() -> None:
    linked = {(README.parent / t).resolve() for t in relative_links(README)}
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md"))
               if p.resolve() not in linked]
    assert missing == [], f"README.md does not link these docs pages: {missing}"


# The checks above must be able to fail: run them on pages written to fail them.


def test_a_missing_link_target_and_a_failing_block_are_caught(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("x\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [gone](missing.csv) ![plot](plots/none.png) [web](https://example.org)"
        " [anchor](#top) [ok with anchor](there.md#x)\n\n"
        "<!-- docs-test: skip (needs a trained run) -->\n"
        "```python\nload_run('runs/x')\n```\n\n"
        "```python\nraise SystemExit(3)\n```\n",
        encoding="utf-8")
    assert broken_links(page) == ["missing.csv", "plots/none.png"]
    skipped, runnable = code_blocks(page)
    assert skipped.skip_reason == "docs-test: skip (needs a trained run)"
    assert runnable.skip_reason is None and runnable.line == 8
    result = subprocess.run([sys.executable, "-c", runnable.source], capture_output=True)
    assert result.returncode == 3
