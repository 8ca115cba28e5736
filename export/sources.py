"""Where `mimo export --from PATH` finds a model: a Keras file, or a SavedModel folder.

Everything becomes a live `keras.Model`, so the one exporter handles it: a `.keras` / `.h5` file
is loaded by Keras (custom layers registered with `keras.saving.register_keras_serializable`,
once their module is imported with `--import`), and a SavedModel (its own folder, or a version
folder holding `model.savedmodel/`) is wrapped as a functional model around its
`serving_default` signature, with the signature's own input and output names.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import zipfile
from pathlib import Path

from mimo.export.pipeline import ExportError
from mimo.protos.errors import error_line
from mimo.protos.repository import SAVEDMODEL_DIR

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def import_modules(names: list[str]) -> None:
    """Import each module (dotted name, or a path to a .py file) for its registrations."""
    for name in names:
        path = Path(name)
        try:
            if path.suffix == ".py":
                if not path.is_file():
                    raise ExportError(f"--import {name}: no such file")
                spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's module: report, do not crash
            raise ExportError(f"--import {name}: {type(exc).__name__}: {exc}") from None


def load_model(source: str | Path, safe_mode: bool = True):
    """A keras.Model from a Keras file or a SavedModel folder; ExportError naming what is wrong.

    `safe_mode=False` lets Keras deserialize Lambda layers, which runs code stored in the file."""
    path = Path(source)
    if not path.exists():
        raise ExportError(f"--from {path}: no such file or folder")
    if path.is_dir():
        savedmodel = savedmodel_folder(path)
        if savedmodel is None:
            raise ExportError(f"--from {path}: not a SavedModel folder (no saved_model.pb), "
                              f"and no {SAVEDMODEL_DIR}/ or model.onnx in it")
        return wrap_savedmodel(savedmodel)
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ExportError(f"--from {path}: not a model file (expected .keras, .h5, or a SavedModel folder)")
    import keras

    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise ExportError(f"--from {path}: not a Keras model file (a .keras file is a zip archive; this one is not)")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        hint = ""
        text = str(exc).lower()
        if "safe_mode" in text:
            hint = " (a Lambda layer: pass --unsafe-lambda if you trust the file, since loading it runs its code)"
        elif "custom" in text or "unknown" in text or "could not locate" in text:
            hint = " (a custom layer? import the module that registers it with --import MODULE)"
        raise ExportError(f"--from {path}: Keras could not load it: {error_line(exc)}{hint}") from None


def savedmodel_folder(path: Path) -> Path | None:
    if (path / "saved_model.pb").is_file():
        return path
    if (path / SAVEDMODEL_DIR / "saved_model.pb").is_file():
        return path / SAVEDMODEL_DIR
    return None


def wrap_savedmodel(path: Path, signature: str = "serving_default"):
    """A functional keras.Model around one signature of a SavedModel, named as the signature is."""
    import keras

    try:
        layer = SignatureLayer(str(path), call_endpoint=signature)
    except Exception as exc:  # noqa: BLE001 - a broken or foreign SavedModel
        raise ExportError(f"--from {path}: TensorFlow could not load signature {signature!r}: {error_line(exc)}") from None
    function = layer.call_endpoint_fn
    _, specs = function.structured_input_signature
    inputs = {}
    for name, spec in specs.items():
        shape = spec.shape.as_list() if spec.shape.rank is not None else None
        if not shape:
            raise ExportError(f"--from {path}: input '{name}' of signature {signature!r} has no batch axis (shape {shape})")
        inputs[name] = keras.Input(batch_shape=tuple(shape), dtype=spec.dtype.name, name=name)
    outputs = layer(inputs)
    return keras.Model(inputs, dict(outputs), name=path.parent.name if path.name == SAVEDMODEL_DIR else path.name)


@functools.cache
def _signature_layer_class():
    import keras

    class SignatureLayer(keras.layers.TFSMLayer):
        """TFSMLayer called with keyword arguments: a signature takes its inputs by name."""

        def call(self, inputs, training=False):
            return self.call_endpoint_fn(**inputs)

    return SignatureLayer


def SignatureLayer(*args, **kwargs):  # noqa: N802 - the class is made once, on first use (keras is heavy)
    return _signature_layer_class()(*args, **kwargs)

