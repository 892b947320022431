"""Named offline texts: the King James Bible as chapters (the text of the model-diffing example)."""

import shutil

import pytest

from saekit.data.offline_texts import kjv_chapters
from saekit.data.tokens import documents
from saekit.errors import SaekitError


@pytest.mark.skipif(shutil.which("bible") is None, reason="run scripts/setup.sh (installs bible-kjv)")
def test_kjv_is_one_document_per_chapter_without_verse_labels():
    chapters = list(kjv_chapters())
    assert len(chapters) == 1189  # the Protestant canon's chapter count
    assert chapters[0].startswith("In the beginning God created the heaven and the earth.\n")
    assert chapters[0].count("\n") == 31  # Genesis 1 has 31 verses, one per line
    assert chapters[-1].rstrip().endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert not any(chapter.startswith(("Ge1", "Re22")) or ":1 " in chapter[:20] for chapter in chapters)
    held_out = list(documents("kjv", "test"))
    assert len(held_out) == 1189 // 20 and held_out[0] == chapters[19]
    assert len(list(documents("kjv", "train"))) == 1189 - 59


def test_kjv_without_the_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SaekitError, match="bible-kjv"):
        next(kjv_chapters())
