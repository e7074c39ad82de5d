"""Verse-aligned English/Spanish Bible text read from SWORD modules with pysword, cached as JSON.

Modules: the World English Bible (``engWEB2015eb``, Debian ``sword-text-web``, public domain) and
the Reina-Valera 1909 (``spaRV1909eb``, Debian ``sword-text-sparv``, public domain), both under
/usr/share/sword. Verses are paired by (book, chapter, verse) reference; the WEB module uses NRSVA
versification and the RV1909 module KJV, which number a few verses differently, so a handful of
pairs near such places are not exact translations of each other.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

from attnkit.tasks.base import MissingDataError
from attnkit.tasks.sources import (
    apt_install_command,
    atomic_write_bytes,
    cache_dir,
    import_package,
    require_dir,
)

__all__ = ["ENGLISH_MODULE", "SPANISH_MODULE", "clean_osis", "load_parallel_verses"]

ENGLISH_MODULE = "engWEB2015eb"
SPANISH_MODULE = "spaRV1909eb"
APT_PACKAGES = ("sword-text-web", "sword-text-sparv")
DEFAULT_SWORD_DIR = "/usr/share/sword"
_PARSER_VERSION = 2  # bump when clean_osis or the pairing changes, to invalidate old caches

_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)  # footnotes: not part of the verse text
_TAG = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:!?])")


def clean_osis(markup: str) -> str:
    """Verse text from OSIS markup: footnotes dropped, tags removed, whitespace collapsed."""
    text = _NOTE.sub(" ", markup)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    text = _SPACES.sub(" ", text).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def _fingerprint(sword_dir: Path) -> str:
    """Changes whenever a module file or the parser changes, so the cache never goes stale."""
    parts = [f"v{_PARSER_VERSION}"]
    for module in (ENGLISH_MODULE, SPANISH_MODULE):
        for path in sorted((sword_dir / "modules" / "texts" / "ztext" / module).glob("*")):
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _parse(sword_dir: Path) -> list[list[str]]:
    sword = import_package("pysword.modules", needed_for="task 'translation' (reading the Bibles)")
    modules = sword.SwordModules(str(sword_dir))
    found = modules.parse_modules()
    for module in (ENGLISH_MODULE, SPANISH_MODULE):
        if module not in found:
            raise MissingDataError(f"task 'translation': SWORD module {module} is not in "
                                   f"{sword_dir}; install it with: "
                                   f"{apt_install_command(*APT_PACKAGES)}")
    english = modules.get_bible_from_module(ENGLISH_MODULE)
    spanish = modules.get_bible_from_module(SPANISH_MODULE)
    for bible in (english, spanish):
        # A zText module compresses a whole book per block and pysword decompresses the block
        # again for every verse; remembering the last few blocks makes parsing ~100x faster.
        bible._decompressed_text = functools.lru_cache(maxsize=4)(bible._decompressed_text)
    english_books = english.get_structure()
    rows: list[list[str]] = []
    for books in spanish.get_structure().get_books().values():
        for book in books:
            try:
                english_books.find_book(book.osis_name)
            except ValueError:
                continue  # a book only one of the two Bibles has
            for chapter in range(1, len(book.chapter_lengths) + 1):
                # One chapter per call: pysword looks the book up by name on every call.
                ref = dict(books=[book.osis_name], chapters=[chapter])
                try:
                    english_verses = list(english.get_iter(**ref, clean=False))
                except ValueError:
                    continue  # the English versification has no such chapter
                spanish_verses = list(spanish.get_iter(**ref, clean=False))
                # Verse n is item n-1 of both lists (zText yields every verse, empty or not);
                # verses past the shorter chapter have no counterpart.
                for verse, (en_markup, es_markup) in enumerate(
                        zip(english_verses, spanish_verses, strict=False), start=1):
                    en, es = clean_osis(en_markup), clean_osis(es_markup)
                    if en and es:
                        rows.append([f"{book.osis_name} {chapter}:{verse}", en, es])
    return rows


def load_parallel_verses(*, sword_dir: str | Path = DEFAULT_SWORD_DIR,
                         cache: str | Path | None = None) -> list[tuple[str, str, str]]:
    """``(reference, english, spanish)`` for every verse both Bibles have, in canonical order.

    The first call parses the modules (a few seconds) and writes
    ``<cache>/translation/web-rv1909-<fingerprint>.json`` atomically; later calls read that file.
    ``cache`` defaults to :func:`attnkit.tasks.sources.cache_dir`.
    """
    directory = require_dir(sword_dir, task="translation", apt_packages=APT_PACKAGES)
    path = cache_dir(cache) / "translation" / f"web-rv1909-{_fingerprint(directory)}.json"
    if path.is_file():
        try:
            rows: Any = json.loads(path.read_text(encoding="utf-8"))
            return [(r[0], r[1], r[2]) for r in rows]
        except (ValueError, IndexError, TypeError):
            pass  # unreadable cache: parse again and overwrite it
    rows = _parse(directory)
    if not rows:
        raise MissingDataError(f"task 'translation': no verse found in {directory}; reinstall "
                               f"with: {apt_install_command(*APT_PACKAGES)}")
    atomic_write_bytes(path, json.dumps(rows, ensure_ascii=False).encode("utf-8"))
    return [(r[0], r[1], r[2]) for r in rows]
