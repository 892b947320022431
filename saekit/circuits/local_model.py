"""The local replacement model of one prompt (METHODS-2 §3.1): a Hugging Face causal LM whose attention
patterns and normalisation scales are frozen, whose MLP outputs are the transcoders' reconstruction plus an
error node, and through which gradients flow only along linear paths.

Freezing is done without TransformerLens, on the model's own modules:
- attention: a registered attention implementation (`saekit_frozen`) computes eager attention and
  detaches the pattern (softmax weights), or substitutes the pattern recorded on the clean run;
- normalisation: a forward hook on every RMSNorm / LayerNorm recomputes its output with the scale
  (1/rms or 1/std) detached, or substituted by the clean run's. The hook checks, once per module, that
  its formula reproduces the module's output, so an unknown norm fails loudly instead of silently;
- MLPs: each MLP output is replaced, through `saekit.models.hooks.hooks`, by skip(x) + leaf, where the
  leaf is the detached (output − skip) and requires grad: gradient reaches the MLP input only through
  the transcoder's linear skip term, and the gradient at the leaf is the gradient at the MLP output
  (a write site of feature and error nodes).

With these freezes the residual stream is affine in the node outputs, so one backward pass per batch
of targets gives exact direct effects (`saekit.circuits.attribution`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from saekit.circuits.replacement import LayerByLayer, Layered
from saekit.errors import SaekitError
from saekit.models.hooks import hooks
from saekit.models.sites import Hookpoint, blocks, resolve_hookpoints

ATTENTION_NAME = "saekit_frozen"
_ACTIVE: list[FrozenState] = []


@dataclass
class FrozenState:
    """What the frozen forward records or reuses: attention patterns by layer index and norm scales by
    module name (`mode` 'record': computed and detached; 'use': substituted from `patterns`/`scales`)."""

    mode: str = "record"
    patterns: dict[int, Tensor] = field(default_factory=dict)
    scales: dict[str, Tensor] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)


def _repeat_kv(x: Tensor, groups: int) -> Tensor:
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def _frozen_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      scaling: float, dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """Eager attention whose pattern carries no gradient (and is the clean run's in 'use' mode)."""
    state = _ACTIVE[-1] if _ACTIVE else None
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise SaekitError("attention sinks are not supported by saekit's frozen attention")
    groups = getattr(module, "num_key_value_groups", 1)
    layer = int(getattr(module, "layer_idx", id(module)))
    v = _repeat_kv(value, groups)
    if state is not None and state.mode == "use" and layer in state.patterns:
        pattern = state.patterns[layer]
    else:
        with torch.no_grad():
            k = _repeat_kv(key, groups)
            scores = torch.matmul(query, k.transpose(2, 3)) * scaling
            softcap = kwargs.get("softcap")
            if softcap:
                scores = torch.tanh(scores / softcap) * softcap
            if attention_mask is not None:
                scores = scores + attention_mask[:, :, :, : k.shape[-2]]
            pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        if state is not None:
            state.patterns[layer] = pattern[:1]
    pattern = pattern.detach()
    out = torch.matmul(pattern.to(v.dtype), v).transpose(1, 2).contiguous()
    return out, pattern


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, _frozen_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _norm_scale(module: nn.Module, x: Tensor) -> Tensor:
    xf = x.float()
    if isinstance(module, nn.LayerNorm):
        return torch.rsqrt(xf.var(-1, keepdim=True, unbiased=False) + module.eps)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if eps is None:
        raise SaekitError(f"{type(module).__name__}: no eps attribute; saekit cannot freeze this norm")
    return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def _norm_with_scale(module: nn.Module, x: Tensor, scale: Tensor) -> Tensor:
    """The norm's output with its scale given (the only non-linear part of a norm)."""
    xf = x.float()
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.LayerNorm):
        y = (xf - xf.mean(-1, keepdim=True)) * scale
        if weight is not None:
            y = y * weight.float()
        if module.bias is not None:
            y = y + module.bias.float()
        return y.to(x.dtype)
    y = xf * scale
    if weight is None:
        return y.to(x.dtype)
    if "Gemma" in type(module).__name__:
        return (y * (1.0 + weight.float())).to(x.dtype)
    return weight * y.to(x.dtype)


class LocalReplacementModel:
    """A causal LM with a transcoder set or CLT at every MLP, read as the local replacement model.

    - `n_layers`, `layers`: model layers (transcoders must cover every layer, in order, at mlp_in.L →
      mlp_out.L, as circuit-tracer requires);
    - `frozen(state)`: context in which attention patterns and norm scales are frozen;
    - `clean_run(ids)`: logits, MLP inputs/outputs, final-norm output and the recorded freeze state;
    - `replacement_logits(ids, errors)`: the replacement model's logits (transcoders at every MLP, each
      reading its live input, plus the error nodes when given).
    """

    def __init__(self, model: nn.Module, transcoders: Layered) -> None:
        self.model = model
        self.transcoders = transcoders
        self.n_layers = len(blocks(model))
        expected = list(range(self.n_layers))
        if list(transcoders.layers) != expected:
            raise SaekitError("attribution graphs need a transcoder at every layer of the model "
                              f"(0..{self.n_layers - 1}); these transcoders cover {transcoders.layers}")
        want_in = [f"mlp_in.{i}" for i in expected]
        want_out = [f"mlp_out.{i}" for i in expected]
        if list(transcoders.input_hookpoints) != want_in or list(transcoders.output_hookpoints) != want_out:
            raise SaekitError("attribution graphs need transcoders that read mlp_in.L and write mlp_out.L; these read "
                              f"{transcoders.input_hookpoints[:2]}… and write {transcoders.output_hookpoints[:2]}…")
        self.in_points = [resolve_hookpoints(model, [name])[0] for name in want_in]
        self.out_points = [resolve_hookpoints(model, [name])[0] for name in want_out]
        names = {m: n for n, m in model.named_modules()}
        embed = cast(Any, model).get_input_embeddings()
        head = cast(Any, model).get_output_embeddings()
        if embed not in names or head is None or head not in names:
            raise SaekitError(f"{type(model).__name__}: cannot find its input embeddings and output head")
        self.embed_point = Hookpoint("embed", names[embed])
        self.unembed_point = Hookpoint("unembed_in", names[head], capture_input=True)
        self.W_U: Tensor = head.weight  # [vocab, d]
        self.norms = {n: m for n, m in model.named_modules() if _is_norm(m)}
        _register_attention()

    @property
    def layers(self) -> list[int]:
        return list(range(self.n_layers))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------ freezing
    @contextlib.contextmanager
    def frozen(self, state: FrozenState) -> Iterator[FrozenState]:
        """Attention patterns and norm scales frozen (recorded or reused, per `state.mode`)."""
        config: Any = self.model.config
        previous = config._attn_implementation
        handles = []

        def norm_hook(module: nn.Module, args: tuple, output: Tensor, name: str) -> Tensor:
            x = args[0]
            if state.mode == "use" and name in state.scales:
                scale = state.scales[name]
            else:
                scale = _norm_scale(module, x).detach()
                state.scales[name] = scale[:1]
                if name not in state.checked:
                    out = output[0] if isinstance(output, tuple) else output
                    mine = _norm_with_scale(module, x, scale)
                    if not torch.allclose(mine.float(), out.float(), rtol=1e-4, atol=1e-5):
                        raise SaekitError(f"saekit cannot freeze {type(module).__name__} ({name}): its output is "
                                          "not weight·x·rsqrt(mean(x²)+eps) nor a LayerNorm")
                    state.checked.add(name)
            return _norm_with_scale(module, x, scale.detach())

        for name, module in self.norms.items():
            handles.append(module.register_forward_hook(
                lambda m, a, o, name=name: norm_hook(m, a, o, name)))
        config._attn_implementation = ATTENTION_NAME
        _ACTIVE.append(state)
        try:
            yield state
        finally:
            _ACTIVE.pop()
            config._attn_implementation = previous
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------------------------ runs
    @torch.no_grad()
    def clean_run(self, ids: Tensor) -> dict[str, Any]:
        """One forward of the real model (patterns and scales recorded): logits [n, V], MLP inputs and
        outputs [L, n, d], the unembedding input [n, d] and the freeze state."""
        store: dict[str, Tensor] = {}
        points = self.in_points + self.out_points + [self.unembed_point]
        state = FrozenState("record")
        with self.frozen(state), hooks(self.model, points, store):
            logits = self.model(input_ids=ids[None].to(self.device)).logits[0]
        return {"logits": logits.float(),
                "mlp_in": torch.stack([store[p.name][0].float() for p in self.in_points]),
                "mlp_out": torch.stack([store[p.name][0].float() for p in self.out_points]),
                "unembed_in": store["unembed_in"][0].float(), "state": state}

    @torch.no_grad()
    def reconstruction_errors(self, clean: dict[str, Any]) -> Tensor:
        """MLP output − the transcoders' reconstruction from the clean MLP inputs, [L, n, d], every position."""
        walk = LayerByLayer(self.transcoders)
        recon = [walk.step(t, clean["mlp_in"][t]).float() for t in range(self.n_layers)]
        return clean["mlp_out"] - torch.stack(recon)

    @torch.no_grad()
    def replacement_logits(self, ids: Tensor, state: FrozenState, errors: Tensor | None = None,
                           edit: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """Logits [n, V] of the local replacement model: patterns and scales from `state` (the clean
        run), every MLP output = the transcoders' reconstruction from its live input (+ `errors[l]`);
        `edit(layer, latents)` may change each layer's latents before they are decoded."""
        live: dict[str, Tensor] = {}
        walk = LayerByLayer(self.transcoders, edit)

        def replace(layer: int) -> Any:
            def edit(value: Tensor) -> Tensor:
                out = walk.step(layer, live[self.in_points[layer].name][0].float())
                if errors is not None:
                    out = out + errors[layer]
                return out[None].to(value.dtype)
            return edit

        replacements = {p.name: replace(i) for i, p in enumerate(self.out_points)}
        use = FrozenState("use", patterns=state.patterns, scales=state.scales, checked=state.checked)
        with self.frozen(use), hooks(self.model, self.in_points + self.out_points, live, replace=replacements):
            return self.model(input_ids=ids[None].to(self.device)).logits[0].float()

    def gradient_run(self, ids: Tensor, state: FrozenState, skip_first: int) -> dict[str, Any]:
        """The forward through which attribution rows are computed by backward passes: frozen patterns
        and scales, MLP outputs = skip(x) + leaf. Returns the read sites (MLP inputs, unembedding input;
        each [1, n, d], differentiable) and the write sites (embedding output and MLP-output leaves)."""
        store: dict[str, Tensor] = {}
        leaves: dict[str, Tensor] = {}

        def embed_edit(value: Tensor) -> Tensor:
            leaf = value.detach().requires_grad_(True)
            leaves["embed"] = leaf
            return leaf

        def mlp_edit(layer: int) -> Any:
            def edit(value: Tensor) -> Tensor:
                x = store[self.in_points[layer].name]
                skip_w = self.transcoders.skip(layer)
                skip = x.to(skip_w.dtype) @ skip_w.T if skip_w is not None else None
                rest = value.detach() - skip.detach() if skip is not None else value.detach()
                leaf = rest.requires_grad_(True)
                leaves[f"mlp_out.{layer}"] = leaf
                return (leaf + skip if skip is not None else leaf).to(value.dtype)
            return edit

        replacements = {self.embed_point.name: embed_edit,
                        **{p.name: mlp_edit(i) for i, p in enumerate(self.out_points)}}
        points = [self.embed_point] + self.in_points + self.out_points + [self.unembed_point]
        use = FrozenState("use", patterns=state.patterns, scales=state.scales, checked=state.checked)
        with torch.enable_grad(), self.frozen(use), hooks(self.model, points, store, replace=replacements):
            self.model(input_ids=ids[None].to(self.device))
        return {"reads": [store[p.name] for p in self.in_points] + [store["unembed_in"]],
                "embed": leaves["embed"], "mlp_out": [leaves[p.name] for p in self.out_points]}
