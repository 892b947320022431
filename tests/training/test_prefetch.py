"""The producer thread that prepares batches while the dictionaries step (saekit.training.prefetch)."""

import threading
import time

import pytest
import torch

import saekit
from saekit.errors import SaekitError
from saekit.training.prefetch import Prefetcher


def batches(n: int, fail_at: int | None = None, delay: float = 0.0):
    for i in range(n):
        if i == fail_at:
            raise SaekitError(f"batch {i} is unreadable")
        time.sleep(delay)
        yield {"x": torch.full((2, 3), float(i))}


def test_batches_arrive_in_order_and_all_of_them():
    got = [int(b["x"][0, 0]) for b in Prefetcher(batches(20), torch.device("cpu"), depth=3)]
    assert got == list(range(20))


def test_an_error_in_the_stream_is_raised_in_the_trainer_at_its_batch():
    fetched = Prefetcher(batches(10, fail_at=4), torch.device("cpu"), depth=2)
    assert [int(next(fetched)["x"][0, 0]) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(SaekitError, match="batch 4 is unreadable"):
        next(fetched)


def test_a_stopped_consumer_releases_the_producer():
    fetched = Prefetcher(batches(1000, delay=0.001), torch.device("cpu"), depth=2)
    next(fetched)
    fetched.close()
    fetched.thread.join(timeout=5)
    assert not fetched.thread.is_alive()


def _producers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "saekit-prefetch" and t.is_alive()}


@pytest.mark.parametrize("failure", ["log file", "non-finite batch"])
def test_a_failed_run_leaves_no_producer_behind(tmp_path, failure):
    before = _producers()
    x = torch.randn(4096, 8)
    options = {}
    if failure == "log file":
        (tmp_path / "taken").write_text("a file, not a folder")
        options["log_file"] = str(tmp_path / "taken" / "log.jsonl")
    else:
        x[3000] = float("nan")
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=8, d_sae=16, k=2)
    with pytest.raises((SaekitError, OSError)):
        saekit.train(list(x.split(500)), [spec], total_tokens=4096, batch_size=256, progress=False,
                     prefetch=2, **options)
    deadline = time.monotonic() + 5
    while _producers() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (_producers() - before)


def test_training_with_and_without_the_thread_is_identical():
    torch.manual_seed(0)
    x = torch.randn(4096, 16)
    chunks = list(x.split(700))
    specs = [saekit.DictionarySpec.from_options(method=m, d_in=16, d_sae=32, k=4, seed=1) if m != "relu" else
             saekit.DictionarySpec.from_options(method=m, d_in=16, d_sae=32, seed=1) for m in ("topk", "relu")]
    runs = [saekit.train(chunks, specs, total_tokens=4096, batch_size=256, progress=False, prefetch=depth)
            for depth in (0, 3)]
    for a, b in zip(*runs):
        for name, t in a.weights().items():
            assert torch.equal(t, b.weights()[name]), name


def test_the_thread_is_on_by_default_on_accelerators_only():
    """On a CPU the producer's forward and the step share the cores (measured slower with the thread);
    an explicit depth always wins."""
    from saekit.training.config import RunConfig

    run = RunConfig(total_tokens=4096, batch_size=256)
    assert (run.prefetch_depth("cpu"), run.prefetch_depth("cuda")) == (0, 2)
    explicit = RunConfig(total_tokens=4096, batch_size=256, prefetch=3)
    assert (explicit.prefetch_depth("cpu"), explicit.prefetch_depth("cuda")) == (3, 3)
    with pytest.raises(SaekitError, match="prefetch"):
        RunConfig(total_tokens=4096, batch_size=256, prefetch=-1)
