"""Triton (python backend + ONNX Runtime, dynamic batching) over any of mimo's exported models.

The shared peers' script (../shared/peers/triton_pybackend/serve_triton_pybackend.sh) writes the
configs of mlp, qa and posts by hand; this writes them from each model's model.json, so the peer
serves whatever the repository holds (dual_camera for the large-tensor comparison), with the same
tritonserver binary, backend stub and model.py, set up by ../shared/peers/setup.sh.

  python bench/triton_peer.py --repository REPO --models dual_camera --port 8411   (exec's tritonserver)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"


def _venv_value(python: Path, expression: str) -> str:
    return subprocess.run([str(python), "-c", f"import sys, sysconfig; print({expression})"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _config(name: str, model_json: dict, onnx: Path, site_packages: str) -> str:
    from mimo.protos import model_config_pb2 as mc
    from mimo.protos.dtypes import datatype_to_triton

    def tensors(entries):
        # Triton's dims leave out the batch axis (max_batch_size > 0).
        return ", ".join(f'{{ name: "{t["name"]}", data_type: {mc.DataType.Name(datatype_to_triton(t["datatype"]))}, '
                         f'dims: [ {", ".join(str(d) for d in t["shape"][1:])} ] }}' for t in entries)

    return f"""name: "{name}"
backend: "python"
max_batch_size: 32
input [ {tensors(model_json["inputs"])} ]
output [ {tensors(model_json["outputs"])} ]
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
parameters {{ key: "onnx_path", value: {{ string_value: "{onnx}" }} }}
parameters {{ key: "site_packages", value: {{ string_value: "{site_packages}" }} }}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, required=True, help="a mimo model repository (exported)")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--port", type=int, default=8411, help="gRPC; HTTP listens one below")
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("ROOT", "/tmp/mimo-peers")))
    ap.add_argument("--peers", type=Path, default=PEERS)
    args = ap.parse_args()
    python = args.root / "venv-triton" / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} is missing: bash {args.peers}/setup.sh first")
    site_packages = _venv_value(python, 'sysconfig.get_paths()["purelib"]')
    libdir = _venv_value(python, 'sysconfig.get_config_var("LIBDIR")')
    version = _venv_value(python, 'f"{sys.version_info[0]}.{sys.version_info[1]}"')
    dist = Path(site_packages) / "pytriton" / "tritonserver"
    work = args.root / f"triton-peer-{args.port}"
    shutil.rmtree(work, ignore_errors=True)
    backend = work / "backends" / "python"
    backend.mkdir(parents=True)
    for item in (dist / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy(item, backend)
    shutil.copy(dist / "python_backend_stubs" / version / "triton_python_backend_stub", backend)
    for name in args.models:
        folder = work / "repo" / name
        (folder / "1").mkdir(parents=True)
        shutil.copy(args.peers / "triton_pybackend" / "model.py", folder / "1" / "model.py")
        versions = sorted((p for p in (args.repository / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        onnx = (versions[-1] / "model.onnx").resolve()
        model_json = json.loads((args.repository / name / "model.json").read_text())
        (folder / "config.pbtxt").write_text(_config(name, model_json, onnx, site_packages))
    # As the shared script: the stub loads this venv's libpython, and finds its numpy<2 through PATH.
    env = {**os.environ, "LD_LIBRARY_PATH": f"{libdir}:{site_packages}/nvidia_pytriton.libs",
           "PATH": f"{python.parent}:{os.environ.get('PATH', '')}"}
    command = [str(dist / "bin" / "tritonserver"), f"--model-repository={work / 'repo'}",
               f"--backend-directory={work / 'backends'}", "--grpc-address=127.0.0.1", f"--grpc-port={args.port}",
               "--http-address=127.0.0.1", f"--http-port={args.port - 1}", "--allow-metrics=false", "--log-info=false"]
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
