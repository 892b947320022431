import argparse
import hashlib
import itertools
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import saekit
from saekit.commands import cache as cache_command
from saekit.data.cache import open_cache
from saekit.data.cache.format import manifest_checksum
from saekit.data.cache.writer import CacheWriter, cached_token_count, write_cache
from saekit.errors import SaekitError
from tests.helpers import activations, chunks

ROOT = Path(__file__).resolve().parents[2]
SHARD = 1000


def write(path: Path, data=None, **options):
    data = activations() if data is None else data
    options = {"hookpoints": ["a", "b"], "model": "toy", "shard_tokens": SHARD, **options}
    return write_cache(chunks(data), path, **options)


def rows(stream) -> dict[str, torch.Tensor] | torch.Tensor:
    batches = list(stream)
    if isinstance(batches[0], dict):
        return {h: torch.cat([b[h] for b in batches]) for h in batches[0]}
    return torch.cat(batches)


def cache_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_round_trip_is_bit_identical_and_rebatched_across_shards(tmp_path):
    data = activations()
    write(tmp_path / "c", data)
    cache = open_cache(tmp_path / "c")
    for batch_size in (256, 1000, 4096, 10_000):
        batches = list(cache.stream("a", batch_size))
        assert all(b.dtype == torch.float32 and b.shape[1] == 8 for b in batches)
        assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
        assert torch.equal(torch.cat(batches), data["a"])  # bit-identical, same order
    assert torch.equal(rows(cache.stream("b", 333)), data["b"])
    assert len(cache.stream("a", 256)) == -(-4500 // 256)
    assert len(list(cache.stream("a", 256, drop_last=True))) == 4500 // 256
    # a stream's batches are independent of the file: writing to one never changes the cache
    first = next(iter(cache.stream("a", 100)))
    first += 1
    assert torch.equal(next(iter(cache.stream("a", 100))), data["a"][:100])


def test_manifest_records_tokens_shards_checksums_and_metadata(tmp_path):
    data = activations()
    manifest = write(tmp_path / "c", data, metadata={"dataset": "toy-text", "context_size": 64})
    on_disk = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["format"] == "saekit-activation-cache" and manifest["version"] == 1
    assert manifest["model"] == "toy" and manifest["dtype"] == "float32" and manifest["complete"]
    assert manifest["total_tokens"] == 4500 and manifest["shard_tokens"] == SHARD
    assert [s["tokens"] for s in manifest["shards"]] == [1000, 1000, 1000, 1000, 500]
    assert {h["name"]: h["d"] for h in manifest["hookpoints"]} == {"a": 8, "b": 3}
    assert manifest["metadata"] == {"dataset": "toy-text", "context_size": 64}
    assert manifest["manifest_sha256"] == manifest_checksum(manifest)
    for i, shard in enumerate(manifest["shards"]):
        for h, entry in shard["files"].items():
            path = tmp_path / "c" / entry["path"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
            assert path.stat().st_size == entry["bytes"]
            stored = np.load(path)  # plain .npy: readable without saekit
            assert np.array_equal(stored, data[h][i * SHARD:i * SHARD + shard["tokens"]].numpy())
    assert not list((tmp_path / "c").rglob("*.tmp"))


def test_resume_after_a_failing_source_equals_a_single_pass(tmp_path):
    data = activations()
    write(tmp_path / "single", data)

    def failing():
        for i, batch in enumerate(chunks(data)):
            if i == 10:  # 3,303 tokens in: three shards stored, the fourth lost
                raise RuntimeError("source died")
            yield batch

    with pytest.raises(RuntimeError):
        write_cache(failing(), tmp_path / "c", hookpoints=["a", "b"], model="toy", shard_tokens=SHARD)
    assert cached_token_count(tmp_path / "c") == 3000
    with pytest.raises(SaekitError, match="incomplete"):
        open_cache(tmp_path / "c")
    partial = open_cache(tmp_path / "c", require_complete=False)
    assert torch.equal(rows(partial.stream("a", 512)), data["a"][:3000])

    seen = []
    write_cache(lambda skip: seen.append(skip) or chunks(data, start=skip), tmp_path / "c",
                hookpoints=["a", "b"], model="toy", shard_tokens=SHARD)
    assert seen == [3000]
    assert cache_files(tmp_path / "c") == cache_files(tmp_path / "single")
    # finishing again is a no-op, and a plain iterable is advanced past the stored tokens
    write(tmp_path / "c", data)
    assert cache_files(tmp_path / "c") == cache_files(tmp_path / "single")
    with pytest.raises(RuntimeError):
        write_cache(failing(), tmp_path / "d", hookpoints=["a", "b"], model="toy", shard_tokens=SHARD)
    write(tmp_path / "d", data)
    assert cache_files(tmp_path / "d") == cache_files(tmp_path / "single")


CHILD = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {root!r})
    from tests.helpers import activations, chunks
    from saekit.data.cache.writer import write_cache

    def source():
        for i, batch in enumerate(chunks(activations())):
            if i == 6:  # 2,002 tokens in: two shards stored, two rows of the third buffered
                print("ready", flush=True)
                time.sleep(60)
            yield batch

    write_cache(source(), {out!r}, hookpoints=["a", "b"], model="toy", shard_tokens={shard})
""")


@pytest.mark.faults  # kill points and damaged files (the fault-injection suite)
def test_resume_after_sigkill_equals_a_single_pass(tmp_path):
    write(tmp_path / "single")
    out = tmp_path / "c"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), out=str(out), shard=SHARD)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert cached_token_count(out) == 2000
    # debris a kill can leave: a temporary file and a shard written before the manifest listed it
    (out / "a" / ".shard-00002.npy.x1y2.tmp").write_bytes(b"half a shard")
    (out / "b" / "shard-00002.npy").write_bytes(b"stale")
    write(out)
    assert cache_files(out) == cache_files(tmp_path / "single")


def test_mismatched_resume_is_refused(tmp_path):
    data = activations()
    with pytest.raises(RuntimeError):
        def dies():
            yield from list(chunks(data))[:9]
            raise RuntimeError
        write_cache(dies(), tmp_path / "c", hookpoints=["a", "b"], model="toy", shard_tokens=SHARD,
                    metadata={"context_size": 64})
    base = {"hookpoints": ["a", "b"], "model": "toy", "shard_tokens": SHARD, "metadata": {"context_size": 64}}
    for change, word in [({"model": "other"}, "model"), ({"hookpoints": ["b", "a"]}, "hookpoints"),
                         ({"dtype": "bfloat16"}, "dtype"), ({"shard_tokens": 512}, "shard_tokens"),
                         ({"metadata": {"context_size": 128}}, "metadata")]:
        with pytest.raises(SaekitError, match=word):
            write_cache(chunks(data), tmp_path / "c", **{**base, **change})
    wider = {"a": torch.randn(4500, 9), "b": data["b"]}
    with pytest.raises(SaekitError, match="width 9"):
        write_cache(chunks(wider), tmp_path / "c", **base)
    # a directory that is not a cache is neither written into nor deleted
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(SaekitError, match="not"):
            write(tmp_path / "notes", overwrite=overwrite)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    # one writer at a time
    with CacheWriter(tmp_path / "c", ["a", "b"], model="toy", metadata={"context_size": 64}):
        with pytest.raises(SaekitError, match="another process"):
            CacheWriter(tmp_path / "c", ["a", "b"], model="toy")


def corrupt_cases():
    def truncate(path, m):
        file = path / m["shards"][2]["files"]["a"]["path"]
        file.write_bytes(file.read_bytes()[:-10])

    def flip(path, m):
        file = path / m["shards"][2]["files"]["a"]["path"]
        raw = bytearray(file.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        file.write_bytes(bytes(raw))

    def remove(path, m):
        (path / m["shards"][2]["files"]["b"]["path"]).unlink()

    def edit_manifest(path, m):
        m["shards"][0]["tokens"] = 999
        (path / "manifest.json").write_text(json.dumps(m))

    def damage_manifest(path, m):
        (path / "manifest.json").write_text(json.dumps(m)[:-20])

    def future_version(path, m):
        m["version"] = 99
        m["manifest_sha256"] = manifest_checksum(m)
        (path / "manifest.json").write_text(json.dumps(m))

    return [("truncated", truncate, "truncated"), ("flipped", flip, "corrupted"),
            ("missing", remove, "missing"), ("edited", edit_manifest, "modified"),
            ("damaged", damage_manifest, "not valid JSON"), ("future", future_version, "newer saekit")]


@pytest.mark.faults  # kill points and damaged files (the fault-injection suite)
@pytest.mark.parametrize("name,damage,message", corrupt_cases(), ids=[c[0] for c in corrupt_cases()])
def test_corruption_is_detected_with_a_one_line_error(tmp_path, name, damage, message):
    path = tmp_path / "c"
    manifest = write(path)
    damage(path, manifest)
    if name == "flipped":  # same size: found by the checksum, on open or before the shard is read
        with pytest.raises(SaekitError, match=message):
            open_cache(path, verify="full")
        cache = open_cache(path)
        yielded = []
        with pytest.raises(SaekitError, match=message) as error:
            for batch in cache.stream("a", 700):
                yielded.append(batch)
        assert torch.equal(torch.cat(yielded), activations()["a"][:len(torch.cat(yielded))])
        assert len(torch.cat(yielded)) <= 2000  # nothing from the damaged shard was yielded
        assert open_cache(path, verify="none").stream("b", 700) is not None  # other hookpoint fine
    else:
        with pytest.raises(SaekitError, match=message) as error:
            open_cache(path, verify="none")
    text = str(error.value)
    assert "\n" not in text and ("saekit cache" in text or "upgrade" in text)
    with pytest.raises(SaekitError):
        cache_command.run_verify(argparse.Namespace(path=path))


def test_start_token_resume_and_seeded_shuffle(tmp_path):
    data = activations()
    write(tmp_path / "c", data)
    cache = open_cache(tmp_path / "c")
    for start in (0, 1, 999, 1000, 2345, 4499):
        assert torch.equal(rows(cache.stream("a", 256, start_token=start)), data["a"][start:])
    stream = cache.stream("a", 256, start_token=100)
    assert torch.equal(rows(stream.resume_from(1900)), data["a"][2000:])
    with pytest.raises(SaekitError, match="outside"):
        cache.stream("a", 256, start_token=4501)

    shuffled = rows(cache.stream("a", 300, shuffle=True, seed=7))
    assert torch.equal(shuffled, rows(cache.stream("a", 1024, shuffle=True, seed=7)))  # batch-size free
    assert not torch.equal(shuffled, data["a"])
    assert not torch.equal(shuffled, rows(cache.stream("a", 300, shuffle=True, seed=8)))
    order = shuffled[:, 0].argsort()
    assert torch.equal(shuffled[order], data["a"][data["a"][:, 0].argsort()])  # a permutation
    for start in (1, 1234, 4000):
        assert torch.equal(rows(cache.stream("a", 300, shuffle=True, seed=7, start_token=start)),
                           shuffled[start:])
    # windows are shards: each run of shard_tokens rows (in shard order) is one shard, permuted
    index = shuffled[:, 0:1].eq(data["a"][:, 0]).float().argmax(1)
    windows = [set((index[i:i + 1000] // SHARD).tolist()) for i in range(0, 4500, 1000)]
    assert sum(len(w) == 1 for w in windows) >= 3  # the short last shard shifts at most two windows

    two = rows(cache.stream("a", 512, shuffle=True, seed=7, epochs=2))
    assert len(two) == 9000 and torch.equal(two[:4500], shuffled) and not torch.equal(two[4500:], shuffled)
    plain_two = rows(cache.stream("a", 512, epochs=2))
    assert torch.equal(plain_two, torch.cat([data["a"], data["a"]]))
    endless = iter(cache.stream("a", 4000, epochs=None))
    assert all(len(next(endless)) == 4000 for _ in range(5))


def test_several_hookpoints_give_aligned_rows(tmp_path):
    data = activations()
    write(tmp_path / "c", data)
    cache = open_cache(tmp_path / "c")
    for shuffle in (False, True):
        got = rows(cache.stream_many(["a", "b"], 700, shuffle=shuffle, seed=3, start_token=17))
        token = (got["b"] - got["a"][:, :3] * 2)[:, 0].round().long()
        assert torch.equal(got["a"], data["a"][token]) and torch.equal(got["b"], data["b"][token])
        assert shuffle or torch.equal(token, torch.arange(17, 4500))
    assert set(next(iter(cache.stream_many(None, 10)))) == {"a", "b"}
    with pytest.raises(SaekitError, match="not in cache"):
        cache.stream("c", 10)


def test_half_precision_caches_round_and_refuse_overflow(tmp_path):
    data = activations()
    for dtype, torch_dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        write(tmp_path / dtype, data, dtype=dtype)
        got = rows(open_cache(tmp_path / dtype).stream("a", 999))
        assert got.dtype == torch.float32
        assert torch.equal(got, data["a"].to(torch_dtype).float())
    with pytest.raises(SaekitError, match="float16 overflows"):
        write(tmp_path / "big", {"a": data["a"] * 1e5, "b": data["b"]}, dtype="float16")
    with pytest.raises(SaekitError, match="NaN"):
        write(tmp_path / "nan", {"a": data["a"] / 0 * 0, "b": data["b"]})


def test_training_from_the_cache_equals_training_live(tmp_path):
    data = activations(n=2048 * 6)
    write(tmp_path / "c", data, shard_tokens=3000)
    cfg = saekit.DictionarySpec.from_options(method="topk", d_in=8, d_sae=32, k=2, lr=1e-3)
    options = dict(total_tokens=2048 * 6, batch_size=2048, progress=False)
    live = saekit.train((batch["a"] for batch in chunks(data)), [cfg], **options)
    cached = saekit.train(open_cache(tmp_path / "c").stream("a", 2048), [cfg], **options)
    for (name, t1), t2 in zip(live[0].weights().items(), cached[0].weights().values()):
        assert torch.equal(t1, t2), name


def test_training_resumed_through_resume_from_equals_one_run(tmp_path):
    data = activations(n=2048 * 6)
    write(tmp_path / "c", data, shard_tokens=2048)
    cache = open_cache(tmp_path / "c")
    cfg = saekit.DictionarySpec.from_options(method="topk", d_in=8, d_sae=32, k=2, lr=1e-3)
    # the interrupted run reads three batches: estimate the scale on the first, as the full run does
    options = dict(total_tokens=2048 * 6, batch_size=2048, progress=False, normalization_tokens=2048)
    (one,) = saekit.train(cache.stream("a", 2048, shuffle=True, seed=5), [cfg], **options)

    ckpt = dict(checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1, resume=True)
    interrupted = itertools.islice(cache.stream("a", 2048, shuffle=True, seed=5), 3)  # dies after 3 steps
    saekit.train(interrupted, [cfg], **options, **ckpt)
    stream = cache.stream("a", 2048, shuffle=True, seed=5)
    calls = []
    stream.resume_from = lambda tokens, f=stream.resume_from: calls.append(tokens) or f(tokens)
    (resumed,) = saekit.train(stream, [cfg], **options, **ckpt)
    assert calls == [3 * 2048]  # the trainer seeks instead of re-reading
    for (name, t1), t2 in zip(one.weights().items(), resumed.weights().values()):
        assert torch.equal(t1, t2), name


def test_cli_info_and_verify(tmp_path, capsys):
    write(tmp_path / "c", metadata={"dataset": "toy-text"})
    parser = argparse.ArgumentParser(prog="saekit")
    cache_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cache", "info", str(tmp_path / "c")])
    assert args.func(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_tokens"] == 4500 and info["hookpoints"]["a"]["d"] == 8 and info["complete"]
    assert info["metadata"] == {"dataset": "toy-text"}
    args = parser.parse_args(["cache", "verify", str(tmp_path / "c")])
    assert args.func(args) == 0 and capsys.readouterr().out.startswith("ok:")
    args = parser.parse_args(["cache", "--out", str(tmp_path / "d")])
    with pytest.raises(SaekitError, match="--model"):
        args.func(args)
    with pytest.raises(SaekitError, match="does not exist"):
        open_cache(tmp_path / "nowhere")


def test_train_from_cache_shuffles_with_the_data_seed(tmp_path, capsys):
    """--data-seed sets the cache's read order (it used to be ignored for caches)."""
    from saekit.cli import main

    write(tmp_path / "c", activations(n=4096), shard_tokens=2048)
    base = ["train", "--from-cache", str(tmp_path / "c"), "--hookpoint", "a", "--method", "topk", "--k", "2",
            "--d-sae", "16", "--total-tokens", "2048", "--batch-size", "512", "--no-progress"]
    weights = {}
    for run, seed in (("s1", "1"), ("s1again", "1"), ("s2", "2")):
        assert main([*base, "--data-seed", seed, "--out", str(tmp_path / run)]) == 0, capsys.readouterr().err
        weights[run] = saekit.load(tmp_path / run / "topk-k2-16").W_dec
    assert torch.equal(weights["s1"], weights["s1again"])
    assert not torch.equal(weights["s1"], weights["s2"])
