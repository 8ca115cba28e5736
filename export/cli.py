"""`mimo export`: build, fit and write the notebook's models into a model repository."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of the way


def parse_args(argv: list[str]) -> argparse.Namespace:
    from mimo.export.builders import BUILDERS

    parser = argparse.ArgumentParser(prog="mimo export", description=__doc__)
    parser.add_argument("--models", nargs="+", choices=list(BUILDERS), default=list(BUILDERS), metavar="NAME",
                        help=f"models to export (default: all of {', '.join(BUILDERS)})")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("MIMO_MODEL_REPOSITORY", "models")),
                        help="model repository folder (default: ./models)")
    parser.add_argument("--version", type=int, default=None,
                        help="version number to write (default: one above the newest)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: per model)")
    parser.add_argument("--samples", type=int, default=None, help="synthetic training samples (default: per model)")
    parser.add_argument("--image-size", type=int, default=250,
                        help="Xception input size for dual_camera (default 250; 71 is the smallest)")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no Keras progress output")
    args = parser.parse_args(argv)
    if args.image_size < 71:
        parser.error("--image-size must be at least 71 (Xception's smallest input)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from mimo.export.pipeline import ExportError, ExportOptions, export_model
    from mimo.export.parity import ParityError

    options = ExportOptions(
        out=args.out, version=args.version, epochs=args.epochs, samples=args.samples,
        image_size=args.image_size, force=args.force, seed=args.seed, verbose=0 if args.quiet else 1,
    )
    for name in args.models:
        print(f"== exporting {name} into {args.out}", flush=True)
        started = time.monotonic()
        try:
            facts = export_model(name, options)
        except (ExportError, ParityError) as exc:
            print(f"mimo export: {exc}", file=sys.stderr)
            return 1
        parity = ", ".join(f"{k} {v:.2g}" for k, v in facts["parity"].items())
        sizes = facts["sizes_bytes"]
        print(
            f"== {name}: {time.monotonic() - started:.1f}s, {facts['parameters']:,} parameters, "
            f"SavedModel {sizes['savedmodel'] / 1e6:.1f} MB, ONNX {sizes['onnx'] / 1e6:.1f} MB, "
            f"parity max|diff| {parity}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
