"""Class 5: a run on no data fails instead of saving an untrained dictionary; class 6: nothing hangs
(symlink cycles, device files, a held lock)."""

import os
import time

import numpy as np
import pytest
import torch

import saekit
from saekit.data.cache import open_cache, write_cache
from tests.faults.conftest import one_line_error
from tests.helpers import save_tiny, tiny_llama, tiny_tokenizer


@pytest.mark.parametrize("rows", [0, 100])  # an empty file, and one shorter than a batch
def test_too_little_data_fails_and_saves_nothing(tmp_path, cli, rows):
    np.save(tmp_path / "a.npy", np.zeros((rows, 8), dtype="f4"))
    code, _, errors = cli("train", "--activations", tmp_path / "a.npy", "--method", "topk", "--k", "2",
                          "--d-sae", "16", "--total-tokens", "1024", "--batch-size", "256",
                          "--out", tmp_path / "r", "--no-progress")
    one_line_error(code, errors, "nothing to train on")
    assert not list((tmp_path / "r").glob("*/cfg.json")) if (tmp_path / "r").exists() else True


def test_text_that_tokenises_to_nothing_fails(tmp_path, cli):
    tokenizer = tiny_tokenizer()
    model = save_tiny(tmp_path / "m", tiny_llama(len(tokenizer)), tokenizer)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "empty.txt").write_text("")
    code, _, errors = cli("train", "--model", model, "--hookpoints", "resid_post.0", "--dataset",
                          tmp_path / "text", "--method", "topk", "--k", "2", "--d-sae", "16", "--total-tokens",
                          "512", "--batch-size", "128", "--out", tmp_path / "r", "--no-progress")
    assert code == 2 and len(errors) == 1, errors
    assert not (tmp_path / "r" / "topk-k2-16").exists()


def test_empty_and_zero_token_caches_are_refused(tmp_path, cli):
    code, _, errors = cli("cache", "--model", "m", "--hookpoints", "h", "--tokens", "0", "--out", tmp_path / "c")
    one_line_error(code, errors, "--tokens must be a positive")
    write_cache(iter([]), tmp_path / "empty", hookpoints=["a"], model="m", shard_tokens=64)
    with pytest.raises(saekit.SaekitError, match="holds no tokens"):
        open_cache(tmp_path / "empty")


def test_symlink_cycles_and_huge_trees_end_quickly(tmp_path, cli):
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "a" / "b" / "loop")
    os.symlink(tmp_path / "a", tmp_path / "a" / "self")
    started = time.perf_counter()
    code, _, errors = cli("info", tmp_path)
    one_line_error(code, errors, "not a saekit dictionary")
    code, _, errors = cli("info", "/usr")
    one_line_error(code, errors, "/usr")
    assert time.perf_counter() - started < 60


def test_a_held_cache_lock_fails_at_once(tmp_path):
    from saekit.data.cache import CacheWriter

    first = CacheWriter(tmp_path / "c", hookpoints=["a"], model="m", shard_tokens=64)
    try:
        started = time.perf_counter()
        with pytest.raises(saekit.SaekitError, match="another process is writing"):
            CacheWriter(tmp_path / "c", hookpoints=["a"], model="m", shard_tokens=64)
        assert time.perf_counter() - started < 5
    finally:
        first.close()


def test_the_stream_of_a_file_resumes_where_asked(tmp_path):
    from saekit.data.arrays import ArrayStream

    data = np.arange(20000 * 2, dtype="f4").reshape(20000, 2)
    np.save(tmp_path / "a.npy", data)
    stream = ArrayStream(tmp_path / "a.npy")
    resumed = torch.cat(list(stream.resume_from(9000)))
    assert torch.equal(resumed, torch.from_numpy(data[9000:]))
    assert stream.fingerprint() == ArrayStream(tmp_path / "a.npy").fingerprint()
