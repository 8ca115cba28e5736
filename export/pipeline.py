"""Write one model version: SavedModel + ONNX from any Keras model, parity, atomic publish.

`export_model` is the one exporter: the CLI's `--from`, the Python call after `model.fit()` and
the notebook's models all end here. A version is built in a hidden staging folder beside its final
place and renamed into place only after the parity check passes, so a server watching the
repository never sees half a version, and a failed (or killed) export leaves nothing behind.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mimo.export.contract import Contract, ContractError, derive_contract
from mimo.export.formats import OPSET, write_onnx, write_savedmodel
from mimo.export.parity import ParityError, check_parity  # noqa: F401 - part of the API
from mimo.protos.errors import error_line
from mimo.protos.repository import MODEL_JSON, ONNX_FILE, SAVEDMODEL_DIR, version_dirs, write_model_json

STAGING_PREFIX = ".staging-"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a folder name: no '/', no '..'
DEFAULT_MAX_BATCH_SIZE = 32


class ExportError(RuntimeError):
    """An export that cannot be done; the message names the problem."""


def export_model(
    model,
    name: str,
    repository: str | os.PathLike = "models",
    *,
    version: int | None = None,
    force: bool = False,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    facts: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Export a live `keras.Model` as version `version` (default: one above the newest) of `name`.

    Returns the version's facts as written to model.json (formats, parity, what was derived).
    Raises ExportError (bad name, existing version, a model that cannot be served by name) or
    ParityError (the SavedModel does not compute what the model computes); either way nothing
    is left in the repository.
    """
    say = log or (lambda message: None)
    started = time.monotonic()
    check_name(name)
    try:
        contract = derive_contract(model)
    except ContractError as exc:
        raise ExportError(str(exc)) from None
    with staged_version(Path(repository), name, version, force) as staged:
        try:
            written = write_version(model, contract, staged.folder, say)
        except (ExportError, ParityError):
            raise
        except Exception as exc:  # noqa: BLE001 - TensorFlow fails in many ways; report it in one line
            raise ExportError(f"{name}: the SavedModel could not be written or run: "
                              f"{type(exc).__name__}: {error_line(exc)}") from exc
        written.update(facts or {})
        written.update({
            "parameters": int(model.count_params()),
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "export_seconds": round(time.monotonic() - started, 1),
            "libraries": library_versions(),
            "sizes_bytes": file_sizes(staged.folder),
        })
        staged.document = model_document(name, {**contract.document(), "max_batch_size": max_batch_size},
                                         staged.model_dir, staged.number, written)
    return written


@dataclass
class StagedVersion:
    model_dir: Path
    number: int
    folder: Path  # the hidden staging folder the caller writes the version's files into
    document: dict | None = None  # the model.json to write once the version is in place


@contextmanager
def staged_version(repository: Path, name: str, version: int | None, force: bool):
    """A staging folder for the next version of `name`; on leaving, rename it into place and write
    the caller's model.json. On any error nothing is left, and nothing is visible before the end:
    a model's first version is built in a hidden model folder that is renamed into place whole,
    model.json included, so a killed first export leaves no half-made model for the server."""
    model_dir = repository / name
    number = choose_version(model_dir, version, force)
    repository.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(repository)
    first = not model_dir.exists()
    if first:
        shadow = repository / f"{STAGING_PREFIX}{name}-{os.getpid()}"
        staged = StagedVersion(model_dir, number, shadow / str(number))
    else:
        remove_stale_staging(model_dir)
        shadow = None
        staged = StagedVersion(model_dir, number, model_dir / f"{STAGING_PREFIX}{number}-{os.getpid()}")
    try:
        staged.folder.mkdir(parents=True)
        yield staged
        if first:
            write_model_json(shadow, staged.document)
            _rename_new_model(shadow, model_dir)
        else:
            publish(staged.folder, model_dir / str(number), force)
            write_model_json(model_dir, staged.document)
    except BaseException:
        shutil.rmtree(shadow or staged.folder, ignore_errors=True)
        raise


def _rename_new_model(shadow: Path, model_dir: Path) -> None:
    try:
        os.rename(shadow, model_dir)
    except OSError:
        raise ExportError(f"{model_dir} appeared during the export; export again to add a version") from None


def write_version(model, contract: Contract, folder: Path, say: Callable[[str], None]) -> dict:
    """Both formats into `folder` (ONNX where it can hold the model), then parity against Keras."""
    write_savedmodel(model, contract, folder / SAVEDMODEL_DIR)
    onnx_skipped = "; ".join(contract.onnx_blockers)
    if not onnx_skipped:
        try:
            write_onnx(model, contract, folder / ONNX_FILE)
        except Exception as exc:  # noqa: BLE001 - any converter failure means SavedModel-only
            onnx_skipped = f"tf2onnx could not convert the model: {type(exc).__name__}: {error_line(exc)}"
    onnx_path = None if onnx_skipped else folder / ONNX_FILE
    parity = check_parity(model, contract, folder / SAVEDMODEL_DIR, onnx_path)
    if "onnx_parity_error" in parity:
        onnx_skipped = parity.pop("onnx_parity_error")
        (folder / ONNX_FILE).unlink()
    facts = {"formats": ["savedmodel"] if onnx_skipped else ["savedmodel", "onnx"], **parity}
    if onnx_skipped:
        facts["onnx_skipped"] = onnx_skipped
        say(f"   SavedModel only (served by the tensorflow backend): {onnx_skipped}")
    else:
        facts["opset"] = OPSET
    facts["analysis"] = contract.analysis
    return facts


def model_document(name: str, contract: dict, model_dir: Path, version: int, facts: dict) -> dict:
    """model.json: the contract of the newest export (inputs, outputs, constraints, signatures,
    max_batch_size) plus every version's facts."""
    previous = {}
    if (model_dir / MODEL_JSON).is_file():
        try:
            previous = json.loads((model_dir / MODEL_JSON).read_text())
        except json.JSONDecodeError:
            previous = {}
    versions = {
        v: f for v, f in previous.get("versions", {}).items() if v.isdigit() and (model_dir / v).is_dir()
    }
    versions[str(version)] = facts
    document = {
        "name": name,
        **contract,
        "versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
    }
    # Serving settings a user added by hand survive a re-export.
    for key in ("batching", "backend", "version_policy", "description"):
        if key in previous:
            document[key] = previous[key]
    return document


def describe(name: str, facts: dict) -> str:
    """One line a person reads after an export: sizes, parity, the backend that will serve it."""
    sizes = facts["sizes_bytes"]
    parity = ", ".join(f"{k} {v:.2g}" for k, v in facts["parity"].items())
    files = f"SavedModel {sizes['savedmodel'] / 1e6:.1f} MB" + (
        f", ONNX {sizes['onnx'] / 1e6:.1f} MB" if "onnx" in sizes else " (no ONNX)")
    return (f"{name}: {facts['export_seconds']:.1f}s, {facts['parameters']:,} parameters, {files}, "
            f"max|diff| against Keras {parity}")


def library_versions() -> dict[str, str]:
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def file_sizes(version_dir: Path) -> dict[str, int]:
    savedmodel = version_dir / SAVEDMODEL_DIR
    sizes = {
        "savedmodel": sum(p.stat().st_size for p in savedmodel.rglob("*") if p.is_file()),
        "savedmodel_variables": sum(p.stat().st_size for p in (savedmodel / "variables").rglob("*") if p.is_file()),
    }
    if (version_dir / ONNX_FILE).is_file():
        sizes["onnx"] = (version_dir / ONNX_FILE).stat().st_size
    return sizes


def check_name(name: str) -> None:
    if not isinstance(name, str) or not MODEL_NAME.match(name) or ".." in name:
        raise ExportError(
            f"model name {name!r} is not a folder name: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (no '/', no '..')"
        )




def choose_version(model_dir: Path, version: int | None, force: bool) -> int:
    existing = version_dirs(model_dir) if model_dir.is_dir() else {}
    if version is None:
        return max(existing, default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"version must be a positive integer, got {version!r}")
    if version in existing and not force:
        raise ExportError(f"{model_dir / str(version)} already exists; pass --force to replace it")
    return version


def publish(staging: Path, final: Path, force: bool) -> None:
    """Rename the finished staging folder into place; with force, swap out the old version."""
    if not final.exists():
        os.rename(staging, final)
        return
    if not force:
        raise ExportError(f"{final} appeared during the export; pass --force to replace it")
    retired = final.with_name(f"{STAGING_PREFIX}retired-{final.name}-{os.getpid()}")
    os.rename(final, retired)
    os.rename(staging, final)
    shutil.rmtree(retired, ignore_errors=True)


def remove_stale_staging(folder: Path) -> None:
    """Remove staging folders (in a repository or a model folder) left by killed exports."""
    for entry in folder.glob(f"{STAGING_PREFIX}*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _process_alive(int(pid)) and int(pid) != os.getpid():
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["ExportError", "ParityError", "export_model", "describe"]
