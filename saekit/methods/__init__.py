"""The method registry: one object per method family, looked up by name.

    from saekit.methods import get_method
    get_method("topk").encode(d, x)

Each family lives in its own module (`relu`, `gated`, `jumprelu`, `topk`, `batchtopk`, `matryoshka`,
`matching_pursuit`) as a subclass of `Method` (see `base`). To add a method, write one module with one
subclass and register it here (or call `register` from your own code); configs, training, saving,
loading and the CLI then know it by name.
"""

from __future__ import annotations

from saekit.errors import SaekitError
from saekit.methods.base import Encoding, Method, MethodState
from saekit.methods.batchtopk import BatchTopK
from saekit.methods.gated import Gated
from saekit.methods.jumprelu import JumpReLU
from saekit.methods.matching_pursuit import MatchingPursuit
from saekit.methods.matryoshka import Matryoshka
from saekit.methods.relu import ReLU
from saekit.methods.topk import TopK

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make `method` available by its name (a later registration of the same name replaces it)."""
    _REGISTRY[method.name] = method
    return method


for _family in (ReLU, Gated, JumpReLU, TopK, BatchTopK, Matryoshka, MatchingPursuit):
    register(_family())


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise SaekitError(f"unknown method {name!r}: choose one of {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return list(_REGISTRY)


__all__ = ["Encoding", "Method", "MethodState", "get_method", "method_names", "register"]
