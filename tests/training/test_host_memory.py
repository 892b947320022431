"""A CPU run keeps freed blocks for reuse (saekit/training/host_memory.py; the effect on a live step is
measured by benchmarks/host_memory.py)."""

import ctypes
import sys

import pytest
import torch

import saekit
from saekit.training import host_memory, trainer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_glibc_accepts_the_thresholds(monkeypatch):
    calls = []
    real = ctypes.CDLL

    class Recording:
        def __init__(self, name):
            self.lib = real(name)

        @property
        def mallopt(self):
            def call(param, value):
                calls.append((param, value))
                return self.lib.mallopt(param, value)
            call.argtypes = None
            return call

    host_memory.keep_freed_blocks.cache_clear()
    monkeypatch.setattr(host_memory.ctypes, "CDLL", Recording)
    assert host_memory.keep_freed_blocks() is True
    assert calls == [(host_memory.M_MMAP_THRESHOLD, 32 << 20), (host_memory.M_TRIM_THRESHOLD, 1 << 30)]
    host_memory.keep_freed_blocks.cache_clear()


def test_training_on_cpu_keeps_freed_blocks(monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "keep_freed_blocks", lambda: calls.append(True))
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=8, d_sae=16, k=2)
    saekit.train([torch.randn(64, 8)], [spec], total_tokens=64, batch_size=32, progress=False)
    assert calls == [True]
