"""TensorFlow: calls the SavedModel's signature functions (a request may pick one by name)."""

from __future__ import annotations

import threading
from typing import Mapping, Sequence

import numpy as np

from mimo.protos.model_files import describe_signatures
from mimo.protos.repository import SAVEDMODEL_DIR
from mimo.serving.core.backends.base import DEFAULT_SIGNATURE, Backend

_configure_lock = threading.Lock()
_configured = False


def _configure_tensorflow(device: str):
    """Once per process: grow GPU memory on demand so ONNX Runtime can share the card."""
    global _configured
    import tensorflow as tf

    with _configure_lock:
        if not _configured:
            for gpu in tf.config.list_physical_devices("GPU"):
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:  # already initialised: growth must be set before first use
                    pass
            _configured = True
    gpus = tf.config.list_logical_devices("GPU")
    if device == "gpu" and not gpus:
        raise RuntimeError("--device gpu, but TensorFlow sees no GPU")
    if device == "cpu" or not gpus:
        return tf, "/CPU:0"
    return tf, gpus[0].name


class TensorFlowBackend(Backend):
    platform = "tensorflow_savedmodel"
    model_file = SAVEDMODEL_DIR
    calls_signatures = True

    def load(self) -> None:
        self.tf, self.device = _configure_tensorflow(self.options.device)
        with self.tf.device(self.device):
            self.saved = self.tf.saved_model.load(str(self.version_dir / SAVEDMODEL_DIR))
        self.functions = dict(self.saved.signatures)

    def describe(self) -> dict:
        # From the loaded object: a drop-in's SavedModel is read once, not once more to describe it.
        return describe_signatures(self.functions)

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        signature: str = DEFAULT_SIGNATURE,
    ) -> dict[str, np.ndarray]:
        function = self.functions[self._pick(signature, outputs)]
        tf = self.tf
        with tf.device(self.device):
            results = function(**{name: tf.constant(value) for name, value in inputs.items()})
        return {name: results[name].numpy() for name in outputs}

    def _pick(self, signature: str, outputs: Sequence[str]) -> str:
        """Use a per-head signature when it computes exactly what was asked for."""
        if signature != DEFAULT_SIGNATURE:
            return signature
        wanted = set(outputs)
        for name, spec in self.spec.signatures.items():
            if set(spec["outputs"]) == wanted:
                return name
        return signature

    def unload(self) -> None:
        self.functions = {}
        self.saved = None

    def devices(self) -> list[str]:
        return [getattr(self, "device", "")]
