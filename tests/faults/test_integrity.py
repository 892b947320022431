"""Class 4: every file saekit writes is covered by a checksum (metadata included); a flipped byte or a
truncation anywhere is detected, never half-read; a checkpoint refuses to resume on other data."""

import json

import numpy as np
import pytest
import torch

import saekit
from saekit.data.cache import open_cache, write_cache
from saekit.data.toy import ToyConfig, ToyData
from saekit.training.checkpoint import list_checkpoints
from tests.faults.conftest import one_line_error
from tests.helpers import make


def flip(path, offset=-3):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


DAMAGE = {"flip": flip, "truncate": truncate}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "manifest.json"])
def test_every_file_of_a_dictionary_is_checked(tmp_path, cli, name, damage):
    d = make("batchtopk")
    d.log_feature_density = torch.rand(32)
    saekit.save(d, tmp_path / "d")
    DAMAGE[damage](tmp_path / "d" / name)
    with pytest.raises(saekit.SaekitError):
        saekit.load(tmp_path / "d")
    code, _, errors = cli("info", tmp_path / "d")
    one_line_error(code, errors, str(tmp_path / "d"))


def checkpointed_run(tmp_path, data=None, **options):
    data = data if data is not None else ToyData(ToyConfig(d_in=8, n_features=16, seed=1), chunk_size=128)
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=8, d_sae=16, k=2)
    return saekit.train(data, [spec], total_tokens=128 * 8, batch_size=128, progress=False,
                        checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2, normalization_tokens=128,
                        **options)


@pytest.mark.parametrize("field, value", [("step", 5), ("tokens_seen", 0), ("batch_size", 64)])
def test_an_edited_checkpoint_record_is_detected(tmp_path, field, value):
    """A changed step or token count would make a resume skip or repeat data."""
    checkpointed_run(tmp_path)
    path = list_checkpoints(tmp_path / "ck")[-1] / "checkpoint.json"
    meta = json.loads(path.read_text())
    meta[field] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(saekit.SaekitError, match="modified after it was written"):
        checkpointed_run(tmp_path)


@pytest.mark.parametrize("name", ["trainer_state.pt", "checkpoint.json"])
def test_a_damaged_checkpoint_is_reported(tmp_path, name):
    checkpointed_run(tmp_path)
    target = list_checkpoints(tmp_path / "ck")[-1] / name
    truncate(target)
    with pytest.raises(saekit.SaekitError, match="delete"):
        checkpointed_run(tmp_path)


def test_a_checkpoint_refuses_to_resume_on_other_data(tmp_path):
    import itertools

    first = ToyData(ToyConfig(d_in=8, n_features=16, seed=1), chunk_size=128)

    class Prefix:  # the first run stops after three batches, keeping the stream's fingerprint
        fingerprint = first.fingerprint

        def __iter__(self):
            return itertools.islice(iter(first), 3)

    checkpointed_run(tmp_path, Prefix())
    other = ToyData(ToyConfig(d_in=8, n_features=16, seed=2), chunk_size=128)
    with pytest.raises(saekit.SaekitError, match="trained on other data"):
        checkpointed_run(tmp_path, other)
    assert checkpointed_run(tmp_path, first)  # the same data resumes


def test_cache_verify_catches_a_shard_whose_header_disagrees(tmp_path, cli):
    from saekit.data.cache.format import manifest_checksum

    g = np.random.default_rng(0)
    write_cache(iter([{"a": torch.from_numpy(g.standard_normal((1024, 8)).astype("f4"))}]), tmp_path / "c",
                hookpoints=["a"], model="m", shard_tokens=1024)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    shard = tmp_path / "c" / manifest["shards"][0]["files"]["a"]["path"]
    np.save(shard, g.standard_normal((1024, 4)).astype("f4"))  # another shape, checksums redone by hand
    import hashlib

    entry = manifest["shards"][0]["files"]["a"]
    entry.update(sha256=hashlib.sha256(shard.read_bytes()).hexdigest(), bytes=shard.stat().st_size)
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    code, _, errors = cli("cache", "verify", tmp_path / "c")
    one_line_error(code, errors, "manifest says")
    with pytest.raises(saekit.SaekitError, match="manifest says"):
        next(iter(open_cache(tmp_path / "c").stream("a", 256)))
