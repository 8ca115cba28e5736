"""`mimo export --from` a drop-in version folder: the files stay as they are, model.json is written.

A version folder dropped into the repository (a bare `model.savedmodel/` or `model.onnx`) is
served without model.json; this writes the full model.json for it, from what the files say about
themselves (names, datatypes, shapes, signatures; the same description the server derives at
load), and, when both formats are there, the parity of one against the other. A folder elsewhere
that holds only `model.onnx` is copied in as a new version the same way. What a bare file cannot
tell (minimum lengths, id ranges: its graph is not a Keras graph) is left out, and model.json
says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from mimo.export.pipeline import ExportError, model_document, staged_version
from mimo.protos.model_files import describe_version
from mimo.protos.repository import MODEL_JSON, ONNX_FILE, RepositoryError, read_model_json, write_model_json

NOT_ANALYSED = ("not analysed: a bare model file has no Keras graph to derive min_length or id_range from; "
                "export from the Keras model, or add constraints to model.json")


def in_place_version(source: Path, repository: Path, name: str) -> int | None:
    """The version number when `source` is a version folder of `name` in `repository` itself."""
    try:
        inside = source.resolve().parent == (repository / name).resolve()
    except OSError:
        return None
    return int(source.name) if inside and source.name.isdigit() and int(source.name) > 0 else None


def describe_model(version_dir: Path) -> dict:
    try:
        return describe_version(version_dir)
    except RepositoryError as exc:
        raise ExportError(f"--from {version_dir}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a file the runtime cannot open
        raise ExportError(f"--from {version_dir}: cannot be read: {type(exc).__name__}: {exc}") from None


def facts_for(described: dict, version_dir: Path, say: Callable[[str], None]) -> dict:
    """The version's facts: its formats, the parity of the two when both are there, what was not derived."""
    facts = {"formats": described["formats"], "parity": {}, "source": "drop-in"}
    if set(described["formats"]) == {"savedmodel", "onnx"}:
        from mimo.export.contract import derive_contract
        from mimo.export.parity import check_parity
        from mimo.export.sources import wrap_savedmodel

        wrapped = wrap_savedmodel(version_dir / "model.savedmodel")
        parity = check_parity(wrapped, derive_contract(wrapped), version_dir / "model.savedmodel", version_dir / ONNX_FILE)
        if "onnx_parity_error" in parity:
            raise ExportError(f"--from {version_dir}: {parity['onnx_parity_error']} (SavedModel taken as the reference)")
        facts.update(parity)
    else:
        say(f"   {described['formats'][0]} only: no second format to check it against")
    facts["analysis"] = {t["name"]: [NOT_ANALYSED] for t in described["inputs"]}
    return facts


def adopt_in_place(version_dir: Path, name: str, force: bool, say: Callable[[str], None]) -> dict:
    """Write model.json for a version folder already in the repository (its files untouched)."""
    model_dir, number = version_dir.parent, int(version_dir.name)
    if (model_dir / MODEL_JSON).is_file() and not force:
        try:
            described_before = number in read_model_json(model_dir).versions
        except RepositoryError:
            described_before = False
        if described_before:
            raise ExportError(f"{model_dir / MODEL_JSON} already describes version {number}; pass --force to rewrite it")
    described = describe_model(version_dir)
    facts = facts_for(described, version_dir, say)
    write_model_json(model_dir, model_document(name, _contract(described), model_dir, number, facts))
    return facts


def import_onnx(source: Path, name: str, repository: Path, version: int | None, force: bool,
                say: Callable[[str], None]) -> dict:
    """Copy a folder's model.onnx into the repository as a new version, with its model.json."""
    with staged_version(repository, name, version, force) as staged:
        shutil.copyfile(source / ONNX_FILE, staged.folder / ONNX_FILE)
        described = describe_model(staged.folder)
        facts = facts_for(described, staged.folder, say)
        staged.document = model_document(name, _contract(described), staged.model_dir, staged.number, facts)
    return facts


def _contract(described: dict) -> dict:
    return {key: described[key] for key in ("inputs", "outputs", "signatures", "max_batch_size")}
