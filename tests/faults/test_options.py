"""Classes 7 and 8: every bad value of every option, and every unreadable input, is a one-line error
(exit 2) naming the problem, never an internal error; a full disk names the disk and the file."""

import dataclasses
import errno
import json

import numpy as np
import pytest

import saekit
from saekit.config import DictionaryConfig, Provenance
from saekit.data.config import ModelConfig, TextConfig
from saekit.training.config import RunConfig, TrainingConfig
from tests.faults.conftest import one_line_error
from tests.helpers import make

# Fields whose every value is legal (free text), or that need another source to matter.
FREE = {"model_name", "dataset", "text_column", "log_file", "run_name", "source_hookpoints", "model",
        "trust_remote_code"}


def bad_value(field: dataclasses.Field) -> str | None:
    annotation = str(field.type)
    if ("bool" in annotation and "int" not in annotation) or field.name in FREE:
        return None
    if field.name == "adam_betas":
        return "2 3"
    if "float" in annotation:
        return "nan"
    if "int" in annotation:
        return "-7"
    return "bogus/../x" if field.name == "name" else "bogus"


TRAIN_FIELDS = [f for cls in (DictionaryConfig, TrainingConfig, Provenance, RunConfig, TextConfig, ModelConfig)
                for f in dataclasses.fields(cls) if f.name not in ("checkpoint_dir", "device", "context_size")
                or f.name == "context_size"]
CASES = [(f.name, bad_value(f)) for f in TRAIN_FIELDS if bad_value(f) is not None
         and f.name not in ("d_in",)]  # d_in is read from the data: passing it wrong is caught too, below


@pytest.fixture(scope="module")
def activations(tmp_path_factory):
    path = tmp_path_factory.mktemp("a") / "a.npy"
    np.save(path, np.random.default_rng(0).standard_normal((1024, 8)).astype("f4"))
    return path


@pytest.mark.parametrize("field, value", CASES)
def test_every_bad_train_option_is_a_one_line_error(tmp_path, cli, activations, field, value):
    flag = "--" + field.replace("_", "-")
    values = value.split() if field == "adam_betas" else [value]
    method = ["--method", "matryoshka", "--k", "2"] if field == "matryoshka_prefixes" else \
        ["--method", "topk", "--k", "2"]
    if field in ("method", "k"):
        method = []
    code, _, errors = cli("train", "--activations", activations, *method, "--d-sae", "16", "--total-tokens", "512",
                          "--batch-size", "128", "--out", tmp_path / "r", "--no-progress", flag, *values)
    one_line_error(code, errors)
    assert "internal error" not in errors[0]
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("*/cfg.json"))


def test_the_width_of_the_data_is_checked(tmp_path, cli, activations):
    code, _, errors = cli("train", "--activations", activations, "--method", "topk", "--k", "2", "--d-sae", "16",
                          "--d-in", "9", "--total-tokens", "512", "--batch-size", "128", "--out", tmp_path / "r")
    one_line_error(code, errors, "width 8", "d_in=9")


def test_a_float_token_budget_in_a_sweep_file_is_refused(tmp_path, cli, activations):
    config = tmp_path / "s.toml"
    config.write_text("[train]\ntotal_tokens = 512.5\n")
    code, _, errors = cli("train", "--config", config, "--activations", activations, "--method", "topk", "--k", "2",
                          "--d-sae", "16", "--out", tmp_path / "r")
    one_line_error(code, errors, "total_tokens must be a positive integer")


NOT_UTF8 = b"method = '\xff\xfe'\n"


def test_non_utf8_inputs_are_one_line_errors(tmp_path, cli, activations):
    (tmp_path / "s.toml").write_bytes(NOT_UTF8)
    code, _, errors = cli("train", "--config", tmp_path / "s.toml", "--activations", activations, "--out",
                          tmp_path / "r")
    one_line_error(code, errors, "not UTF-8", "s.toml")
    d = saekit.save(make("topk"), tmp_path / "d")
    (tmp_path / "eval.json").write_bytes(b"\xff[]")
    code, _, errors = cli("report", tmp_path, "--eval", tmp_path / "eval.json")
    one_line_error(code, errors, "not UTF-8", "eval.json")
    (tmp_path / "prompts.txt").write_bytes(b"\xff\xfe")
    code, _, errors = cli("steering-vector", "--dictionary", d, "--positive", tmp_path / "prompts.txt",
                          "--negative", tmp_path / "prompts.txt", "--model", "x")
    one_line_error(code, errors, "not UTF-8", "prompts.txt")
    (d / "cfg.json").write_bytes(b"\xff{}")
    code, _, errors = cli("info", d)
    one_line_error(code, errors, "cfg.json")


@pytest.mark.parametrize("edit", [lambda c: c.update(config="no"), lambda c: c["config"].pop("d_sae"),
                                  lambda c: c["config"].update(wings=2), lambda c: c["config"].update(k=99),
                                  lambda c: c["config"].update(method="nope"), lambda c: c.pop("sha256")])
def test_malformed_saekit_sections_name_the_file(tmp_path, cli, edit):
    """Format 1 has no manifest, so an edited section reaches the parser: it must still be one line."""
    import shutil

    from tests.helpers import FIXTURES_V1

    d = tmp_path / "topk"
    shutil.copytree(FIXTURES_V1 / "topk", d)
    cfg = json.loads((d / "cfg.json").read_text())
    edit(cfg["saekit"])
    (d / "cfg.json").write_text(json.dumps(cfg))
    code, _, errors = cli("info", d)
    one_line_error(code, errors, "cfg.json")


def test_a_full_disk_names_the_disk_and_the_file(tmp_path, monkeypatch, cli):
    import safetensors.torch

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    saekit.save(make("relu", seed=1), tmp_path / "d")
    before = (tmp_path / "d" / "sae_weights.safetensors").read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    monkeypatch.setattr(saekit.formats.native, "save_file", no_space)
    with pytest.raises(saekit.SaekitError, match="no space left on the disk at /.* while writing .*d"):
        saekit.save(make("relu", seed=2), tmp_path / "d")
    assert (tmp_path / "d" / "sae_weights.safetensors").read_bytes() == before
    code, _, errors = cli("convert", tmp_path / "d", tmp_path / "out", "--to", "saekit")
    one_line_error(code, errors, "no space left on the disk", "out")


OTHER_COMMANDS = [
    ("steer", ["--latent", "1", "--scale", "nan", "--prompt", "hi"], "finite"),
    ("steer", ["--latent", "1", "--scale", "2", "--prompt", ""], "prompt is empty"),
    ("steer", ["--latent", "1", "--scale", "2", "--prompt", "hi", "--temperature", "-1"], "temperature"),
    ("steer", ["--latent", "1", "--scale", "2", "--prompt", "hi", "--repetition-penalty", "0"], "repetition"),
    ("steer", ["--latent", "1", "--scale", "2", "--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
    ("steer", ["--latent", "999", "--scale", "2", "--prompt", "hi"], "latent 999"),
    ("steering-vector", ["--vector", "v.npy", "--positive", "p.txt"], "not both"),
    ("steering-vector", ["--vector", "v.npy", "--l0", "999"], "l0 must be between"),
    ("dashboard", ["--top-examples", "-3", "--out", "site"], "--top-examples"),
    ("dashboard", ["--tokens", "0", "--out", "site"], "--tokens"),
    ("eval", ["--tokens", "-1"], "--tokens"),
]


@pytest.mark.parametrize("command, options, needle", OTHER_COMMANDS)
def test_bad_options_of_other_commands(tmp_path, cli, monkeypatch, command, options, needle):
    d = saekit.save(make("topk"), tmp_path / "d")
    np.save(tmp_path / "v.npy", np.ones(12, dtype="f4"))
    (tmp_path / "p.txt").write_text("a prompt\n")
    monkeypatch.chdir(tmp_path)
    dictionary = ["--dictionary", d] if command in ("steer", "steering-vector") else [d]
    code, _, errors = cli(command, *dictionary, *options, *(["--model", "offline-default"]
                                                            if command != "steering-vector" else []))
    one_line_error(code, errors, needle)


@pytest.mark.parametrize("options, needle", [(["--d-sae", "0"], "--d-sae"), (["--total-tokens", "0"], "positive"),
                                             (["--k", "-1"], "--k"), (["--mean-active", "0"], "mean_active")])
def test_bad_toy_options(cli, options, needle):
    code, _, errors = cli("toy", *options)
    one_line_error(code, errors, needle)


def test_every_config_field_is_a_train_flag_with_a_case_above(capsys):
    """The flags are generated from the config fields, so a new field is a new flag and gets a bad-value
    case above automatically (only free-text fields have none)."""
    from saekit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    for field in TRAIN_FIELDS:
        assert "--" + field.name.replace("_", "-") in help_text, field.name
    assert len(CASES) > 35
