"""mimo.export: any Keras model into a model repository (SavedModel + ONNX, checked, atomic).

    from mimo.export import export_model
    export_model(model, "mine", repository="models")   # after model.fit(), in a notebook

Imported lazily, so `import mimo.export` does not load TensorFlow until an export runs.
"""

from __future__ import annotations

__all__ = ["export_model", "ExportError", "ParityError"]


def __getattr__(name: str):
    if name in __all__:
        from mimo.export import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'mimo.export' has no attribute {name!r}")
