"""Shared by the client tests: the raw-protocol reference call, comparisons, a test PKI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import numpy as np

from mimo.protos import codec
from mimo.protos import grpc_service_pb2_grpc as pb_grpc

BIG = 256 * 1024 * 1024


def raw_infer(address: str, model: str, inputs: dict, outputs=None, parameters=None, version=None) -> dict:
    """The server's answer through a bare stub and the codec: what the client must reproduce."""
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", BIG)]) as channel:
        request = codec.encode_infer_request(model, inputs, outputs=outputs, version=version, parameters=parameters)
        return codec.decode_infer_response(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120))


def assert_same(got: dict, want: dict, atol: float = 1e-5) -> None:
    assert list(got) == list(want) or set(got) == set(want), (list(got), list(want))
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=1e-5, err_msg=name)


def make_pki(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl CLI)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=mimo test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, usage, extra in (("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
                               ("client", "clientAuth", "")):
        (folder / f"{name}.ext").write_text(f"{extra}extendedKeyUsage={usage}\n")
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=mimo test {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {p.stem + ("_key" if p.suffix == ".key" else ""): p for p in folder.iterdir()
            if p.suffix in (".pem", ".key")}


def mini_repository(repository: Path, folder: Path, models=("mlp",)) -> Path:
    """A repository with only some models (links), so an extra server starts in a blink."""
    folder.mkdir(parents=True, exist_ok=True)
    for model in models:
        (folder / model).symlink_to(Path(repository).resolve() / model, target_is_directory=True)
    return folder
