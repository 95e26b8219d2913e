"""``PretrainedCfg``: where a model's weights live and what they are."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["PretrainedCfg"]


@dataclass
class PretrainedCfg:
    """Where a pretrained tag's weights come from and what the model card says of them.

    Attributes:
        architecture: registered model the weights belong to (set by the registry).
        tag: pretrained tag, the part after the dot in ``arch.tag``.
        hf_hub_id: Hugging Face Hub repository ``org/name`` holding the weights.
        hf_hub_revision: branch, tag or commit on the Hub.
        hf_hub_filename: weights file inside the Hub repository.
        file: local safetensors file or ``save_pretrained`` folder; wins over the Hub.
            A relative path is taken from the ``harmonize`` package folder.
        license, paper, paper_url, trained_on, recipe, hardware: model card facts.
        metrics: scores the weights reached, printed on the model card.
    """

    architecture: str = ""
    tag: str = ""
    hf_hub_id: str | None = None
    hf_hub_revision: str | None = None
    hf_hub_filename: str = "model.safetensors"
    file: str | None = None
    license: str | None = None
    paper: str | None = None
    paper_url: str | None = None
    trained_on: str | None = None
    recipe: str | None = None
    hardware: str | None = None
    input_size: tuple[int, int, int] = (3, 256, 256)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str | None = None

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture

    @property
    def has_weights(self) -> bool:
        return bool(self.file or self.hf_hub_id)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainedCfg:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "input_size" in known:
            known["input_size"] = tuple(known["input_size"])
        return cls(**known)

    def overlay(self, **kwargs: Any) -> PretrainedCfg:
        unknown = set(kwargs) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown pretrained_cfg_overlay keys: {sorted(unknown)}")
        return replace(self, **kwargs)
