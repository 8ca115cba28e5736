"""mimo.client narrows numpy's default int64/float64 arrays (and lists) to the model's declared
datatypes when no value changes, and refuses, naming the input, when one would."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from mimo.client import InferenceError
from mimo.client.convert import conform, narrow
from mimo.client.core import ClientCore
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import model_config_pb2 as mc


def _responses():
    """Model 'm' as a server describes it: ids INT32 [-1,-1], x FP32 [-1,3], half FP16 [-1,3]."""
    t = pb.ModelMetadataResponse.TensorMetadata
    meta = pb.ModelMetadataResponse(
        name="m", versions=["1"], platform="onnxruntime_onnx",
        inputs=[t(name="ids", datatype="INT32", shape=[-1, -1]), t(name="x", datatype="FP32", shape=[-1, 3]),
                t(name="half", datatype="FP16", shape=[-1, 3])],
        outputs=[t(name="y", datatype="FP32", shape=[-1, 1])])
    return meta, pb.ModelConfigResponse(config=mc.ModelConfig(name="m", max_batch_size=8))


def _core(**kwargs) -> ClientCore:
    """A core that has model 'm''s metadata cached."""
    core = ClientCore("test:1", **kwargs)
    core.store_metadata(*_responses())
    return core


def _sent(core: ClientCore, **inputs) -> dict[str, np.ndarray]:
    return codec.decode_infer_request(core.infer_request("m", None, inputs, None, None, None))


def _ok(**override):
    inputs = {"ids": np.array([[1, 2]], np.int32), "x": np.zeros((1, 3), np.float32),
              "half": np.zeros((1, 3), np.float16)}
    return {**inputs, **override}


# -- the rule, one array at a time ----------------------------------------------------------------


def test_a_matching_array_is_passed_through_without_a_copy():
    ids = np.array([[1, 2]], np.int32)
    assert narrow(ids, np.dtype(np.int32)) is ids
    arrays = _ok()
    converted, problems = conform(arrays, _core().cached("m"))
    assert converted is arrays and problems == []


@pytest.mark.parametrize("values, source, target", [
    ([-2**31, 0, 2**31 - 1], np.int64, np.int32),  # the whole INT32 range
    ([0, 255], np.int64, np.uint8),
    ([True, False], np.bool_, np.int32),
    ([0, 2**24, -2**24], np.int64, np.float32),  # integers FP32 holds exactly
    ([0.5, -3.25, 2.0**100], np.float64, np.float32),  # float32 values held in float64
])
def test_exact_values_convert(values, source, target):
    array = np.array(values, source)
    out = narrow(array, np.dtype(target))
    assert out.dtype == target
    np.testing.assert_array_equal(out.astype(np.float64), array.astype(np.float64))


def test_float64_rounds_to_the_nearest_float32_and_keeps_nan_and_inf():
    array = np.array([0.1, np.nan, np.inf, -np.inf, 3.4e38])
    out = narrow(array, np.dtype(np.float32))
    assert out.dtype == np.float32 and out[0] == np.float32(0.1)
    assert np.isnan(out[1]) and list(out[2:4]) == [np.inf, -np.inf] and np.isfinite(out[4])


@pytest.mark.parametrize("values, source, target, words", [
    ([1, 3_000_000_000], np.int64, np.int32, "int64 value 3000000000 does not fit INT32"),
    ([-5, 1], np.int64, np.int32, None),  # in range: no error
    ([-2**31 - 1], np.int64, np.int32, "int64 value -2147483649 does not fit INT32"),
    ([-1, 3], np.int64, np.uint8, "int64 value -1 does not fit UINT8"),
    ([2**63 + 1], np.uint64, np.int64, "uint64 value 9223372036854775809 does not fit INT64"),
    ([2**24 + 1], np.int64, np.float32, "int64 value 16777217 is not exact in FP32"),
    ([1.0, 1e39], np.float64, np.float32, "float64 value 1e+39 does not fit FP32"),
    ([70000.0], np.float64, np.float16, "float64 value 70000.0 does not fit FP16"),
])
def test_values_that_do_not_fit_are_refused(values, source, target, words):
    array = np.array(values, source)
    if words is None:
        assert narrow(array, np.dtype(target)).dtype == target
        return
    with pytest.raises(ValueError) as info:
        narrow(array, np.dtype(target))
    assert str(info.value) == words


@pytest.mark.parametrize("source, target", [
    (np.float64, np.int32),  # floats are not ids, even 3.0
    (np.float32, np.int64),
    (np.int64, np.bool_),
    (np.int64, np.object_),
    ("<U3", np.float32),
])
def test_kinds_that_do_not_convert_are_left_for_the_contract_check(source, target):
    array = np.zeros((1, 2), source)
    assert narrow(array, np.dtype(target)) is array


def test_an_empty_array_converts():
    assert narrow(np.zeros((0, 4), np.int64), np.dtype(np.int32)).dtype == np.int32


# -- through the client's core --------------------------------------------------------------------


def test_numpy_defaults_are_sent_as_the_declared_datatypes():
    ids = np.array([[5, 6, 7]])  # int64
    x = np.array([[0.1, 0.2, 0.3]])  # float64
    sent = _sent(_core(), ids=ids, x=x, half=x)
    assert {k: v.dtype for k, v in sent.items()} == {"ids": np.int32, "x": np.float32, "half": np.float16}
    np.testing.assert_array_equal(sent["ids"], ids)
    np.testing.assert_array_equal(sent["x"], x.astype(np.float32))


def test_lists_and_scalars_convert_by_the_same_rule():
    sent = _sent(_core(), ids=[[1, 2, 3]], x=[[0, 1.5, 2]], half=[[1, 2, 3]])
    assert sent["ids"].dtype == np.int32 and sent["x"].dtype == np.float32 and sent["half"].dtype == np.float16
    np.testing.assert_array_equal(sent["x"], [[0, 1.5, 2]])


def test_every_input_that_does_not_fit_is_named_in_one_error():
    with pytest.raises(InferenceError) as info:
        _sent(_core(), **_ok(ids=np.array([[1, 3_000_000_000]]), x=np.full((1, 3), 1e39)))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.model == "m"
    assert info.value.message == ("model 'm': input 'ids': int64 value 3000000000 does not fit INT32; "
                                  "input 'x': float64 value 1e+39 does not fit FP32")


def test_a_list_beyond_int64_is_refused_naming_the_input():
    with pytest.raises(InferenceError, match=r"input 'ids': cannot convert the list to INT32 \(numpy holds"):
        _sent(_core(), **_ok(ids=[[2**70]]))
    with pytest.raises(InferenceError, match=r"input 'ids': int64 value 1099511627776 does not fit INT32"):
        _sent(_core(), **_ok(ids=[[2**40]]))


def test_a_float_array_for_ids_is_the_contract_checks_dtype_error():
    with pytest.raises(InferenceError, match="input 'ids': datatype FP64 where the model takes INT32"):
        _sent(_core(), **_ok(ids=np.array([[1.0, 2.0]])))


def test_without_local_checks_known_metadata_still_converts():
    core = _core(local_checks=False)
    assert _sent(core, **_ok(ids=np.array([[1, 2]])))["ids"].dtype == np.int32
    with pytest.raises(InferenceError, match="int64 value 3000000000 does not fit INT32"):
        _sent(core, **_ok(ids=np.array([[3_000_000_000]])))
    # ...but nothing is checked: a wrong dtype that does not convert goes to the server as it is.
    assert _sent(core, **_ok(ids=np.array([[1.0]])))["ids"].dtype == np.float64


def test_metadata_is_wanted_once_for_defaults_and_lists_only():
    fresh = ClientCore("test:1")
    assert fresh.needs_metadata("m", {"ids": np.array([[1]])}, {})  # int64
    assert fresh.needs_metadata("m", None, {"x": np.zeros((1, 3))})  # float64
    assert fresh.needs_metadata("m", {"x": [[1.0, 2.0, 3.0]]}, {})  # a list
    assert not fresh.needs_metadata("m", _ok(), {})  # dtypes chosen by the caller: sent as they are
    assert not _core().needs_metadata("m", {"ids": np.array([[1]])}, {})  # already cached
    assert not ClientCore("test:1", local_checks=False).needs_metadata("m", {"ids": [[1]]}, {})


def test_stream_plan_holds_an_item_until_the_metadata_arrives():
    core = ClientCore("test:1")
    items = [_ok(), _ok(ids=np.array([[4, 5]])), _ok(ids=[[6, 7]])]
    plan = core.stream("m", items, 8, None, None, None, False)
    assert [r.id for r in plan.to_send()] == ["0"] and plan.needs_metadata and not plan.exhausted
    assert plan.to_send() == [] and plan.needs_metadata  # still waiting, nothing lost
    core.store_metadata(*_responses())
    sent = plan.to_send()
    assert [r.id for r in sent] == ["1", "2"] and not plan.needs_metadata
    assert [codec.decode_infer_request(r)["ids"].dtype for r in sent] == [np.int32, np.int32]


def test_stream_plan_gives_a_failed_metadata_fetch_as_that_items_answer():
    core = ClientCore("test:1")
    plan = core.stream("m", [_ok(ids=np.array([[1]])), _ok()], 8, None, None, None, True)
    assert plan.to_send() == [] and plan.needs_metadata
    plan.refuse(InferenceError(grpc.StatusCode.NOT_FOUND, "unknown model 'm'", "m"))
    assert [r.id for r in plan.to_send()] == ["1"]  # ids stay in input order
    [error] = plan.ready()
    assert error.code == grpc.StatusCode.NOT_FOUND

