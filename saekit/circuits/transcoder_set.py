"""Per-layer transcoders (PLTs) as one object: one saekit transcoder per layer, MLP input → MLP output.

Training is a sweep: `transcoder_set_specs(layers, ...)` gives one `DictionarySpec` per layer (hookpoint
`mlp_in.L`, target `mlp_out.L`), all trained by `saekit.train` from the same model forward (the stream
stops after the last layer's MLP); `TranscoderSet(layers, dictionaries)` groups the results. Summing
their losses would not couple them, so a set trained together equals the layers trained one by one on
the same batches (METHODS-2 §1.2; tested). On disk a set is one folder of per-layer saekit dictionaries
plus a small manifest (`saekit.formats.multilayer`), and circuit-tracer's `layer_{i}.safetensors` layout
is one `saekit convert --to circuit-tracer` away.

The reading surface matches `CrossLayerTranscoder`'s (positions index `layers`): `encoder(i)`,
`threshold_of(i)`, `decoder(s, t)` (only s == t), `decoder_bias(t)`, `skip(t)`, `encode_layer`,
`decode_layer`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from saekit.circuits.clt import decode_rows
from saekit.circuits.layers import input_hookpoint, output_hookpoint
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.spec import DictionarySpec


def member_name(set_name: str, layer: int) -> str:
    """The sweep name of a set's layer (`<set>.layer_<L>`), which the run report groups by."""
    return f"{set_name}.layer_{layer}"


def transcoder_set_specs(layers: Sequence[int], d_in: int, d_out: int | None = None, name: str | None = None,
                         **options: Any) -> list[DictionarySpec]:
    """One transcoder spec per layer (hookpoint `mlp_in.L`, target `mlp_out.L`), with the same
    dictionary and training options (`DictionarySpec.from_options` names) for every layer.

    Seeds differ per layer (seed + layer) so layers do not start from the same random directions."""
    if not layers:
        raise SaekitError("a transcoder set needs at least one layer")
    seed = int(options.pop("seed", 0) or 0)
    for key in ("hookpoint", "target_hookpoint", "source_hookpoints", "transcoder"):
        if key in options:
            raise SaekitError(f"{key} is set per layer by the transcoder set; drop it")
    probe = DictionarySpec.from_options(d_in=d_in, d_out=d_out or d_in, hookpoint=input_hookpoint(layers[0]),
                                        target_hookpoint=output_hookpoint(layers[0]), **options)
    set_name = name or f"transcoders-{probe.name}"
    return [DictionarySpec.from_options(d_in=d_in, d_out=d_out or d_in, hookpoint=input_hookpoint(layer),
                                        target_hookpoint=output_hookpoint(layer),
                                        **{**options, "name": member_name(set_name, layer)}, seed=seed + layer)
            for layer in layers]


class TranscoderSet:
    """One transcoder per layer, read as one object (position i ↔ model layer `layers[i]`)."""

    def __init__(self, layers: Sequence[int], transcoders: Sequence[Dictionary], name: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        layers = [int(v) for v in layers]
        if len(layers) != len(transcoders) or not layers:
            raise SaekitError(f"a transcoder set needs one transcoder per layer: {len(layers)} layers, "
                              f"{len(transcoders)} transcoders")
        if sorted(set(layers)) != layers:
            raise SaekitError(f"a transcoder set's layers must be distinct and increasing, got {layers}")
        for layer, d in zip(layers, transcoders):
            if not isinstance(d, Dictionary) or not d.cfg.is_transcoder:
                raise SaekitError(f"layer {layer} of a transcoder set must be a transcoder Dictionary "
                                  "(transcoder=True, with a target)")
        self.layers = layers
        self.transcoders = list(transcoders)
        self.name = name or "transcoders"
        self.meta: dict[str, Any] = dict(meta or {})

    @classmethod
    def from_training(cls, specs: Sequence[Any], dictionaries: Sequence[Any], name: str | None = None
                      ) -> TranscoderSet:
        """Group what `saekit.train` returned for `transcoder_set_specs(...)` (in the same order)."""
        layers = []
        for spec in specs:
            hookpoint = spec.source.hookpoint or ""
            try:
                layers.append(int(hookpoint.rsplit(".", 1)[1]))
            except (IndexError, ValueError):
                raise SaekitError(f"{spec.name} is not a layer of a transcoder set (hookpoint {hookpoint!r}); "
                                  "build the specs with transcoder_set_specs") from None
        if name is None and specs:
            first = specs[0].name
            name = first.rsplit(".layer_", 1)[0] if ".layer_" in first else None
        return cls(layers, list(dictionaries), name=name)

    # ------------------------------------------------------------------------------------ shapes
    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, position: int) -> Dictionary:
        return self.transcoders[position]

    def __iter__(self) -> Iterator[Dictionary]:
        return iter(self.transcoders)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_in(self) -> int:
        return self.transcoders[0].d_in

    @property
    def d_out(self) -> int:
        d_out = self.transcoders[0].cfg.d_out
        assert d_out is not None
        return d_out

    @property
    def d_sae(self) -> int:
        """Latents per layer (the largest, should layers differ)."""
        return max(d.d_sae for d in self.transcoders)

    @property
    def n_latents(self) -> int:
        return sum(d.d_sae for d in self.transcoders)

    @property
    def model_name(self) -> str | None:
        return self.transcoders[0].provenance.model_name

    @property
    def input_hookpoints(self) -> list[str]:
        return [d.provenance.hookpoint or input_hookpoint(layer) for layer, d in zip(self.layers, self.transcoders)]

    @property
    def output_hookpoints(self) -> list[str]:
        return [d.provenance.target_hookpoint or output_hookpoint(layer)
                for layer, d in zip(self.layers, self.transcoders)]

    def position(self, layer: int) -> int:
        """The position of model layer `layer` in this set."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise SaekitError(f"the transcoder set has no layer {layer} (its layers: {self.layers})") from None

    # -------------------------------------------------------------------- weights, per (source, target)
    def encoder(self, source: int) -> tuple[Tensor, Tensor]:
        d = self.transcoders[source]
        return d.W_enc, d.b_enc

    def threshold_of(self, source: int) -> Tensor | None:
        d = self.transcoders[source]
        if "threshold" not in d.weights():
            return None
        return None if bool((d.threshold < 0).any()) else d.threshold

    def decoder(self, source: int, target: int) -> Tensor | None:
        """W_dec [d_sae, d_out] when source == target; a per-layer transcoder writes only its own layer."""
        return self.transcoders[source].W_dec if source == target else None

    def decoder_bias(self, target: int) -> Tensor:
        return self.transcoders[target].b_dec

    def skip(self, target: int) -> Tensor | None:
        d = self.transcoders[target]
        return d.W_skip if d.cfg.skip_connection else None

    def reach(self, source: int) -> int:
        return 1

    # --------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def encode_layer(self, source: int, x: Tensor) -> Tensor:
        d = self.transcoders[source]
        return d.encode(x.to(d.W_dec.dtype))

    def decode_layer(self, target: int, latents: list[Tensor | None] | Tensor, x: Tensor | None = None) -> Tensor:
        """ŷ_target from the target layer's own latents (`latents[target]`), plus the skip term when the
        layer's input `x` is given."""
        d = self.transcoders[target]
        own = latents[target]
        assert own is not None
        return d.decode(own, x)

    def decode_source(self, source: int, latents: Tensor) -> Tensor:
        """What layer `source`'s latents [n, d_sae] write into its own target, [n, 1, d_out] (no bias, no
        skip: the caller adds `decoder_bias` and the skip term)."""
        d = self.transcoders[source]
        return decode_rows(latents, d.W_dec)[:, None, :]

    def encode(self, x: Tensor) -> Tensor:
        """Latents [..., L, d_sae] from inputs [..., L, d_in] (layers of equal width only)."""
        return torch.stack([self.encode_layer(i, x[..., i, :]) for i in range(self.n_layers)], dim=-2)

    def forward(self, x: Tensor) -> Tensor:
        """ŷ [..., L, d_out] from x [..., L, d_in]."""
        return torch.stack([d(x[..., i, :]) for i, d in enumerate(self.transcoders)], dim=-2)

    __call__ = forward

    def layer_dictionary(self, source: int) -> Dictionary:
        return self.transcoders[source]

    def to(self, *args: Any, **kwargs: Any) -> TranscoderSet:
        self.transcoders = [d.to(*args, **kwargs) for d in self.transcoders]
        return self

    def eval(self) -> TranscoderSet:
        for d in self.transcoders:
            d.eval()
        return self
