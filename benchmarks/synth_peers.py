"""saekit's synthetic benchmark against SAELens 6.54.12's SynthSAEBench code: the cross-check figures.

Runs the same comparison as tests/interop/test_synthetic_peers.py (tests/interop/synthetic_case.py writes
the inputs and compares; tests/interop/peer_helper.py is the SAELens side, run with the peer
environment's python) and prints what the test asserts on: the largest metric difference per dictionary
(same dictionaries, same samples), whether both generators build the same hierarchy, probabilities and
magnitude spreads from the same config, and their sample statistics side by side. It then prints how
far saekit's default compensation ("exact") moves the firing rates away from SAELens's rule.

    .venv/bin/python benchmarks/synth_peers.py [--work /tmp/synth-peers]

Needs the peer environment: `bash tests/interop/peer_env.sh` (or SAEKIT_PEER_VENV=<its path>).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from saekit.data.synthetic import synthetic_preset  # noqa: E402
from saekit.data.synthetic.model import zipf_probabilities  # noqa: E402
from saekit.inspect.tables import format_table  # noqa: E402
from tests.interop import synthetic_case  # noqa: E402  (the shared comparison, not a saekit API)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one).")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    venv = Path(os.environ.get("SAEKIT_PEER_VENV", ROOT / ".cache" / "peer-venv"))
    python = (venv if venv.is_absolute() else ROOT / venv) / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no peer environment at {venv}: run `bash tests/interop/peer_env.sh` first")
    work = args.work or Path(tempfile.mkdtemp(prefix="synth-peers-"))
    started = time.perf_counter()
    ours = synthetic_case.prepare(work)
    prepared = time.perf_counter() - started
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH="", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    subprocess.run([str(python), str(ROOT / "tests" / "interop" / "peer_helper.py"), "synthetic", str(work)],
                   cwd=work, env=env, check=True)
    peer = time.perf_counter() - started
    figures = synthetic_case.compare(work, ours)

    print(f"Metrics on the same dictionaries and {synthetic_case.EVAL_SAMPLES:,} samples "
          "(largest |saekit − SAELens| over MCC, uniqueness, F1, precision, recall, accuracy, EV, shrinkage, "
          "L0, true L0, dead):")
    print(format_table(figures["metrics"], ["dictionary", "mcc", "f1", "l0", "max_abs_diff", "worst_metric"]))
    print(f"\nGenerator, CPU preset with SAELens's compensation rule ({figures['samples']['saekit']:,} samples "
          f"each side):")
    print(f"  hierarchy identical: {figures['hierarchy_identical']}; probabilities max |Δ| "
          f"{figures['probability_max_abs_diff']:.2e}; magnitude spreads max |Δ| "
          f"{figures['std_magnitude_max_abs_diff']:.2e}")
    print(f"  per-feature firing rates, two-sample z: mean z² {figures['rate_z_mean_square']:.3f} "
          f"(1 expected), max |z| {figures['rate_z_max']:.2f}, share |z| > 3: {figures['rate_z_over_3']:.4f}")
    l0 = figures["l0"]
    print(f"  true L0: saekit {l0['saekit']:.4f}, SAELens {l0['saelens']:.4f} (z = {l0['z']:.2f})")
    print(f"  children without their parent: {figures['orphans']}; exclusive siblings firing together: "
          f"{figures['exclusive_co_firing']}")
    ratio = figures["child_over_scaled_parent"]
    levels = {side: ", ".join(f"{v:.3f}" for v in values) for side, values in ratio.items()}
    print(f"  mean child / (parent / mean parent) per level: saekit {levels['saekit']}; SAELens {levels['saelens']}")

    exact = synthetic_case.generator_statistics(synthetic_preset("cpu", orthogonalize_steps=0))
    saelens = synthetic_case.generator_statistics(synthetic_preset("cpu", compensation="saelens",
                                                                   orthogonalize_steps=0))
    cfg = synthetic_preset("cpu")
    base = zipf_probabilities(cfg.n_features, cfg.zipf_exponent, cfg.p_max, cfg.p_min).double()
    for name, stats in (("exact", exact), ("saelens", saelens)):
        rates = torch.tensor(stats["rates"], dtype=torch.float64)
        relative = ((rates - base) / base).abs()
        clamped = int((stats["probabilities"] >= 1).sum())
        print(f"  compensation {name}: true L0 {stats['l0']:.3f}; |rate − base| / base: median "
              f"{float(relative.median()):.3f}, max {float(relative.max()):.3f}; clamped at 1: {clamped}")
    print(f"\ntimes: saekit side {prepared:.0f} s, SAELens side {peer:.0f} s ({machine(args.threads)})")


if __name__ == "__main__":
    main()
