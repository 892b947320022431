"""`target_l0`: λ steered so the penalty methods land on a chosen L0 (saekit.training.l0_target)."""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit.data.toy import ToyConfig, ToyData
from saekit.training.l0_target import L0Controller

TOY = ToyConfig(d_in=32, n_features=64, mean_active=6, seed=4)


def final_l0(method: str, target: float | None, coefficient: float, steps: int = 300) -> float:
    data = ToyData(TOY, chunk_size=256)
    options = dict(method=method, d_in=32, d_sae=64, lr=3e-3, sparsity_coefficient=coefficient)
    if target is not None:
        options["target_l0"] = target
    (d,) = saekit.train(data, [saekit.DictionarySpec.from_options(**options)], total_tokens=steps * 256,
                        batch_size=256, progress=False)
    return saekit.evaluate(d, [ToyData(TOY, split="test").sample(4096)])["l0"]


@pytest.mark.parametrize("method, low, high", [("relu", 0.3, 10.0), ("jumprelu", 3e-4, 3e-2)])
def test_target_l0_brings_a_far_off_coefficient_to_the_target(method, low, high):
    # The two starting λ give L0s far apart without steering; with it both land near the target.
    free = [final_l0(method, None, c) for c in (low, high)]
    assert free[0] > 2 * free[1]
    steered = [final_l0(method, 8.0, c) for c in (low, high)]
    for value in steered:
        assert value == pytest.approx(8.0, rel=0.3), (free, steered)


def test_target_l0_is_refused_where_k_sets_the_l0():
    with pytest.raises(saekit.SaekitError, match="target_l0"):
        saekit.DictionarySpec.from_options(method="topk", d_in=8, d_sae=16, k=2, target_l0=2.0)
    with pytest.raises(saekit.SaekitError, match="target_l0"):
        saekit.DictionarySpec.from_options(method="relu", d_in=8, d_sae=16, target_l0=-1.0)


def test_controller_moves_the_multiplier_the_right_way_and_waits_for_the_warmup():
    controller = L0Controller(target=10.0, total_steps=1000, start_step=5, device=torch.device("cpu"))
    for step in range(5):
        controller.update(torch.tensor(100.0), step)
    assert float(controller.multiplier()) == 1.0  # still warming up
    for step in range(5, 25):
        controller.update(torch.tensor(100.0), step)
    grown = float(controller.multiplier())
    assert grown == pytest.approx(torch.e ** (20 * 0.01), rel=1e-4)  # full gain, error clipped at 1
    state = controller.state_dict()
    for step in range(25, 85):  # the smoothed L0 takes ~20 steps to fall below the target
        controller.update(torch.tensor(1.0), step)
    assert float(controller.multiplier()) < grown
    restored = L0Controller(target=10.0, total_steps=1000, start_step=5, device=torch.device("cpu"))
    restored.load_state_dict(state)
    assert float(restored.multiplier()) == pytest.approx(grown)
