"""What the benchmark scripts share: memory readings, timing, the machine's state, and a training step
measured through saekit's public API. Importable without saekit (the peers' virtual environment runs
`peer_train.py`, which uses the readings), so saekit is imported inside the functions that need it.

Scripts in this folder import it as `from common import ...` (the folder is on sys.path when a script runs).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch


def rss_mib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib(field: str = "VmHWM") -> float:
    """VmHWM, this address space's RSS high-water mark (or, with field="VmRSS", the RSS now). (getrusage's
    ru_maxrss survives exec, so a child of a large parent would report the parent's peak.)"""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak_rss() -> None:
    """Restart VmHWM from the current RSS (Linux: "5" to /proc/self/clear_refs), so the next
    `peak_rss_mib` is the peak of what runs in between, not of loading the model."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def machine(threads: int) -> str:
    """The state a figure was measured in: threads and load (the machine is shared)."""
    return f"threads={threads} load_avg={os.getloadavg()[0]:.2f} cpus={os.cpu_count()}"


def median_seconds(fn: Callable[[], Any], repeats: int, device: str = "cpu") -> float:
    """Median wall time of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(batch: int, d_in: int, d_sae: int, repeats: int = 10, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> float:
    """Median FLOP/s of [batch, d_in]×[d_in, d_sae] in this process (torch threads already set)."""
    a = torch.randn(batch, d_in, device=device, dtype=dtype)
    b = torch.randn(d_in, d_sae, device=device, dtype=dtype)
    return 2 * batch * d_in * d_sae / median_seconds(lambda: a @ b, repeats, device)


def step_times(method: str, batch: int, d_in: int, d_sae: int, steps: int, device: str = "cpu",
               autocast: str = "none", **options: Any) -> list[float]:
    """Seconds of each training step of one dictionary, measured through `saekit.train` (one batch
    repeated, a log line every step) after three warm-up steps. On a GPU the steps queue back to back
    and the per-step figure is their mean (the log's clock reads once per step)."""
    import saekit

    spec = saekit.DictionarySpec.from_options(method=method, d_in=d_in, d_sae=d_sae, lr=1e-4, **options)
    x = torch.randn(batch, d_in, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        saekit.train((x for _ in range(steps + 3)), [spec], total_tokens=(steps + 3) * batch, batch_size=batch,
                     device=device, autocast=autocast, log_every=1, log_file=str(log), progress=False,
                     normalization_tokens=batch)
        elapsed = [json.loads(line)["elapsed_s"] for line in log.read_text().splitlines()]
    measured = elapsed[2:]
    if device.startswith("cuda"):
        return [(measured[-1] - measured[0]) / max(len(measured) - 1, 1)] * (len(measured) - 1)
    return [b - a for a, b in itertools.pairwise(measured)]


def step_time(method: str, batch: int, d_in: int, d_sae: int, steps: int, device: str = "cpu",
              autocast: str = "none", **options: Any) -> float:
    """Median seconds per training step (see `step_times`)."""
    return statistics.median(step_times(method, batch, d_in, d_sae, steps, device, autocast, **options))


def offline_model() -> tuple[Any, Any]:
    """The offline default model (SmolLM2-135M-Instruct) and its tokenizer, as `saekit demo` uses."""
    from saekit.models.loading import load_model

    return load_model("offline-default")


def activations(model, tokenizer, hookpoints: list[str], n_tokens: int, split: str = "train",
                context: int = 128) -> dict[str, torch.Tensor]:
    """{hookpoint: [n_tokens, d]} from the offline text's `split` (special tokens dropped), through saekit's
    own pipeline, so benchmarks measure what users run."""
    from saekit.data.stream import ActivationStream
    from saekit.data.tokens import TokenStream

    tokens = TokenStream(tokenizer, "offline-default", context=context, batch_size=16, split=split,
                         max_tokens=n_tokens + 16 * context)
    parts: dict[str, list[torch.Tensor]] = {h: [] for h in hookpoints}
    total = 0
    for batch in ActivationStream(model, tokens, hookpoints, progress=True):
        for name, value in batch.items():
            parts[name].append(value)
        total += next(iter(batch.values())).shape[0]
        if total >= n_tokens:
            break
    return {name: torch.cat(values)[:n_tokens] for name, values in parts.items()}


def chosen_variants(asked: str, known: Mapping[str, Any], separator: str) -> list[str]:
    """The variants named in `asked` (every one when it is empty), or exit naming those not in `known`."""
    names = asked.split(separator) if asked else list(known)
    if unknown := [n for n in names if n not in known]:
        raise SystemExit(f"unknown variants {unknown}: choose from {(separator + ' ').join(known)}")
    return names
