"""What the client knows about a server's models: parsed from ModelMetadata, ModelConfig and
RepositoryIndex responses. Plain, frozen data; no I/O here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from mimo.protos.dtypes import DTYPES

DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str  # v2 name, e.g. "FP32"
    shape: tuple[int, ...]  # -1 = any size
    min_length: int | None = None  # shortest sequence (dimension 1) the model accepts
    id_range: tuple[int, int] | None = None  # token ids must lie in [low, high)

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype, or None for a datatype numpy cannot hold (e.g. BF16)."""
        entry = DTYPES.get(self.datatype)
        return entry.numpy if entry is not None else None


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: dict[str, TensorMetadata]  # in the model's order
    outputs: dict[str, TensorMetadata]
    signatures: dict[str, dict[str, list[str]]]  # name -> {"inputs": [...], "outputs": [...]}
    max_batch_size: int = 0  # 0 = unknown or not batched

    def contract(self, signature: str | None) -> dict[str, list[str]] | None:
        """Inputs and outputs of a signature; None when the server named signatures and this is
        not one of them. Servers that publish no signatures have one: all inputs, all outputs."""
        if not self.signatures:
            return {"inputs": list(self.inputs), "outputs": list(self.outputs)}
        return self.signatures.get(signature or DEFAULT_SIGNATURE)


@dataclass(frozen=True)
class ModelStatus:
    """One model in the server's repository (from RepositoryIndex)."""

    name: str
    versions: tuple[str, ...]
    states: dict[str, str] = field(default_factory=dict)  # version -> READY, LOADING, UNAVAILABLE, ...
    reasons: dict[str, str] = field(default_factory=dict)  # version -> why it is not ready

    @property
    def ready(self) -> bool:
        return "READY" in self.states.values()


def parse_metadata(meta, config) -> ModelMetadata:
    """ModelMetadataResponse + ModelConfigResponse -> ModelMetadata.

    Min lengths, id ranges and signatures are mimo's ModelConfig parameters; another v2 server
    simply has none, and the client then checks names, dtypes and shapes only.
    """
    params = config.config.parameters if config is not None else {}
    constraints = _json_param(params, "constraints")
    signatures = _json_param(params, "signatures")

    def tensor(t, limits=None) -> TensorMetadata:
        limits = limits or {}
        id_range = limits.get("id_range")
        return TensorMetadata(t.name, t.datatype, tuple(t.shape), limits.get("min_length"),
                              tuple(id_range) if id_range else None)

    return ModelMetadata(
        name=meta.name,
        versions=tuple(meta.versions),
        platform=meta.platform,
        inputs={t.name: tensor(t, constraints.get(t.name)) for t in meta.inputs},
        outputs={t.name: tensor(t) for t in meta.outputs},
        signatures=signatures,
        max_batch_size=config.config.max_batch_size if config is not None else 0,
    )


def _json_param(params, key: str) -> dict:
    if key not in params:
        return {}
    try:
        value = json.loads(params[key].string_value)
    except ValueError:
        return {}  # unreadable extras must not break plain use
    return value if isinstance(value, dict) else {}


def parse_index(index) -> list[ModelStatus]:
    """RepositoryIndexResponse (one row per model version) -> one ModelStatus per model."""
    rows: dict[str, list] = {}
    for row in index.models:
        rows.setdefault(row.name, []).append(row)
    statuses = []
    for name, entries in rows.items():
        versioned = [r for r in entries if r.version]
        statuses.append(ModelStatus(
            name=name,
            versions=tuple(sorted((r.version for r in versioned), key=_version_key)),
            states={r.version: r.state for r in versioned},
            reasons={r.version or "-": r.reason for r in entries if r.reason},
        ))
    return statuses


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
