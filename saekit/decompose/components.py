"""Run any torch module with some of its `nn.Linear` layers replaced by masked sums of components.

This is the seam that makes APD and SPD model-agnostic: a decomposition names linear layers inside an
arbitrary module, and every forward pass it needs (the target pass that records layer inputs, the
stochastically masked pass, the top-k sparse pass, the layerwise passes) is the *module's own* forward
with those layers' `forward` temporarily swapped. Nothing about the module's architecture is assumed
beyond "the named submodules are `nn.Linear` and are called on tensors whose last dim is d_in".

Components are stored factorised, P_c = U_c V_c with U_c [d_out, m] and V_c [m, d_in] (m = 1 for SPD's
rank-one subcomponents). A per-sample mask s [..., C] scales each component, so the masked layer
computes y = Σ_c s_c U_c V_c x + b without ever materialising a per-sample weight matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from saekit.errors import SaekitError

LayerForward = Callable[[Tensor], Tensor]


def linear_layers(root: nn.Module, names: Sequence[str]) -> dict[str, nn.Linear]:
    """Resolve dotted names to `nn.Linear` submodules, with a fixable error for anything else."""
    if not names:
        raise SaekitError("no layers to decompose: pass at least one nn.Linear name")
    layers: dict[str, nn.Linear] = {}
    for name in names:
        try:
            module = root.get_submodule(name)
        except AttributeError as error:
            raise SaekitError(f"layer {name!r} not found in {type(root).__name__}; fix the name "
                              f"(available: {[n for n, _ in root.named_modules() if n][:20]})") from error
        if not isinstance(module, nn.Linear):
            raise SaekitError(f"layer {name!r} is a {type(module).__name__}, not nn.Linear; "
                              "only linear layers can be decomposed")
        layers[name] = module
    return layers


@contextmanager
def swapped_forwards(root: nn.Module, replacements: Mapping[str, LayerForward]) -> Iterator[None]:
    """Temporarily replace the `forward` of named submodules (instance attribute, restored on exit).

    Patching `forward` rather than adding an output-replacing forward hook means the original
    weight product is never computed, which matters once the layers are an LM's MLP.
    """
    patched: list[tuple[nn.Module, Callable[..., Any] | None]] = []
    try:
        for name, forward in replacements.items():
            module = root.get_submodule(name)
            patched.append((module, module.__dict__.get("forward")))
            module.forward = forward
        yield
    finally:
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous


@contextmanager
def recorded_inputs(root: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the input activation a^l of each named layer during forwards inside the block (through
    the one hook layer, `saekit.models.hooks`)."""
    from saekit.models.hooks import hooks
    from saekit.models.sites import Hookpoint

    recorded: dict[str, Tensor] = {}
    with hooks(root, [Hookpoint(name, name, capture_input=True) for name in names], recorded):
        yield recorded


@contextmanager
def recorded_outputs(root: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of named submodules (e.g. MLP activations for APD's hidden-act loss)."""
    recorded: dict[str, Tensor] = {}
    handles = []
    for name in names:
        def hook(_module: nn.Module, _args: tuple, output: Tensor, _name: str = name) -> None:
            recorded[_name] = output
        handles.append(root.get_submodule(name).register_forward_hook(hook))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


class LayerFactors(nn.Module):
    """C components of one linear layer, each of rank m: P_c = U[c] @ V[c].

    U [C, d_out, m], V [C, m, d_in]. The initial scale makes Σ_c P_c x of the same order as a
    Kaiming-initialised layer (V ~ N(0, 1/d_in), U ~ N(0, 1/(C·m))), so faithfulness starts near
    ||W||² rather than exploding; training then pulls the sum onto the target.
    """

    def __init__(self, d_in: int, d_out: int, n_components: int, rank: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.U = nn.Parameter(torch.randn(n_components, d_out, rank, generator=generator)
                              / (n_components * rank) ** 0.5)
        self.V = nn.Parameter(torch.randn(n_components, rank, d_in, generator=generator) / d_in ** 0.5)

    @property
    def n_components(self) -> int:
        return self.U.shape[0]

    def in_factor(self) -> Tensor:
        """[C, m, d_in]: what reads the layer input."""
        return self.V

    def out_factor(self) -> Tensor:
        """[C, d_out, m]: what writes the layer output."""
        return self.U

    def component_weights(self) -> Tensor:
        """[C, d_out, d_in], in nn.Linear's weight layout."""
        return self.out_factor() @ self.in_factor()

    def summed_weight(self) -> Tensor:
        return self.component_weights().sum(0)


class TransposedFactors(nn.Module):
    """A tied layer whose components are the transposes of another layer's (TMS: Wᵀ tied to W).

    APD's TMS decomposition ties the components of Wᵀ to those of W, so one component holds a column
    of W and the matching row of Wᵀ. Holding a reference (not a copy) keeps them one set of parameters.
    """

    def __init__(self, source: LayerFactors) -> None:
        super().__init__()
        self.source = [source]  # a list hides it from nn.Module so its parameters are not counted twice

    @property
    def n_components(self) -> int:
        return self.source[0].n_components

    def in_factor(self) -> Tensor:
        return self.source[0].U.transpose(1, 2)

    def out_factor(self) -> Tensor:
        return self.source[0].V.transpose(1, 2)

    def component_weights(self) -> Tensor:
        return self.out_factor() @ self.in_factor()

    def summed_weight(self) -> Tensor:
        return self.component_weights().sum(0)


Factors = LayerFactors | TransposedFactors


class FrozenTargetWeights(nn.Module):
    """Base for decompositions that keep a copy of the target's weights in `target_weights` (a plain dict:
    they are not parameters and not ours to save); `.to()` / `.cpu()` move that copy with the module."""

    target_weights: dict[str, Tensor]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> FrozenTargetWeights:
        self.target_weights = {name: fn(w) for name, w in self.target_weights.items()}
        return super()._apply(fn, recurse)


def inner_activations(factors: Factors, x: Tensor) -> Tensor:
    """[..., C, m]: each component's read of x (SPD's h^l_c when m = 1)."""
    return torch.einsum("...i,cmi->...cm", x, factors.in_factor())


def masked_forward(factors: Factors, bias: Tensor | None, mask: Tensor | None) -> LayerForward:
    """A replacement forward computing Σ_c mask_c U_c V_c x + b; mask None means all components on."""
    def forward(x: Tensor) -> Tensor:
        inner = inner_activations(factors, x)
        if mask is not None:
            inner = inner * mask.unsqueeze(-1)
        out = torch.einsum("...cm,com->...o", inner, factors.out_factor())
        return out if bias is None else out + bias
    return forward


def weight_forward(weight: Tensor, bias: Tensor | None) -> LayerForward:
    """A replacement forward with a different dense weight (e.g. the summed components)."""
    return lambda x: nn.functional.linear(x, weight, bias)
