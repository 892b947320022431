"""Class 2: no command deletes or replaces anything it did not write; output paths are checked before
the work; killed writes leave no litter; files get the permissions the umask gives."""

import os

import numpy as np
import pytest

import saekit
from saekit.io import OWNER_MARK, atomic_directory
from tests.faults.conftest import one_line_error
from tests.helpers import make


@pytest.fixture
def dictionary(tmp_path):
    return saekit.save(make("topk"), tmp_path / "dict")


@pytest.mark.parametrize("to", ["saekit", "saelens", "sparsify", "dictionary_learning"])
def test_convert_never_replaces_a_foreign_directory_or_file(tmp_path, cli, dictionary, to):
    keep = tmp_path / "v"
    keep.mkdir()
    (keep / "keep.txt").write_text("keep")
    code, _, errors = cli("convert", dictionary, keep, "--to", to)
    one_line_error(code, errors, "was not written by saekit", "--overwrite")
    assert (keep / "keep.txt").read_text() == "keep" and sorted(p.name for p in keep.iterdir()) == ["keep.txt"]
    (tmp_path / "file").write_text("keep")
    code, _, errors = cli("convert", dictionary, tmp_path / "file", "--to", to)
    one_line_error(code, errors, "is not a directory")
    assert (tmp_path / "file").read_text() == "keep"
    # saekit's own output is replaced; --overwrite replaces a foreign one on request
    assert cli("convert", dictionary, tmp_path / "mine", "--to", to)[0] == 0
    assert cli("convert", dictionary, tmp_path / "mine", "--to", to)[0] == 0
    assert cli("convert", dictionary, keep, "--to", to, "--overwrite")[0] == 0
    assert not (keep / "keep.txt").exists() and (keep / OWNER_MARK).exists()


def test_train_checks_its_outputs_before_training_and_never_wipes_the_run(tmp_path, cli):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).standard_normal((2048, 8)).astype("f4"))
    base = ["train", "--activations", tmp_path / "a.npy", "--method", "topk", "--k", "2", "--d-sae", "16",
            "--total-tokens", "1024", "--batch-size", "256", "--no-progress"]
    for name in (".", "..", "a/b", ".hidden"):
        code, _, errors = cli(*base, "--name", name, "--out", tmp_path / "run")
        one_line_error(code, errors, "cannot name a dictionary folder")
    (tmp_path / "run" / "topk-k2-16").mkdir(parents=True)
    (tmp_path / "run" / "topk-k2-16" / "notes.txt").write_text("mine")
    code, _, errors = cli(*base, "--out", tmp_path / "run")
    one_line_error(code, errors, "was not written by saekit")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training
    assert (tmp_path / "run" / "topk-k2-16" / "notes.txt").read_text() == "mine"
    os.chdir(tmp_path)  # --out . writes inside the current directory, never replaces it
    assert cli(*base, "--out", ".", "--name", "here")[0] == 0
    assert (tmp_path / "here" / "cfg.json").exists() and (tmp_path / "a.npy").exists()


def test_dashboard_refuses_a_foreign_site_directory_before_the_model_pass(tmp_path, cli, dictionary):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("someone else's")
    code, _, errors = cli("dashboard", dictionary, "--out", tmp_path / "site", "--model", tmp_path / "none")
    one_line_error(code, errors, "was not written by saekit")
    assert (tmp_path / "site" / "index.html").read_text() == "someone else's"


def test_leftovers_of_killed_writes_are_removed_by_the_next_write(tmp_path):
    (tmp_path / ".d.abc123.tmp").mkdir()
    (tmp_path / ".d.abc123.tmp" / "half.bin").write_bytes(b"x")
    (tmp_path / ".d.old-xyz").mkdir()
    (tmp_path / ".other.abc.tmp").mkdir()  # not ours to judge: another path's
    saekit.save(make("relu"), tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.tmp", "d"]


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        saekit.save(make("relu"), tmp_path / "d")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "sae_weights.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_failing_write_keeps_the_previous_contents(tmp_path, monkeypatch):
    saekit.save(make("relu", seed=1), tmp_path / "d")
    before = (tmp_path / "d" / "sae_weights.safetensors").read_bytes()
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as tmp:
        (tmp / "partial").write_bytes(b"half")
        raise RuntimeError("killed")
    assert (tmp_path / "d" / "sae_weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
