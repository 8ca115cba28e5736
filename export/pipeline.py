"""Build, fit, write both formats, check parity, and publish one model version atomically.

A version is built in a hidden staging folder beside its final place and renamed into place only
after the parity check passes, so a server watching the repository never sees half a version and a
failed (or killed) export leaves no version folder behind.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimo.export.builders import BUILDERS, Blueprint
from mimo.export.formats import OPSET, signature_plan, write_onnx, write_savedmodel
from mimo.export.parity import check_parity
from mimo.protos.repository import (
    MODEL_JSON,
    ONNX_FILE,
    SAVEDMODEL_DIR,
    version_dirs,
    write_model_json,
)

STAGING_PREFIX = ".staging-"


class ExportError(RuntimeError):
    pass


@dataclass
class ExportOptions:
    out: Path
    version: int | None = None  # None: one above the newest existing version
    epochs: int | None = None  # None: the model's default
    samples: int | None = None
    image_size: int = 250
    force: bool = False
    seed: int = 0
    verbose: int = 1


def export_model(name: str, options: ExportOptions) -> dict:
    """Export one model; returns the facts recorded for the new version in model.json."""
    if name not in BUILDERS:
        raise ExportError(f"unknown model {name!r}; choose from {', '.join(BUILDERS)}")
    model_dir = options.out / name
    model_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(model_dir)
    version = _choose_version(model_dir, options)

    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(options.seed)
    started = time.monotonic()
    blueprint = BUILDERS[name](options.image_size)
    training = fit(blueprint, options)

    staging = model_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    try:
        staging.mkdir()
        plan = write_savedmodel(blueprint, staging / SAVEDMODEL_DIR)
        write_onnx(blueprint, staging / ONNX_FILE)
        parity = check_parity(blueprint, staging / SAVEDMODEL_DIR, staging / ONNX_FILE)
        facts = {
            "formats": ["savedmodel", "onnx"],
            **parity,
            "parameters": int(blueprint.model.count_params()),
            "opset": OPSET,
            "image_size": options.image_size,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "export_seconds": round(time.monotonic() - started, 1),
            "libraries": library_versions(),
            "sizes_bytes": file_sizes(staging),
            "training": training,
        }
        document = model_document(blueprint, plan, model_dir, version, facts)
        _publish(staging, model_dir / str(version), options.force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_model_json(model_dir, document)
    return facts


def fit(blueprint: Blueprint, options: ExportOptions) -> dict:
    """Fit on synthetic data whose targets are the right kind for each head's loss."""
    rng = np.random.default_rng(options.seed)
    samples = options.samples or blueprint.default_samples
    epochs = options.epochs if options.epochs is not None else blueprint.default_epochs
    trainer = blueprint.training_model or blueprint.model
    trainer.compile(optimizer="rmsprop", loss=blueprint.losses, loss_weights=blueprint.loss_weights)
    x = blueprint.make_inputs(rng, samples, blueprint.train_length or 1)
    y = blueprint.make_targets(rng, samples)
    history = trainer.fit(x, y, epochs=epochs, batch_size=blueprint.batch_size, verbose=options.verbose)
    losses = history.history.get("loss", [])
    return {
        "epochs": epochs,
        "samples": samples,
        "sequence_length": blueprint.train_length,
        "losses": blueprint.losses,
        "loss_weights": blueprint.loss_weights,
        "final_loss": float(losses[-1]) if losses else None,
    }


def model_document(blueprint: Blueprint, plan: dict, model_dir: Path, version: int, facts: dict) -> dict:
    """model.json: the contract of the newest export plus every version's facts."""
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
        "name": blueprint.name,
        "inputs": [vars(t) for t in blueprint.inputs],
        "outputs": [vars(t) for t in blueprint.outputs],
        "constraints": blueprint.constraints,
        "signatures": {
            name: {"inputs": [t.name for t in blueprint.inputs], "outputs": outputs}
            for name, outputs in plan.items()
        },
        "max_batch_size": blueprint.max_batch_size,
        "versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
    }
    # Serving settings a user added by hand survive a re-export.
    for key in ("batching", "backend", "version_policy", "description"):
        if key in previous:
            document[key] = previous[key]
    return document


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
    variables = version_dir / SAVEDMODEL_DIR / "variables"
    savedmodel = sum(p.stat().st_size for p in (version_dir / SAVEDMODEL_DIR).rglob("*") if p.is_file())
    return {
        "savedmodel": savedmodel,
        "savedmodel_variables": sum(p.stat().st_size for p in variables.rglob("*") if p.is_file()),
        "onnx": (version_dir / ONNX_FILE).stat().st_size,
    }


def _choose_version(model_dir: Path, options: ExportOptions) -> int:
    existing = version_dirs(model_dir)
    if options.version is None:
        return max(existing, default=0) + 1
    if options.version < 1:
        raise ExportError(f"--version must be a positive integer, got {options.version}")
    if options.version in existing and not options.force:
        raise ExportError(
            f"{model_dir / str(options.version)} already exists; pass --force to replace it"
        )
    return options.version


def _publish(staging: Path, final: Path, force: bool) -> None:
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


def _remove_stale_staging(model_dir: Path) -> None:
    """Remove staging folders left by exports that were killed (their process is gone)."""
    for entry in model_dir.glob(f"{STAGING_PREFIX}*"):
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
