"""mimo.client.AsyncClient: the same methods as coroutines, the same results and errors."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from client_support import assert_same, raw_infer
from helpers import MODELS, free_port, sample_inputs
from mimo.client import AsyncClient, InferenceError, ServerUnavailableError


def run(coroutine):
    return asyncio.run(coroutine)


def test_predict_every_model_matches_the_raw_protocol(exported_repo, server):
    inputs = {model: sample_inputs(exported_repo, model, 2, seed=7) for model in MODELS}
    want = {model: raw_infer(server.address, model, inputs[model]) for model in MODELS}

    async def main():
        async with AsyncClient(server.address, timeout=120) as plain, \
                AsyncClient(server.address, timeout=120) as checked:
            for model in MODELS:
                await checked.metadata(model)
            # Concurrent calls on one channel.
            got = await asyncio.gather(*(plain.predict(m, inputs[m]) for m in MODELS))
            got_checked = await asyncio.gather(*(checked.predict(m, **inputs[m]) for m in MODELS))
            return got, got_checked

    got, got_checked = run(main())
    for model, g, gc in zip(MODELS, got, got_checked):
        assert_same(g, want[model])
        assert_same(gc, want[model])


def test_outputs_version_signature_and_lists(exported_repo, server, tf_server):
    posts = sample_inputs(exported_repo, "posts", 2, seed=2)
    qa = sample_inputs(exported_repo, "qa", 1, seed=2)
    x = np.linspace(0, 1, 64, dtype=np.float32)[None]

    async def main():
        async with AsyncClient(server.address) as c, AsyncClient(tf_server.address) as tf:
            heads = await c.predict("posts", posts, outputs=["gender", "age"], version=1)
            assert set(heads) == {"gender", "age"}
            age = await tf.predict("posts", posts=posts["posts"], signature="age")
            assert list(age) == ["age"]
            assert_same(age, raw_infer(tf_server.address, "posts", posts, parameters={"signature_name": "age"}))
            want = await c.predict("mlp", x=x)
            assert_same(await c.predict("mlp", x=x.tolist()), want)  # fetches mlp's metadata by itself
            assert_same(await c.predict("mlp", x=x.astype(np.float64)), want)
            tokens = posts["posts"].astype(np.int64)
            assert_same(await c.predict("posts", posts=tokens), await c.predict("posts", posts))
            got = [r async for r in c.predict_many("qa", [{k: v.astype(np.int64) for k, v in qa.items()}] * 3)]
            assert len(got) == 3 and all(np.array_equal(g["answer"], got[0]["answer"]) for g in got)
            assert_same(got[0], await c.predict("qa", qa))
            tokens[0, 0] = 2**40
            with pytest.raises(InferenceError, match="input 'posts': int64 value 1099511627776 does not fit INT32"):
                await c.predict("posts", posts=tokens)

    run(main())


def test_metadata_models_and_health(server):
    async def main():
        async with AsyncClient(server.address) as c:
            assert await c.live() and await c.ready() and await c.ready("posts")
            assert not await c.ready("nope")
            await c.wait_until_ready(5)
            meta = await c.metadata("posts")
            assert meta.inputs["posts"].min_length == 269 and meta.inputs["posts"].id_range == (0, 50000)
            assert list(meta.outputs) == ["age", "income", "gender"]
            models = await c.models()
            assert sorted(m.name for m in models) == sorted(MODELS) and all(m.ready for m in models)

    run(main())


def test_errors(exported_repo, server):
    async def main():
        async with AsyncClient(server.address) as c:
            with pytest.raises(InferenceError) as info:
                await c.predict("nope", x=np.zeros((1, 64), np.float32))
            assert info.value.code == grpc.StatusCode.NOT_FOUND and info.value.model == "nope"
            short = {"posts": np.ones((1, 20), np.int32)}
            with pytest.raises(InferenceError) as remote:
                await c.predict("posts", short)
            await c.metadata("posts")
            with pytest.raises(InferenceError) as local:
                await c.predict("posts", short)
            assert remote.value.code == local.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert local.value.message == remote.value.message
            with pytest.raises(InferenceError) as info:
                await c.predict("dual_camera", sample_inputs(exported_repo, "dual_camera", 8), timeout=1e-4)
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        target = f"127.0.0.1:{free_port()}"
        async with AsyncClient(target, timeout=5) as down:
            started = time.monotonic()
            with pytest.raises(ServerUnavailableError, match=target):
                await down.predict("mlp", x=np.zeros((1, 64), np.float32))
            assert time.monotonic() - started < 5
            assert not await down.live() and not await down.ready()
            with pytest.raises(ServerUnavailableError, match="not ready after"):
                await down.wait_until_ready(0.3)
            with pytest.raises(ServerUnavailableError, match=target):
                async for _ in down.predict_many("mlp", [{"x": np.zeros((1, 64), np.float32)}]):
                    pass

    run(main())


def test_predict_many_order_and_errors(exported_repo, server):
    rng = np.random.default_rng(1)
    items = [{"x": rng.random((1 + i % 3, 64), dtype=np.float32)} for i in range(50)]
    want = [raw_infer(server.address, "mlp", item) for item in items]
    bad = [sample_inputs(exported_repo, "posts", 1, seed=i) for i in range(8)]
    bad[2] = {"posts": bad[2]["posts"][:, :30]}

    async def main():
        async with AsyncClient(server.address) as c:
            got = [r async for r in c.predict_many("mlp", items, concurrency=12)]
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert_same(g, w)
            seen = []
            with pytest.raises(InferenceError, match="sequence length 30") as info:
                async for heads in c.predict_many("posts", bad, concurrency=4):
                    seen.append(heads)
            assert len(seen) == 2 and info.value.model == "posts"
            mixed = [r async for r in c.predict_many("posts", bad, outputs=["age"], return_exceptions=True)]
            assert [type(r) is InferenceError for r in mixed] == [False, False, True] + [False] * 5
            assert all(list(r) == ["age"] for r in mixed if not isinstance(r, InferenceError))
            # Breaking out early cancels the stream and leaves the client usable.
            async for _ in c.predict_many("mlp", items, concurrency=4):
                break
            assert_same(await c.predict("mlp", items[0]), want[0])

    run(main())
