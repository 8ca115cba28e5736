"""The reference notebook's models: build and fit each, then hand it to the one exporter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimo.export.builders import BUILDERS, Blueprint
from mimo.export.pipeline import ExportError, export_model


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


def export_notebook_model(name: str, options: ExportOptions) -> dict:
    """Build, fit and export one notebook model; returns the facts recorded in model.json."""
    if name not in BUILDERS:
        raise ExportError(f"unknown model {name!r}; choose from {', '.join(BUILDERS)}")
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(options.seed)
    blueprint = BUILDERS[name](options.image_size)
    training = fit(blueprint, options)
    return export_model(
        blueprint.model, name, options.out, version=options.version, force=options.force,
        max_batch_size=blueprint.max_batch_size,
        facts={"image_size": options.image_size, "training": training},
        log=print if options.verbose else None,
    )


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
