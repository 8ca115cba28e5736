"""The backend interface every runtime implements.

A backend is created without a contract: it loads its file, `describe()`s what the loaded model
says about itself (mimo.protos.model_files), and the loader then gives it the contract (`spec`),
model.json completed from and checked against that description.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mimo.protos.repository import ModelSpec

DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class BackendOptions:
    device: str = "auto"  # auto | cpu | gpu
    intra_op_threads: int = 1


class Backend(ABC):
    platform: str = ""  # reported in ModelMetadata / ModelConfig
    model_file: str = ""  # the file it serves, as named in load-time messages
    calls_signatures = False  # True when predict() calls the file's signatures by name

    def __init__(self, version_dir: Path, options: BackendOptions, spec: ModelSpec | None = None):
        self.version_dir = version_dir
        self.options = options
        self.spec = spec

    @abstractmethod
    def load(self) -> None:
        """Load the model files; raise on failure (the model is then reported not ready)."""

    @abstractmethod
    def describe(self) -> dict:
        """The loaded model's own inputs, outputs, signatures and batching (see model_files)."""

    def signature(self, name: str = DEFAULT_SIGNATURE) -> dict[str, list[str]]:
        """Input and output names of a signature, from the model's contract."""
        try:
            return self.spec.signatures[name]
        except KeyError:
            raise KeyError(name) from None

    @abstractmethod
    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        signature: str = DEFAULT_SIGNATURE,
    ) -> dict[str, np.ndarray]:
        """Run the model; return exactly the requested `outputs`."""

    def unload(self) -> None:
        """Release the model's memory."""

    def devices(self) -> list[str]:
        """Where the model runs (for logs and the GPU check)."""
        return ["cpu"]
