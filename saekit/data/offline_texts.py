"""Named texts that install without the Hugging Face Hub (OFFLINE.md), as documents.

- `offline-default`: the Python 3.11 documentation (Debian's `python3.11-doc`), one file per document.
- `kjv`: the King James Bible (Debian's `bible-kjv`), one chapter per document (1,189 documents, so the
  every-20th-document held-out split holds 59 whole chapters). Verse references are dropped and each
  verse is one line: the text reads as prose, not as a table of `Ge1:1` labels. It is the text the KJV
  copy of SmolLM2 (scripts/finetune_copy.py) is fine-tuned on, so `saekit diff --dataset kjv` compares
  the two models where they differ.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from saekit.errors import SaekitError

PYTHON_DOCS = "/usr/share/doc/python3.11/html/_sources"
KJV_RANGE = "Gen1:1-Rev22:21"
# `bible -f` prints one verse per line: book abbreviation, chapter, verse, then the text.
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def python_docs() -> Iterator[str]:
    files = sorted(glob.glob(f"{PYTHON_DOCS}/**/*.rst.txt", recursive=True))
    if not files:
        raise SaekitError("the offline default text is not installed: run scripts/setup.sh "
                          "(it installs Debian's python3.11-doc)")
    for name in files:
        yield Path(name).read_text(encoding="utf-8", errors="replace")


def kjv_chapters() -> Iterator[str]:
    """The King James Bible, one chapter per document, one verse per line."""
    if shutil.which("bible") is None:
        raise SaekitError("the KJV text is not installed: run scripts/setup.sh (or `apt-get install "
                          "bible-kjv bible-kjv-text`)")
    output = subprocess.run(["bible", "-f", KJV_RANGE], capture_output=True, text=True, check=True).stdout
    chapter: tuple[str, str] | None = None
    verses: list[str] = []
    for line in output.splitlines():
        match = _VERSE.match(line)
        if match is None:  # a verse continued over several lines
            if verses and line.strip():
                verses[-1] += " " + line.strip()
            continue
        book, number, _, text = match.groups()
        if (book, number) != chapter and verses:
            yield "\n".join(verses) + "\n"
            verses = []
        chapter = (book, number)
        verses.append(text.strip())
    if verses:
        yield "\n".join(verses) + "\n"


NAMED_TEXTS: dict[str, Callable[[], Iterator[str]]] = {"offline-default": python_docs, "kjv": kjv_chapters}
