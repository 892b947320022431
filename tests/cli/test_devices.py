"""`--device` reaches everything a command runs: the model, every dictionary it loads, and the trainer.

The device asked for is "cpu:0", which runs on the CPU like "cpu" but is a different `torch.device`, so a
command that drops the flag anywhere (and falls back to a default "cpu") is caught on a machine without
a GPU. Spies record the device given to model loading, dictionary loading and each trained dictionary
(the trainer's `SweepMember`); every record must be cpu:0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saekit
from saekit.cli import main
from saekit.data.config import ModelConfig
from saekit.formats import detect
from saekit.training.member import SweepMember
from tests.helpers import save_tiny, tiny_llama, tiny_tokenizer, write_corpus

ASKED = torch.device("cpu:0")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("devices")
    tokenizer = tiny_tokenizer()
    model = save_tiny(root / "tiny", tiny_llama(len(tokenizer)), tokenizer)
    corpus = write_corpus(root / "corpus", n_docs=60)
    text = ["--dataset", str(corpus), "--context-size", "32"]
    code = main(["train", "--model", str(model), *text, "--hookpoints", "resid_post.1", "--method", "topk",
                 "--k", "4", "--d-sae", "32", "--total-tokens", "512", "--batch-size", "256", "--name", "d",
                 "--out", str(root / "trained"), "--no-progress"])
    assert code == 0
    (root / "pos.txt").write_text("the happy cat\na happy dog\n")
    (root / "neg.txt").write_text("the sad cat\na sad dog\n")
    np.save(root / "acts.npy", np.random.default_rng(0).normal(size=(600, 64)).astype(np.float32))
    return {"root": root, "model": str(model), "text": text, "dictionary": str(root / "trained" / "d")}


@pytest.fixture
def recorded(monkeypatch):
    """(what, device) for every model load, dictionary load and trained dictionary."""
    seen: list[tuple[str, torch.device]] = []
    model_load, dictionary_load, member_init = ModelConfig.load, detect.load, SweepMember.__init__

    def load_model(self, device="cpu"):
        seen.append(("model", torch.device(device)))
        return model_load(self, device)

    def load_dictionary(path, *args, device="cpu", **kwargs):
        seen.append(("dictionary", torch.device(device)))
        return dictionary_load(path, *args, device=device, **kwargs)

    def member(self, spec, total_steps, device="cpu", *args, **kwargs):
        seen.append(("trainer", torch.device(device)))
        member_init(self, spec, total_steps, device, *args, **kwargs)

    monkeypatch.setattr(ModelConfig, "load", load_model)
    monkeypatch.setattr(saekit, "load", load_dictionary)
    monkeypatch.setattr(detect, "load", load_dictionary)  # load_any (commands that need one dictionary)
    monkeypatch.setattr(SweepMember, "__init__", member)
    return seen


def commands(w: dict) -> dict[str, tuple[list[str], set[str]]]:
    """Each command line (without --device) and what it must have placed."""
    root, model, text, d = w["root"], w["model"], w["text"], w["dictionary"]
    small = ["--total-tokens", "512", "--batch-size", "256", "--no-progress", "--overwrite"]
    return {
        "train --model": (["train", "--model", model, *text, "--hookpoints", "resid_post.1", "--method", "topk",
                           "--k", "4", "--d-sae", "32", *small, "--out", str(root / "t1")], {"model", "trainer"}),
        "train --activations": (["train", "--activations", str(root / "acts.npy"), "--method", "topk", "--k", "4",
                                 "--d-sae", "32", *small, "--out", str(root / "t2")], {"trainer"}),
        "cache": (["cache", "--model", model, *text, "--hookpoints", "resid_post.1", "--tokens", "600",
                   "--out", str(root / "cache"), "--overwrite"], {"model"}),
        "eval": (["eval", d, *text, "--tokens", "100", "--no-progress"], {"model", "dictionary"}),
        "dashboard": (["dashboard", d, *text, "--tokens", "100", "--out", str(root / "site"), "--no-progress",
                       "--overwrite"], {"model", "dictionary"}),
        "steer": (["steer", "--dictionary", d, "--latent", "0", "--scale", "1", "--prompt", "the cat sat",
                   "--max-new-tokens", "2"], {"model", "dictionary"}),
        "steering-vector": (["steering-vector", "--dictionary", d, "--positive", str(root / "pos.txt"),
                             "--negative", str(root / "neg.txt"), "--l0", "2"], {"model", "dictionary"}),
        "meta": (["meta", d, "--out", str(root / "meta"), "--epochs", "2", "--k", "2", "--width", "8",
                  "--no-progress"], {"dictionary", "trainer"}),
        "demo": (["demo", "--model", model, *text, "--hookpoint", "resid_post.1", "--methods", "topk",
                  "--tokens", "512", "--eval-tokens", "100", "--k", "4", "--batch-size", "256",
                  "--out", str(root / "demo"), "--no-progress", "--overwrite"], {"model", "trainer"}),
        "diff": (["diff", "--models", f"a={model}", f"b={model}", "--hookpoint", "resid_post.1", *text,
                  "--tokens", "512", "--batch-size", "256", "--eval-tokens", "100", "--out", str(root / "diff"),
                  "--no-progress", "--overwrite"], {"model", "trainer"}),
    }


COMMANDS = ["train --model", "train --activations", "cache", "eval", "dashboard", "steer", "steering-vector",
            "meta", "demo", "diff"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_places_everything_on_the_device_asked_for(command, workspace, recorded, capsys):
    argv, expected = commands(workspace)[command]
    code = main([*argv, "--device", "cpu:0"])
    assert code == 0, capsys.readouterr().err
    assert {what for what, _ in recorded} >= expected, recorded
    assert all(device == ASKED for _, device in recorded), recorded


def test_train_from_a_cache_places_the_dictionaries_on_the_device(workspace, recorded, capsys):
    root = workspace["root"]
    if not (root / "cache" / "manifest.json").exists():
        assert main(["cache", "--model", workspace["model"], *workspace["text"], "--hookpoints", "resid_post.1",
                     "--tokens", "600", "--out", str(root / "cache"), "--overwrite"]) == 0
    recorded.clear()
    code = main(["train", "--from-cache", str(root / "cache"), "--method", "topk", "--k", "4", "--d-sae", "32",
                 "--total-tokens", "512", "--batch-size", "256", "--no-progress", "--out", str(root / "t3"),
                 "--overwrite", "--device", "cpu:0"])
    assert code == 0, capsys.readouterr().err
    assert recorded == [("trainer", ASKED)]


def test_decompose_trains_on_the_device(monkeypatch, tmp_path, capsys):
    import saekit.commands.decompose as command

    seen = []
    real = command.run_toy_decomposition

    def spy(*args, device="cpu", **kwargs):
        seen.append(torch.device(device))
        return real(*args, device=device, **kwargs)

    monkeypatch.setattr(command, "run_toy_decomposition", spy)
    code = main(["decompose", "tms-5-2", "--method", "spd", "--steps", "3", "--out", str(tmp_path),
                 "--no-progress", "--device", "cpu:0"])
    assert code == 0, capsys.readouterr().err
    assert seen == [ASKED]


def test_e2e_training_places_the_dictionary_on_the_device(workspace, recorded):
    """The e2e path trains through the one trainer, on the device asked for (it once fell back to "cpu":
    a model on a GPU then spliced a CPU dictionary)."""
    from saekit.data.tokens import TokenStream
    from saekit.training.e2e import E2EConfig, train_e2e

    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    tokens = TokenStream(tokenizer, workspace["text"][1], context=32, batch_size=4)
    d = train_e2e(model, tokens, E2EConfig(hookpoint="resid_post.0", d_sae=16, method="topk", k=2),
                  total_steps=2, progress=False, device=ASKED)
    assert recorded == [("trainer", ASKED)]
    assert d.W_dec.device.type == "cpu"
