"""One dictionary of a sweep: what it computes, how it learns, where its data comes from.

`DictionarySpec.from_options` builds one from a flat mapping (a `[[dictionaries]]` entry of a sweep
file, or CLI flags), sending each key to the dataclass that owns it (`DictionaryConfig`,
`TrainingConfig`, `Provenance`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, cast

from saekit.config import DictionaryConfig, Provenance
from saekit.errors import SaekitError
from saekit.methods import get_method
from saekit.training.config import ResolvedTraining, TrainingConfig


@dataclass
class DictionarySpec:
    """One dictionary of a sweep: what it computes, how it learns, where its data comes from.

    The training config is completed from the method's defaults (`TrainingConfig.resolved`), so a spec
    always holds the exact values a run uses."""

    dictionary: DictionaryConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)  # resolved on construction
    source: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        src, cfg = self.source, self.dictionary
        if src.source_hookpoints is not None and cfg.n_sources != len(src.source_hookpoints):
            raise SaekitError(f"the dictionary has n_sources={cfg.n_sources} but {len(src.source_hookpoints)} "
                              "source_hookpoints were given: make them agree")
        if (src.target_hookpoint is not None) != cfg.transcoder:
            raise SaekitError("a transcoder needs a target_hookpoint and only a transcoder has one: set "
                              "transcoder=True together with target_hookpoint")
        if not isinstance(self.training, TrainingConfig):
            raise SaekitError(f"training must be a TrainingConfig, got {type(self.training).__name__}")
        self.training = cast(TrainingConfig, self.training.resolved(cfg))

    @property
    def resolved(self) -> ResolvedTraining:
        """The training config with every default filled in (typed as such)."""
        return cast(ResolvedTraining, self.training)

    @property
    def name(self) -> str:
        """The dictionary's name, else method, width and k or λ (e.g. `topk-k32-6144`, `relu-l5-6144`)."""
        return self.dictionary.name or get_method(self.dictionary.method).display_name(self.dictionary,
                                                                                       self.resolved)

    @classmethod
    def from_options(cls, **options: Any) -> DictionarySpec:
        """A spec from flat options, each sent to the dataclass that owns it (unknown keys: one-line error)."""
        parts: dict[type, dict[str, Any]] = {DictionaryConfig: {}, TrainingConfig: {}, Provenance: {}}
        owners = {f.name: cls_ for cls_ in parts for f in dataclasses.fields(cls_)}
        unknown = sorted(set(options) - set(owners))
        if unknown:
            raise SaekitError(f"unknown dictionary option(s) {', '.join(unknown)}; see `saekit train "
                              "--help` for the valid names")
        for key, value in options.items():
            parts[owners[key]][key] = value
        source = Provenance(**parts[Provenance])
        dictionary_options = parts[DictionaryConfig]
        if source.target_hookpoint is not None:
            dictionary_options.setdefault("transcoder", True)
        if source.source_hookpoints is not None:
            dictionary_options.setdefault("n_sources", len(source.source_hookpoints))
        try:
            return cls(DictionaryConfig(**dictionary_options), TrainingConfig(**parts[TrainingConfig]),
                       source)
        except TypeError as error:  # a wrong type reaching a dataclass
            raise SaekitError(f"bad dictionary options: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"dictionary": self.dictionary.to_dict(), "training": self.training.to_dict(),
                "source": self.source.to_dict()}


def option_fields() -> list[dataclasses.Field]:
    """Every flat dictionary option (the fields of the three per-dictionary configs), for the CLI."""
    return [f for cls in (DictionaryConfig, TrainingConfig, Provenance) for f in dataclasses.fields(cls)]
