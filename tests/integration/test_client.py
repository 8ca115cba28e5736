"""mimo.client.Client against the real in-process server: every method, every model, every error."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from client_support import assert_same, raw_infer
from helpers import MODELS, free_port, sample_inputs
from mimo.client import Client, InferenceError, ModelMetadata, ServerUnavailableError

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def client(server):
    """No metadata cached or fetched: no local checks, the server judges every request."""
    with Client(server.address, timeout=120, local_checks=False) as c:
        yield c


@pytest.fixture(scope="module")
def checked(server):
    """Every model's metadata cached: local checks on, lists converted."""
    with Client(server.address, timeout=120) as c:
        for model in MODELS:
            c.metadata(model)
        yield c


# -- results equal the raw protocol -------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_predict_matches_the_raw_protocol(exported_repo, server, client, checked, model):
    inputs = sample_inputs(exported_repo, model, 2, seed=3)
    want = raw_infer(server.address, model, inputs)
    assert_same(client.predict(model, inputs), want)
    assert_same(checked.predict(model, **inputs), want)  # keywords, checks on


def test_mapping_keywords_and_both_agree(exported_repo, checked):
    inputs = sample_inputs(exported_repo, "qa", 3, seed=1)
    by_mapping = checked.predict("qa", inputs)
    assert_same(checked.predict("qa", **inputs), by_mapping)
    assert_same(checked.predict("qa", {"text": inputs["text"]}, question=inputs["question"]), by_mapping)
    with pytest.raises(TypeError, match="both"):
        checked.predict("qa", inputs, text=inputs["text"])


def test_outputs_returns_exactly_those_heads(exported_repo, server, client, checked):
    inputs = sample_inputs(exported_repo, "posts", 2, seed=4)
    full = raw_infer(server.address, "posts", inputs)
    for c in (client, checked):
        assert list(c.predict("posts", inputs, outputs=["income"])) == ["income"]
        got = c.predict("posts", inputs, outputs=["gender", "age"])
        assert set(got) == {"gender", "age"}
        assert_same(got, {k: full[k] for k in ("gender", "age")})
        assert list(c.predict("posts", inputs, outputs="age")) == ["age"]  # one name is fine too
        assert set(c.predict("posts", inputs, outputs=(n for n in ("income", "age")))) == {"income", "age"}


def test_arrays_keep_the_servers_shape_and_dtype(exported_repo, checked):
    heads = checked.predict("posts", sample_inputs(exported_repo, "posts", 3))
    assert {k: (v.shape, v.dtype) for k, v in heads.items()} == {
        "age": ((3, 1), np.float32), "income": ((3, 10), np.float32), "gender": ((3, 1), np.float32)}


def test_version(exported_repo, client, checked):
    inputs = sample_inputs(exported_repo, "mlp", 1)
    want = client.predict("mlp", inputs)
    assert_same(client.predict("mlp", inputs, version=1), want)
    assert_same(checked.predict("mlp", inputs, version="1"), want)
    with pytest.raises(InferenceError) as info:
        client.predict("mlp", inputs, version=7)
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "version" in info.value.message
    assert info.value.model == "mlp"


def test_signature_selects_a_head_on_the_tensorflow_backend(exported_repo, tf_server):
    inputs = sample_inputs(exported_repo, "posts", 2, seed=5)
    with Client(tf_server.address, timeout=120) as c, Client(tf_server.address, timeout=120) as checked:
        checked.metadata("posts")
        for signature in ("age", "income", "gender"):
            want = raw_infer(tf_server.address, "posts", inputs, parameters={"signature_name": signature})
            assert list(want) == [signature]
            assert_same(c.predict("posts", inputs, signature=signature), want)
            assert_same(checked.predict("posts", posts=inputs["posts"], signature=signature), want)
        # Local and remote refusals of a signature agree.
        for cl in (c, checked):
            with pytest.raises(InferenceError, match="unknown signature 'height'") as info:
                cl.predict("posts", inputs, signature="height")
            assert info.value.code == INVALID
        with pytest.raises(InferenceError, match="unknown output 'income' in signature 'age'"):
            checked.predict("posts", inputs, signature="age", outputs=["income"])


# -- lists, metadata, models, health ------------------------------------------------------------


def test_lists_take_the_declared_dtype(server, checked):
    x = np.linspace(0, 1, 64, dtype=np.float32)[None]
    want = checked.predict("mlp", x=x)
    assert_same(checked.predict("mlp", x=x.tolist()), want)  # float64 values -> the declared FP32
    with Client(server.address) as fresh:  # fetches mlp's metadata by itself
        assert_same(fresh.predict("mlp", x=x.tolist()), want)
    with Client(server.address, local_checks=False) as unchecked:  # fetches nothing by itself
        with pytest.raises(InferenceError, match=r"input 'x' is a list .*metadata\('mlp'\)") as info:
            unchecked.predict("mlp", x=x.tolist())
        assert info.value.code == INVALID
        unchecked.metadata("mlp")
        assert_same(unchecked.predict("mlp", x=x.tolist()), want)
    with pytest.raises(InferenceError, match="input 'text': int64 value 1099511627776 does not fit INT32"):
        checked.predict("qa", text=[[2**40]], question=[[1]])


# -- numpy's default dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["posts", "qa", "mlp"])
def test_int64_and_float64_arrays_give_the_int32_fp32_answer(exported_repo, server, model):
    exact = sample_inputs(exported_repo, model, 2, seed=7)  # INT32 / FP32, as the model declares
    defaults = {k: v.astype(np.int64 if v.dtype.kind == "i" else np.float64) for k, v in exact.items()}
    want = raw_infer(server.address, model, exact)
    with Client(server.address, timeout=120) as fresh:  # nothing cached: the first call fetches
        assert_same(fresh.predict(model, defaults), want)
        assert fresh._core.cached(model) is not None
        assert_same(fresh.predict(model, **defaults), want)
        got = list(fresh.predict_many(model, [defaults, exact, defaults], concurrency=2))
        for g in got:
            assert_same(g, want)


def test_predict_many_fetches_the_metadata_its_items_need(exported_repo, server):
    exact = sample_inputs(exported_repo, "qa", 1, seed=8)
    defaults = {k: v.astype(np.int64) for k, v in exact.items()}
    with Client(server.address, timeout=120) as fresh:
        got = list(fresh.predict_many("qa", [defaults] * 5, concurrency=3))
        assert len(got) == 5 and fresh._core.cached("qa") is not None
        for g in got:
            assert_same(g, raw_infer(server.address, "qa", exact))
        [error] = list(fresh.predict_many("nope", [{"x": np.zeros((1, 64))}], return_exceptions=True))
        assert error.code == grpc.StatusCode.NOT_FOUND and error.model == "nope"


def test_int64_values_outside_int32_are_refused_naming_the_input(exported_repo, server):
    posts = sample_inputs(exported_repo, "posts", 1)["posts"].astype(np.int64)
    posts[0, 5] = 3_000_000_000
    stats = lambda: server.server.registry.get("posts").stats.inference_count  # noqa: E731
    before = stats()
    with Client(server.address, timeout=120) as fresh:
        with pytest.raises(InferenceError) as info:
            fresh.predict("posts", posts=posts)
        with pytest.raises(InferenceError, match="input 'x': float64 value 1e\\+39 does not fit FP32"):
            fresh.predict("mlp", x=np.full((1, 64), 1e39))
    assert info.value.code == INVALID and info.value.model == "posts"
    assert info.value.message == "model 'posts': input 'posts': int64 value 3000000000 does not fit INT32"
    assert stats() == before  # refused before sending


def test_metadata_has_dtypes_shapes_and_constraints(client):
    meta = client.metadata("posts")
    assert isinstance(meta, ModelMetadata) and meta.name == "posts" and meta.versions == ("1",)
    posts = meta.inputs["posts"]
    assert (posts.datatype, posts.shape, posts.dtype) == ("INT32", (-1, -1), np.dtype(np.int32))
    assert posts.min_length == 269 and posts.id_range == (0, 50000)
    assert list(meta.outputs) == ["age", "income", "gender"]
    assert meta.outputs["income"].shape == (-1, 10)
    assert meta.signatures["age"] == {"inputs": ["posts"], "outputs": ["age"]}
    assert meta.max_batch_size > 0
    qa = client.metadata("qa", version=1)
    assert qa.inputs["text"].id_range == (0, 10000) and qa.inputs["text"].min_length is None
    mlp = client.metadata("mlp")
    assert mlp.inputs["x"].id_range is None and mlp.inputs["x"].shape == (-1, 64)
    with pytest.raises(InferenceError) as info:
        client.metadata("nope")
    assert info.value.code == grpc.StatusCode.NOT_FOUND and info.value.model == "nope"
    client._core.forget()  # this module's `client` stays unchecked


def test_models_lists_versions_and_readiness(client):
    models = {m.name: m for m in client.models()}
    assert sorted(models) == sorted(MODELS)
    for m in models.values():
        assert m.versions == ("1",) and m.ready and m.states == {"1": "READY"}


def test_health(client):
    assert client.live() and client.ready()
    assert client.ready("mlp") and client.ready("mlp", version=1)
    assert not client.ready("nope") and not client.ready("mlp", version=9)
    client.wait_until_ready(5)


# -- errors -------------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client, checked):
    for c in (client, checked):
        with pytest.raises(InferenceError) as info:
            c.predict("nope", x=np.zeros((1, 64), np.float32))
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert "unknown model 'nope'" in info.value.message and info.value.model == "nope"
        assert not isinstance(info.value, ServerUnavailableError)


def _bad_requests(repo):
    posts = sample_inputs(repo, "posts", 1)
    qa = sample_inputs(repo, "qa", 1)
    mlp = sample_inputs(repo, "mlp", 1)
    outside = qa["text"].copy()
    outside[0, 3] = 10000
    return {
        "wrong dtype": ("qa", {"text": qa["text"].astype(np.float32), "question": qa["question"]}, {},
                        "input 'text': datatype FP32"),  # floats are never narrowed to ids
        "wrong rank": ("mlp", {"x": mlp["x"][0]}, {}, "input 'x': rank 1"),
        "wrong fixed dim": ("mlp", {"x": mlp["x"][:, :63]}, {}, "input 'x': dimension 1 is 63"),
        "too short": ("posts", {"posts": posts["posts"][:, :100]}, {}, "input 'posts': sequence length 100"),
        "id out of range": ("qa", {"text": outside, "question": qa["question"]}, {},
                            "input 'text': token id 10000 at [0, 3]"),
        "negative id": ("qa", {"text": -qa["text"], "question": qa["question"]}, {}, "input 'text': token id -"),
        "missing input": ("qa", {"text": qa["text"]}, {}, "missing input 'question'"),
        "unexpected input": ("mlp", {**mlp, "y": mlp["x"]}, {}, "unexpected input 'y'"),
        "batch mismatch": ("qa", {"text": qa["text"], "question": np.repeat(qa["question"], 2, 0)}, {},
                           "inputs disagree on the batch size"),
        "empty batch": ("mlp", {"x": mlp["x"][:0]}, {}, "input 'x': empty batch"),
        "over max batch": ("mlp", {"x": np.repeat(mlp["x"], 33, 0)}, {}, "over the model's max_batch_size"),
        "unknown output": ("mlp", mlp, {"outputs": ["logits"]}, "unknown output 'logits'"),
    }


BAD_CASES = ["wrong dtype", "wrong rank", "wrong fixed dim", "too short", "id out of range", "negative id",
             "missing input", "unexpected input", "batch mismatch", "empty batch", "over max batch", "unknown output"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_local_and_server_checks_agree(exported_repo, server, client, checked, case):
    model, inputs, kwargs, expected = _bad_requests(exported_repo)[case]
    with pytest.raises(InferenceError) as remote:  # no metadata: the server refuses it
        client.predict(model, inputs, **kwargs)
    with Client(server.address, local_checks=False) as unchecked:
        unchecked.metadata(model)
        with pytest.raises(InferenceError) as also_remote:
            unchecked.predict(model, inputs, **kwargs)
    with pytest.raises(InferenceError) as local:
        checked.predict(model, inputs, **kwargs)
    assert remote.value.code == also_remote.value.code == local.value.code == INVALID
    assert expected in remote.value.message and expected in local.value.message
    # Same wording: the local message is the server's (plus, for a dtype, how to convert).
    assert local.value.message.startswith(remote.value.message.rstrip("."))
    assert local.value.model == remote.value.model == model


def test_local_check_sends_nothing(exported_repo, server, checked):
    stats = lambda: server.server.registry.get("posts").stats.inference_count  # noqa: E731
    before = stats()
    with pytest.raises(InferenceError):
        checked.predict("posts", posts=np.ones((1, 10), np.int32))
    assert stats() == before


def test_server_down_names_the_address_within_the_timeout():
    target = f"127.0.0.1:{free_port()}"
    with Client(target, timeout=5) as c:
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            c.predict("mlp", x=np.zeros((1, 64), np.float32))
        assert time.monotonic() - started < 5
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and target in str(info.value)
        assert info.value.target == target and isinstance(info.value, InferenceError)
        assert not c.live() and not c.ready()
        with pytest.raises(ServerUnavailableError, match=target):
            c.models()
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="not ready after 0.5 s"):
            c.wait_until_ready(0.5)
        assert time.monotonic() - started < 3


def test_deadline_exceeded(exported_repo, checked):
    inputs = sample_inputs(exported_repo, "dual_camera", 8)
    with pytest.raises(InferenceError) as info:
        checked.predict("dual_camera", inputs, timeout=1e-4)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    with Client(checked.target, timeout=1e-4) as hasty:  # the client's default deadline
        with pytest.raises(InferenceError) as info:
            hasty.predict("dual_camera", inputs)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert checked.predict("mlp", sample_inputs(exported_repo, "mlp", 1))  # the client still works


# -- predict_many ---------------------------------------------------------------------------------


def test_predict_many_keeps_order_with_concurrency(exported_repo, server, client, checked):
    # Different batch sizes and contents, so a swapped answer cannot pass.
    rng = np.random.default_rng(0)
    items = [{"x": rng.random((1 + i % 4, 64), dtype=np.float32)} for i in range(60)]
    want = [client.predict("mlp", item) for item in items]
    for c, concurrency in ((client, 16), (checked, 5), (client, 1)):
        got = list(c.predict_many("mlp", items, concurrency=concurrency))
        assert len(got) == len(items)
        for g, w in zip(got, want):
            assert_same(g, w)
    # A generator of items, outputs= and version= pass through.
    posts = [sample_inputs(exported_repo, "posts", 1, seed=i) for i in range(6)]
    got = list(checked.predict_many("posts", iter(posts), outputs=["income"], version=1, concurrency=3))
    assert [list(g) for g in got] == [["income"]] * 6
    for g, item in zip(got, posts):
        assert_same(g, raw_infer(server.address, "posts", item, outputs=["income"]))


def test_predict_many_stops_at_an_error_by_default(exported_repo, client, checked):
    items = [sample_inputs(exported_repo, "posts", 1, seed=i) for i in range(10)]
    items[5] = {"posts": items[5]["posts"][:, :50]}  # too short
    for c in (client, checked):  # server error / local check
        got = []
        with pytest.raises(InferenceError, match="sequence length 50") as info:
            for heads in c.predict_many("posts", items, concurrency=4):
                got.append(heads)
        assert len(got) == 5 and info.value.model == "posts"
        # Server and local check agree on the status code (the server sends it as a parameter).
        assert info.value.code == INVALID


def test_predict_many_return_exceptions_yields_the_error_in_place(exported_repo, client, checked):
    items = [sample_inputs(exported_repo, "qa", 1, seed=i) for i in range(12)]
    items[3] = {"text": items[3]["text"]}  # missing input
    items[8] = {"text": items[8]["text"] + 10000, "question": items[8]["question"]}  # ids outside the vocabulary
    for c in (client, checked):
        got = list(c.predict_many("qa", items, concurrency=8, return_exceptions=True))
        assert len(got) == 12
        assert [i for i, g in enumerate(got) if isinstance(g, InferenceError)] == [3, 8]
        assert "missing input 'question'" in got[3].message and "outside the vocabulary" in got[8].message
        for i in (0, 4, 11):
            assert_same(got[i], client.predict("qa", items[i]))


def test_predict_many_stream_errors_raise(exported_repo):
    with Client(f"127.0.0.1:{free_port()}", timeout=5) as c:
        with pytest.raises(ServerUnavailableError):
            list(c.predict_many("mlp", [sample_inputs(exported_repo, "mlp", 1)]))


def test_predict_many_with_nothing_yields_nothing(client):
    assert list(client.predict_many("mlp", [])) == []
