"""saekit's synthetic benchmark against SAELens's SynthSAEBench code (sae-lens 6.54.12, peer environment).

Metrics: SAELens's `eval_sae_on_synthetic_data` and saekit's `evaluate_synthetic` score the same three
dictionaries (written by saekit in SAELens's format, loaded by SAELens) on the same ground-truth codes:
every metric agrees to 1e-4. Generator: SAELens's `SyntheticModel` and saekit's `SyntheticModel` built
from the same config (the CPU preset, compensation "saelens", SAELens's rule) have the same hierarchy,
the same probabilities and magnitude spreads, and samples whose statistics agree within sampling error.
Marked `peers` (see test_peers.py for the environment)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.interop import synthetic_case

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(1500)]
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def figures(peer_python, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("synthetic")
    ours = synthetic_case.prepare(work)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="", HF_HUB_OFFLINE="1")
    result = subprocess.run([str(peer_python), str(HERE / "peer_helper.py"), "synthetic", str(work)],
                            cwd=work, capture_output=True, text=True, env=env, timeout=1200)
    if result.returncode != 0:
        pytest.fail("peer_helper.py synthetic failed:\n" + (result.stdout + result.stderr)[-4000:])
    return synthetic_case.compare(work, ours)


def test_metrics_equal_saelens_on_the_same_dictionaries_and_samples(figures):
    assert {row["dictionary"] for row in figures["metrics"]} == {"topk", "jumprelu", "relu"}
    for row in figures["metrics"]:
        assert row["max_abs_diff"] <= 1e-4, row
        assert row["mcc"] > 0.5 and row["f1"] > 0.02 and row["l0"] > 1  # the dictionaries are not trivial


def test_generator_builds_saelens_hierarchy_probabilities_and_magnitudes(figures):
    assert figures["hierarchy_identical"]
    assert figures["probability_max_abs_diff"] < 1e-6
    assert figures["std_magnitude_max_abs_diff"] < 1e-6


def test_generator_statistics_agree_within_sampling_error(figures):
    assert figures["rate_z_mean_square"] == pytest.approx(1.0, abs=0.3)
    assert figures["rate_z_max"] < 5 and figures["rate_z_over_3"] < 0.01
    assert abs(figures["l0"]["z"]) < 4
    assert figures["orphans"] == {"saekit": 0, "saelens": 0}
    assert figures["exclusive_co_firing"] == {"saekit": 0, "saelens": 0}
    for ours, theirs in zip(*figures["child_over_scaled_parent"].values()):
        assert ours == pytest.approx(theirs, rel=0.02)
