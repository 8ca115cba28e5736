"""Print the project's requirements for a set of extras, one per line, from pyproject.toml.

The Dockerfile installs these in a layer of their own (so editing the sources does not reinstall
TensorFlow), then installs the project itself with --no-deps.

    python requirements.py pyproject.toml server          # CPU image
    python requirements.py pyproject.toml server gpu      # GPU image

onnxruntime and onnxruntime-gpu install the same `onnxruntime` package and must not both be
installed (the second overwrites some files of the first; removing either breaks the other). When
the `gpu` extra is asked for, the CPU `onnxruntime` requirement is dropped, so only the GPU build
is ever installed. Standard library only (runs in the bare base image).
"""

from __future__ import annotations

import re
import sys
import tomllib

# requirement -> what replaces it when the gpu extra is present
GPU_REPLACES = {"onnxruntime": "onnxruntime-gpu"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;(@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject has {sorted(optional)}")
    out = list(project.get("dependencies", []))
    for extra in extras:
        out += optional[extra]
    if "gpu" in extras:
        out = [r for r in out if _name(r) not in GPU_REPLACES]
    seen, unique = set(), []
    for r in out:
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return unique


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
