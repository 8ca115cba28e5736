"""A masked `qa` for the padding-vs-grouping measurement (bench only; export's default is unchanged).

`Embedding(mask_zero=True)` makes right-padding with token 0 exact (the LSTMs skip masked steps),
so requests of different lengths may share one padded batch. The price: tf2onnx cannot fuse a
masked LSTM, so its ONNX graph is a Loop over time steps instead of one LSTM op.

  python bench/masked.py OUT_REPO    exports it as model `qa` into OUT_REPO/qa (1 epoch, 64 samples)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PADDING = {"text": 0, "question": 0}


def build_qa_masked(image_size: int):
    import keras
    from keras import layers

    from mimo.export import builders

    standard = builders.build_qa(image_size)  # same contract, data and targets; only the model differs
    text = keras.Input(shape=(None,), dtype="int32", name="text")
    question = keras.Input(shape=(None,), dtype="int32", name="question")
    text_embedding = layers.Embedding(10000, 64, mask_zero=True)
    question_embedding = layers.Embedding(10000, 32, mask_zero=True)
    encoded_text = layers.LSTM(32)(text_embedding(text))
    encoded_question = layers.LSTM(16)(question_embedding(question))
    merged = layers.concatenate([encoded_text, encoded_question], axis=-1)
    answer = layers.Dense(500, activation="softmax")(merged)
    standard.model = keras.Model({"text": text, "question": question}, {"answer": answer}, name="qa")
    return standard


def export_masked(out: Path) -> Path:
    """Export the masked qa into out/qa (once), with model.json declaring the padding exact."""
    model_dir = out / "qa"
    if not (model_dir / "1" / "model.onnx").is_file():
        from mimo.export import builders
        from mimo.export.notebook import ExportOptions, export_notebook_model

        original = builders.BUILDERS["qa"]
        builders.BUILDERS["qa"] = build_qa_masked
        try:
            export_notebook_model("qa", ExportOptions(out=out, version=1, epochs=1, samples=64, verbose=0, force=True))
        finally:
            builders.BUILDERS["qa"] = original
    document = json.loads((model_dir / "model.json").read_text())
    document.setdefault("batching", {})["padding"] = dict(PADDING)
    from mimo.protos.repository import write_model_json

    write_model_json(model_dir, document)
    return model_dir


def without_padding(masked_repo: Path, out: Path) -> Path:
    """A second repository serving the same masked qa, but grouping by shape (no padding)."""
    model_dir = out / "qa"
    model_dir.mkdir(parents=True, exist_ok=True)
    document = json.loads((masked_repo / "qa" / "model.json").read_text())
    document.get("batching", {}).pop("padding", None)
    (model_dir / "model.json").write_text(json.dumps(document, indent=1))
    link = model_dir / "1"
    if not link.exists():
        link.symlink_to((masked_repo / "qa" / "1").resolve())
    return model_dir


if __name__ == "__main__":
    print(export_masked(Path(sys.argv[1])))
