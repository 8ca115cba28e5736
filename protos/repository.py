"""The model repository contract, shared by the exporter (writes it) and the server (reads it).

Layout:  <repo>/<name>/model.json
         <repo>/<name>/<version>/model.savedmodel/   (TF SavedModel, named signatures)
         <repo>/<name>/<version>/model.onnx          (ONNX conversion)
Version folders are positive integers; anything else in a model folder (e.g. an exporter's
staging folder) is ignored, so a reader never sees half a version. model.json is optional: what it
leaves out of the contract is derived from the model file at load (mimo.protos.model_files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

MODEL_JSON = "model.json"
SAVEDMODEL_DIR = "model.savedmodel"
ONNX_FILE = "model.onnx"
SCHEMA_PATH = Path(__file__).with_name("model_schema.json")


class RepositoryError(ValueError):
    """The repository or one model's files do not follow the contract."""


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_model_json(document: dict, where: str = MODEL_JSON) -> None:
    """Check `document` against the schema and the cross-references the schema cannot express.

    A partial document (a drop-in's model.json) is checked as far as it goes; the cross-references
    to derived tensors are checked again once the contract is complete (ModelSpec.from_json).
    """
    import jsonschema  # server/export side only: the client never reads model.json

    try:
        jsonschema.validate(document, schema())
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise RepositoryError(f"{where}: {path}: {exc.message}") from None
    inputs = [t["name"] for t in document.get("inputs", [])]
    outputs = [t["name"] for t in document.get("outputs", [])]
    for kind, names in (("input", inputs), ("output", outputs)):
        if len(set(names)) != len(names):
            raise RepositoryError(f"{where}: duplicate {kind} names {names}")
    if "inputs" in document:
        for name in list(document.get("constraints", {})) + list(document.get("batching", {}).get("padding", {})):
            if name not in inputs:
                raise RepositoryError(f"{where}: constraint or padding for unknown input {name!r}")
    if "inputs" in document and "outputs" in document:
        for sig, spec in document.get("signatures", {}).items():
            unknown = [n for n in spec["inputs"] if n not in inputs] + [
                n for n in spec["outputs"] if n not in outputs
            ]
            if unknown:
                raise RepositoryError(f"{where}: signature {sig!r} names unknown tensors {unknown}")


# What a complete contract needs; a drop-in's model.json may leave these to the model file.
CONTRACT_KEYS = ("inputs", "outputs", "signatures", "max_batch_size")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class InputConstraint:
    min_length: int | None = None
    id_range: tuple[int, int] | None = None


@dataclass
class ModelSpec:
    """A parsed, validated model.json."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    signatures: dict[str, dict[str, list[str]]]
    max_batch_size: int
    constraints: dict[str, InputConstraint] = field(default_factory=dict)
    batching: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    version_policy: dict[str, Any] = field(default_factory=dict)
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, document: dict, where: str = MODEL_JSON) -> "ModelSpec":
        """A complete contract: model.json as written, or completed from the model file."""
        missing = [key for key in ("name",) + CONTRACT_KEYS if key not in document]
        if missing:
            raise RepositoryError(f"{where}: no {', '.join(missing)} (and no model file to derive them from)")
        validate_model_json(document, where)
        tensors = lambda items: [TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in items]
        constraints = {
            name: InputConstraint(
                min_length=c.get("min_length"),
                id_range=tuple(c["id_range"]) if "id_range" in c else None,
            )
            for name, c in document.get("constraints", {}).items()
        }
        return cls(
            name=document["name"],
            inputs=tensors(document["inputs"]),
            outputs=tensors(document["outputs"]),
            signatures=document["signatures"],
            max_batch_size=document["max_batch_size"],
            constraints=constraints,
            batching=document.get("batching", {}),
            backend=document.get("backend"),
            version_policy=document.get("version_policy", {}),
            versions={int(v): facts for v, facts in document.get("versions", {}).items()},
            raw=document,
        )

    @property
    def contract(self):
        """The request check for this model (built once; see mimo.protos.contract)."""
        if "_contract" not in self.__dict__:
            from mimo.protos.contract import Contract, InputRule

            rules = [
                InputRule(t.name, t.datatype, t.shape,
                          self.constraints[t.name].min_length if t.name in self.constraints else None,
                          self.constraints[t.name].id_range if t.name in self.constraints else None)
                for t in self.inputs
            ]
            self.__dict__["_contract"] = Contract(self.name, rules, [t.name for t in self.outputs],
                                                  self.signatures, self.max_batch_size)
        return self.__dict__["_contract"]

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


def read_model_document(model_dir: str | os.PathLike) -> dict[str, Any]:
    """One model's model.json as a validated dict, possibly partial; {"name": folder} when absent.

    RepositoryError (naming the file) for invalid JSON, a schema violation or a name that is not
    the folder's.
    """
    path = Path(model_dir) / MODEL_JSON
    folder = Path(model_dir).name
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {"name": folder}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise RepositoryError(f"{path}: must hold a JSON object, not {type(document).__name__}")
    validate_model_json(document, str(path))
    document.setdefault("name", folder)
    if document["name"] != folder:
        raise RepositoryError(f"{path}: name {document['name']!r} does not match its folder {folder!r}")
    return document


def read_model_json(model_dir: str | os.PathLike) -> ModelSpec:
    """A model.json that states the whole contract (the exporter writes one), parsed."""
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise RepositoryError(f"{path}: missing")
    return ModelSpec.from_json(read_model_document(model_dir), str(path))


def write_model_json(model_dir: str | os.PathLike, document: dict) -> None:
    """Validate, then replace model.json atomically (readers see the old or the new file)."""
    validate_model_json(document, str(Path(model_dir) / MODEL_JSON))
    path = Path(model_dir) / MODEL_JSON
    staging = path.with_name(f".{MODEL_JSON}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    os.replace(staging, path)


def version_dirs(model_dir: str | os.PathLike) -> dict[int, Path]:
    """Complete version folders of one model, by number (staging folders are skipped)."""
    found = {}
    for entry in Path(model_dir).iterdir():
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0:
            found[int(entry.name)] = entry
    return dict(sorted(found.items()))


def model_dirs(repository: str | os.PathLike) -> dict[str, Path]:
    """Model folders of a repository: every folder that is not hidden."""
    root = Path(repository)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist or is not a folder")
    return {
        entry.name: entry
        for entry in sorted(root.iterdir())
        if entry.is_dir() and not entry.name.startswith((".", "_"))
    }


def present_formats(version_dir: str | os.PathLike) -> list[str]:
    """The model files a version folder holds: "savedmodel", "onnx", both or neither."""
    version_dir = Path(version_dir)
    found = []
    if (version_dir / SAVEDMODEL_DIR / "saved_model.pb").is_file():
        found.append("savedmodel")
    if (version_dir / ONNX_FILE).is_file():
        found.append("onnx")
    return found


def check_version_layout(version_dir: Path, formats: list[str] | None = None) -> list[str]:
    """Problems with one version folder's files (empty list when it is complete)."""
    present = present_formats(version_dir)
    files = {"savedmodel": f"{SAVEDMODEL_DIR}/saved_model.pb", "onnx": ONNX_FILE}
    return [f"{version_dir}: missing {files[f]}" for f in formats or ["savedmodel", "onnx"] if f not in present]
