"""The client's bearer token, TLS and mutual TLS against servers that require them."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from client_support import make_pki, mini_repository
from helpers import start_server
from mimo.client import AsyncClient, Client, InferenceError, ServerUnavailableError

TOKEN = "s3cret-token"
X = np.zeros((1, 64), np.float32)


@pytest.fixture(scope="module")
def small_repo(exported_repo, tmp_path_factory):
    return mini_repository(exported_repo, tmp_path_factory.mktemp("mini") / "repo")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_server(small_repo):
    thread = start_server(small_repo, token=TOKEN)
    yield thread
    thread.stop()


def _unauthenticated(call):
    with pytest.raises(InferenceError) as info:
        call()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and "token" in info.value.message
    return info.value


def test_right_token_works_and_wrong_or_none_is_unauthenticated(token_server):
    with Client(token_server.address, token=TOKEN) as good:
        assert good.predict("mlp", x=X)["probs"].shape == (1, 10)
        assert good.metadata("mlp").inputs["x"].shape == (-1, 64)
        assert [m.name for m in good.models()] == ["mlp"]
        assert len(list(good.predict_many("mlp", [{"x": X}] * 3))) == 3
    for token in ("wrong", None):
        with Client(token_server.address, token=token) as bad:
            error = _unauthenticated(lambda: bad.predict("mlp", x=X))
            assert error.model == "mlp"
            _unauthenticated(lambda: bad.metadata("mlp"))
            _unauthenticated(bad.models)
            _unauthenticated(lambda: list(bad.predict_many("mlp", [{"x": X}])))


def test_health_stays_open_without_a_token(token_server):
    with Client(token_server.address) as anonymous:
        assert anonymous.live() and anonymous.ready()
        anonymous.wait_until_ready(5)


def test_async_token(token_server):
    async def main():
        async with AsyncClient(token_server.address, token=TOKEN) as good, \
                AsyncClient(token_server.address, token="wrong") as bad:
            assert (await good.predict("mlp", x=X))["probs"].shape == (1, 10)
            assert [r async for r in good.predict_many("mlp", [{"x": X}] * 2)]
            assert await bad.ready() and await bad.live()
            with pytest.raises(InferenceError) as info:
                await bad.predict("mlp", x=X)
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())


def test_tls_with_the_ca(small_repo, pki):
    thread = start_server(small_repo, tls_cert=pki["server"], tls_key=pki["server_key"])
    try:
        for host in ("127.0.0.1", "localhost"):  # the certificate names both
            target = f"{host}:{thread.port}"
            with Client(target, root_certificates=pki["ca"], timeout=10) as c:  # a path
                assert c.predict("mlp", x=X)["probs"].shape == (1, 10)
            with Client(target, root_certificates=pki["ca"].read_bytes(), timeout=10) as c:  # PEM bytes
                assert c.ready()
        target = f"127.0.0.1:{thread.port}"
        with Client(target, timeout=5) as plaintext:  # no TLS against a TLS server
            with pytest.raises(ServerUnavailableError, match=target):
                plaintext.predict("mlp", x=X)
        with Client(target, tls=True, timeout=5) as untrusted:  # system roots do not know our CA
            with pytest.raises(ServerUnavailableError, match=target):
                untrusted.predict("mlp", x=X)

        async def main():
            async with AsyncClient(target, root_certificates=pki["ca"], timeout=10) as c:
                return await c.predict("mlp", x=X)

        assert asyncio.run(main())["probs"].shape == (1, 10)
    finally:
        thread.stop()


def test_mutual_tls_needs_a_client_certificate(small_repo, pki):
    thread = start_server(small_repo, tls_cert=pki["server"], tls_key=pki["server_key"], tls_client_ca=pki["ca"])
    target = f"127.0.0.1:{thread.port}"
    try:
        with Client(target, root_certificates=pki["ca"], certificate_chain=pki["client"],
                    private_key=pki["client_key"], timeout=10) as c:
            assert c.predict("mlp", x=X)["probs"].shape == (1, 10)
            assert [m.name for m in c.models()] == ["mlp"]
        with Client(target, root_certificates=pki["ca"], timeout=5) as anonymous:
            with pytest.raises(ServerUnavailableError) as info:
                anonymous.predict("mlp", x=X)
            assert target in str(info.value) and info.value.code == grpc.StatusCode.UNAVAILABLE
            assert not anonymous.ready()  # the handshake itself fails: even health is closed

        async def main():
            async with AsyncClient(target, root_certificates=pki["ca"], certificate_chain=pki["client"],
                                   private_key=pki["client_key"], timeout=10) as c:
                return await c.predict("mlp", x=X)

        assert asyncio.run(main())["probs"].shape == (1, 10)
    finally:
        thread.stop()


def test_certificate_and_key_go_together(pki):
    with pytest.raises(ValueError, match="together"):
        Client("127.0.0.1:1", certificate_chain=pki["client"])
