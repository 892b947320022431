"""What a dictionary computes, and where its data comes from.

saekit keeps four configurations, each saying one thing:
- `DictionaryConfig` (here): what the dictionary computes: method, shapes, k, the b_dec convention, the
  skip connection, the number of source blocks (crosscoders). Enough to run `encode`/`decode`.
- `Provenance` (here): where its data came from: model, hookpoint(s), dataset, context size. It also
  routes a sweep's stream to each dictionary (which hookpoint is its input, which its target).
- `TrainingConfig` (`saekit.training.config`): how one dictionary learns: optimiser, schedules, init,
  normalisation, dead-latent care, seed. A dictionary loaded from Gemma Scope or SAELens has none.
- `RunConfig` (`saekit.training.config`): how a run goes: token budget, batch, checkpoints, device.

`saekit.spec.DictionarySpec` bundles the first three for one member of a sweep. Every field carries its
help text in `metadata["help"]`: the CLI builds `--help` from it, so a field's documentation lives in
exactly one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from saekit.errors import SaekitError


def help_field(text: str, **kwargs: Any) -> Any:
    """A dataclass field whose help text becomes its `--flag`'s help."""
    return field(metadata={"help": text}, **kwargs)


def check_fields(cls: type, data: dict[str, Any], what: str) -> None:
    """One-line error for keys that are not fields of `cls`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SaekitError(f"unknown {what} field(s) {', '.join(unknown)}; see `saekit train --help` for "
                          "the valid names")


@dataclass
class DictionaryConfig:
    """What one sparse dictionary computes (enough to encode and decode)."""

    method: str = help_field("Dictionary method (see `saekit.methods`): relu, gated, jumprelu, topk, "
                             "batchtopk, matryoshka or matching_pursuit.", default="topk")
    d_in: int = help_field("Width of the input activations.", default=0)
    d_sae: int = help_field("Number of latents (dictionary width).", default=0)
    k: int | None = help_field("Active latents per token for topk, batchtopk and matryoshka (mean per "
                               "token for the batch variants); pursuit steps for matching_pursuit.",
                               default=None)
    transcoder: bool = help_field("A transcoder: reads one activation and predicts another (the target), "
                                  "so b_dec lives in the output space.", default=False)
    d_out: int | None = help_field("Transcoders: width of the target (default: d_in).", default=None)
    skip_connection: bool = help_field("Transcoders: add a learned affine skip W_skip·x "
                                       "(zero-initialised).", default=False)
    apply_b_dec_to_input: bool | None = help_field(
        "Subtract the decoder bias from the input before encoding. Default per method: no for relu "
        "(April-2024 update) and transcoders (b_dec lives in the output space), yes otherwise. Set it "
        "to load foreign dictionaries that differ (SAELens 'standard', Gemma Scope JumpReLU).",
        default=None)
    n_sources: int = help_field("Crosscoders: number of equal-width blocks in the input, each with its "
                                "own decoder block (set from source_hookpoints when given).", default=1)
    matryoshka_prefixes: list[int] | None = help_field(
        "Matryoshka nested prefix sizes (increasing, last = d_sae). Default: d_sae/16, /8, /4, /2, 1.",
        default=None)
    residual_threshold: float = help_field("matching_pursuit: a token stops once its residual norm falls "
                                           "below this (0: only the k steps and a repeated pick stop it).",
                                           default=0.0)
    name: str | None = help_field("A name for this dictionary (used in reports and file names).",
                                  default=None)

    def __post_init__(self) -> None:
        from saekit.methods import get_method

        method = get_method(self.method)
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip() or
                                      self.name in (".", "..") or "/" in self.name or "\\" in self.name
                                      or self.name.startswith(".")):
            raise SaekitError(f"name {self.name!r} cannot name a dictionary folder: use letters, digits, "
                              "'-', '_' and '.', not a path")
        for name in ("d_in", "d_sae", "n_sources"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SaekitError(f"{name} must be a positive integer, got {value!r}")
        if self.d_in % self.n_sources:
            raise SaekitError(f"d_in={self.d_in} must split into n_sources={self.n_sources} equal blocks")
        if self.d_out is None:
            self.d_out = self.d_in
        if not isinstance(self.d_out, int) or isinstance(self.d_out, bool) or self.d_out <= 0:
            raise SaekitError(f"d_out must be a positive integer, got {self.d_out!r}")
        if (self.d_out != self.d_in or self.skip_connection) and not self.transcoder:
            raise SaekitError("d_out and skip_connection are for transcoders: also set transcoder=True "
                              "(and a target_hookpoint)")
        if self.transcoder and self.n_sources > 1:
            raise SaekitError("a dictionary is either a transcoder or a crosscoder, not both")
        if self.apply_b_dec_to_input is None:
            self.apply_b_dec_to_input = method.subtracts_b_dec and not self.transcoder
        elif self.apply_b_dec_to_input and self.transcoder:
            raise SaekitError("apply_b_dec_to_input is impossible for transcoders (b_dec is in the output "
                              "space): leave it unset")
        method.check_config(self)

    @property
    def is_transcoder(self) -> bool:
        return self.transcoder

    @property
    def display_name(self) -> str:
        from saekit.methods import get_method

        return self.name or get_method(self.method).display_name(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DictionaryConfig:
        check_fields(cls, data, "dictionary config")
        return cls(**data)


@dataclass
class Provenance:
    """Where a dictionary's data comes from: recorded in its files, and used to route a sweep's stream
    (a dictionary reads `hookpoint`, or the concatenated `source_hookpoints`; a transcoder predicts
    `target_hookpoint`)."""

    model_name: str | None = help_field("Model the activations come from.", default=None)
    hookpoint: str | None = help_field("Where the input activations come from (a named site or module).",
                                       default=None)
    target_hookpoint: str | None = help_field(
        "Transcoders: hookpoint whose activations are the target (e.g. the MLP output), while "
        "`hookpoint` is the input (e.g. the MLP input).", default=None)
    source_hookpoints: list[str] | None = help_field(
        "Crosscoders: hookpoints (e.g. of two models or several layers) whose activations are "
        "concatenated into the input; each is normalised separately and has its own decoder block.",
        default=None)
    dataset: str | None = help_field("Text the activations were computed on.", default=None)
    context_size: int | None = help_field("Tokens per sequence of the model forward.", default=None)

    def __post_init__(self) -> None:
        if self.source_hookpoints is not None:
            self.source_hookpoints = [str(s) for s in self.source_hookpoints]
            if len(self.source_hookpoints) < 2:
                raise SaekitError("source_hookpoints needs at least two hookpoints (a crosscoder); for one "
                                  "use hookpoint")

    @property
    def write_site(self) -> str | None:
        """The hookpoint the decoder writes to: the target for transcoders, else the input."""
        return self.target_hookpoint or self.hookpoint

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        check_fields(cls, data, "provenance")
        return cls(**data)
