#!/usr/bin/env python
"""Regenerate mimo's protobuf/gRPC modules from protos/*.proto.

    python scripts/gen_protos.py            # into protos/ (commit the result)
    python scripts/gen_protos.py --out DIR  # elsewhere (the freshness test)

The .proto files are staged under a temporary `mimo/protos/` include root so
the generated cross-imports read `from mimo.protos import x_pb2`. Each
generated *_pb2.py is then pointed at mimo's private descriptor pool
(protos/_pool.py explains why).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent.parent / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_OUR_POOL = "DESCRIPTOR = _mimo_pool.POOL.AddSerializedFile("
_IMPORTS_MARK = "# @@protoc_insertion_point(imports)\n"


def is_generated(path: Path) -> bool:
    return path.name.endswith(GENERATED_SUFFIXES)


def _use_private_pool(text: str, name: str) -> str:
    if text.count(_DEFAULT_POOL) != 1 or _IMPORTS_MARK not in text:
        raise RuntimeError(f"{name}: unexpected protoc output; update gen_protos.py")
    text = text.replace(_DEFAULT_POOL, _OUR_POOL)
    return text.replace(_IMPORTS_MARK, _IMPORTS_MARK + "from mimo.protos import _pool as _mimo_pool\n", 1)


def generate(out_dir: Path) -> list[Path]:
    """Write every generated module for protos/*.proto into out_dir; return their paths."""
    import grpc_tools  # dev extra; imported here so --help works without it

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(PROTOS.glob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files in {PROTOS}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root, gen = Path(tmp, "src"), Path(tmp, "gen")
        staged = root / "mimo" / "protos"
        staged.mkdir(parents=True)
        gen.mkdir()
        for src in sources:
            shutil.copyfile(src, staged / src.name)
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"-I{well_known}",
               f"--python_out={gen}", f"--pyi_out={gen}", f"--grpc_python_out={gen}",
               *(f"mimo/protos/{s.name}" for s in sources)]
        subprocess.run(cmd, check=True)
        written = []
        for path in sorted((gen / "mimo" / "protos").iterdir()):
            text = path.read_text()
            if path.name.endswith("_pb2_grpc.py") and "\nclass " not in text:
                continue  # a .proto without services: the module would be empty
            if path.name.endswith("_pb2.py"):
                text = _use_private_pool(text, path.name)
            target = out_dir / path.name
            target.write_text(text)
            written.append(target)
    # Drop generated modules whose .proto is gone.
    keep = {p.name for p in written}
    for stale in out_dir.iterdir():
        if is_generated(stale) and stale.name not in keep:
            stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTOS, help="output folder (default: protos/)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
