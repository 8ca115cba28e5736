"""`mimo export`: a Keras model of your own (--from), or the notebook's models, into a model repository."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of the way

NOTEBOOK_MODELS = ["mlp", "qa", "posts", "similarity", "dual_camera", "clothing_price", "inception_residual"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mimo export", description=__doc__,
        epilog="examples:  mimo export --from my_model.keras --name mine --out models\n"
               "           mimo export --models qa posts --out models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="source", type=Path, metavar="PATH",
                        help="export your own model: a .keras or .h5 file, or a SavedModel folder")
    parser.add_argument("--name", help="the model's name in the repository (with --from)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module (or a .py file) first, e.g. the one registering custom layers; repeatable")
    parser.add_argument("--unsafe-lambda", action="store_true",
                        help="let Keras load Lambda layers from the file (runs the code it holds: only for files you trust)")
    parser.add_argument("--models", nargs="+", choices=NOTEBOOK_MODELS, default=None, metavar="NAME",
                        help=f"notebook models to build, fit and export (default: all of {', '.join(NOTEBOOK_MODELS)})")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("MIMO_MODEL_REPOSITORY", "models")),
                        help="model repository folder (default: ./models)")
    parser.add_argument("--version", type=int, default=None,
                        help="version number to write (default: one above the newest)")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument("--max-batch-size", type=int, default=32,
                        help="largest batch the server forms for the model (with --from; default 32)")
    notebook = parser.add_argument_group("notebook models only")
    notebook.add_argument("--epochs", type=int, default=None, help="training epochs (default: per model)")
    notebook.add_argument("--samples", type=int, default=None, help="synthetic training samples (default: per model)")
    notebook.add_argument("--image-size", type=int, default=250,
                          help="Xception input size for dual_camera (default 250; 71 is the smallest)")
    notebook.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    if args.source is not None:
        if not args.name:
            parser.error("--from needs --name: the model's name in the repository")
        if args.models:
            parser.error("--from and --models do not go together")
    elif args.name or args.imports or args.unsafe_lambda:
        parser.error("--name, --import and --unsafe-lambda go with --from")
    if args.image_size < 71:
        parser.error("--image-size must be at least 71 (Xception's smallest input)")
    if args.version is not None and args.version < 1:
        parser.error(f"--version must be a positive integer, got {args.version}")
    if args.max_batch_size < 0:
        parser.error("--max-batch-size must be 0 (no batching) or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from mimo.export.pipeline import ExportError, ParityError

    try:
        if args.source is not None:
            export_own(args)
        else:
            export_notebook(args)
    except (ExportError, ParityError) as exc:
        print(f"mimo export: {exc}", file=sys.stderr)
        return 1
    return 0


def export_own(args: argparse.Namespace) -> None:
    from mimo.export.pipeline import check_name, describe, export_model
    from mimo.export.sources import import_modules, load_model

    say = (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))
    check_name(args.name)  # before loading anything: a bad name is the cheapest thing to report
    import_modules(args.imports)
    say(f"== exporting {args.source} as {args.name} into {args.out}")
    facts = export_folder(args, say) if args.source.is_dir() else None
    if facts is None:
        model = load_model(args.source, safe_mode=not args.unsafe_lambda)
        facts = export_model(model, args.name, args.out, version=args.version, force=args.force,
                             max_batch_size=args.max_batch_size, facts={"source": str(args.source)}, log=say)
        say(f"== {describe(args.name, facts)}")
    else:
        say(f"== {args.name}: model.json written from the files ({', '.join(facts['formats'])})")
    for name, notes in facts["analysis"].items():
        say(f"   {name}: " + "; ".join(notes))


def export_folder(args: argparse.Namespace, say) -> dict | None:
    """A drop-in version folder in the repository, or a folder holding only model.onnx: its
    model.json from the files. None when the folder is a SavedModel to export as a Keras model."""
    from mimo.export import adopt
    from mimo.export.pipeline import ExportError
    from mimo.export.sources import savedmodel_folder
    from mimo.protos.repository import ONNX_FILE

    number = adopt.in_place_version(args.source, args.out, args.name)
    if number is not None:
        if args.version not in (None, number):
            raise ExportError(f"--from {args.source} is version {number} already; --version {args.version} does not apply")
        return adopt.adopt_in_place(args.source, args.name, args.force, say)
    if savedmodel_folder(args.source) is None and (args.source / ONNX_FILE).is_file():
        return adopt.import_onnx(args.source, args.name, args.out, args.version, args.force, say)
    return None


def export_notebook(args: argparse.Namespace) -> None:
    from mimo.export.notebook import ExportOptions, export_notebook_model
    from mimo.export.pipeline import describe

    options = ExportOptions(
        out=args.out, version=args.version, epochs=args.epochs, samples=args.samples,
        image_size=args.image_size, force=args.force, seed=args.seed, verbose=0 if args.quiet else 1,
    )
    for name in args.models or NOTEBOOK_MODELS:
        print(f"== exporting {name} into {args.out}", flush=True)
        started = time.monotonic()
        facts = export_notebook_model(name, options)
        print(f"== {describe(name, facts)} ({time.monotonic() - started:.1f}s with training)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
