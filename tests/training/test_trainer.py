import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import saekit
from saekit.data.batching import rebatch
from saekit.data.toy import ToyConfig, ToyData
from saekit.training.checkpoint import list_checkpoints
from tests.helpers import spec
from tests.training import resume_child

ROOT = Path(__file__).resolve().parents[2]


def assert_same_weights(a: list[saekit.Dictionary], b: list[saekit.Dictionary]) -> None:
    for d1, d2 in zip(a, b):
        for (name, t1), t2 in zip(d1.weights().items(), d2.weights().values()):
            assert torch.equal(t1, t2), f"{d1.cfg.display_name}: {name} differs"


def test_rebatch_gives_exact_batches_and_skips_tokens():
    chunks = [torch.arange(n * 2, dtype=torch.float32).reshape(n, 2) + 1000 * i
              for i, n in enumerate([3, 5, 1, 7, 4])]
    all_rows = torch.cat(chunks)
    batches = list(rebatch(chunks, 4))
    assert [b[""].shape[0] for b in batches] == [4, 4, 4, 4, 4]
    assert torch.equal(torch.cat([b[""] for b in batches]), all_rows[:20])
    skipped = list(rebatch(chunks, 4, skip_tokens=6))
    assert torch.equal(torch.cat([b[""] for b in skipped]), all_rows[6:18])


def test_sweep_trains_every_method_and_records_normalisation():
    data = ToyData(ToyConfig(d_in=16, n_features=32, mean_active=3, seed=2), chunk_size=64)
    cfgs = [spec(m, 16, 48, k=3, lr=3e-3, **({"sparsity_coefficient": 0.5} if m == "relu" else {}))
            for m in saekit.method_names()]
    dicts = saekit.train(data, cfgs, total_tokens=60 * 128, batch_size=128, progress=False)
    x = data.sample(2000) * 1.0
    for d in dicts:
        record = d.meta["normalization"]
        assert record["input_scale"] > 0 and record["folded"] and d.meta["training_tokens"] == 60 * 128
        result = saekit.evaluate(d, [x])
        assert result["fvu"] < 0.9, d.cfg.display_name
        if d.training_config.unit_norm_decoder:
            norms = d.W_dec.norm(dim=-1) * record["input_scale"]
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
        assert d.log_feature_density is not None


def test_batchtopk_inference_threshold_gives_mean_l0_near_k():
    data = ToyData(ToyConfig(d_in=32, n_features=64, mean_active=4, seed=3), chunk_size=256)
    cfg = saekit.DictionarySpec.from_options(method="batchtopk", d_in=32, d_sae=96, k=4, lr=2e-3)
    (d,) = saekit.train(data, [cfg], total_tokens=150 * 256, batch_size=256, progress=False)
    assert float(d.threshold.min()) > 0
    result = saekit.evaluate(d, [ToyData(data.cfg, split="test").sample(4000)])
    assert abs(result["l0"] - 4) / 4 < 0.15


def test_stream_of_dicts_feeds_dictionaries_by_hookpoint():
    a = ToyData(ToyConfig(d_in=8, n_features=16, seed=1), chunk_size=50)
    b = ToyData(ToyConfig(d_in=12, n_features=16, seed=2), chunk_size=50)
    stream = ({"layer.0": x, "layer.1": y} for x, y in zip(a, b))
    cfgs = [saekit.DictionarySpec.from_options(method="topk", d_in=8, d_sae=16, k=2, hookpoint="layer.0"),
            saekit.DictionarySpec.from_options(method="topk", d_in=12, d_sae=16, k=2, hookpoint="layer.1")]
    d0, d1 = saekit.train(stream, cfgs, total_tokens=1000, batch_size=100, progress=False)
    assert d0.d_in == 8 and d1.d_in == 12
    bad = ({"layer.0": x} for x in a)
    with pytest.raises(saekit.SaekitError, match="layer.1"):
        saekit.train(bad, cfgs, total_tokens=1000, batch_size=100, progress=False)


@pytest.mark.faults  # kill points and damaged files (the fault-injection suite)
def test_resume_in_process_equals_uninterrupted(tmp_path):
    reference = resume_child.run(None)
    # Train to a checkpoint, then stop by exhausting a truncated stream, then resume.
    partial = saekit.train(resume_child.SlowStream(0.0).data.sample(12 * 128).split(100),
                           resume_child.configs(), total_tokens=resume_child.TOTAL_TOKENS,
                           batch_size=128, checkpoint_dir=str(tmp_path), checkpoint_every=5,
                           progress=False, normalization_tokens=resume_child.NORMALIZATION_TOKENS)
    assert partial  # the truncated run ended early
    for extra in list_checkpoints(tmp_path)[1:]:
        # keep only the step-10 checkpoint: the truncated run also saved one at its last step
        if extra.name != "step_000000010":
            import shutil
            shutil.rmtree(extra)
    resumed = resume_child.run(str(tmp_path))
    assert_same_weights(reference, resumed)


@pytest.mark.faults  # kill points and damaged files (the fault-injection suite)
def test_sigkill_mid_run_then_resume_gives_identical_weights(tmp_path):
    reference = resume_child.run(None)
    child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "training" / "resume_child.py"), str(tmp_path),
                              "0.05"], cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(tmp_path)) < 2:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    steps = [int(p.name.split("_")[1]) for p in list_checkpoints(tmp_path)]
    assert steps and max(steps) < 40, f"child was not killed mid-run: {steps}"
    resumed = resume_child.run(str(tmp_path))
    assert_same_weights(reference, resumed)
    meta = json.loads((list_checkpoints(tmp_path)[-1] / "checkpoint.json").read_text())
    assert meta["step"] == 40


def test_resume_with_different_configs_is_refused(tmp_path):
    resume_child.run(str(tmp_path))
    other = [saekit.DictionarySpec.from_options(method="topk", d_in=16, d_sae=48, k=2)]
    with pytest.raises(saekit.SaekitError, match="different configs"):
        saekit.train(resume_child.SlowStream(0).data, other, total_tokens=resume_child.TOTAL_TOKENS,
                     batch_size=128, checkpoint_dir=str(tmp_path), progress=False)


@pytest.mark.faults  # kill points and damaged files (the fault-injection suite)
def test_corrupted_checkpoint_is_reported(tmp_path):
    resume_child.run(str(tmp_path))
    state = list_checkpoints(tmp_path)[-1] / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(saekit.SaekitError, match="checksum"):
        resume_child.run(str(tmp_path))


def test_checkpoint_exports_load_and_match_returned_dictionaries(tmp_path):
    final = resume_child.run(str(tmp_path))
    last = list_checkpoints(tmp_path)[-1]
    names = json.loads((last / "checkpoint.json").read_text())["names"]
    x = ToyData(resume_child.TOY, split="test").sample(500)
    for name, d in zip(names, final):
        loaded = saekit.load(last / "dictionaries" / name)
        assert torch.equal(loaded(x), d(x))
    assert (tmp_path / "log.jsonl").exists()
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert {"step", "tokens", "loss", "l0", "dead_fraction", "dictionary"} <= set(first)


def test_resampling_revives_dead_latents():
    data = ToyData(ToyConfig(d_in=16, n_features=16, mean_active=2, seed=4), chunk_size=128)
    cfg = saekit.DictionarySpec.from_options(method="relu", d_in=16, d_sae=64, sparsity_coefficient=30.0,
                                  lr=5e-3, resample_every=20, seed=0)
    from saekit.training.member import SweepMember as member_cls
    member = member_cls(cfg, total_steps=100)
    batches = iter(data)
    first = next(batches)
    member.start(first)
    with torch.no_grad():
        member.dictionary.b_enc[:10] = -100.0  # ten latents that cannot fire
    for step in range(19):
        member.step(next(batches), step)
    assert not member.fired_since_resample[:10].any()
    revived = member.resample_dead_latents(next(batches) * member.scale_in)
    assert revived >= 10
    assert (member.dictionary.b_enc[:10] == 0).all()
    assert member.dictionary.W_enc[:, :10].norm(dim=0).min() > 0


def test_skipped_dead_checks_never_hide_a_dead_latent():
    """The step skips reading the dead counters back while none can have reached dead_tokens; on
    every step the skip must agree with the counters themselves."""
    from saekit.training.member import SweepMember

    data = ToyData(ToyConfig(d_in=16, n_features=16, mean_active=2, seed=4), chunk_size=128)
    cfg = saekit.DictionarySpec.from_options(method="topk", d_in=16, d_sae=64, k=2, dead_tokens=128 * 5 + 17)
    member = SweepMember(cfg, total_steps=60)
    batches = iter(data)
    member.start(next(batches))
    with torch.no_grad():
        member.dictionary.b_enc[:8] = -100.0  # eight latents that cannot fire: dead from step 5
    skipped = 0
    for step in range(40):
        may = member._may_have_dead(step, 128)
        skipped += not may
        assert may or not member.dead_mask().any(), step
        member.step(next(batches), step)
    assert member.dead_mask()[:8].all() and skipped >= 4


@pytest.mark.parametrize("method", saekit.method_names())
def test_bfloat16_autocast_trains_with_fp32_master_weights(method, device):
    data = ToyData(ToyConfig(d_in=16, n_features=32, mean_active=3, seed=2), chunk_size=64)
    cfg = spec(method, 16, 48, k=3, lr=3e-3)
    results = {}
    for autocast in ("none", "bfloat16"):
        (d,) = saekit.train(data, [cfg], total_tokens=40 * 128, batch_size=128, progress=False,
                            autocast=autocast, device=device)
        assert all(t.dtype == torch.float32 for t in d.weights().values())
        results[autocast] = saekit.evaluate(d, [data.sample(2000)])["fvu"]
    assert results["bfloat16"] < 1.0 and abs(results["bfloat16"] - results["none"]) < 0.15, results


def test_loggers_write_jsonl_and_forward_scalars_to_wandb_and_tensorboard(tmp_path, monkeypatch):
    """The optional sinks get the same scalars as the JSONL file (fake modules stand in for the
    extras, which the test environment does not install)."""
    import json
    import sys
    import types

    calls = {"wandb": [], "tb": []}

    class Run:
        def log(self, values, step):
            calls["wandb"].append((step, values))

        def finish(self):
            calls["wandb"].append("finish")

    class Writer:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, step):
            calls["tb"].append((key, value, step))

        def close(self):
            calls["tb"].append("close")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda name, config: Run()))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    x = torch.randn(2048, 8)
    cfg = saekit.DictionarySpec.from_options(method="topk", d_in=8, d_sae=16, k=2, name="a")
    saekit.train([x], [cfg], total_tokens=2048, batch_size=256, log_every=4, progress=False,
                 log_file=str(tmp_path / "log.jsonl"), loggers=["wandb", "tensorboard"], run_name="r")
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [4, 8]
    assert [step for step, _ in calls["wandb"][:-1]] == [4, 8] and calls["wandb"][-1] == "finish"
    assert calls["wandb"][0][1]["a/loss"] == pytest.approx(lines[0]["loss"])
    assert ("a/l0", lines[1]["l0"], 8) in calls["tb"] and calls["tb"][-1] == "close"
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: import fails
    with pytest.raises(saekit.SaekitError, match=r"saekit\[wandb\]"):
        saekit.train([x], [cfg], total_tokens=256, batch_size=256, progress=False, loggers=["wandb"])


def test_train_refuses_a_run_config_together_with_loose_run_options():
    """A RunConfig and loose options at once used to drop the loose ones silently."""
    data = ToyData(ToyConfig(d_in=8, n_features=8), chunk_size=64)
    run = saekit.RunConfig(total_tokens=512, batch_size=64, progress=False)
    cfg = saekit.DictionaryConfig(method="topk", d_in=8, d_sae=16, k=2)
    for extra in ({"total_tokens": 1024}, {"batch_size": 32}, {"checkpoint_every": 2}):
        with pytest.raises(saekit.SaekitError, match="put every run option in the RunConfig"):
            saekit.train(data, [cfg], run=run, **extra)
    (d,) = saekit.train(data, [cfg], run=run)
    assert d.meta["training_tokens"] == 512


@pytest.mark.parametrize("asked, message", [("gpu0", "unknown device 'gpu0'"),
                                             ("cuda:99", "cuda:99: (no CUDA GPU|only)")])
def test_a_device_that_does_not_exist_here_is_one_line_from_the_python_api(asked, message):
    """saekit.train (and train_e2e, which builds a RunConfig too) checks the device as the CLI does."""
    with pytest.raises(saekit.SaekitError, match=message) as caught:
        saekit.train([torch.randn(64, 8)], saekit.DictionaryConfig(method="topk", d_in=8, d_sae=16, k=2),
                     total_tokens=64, batch_size=64, device=asked, progress=False)
    assert "\n" not in str(caught.value)


def test_the_activation_scale_is_estimated_on_the_first_batches_which_are_then_trained_on():
    from saekit.training.normalization import activation_scale

    rows = torch.randn(10 * 64, 8) * torch.linspace(0.5, 3.0, 10 * 64)[:, None]  # the scale drifts
    read = []

    def stream():
        for i in range(10):
            read.append(i)
            yield rows[i * 64:(i + 1) * 64]

    cfg = saekit.DictionaryConfig(method="topk", d_in=8, d_sae=16, k=2)
    (d,) = saekit.train(stream(), [cfg], total_tokens=8 * 64, batch_size=64, progress=False,
                        normalization_tokens=3 * 64)
    record = d.meta["normalization"]
    expected = float(activation_scale("mean_norm_sqrt_d", rows[:3 * 64])[0])
    assert record["estimated_on_tokens"] == 3 * 64 and record["input_scale"] == pytest.approx(expected)
    assert expected != pytest.approx(float(activation_scale("mean_norm_sqrt_d", rows[:64])[0]), rel=1e-3)
    assert read == list(range(8)) and d.meta["training_tokens"] == 8 * 64  # nothing skipped or re-read


def test_logged_dead_fraction_counts_latents_silent_since_the_start_of_a_short_run(tmp_path):
    """A run shorter than dead_tokens used to log 0 dead however many latents never fired (the demo's
    ReLU: 0 in training, 69% at evaluation). Now the window is every token so far, so the logged figure
    equals the share of latents that fire on none of the training rows, counted here independently."""
    torch.manual_seed(0)
    x = torch.randn(1536, 8) * torch.linspace(0.2, 3.0, 8)
    # dead_tokens longer than the run (the default is a tenth of it): the window is capped at the tokens so far
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=8, d_sae=64, k=1, lr=1e-12,
                                              name="t", seed=3, dead_tokens=10_000_000)
    log = tmp_path / "log.jsonl"
    (d,) = saekit.train([x], [spec], total_tokens=1536, batch_size=256, progress=False, log_file=str(log))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 7))  # a short run logs every step
    assert lines[-1]["dead_window_tokens"] == 1536
    never_fired = (d.encode(x) > 0).sum(0) == 0
    assert 0 < int(never_fired.sum()) < 64
    assert lines[-1]["dead_fraction"] == pytest.approx(float(never_fired.float().mean()))
    assert lines[-1]["dead_fraction"] == pytest.approx(saekit.evaluate(d, [x])["dead_fraction"])


def test_default_log_interval_gives_about_a_hundred_records():
    run = saekit.RunConfig(total_tokens=256 * 1000, batch_size=256)
    assert run.log_interval == 10
    assert saekit.RunConfig(total_tokens=256 * 1000, batch_size=256, log_every=7).log_interval == 7
