"""Wire compatibility with TensorFlow's own TensorProto / SignatureDef protos.

Slow (imports TensorFlow); also proves mimo.protos and TensorFlow share a
process (both define tensorflow.TensorProto; ours live in a private pool).
"""

import numpy as np
import pytest

from mimo.protos import decode_tensor_proto, encode_tensor_proto, tf_framework_pb2, tf_serving_pb2

pytestmark = pytest.mark.slow

tf = pytest.importorskip("tensorflow")
from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402


def _all_messages(msg):
    yield msg
    for nested in msg.nested_types:
        yield from _all_messages(nested)


def test_framework_messages_match_tensorflow():
    pool = tensor_pb2.DESCRIPTOR.pool
    for top in tf_framework_pb2.DESCRIPTOR.message_types_by_name.values():
        for msg in _all_messages(top):
            theirs = pool.FindMessageTypeByName(msg.full_name)
            for field in msg.fields:
                other = theirs.fields_by_number[field.number]
                assert (other.name, other.type, other.is_repeated) == (field.name, field.type, field.is_repeated)
    theirs_enum = pool.FindEnumTypeByName("tensorflow.DataType")
    for value in tf_framework_pb2.DataType.DESCRIPTOR.values:
        assert theirs_enum.values_by_name[value.name].number == value.number


@pytest.mark.parametrize("value", [
    np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -5], np.int8), np.array([[True]]),
    np.array([b"ab", b""], dtype=object), np.array([0.5, 2.0], np.float16), np.array([2**63], np.uint64)])
def test_tensorflow_tensors_decode_and_ours_read_in_tensorflow(value):
    theirs = tf.make_tensor_proto(value)
    got = decode_tensor_proto(tf_framework_pb2.TensorProto.FromString(theirs.SerializeToString()))
    assert got.tolist() == value.tolist()
    for raw in (True, False):
        wire = encode_tensor_proto(value, raw=raw).SerializeToString()
        back = tf.make_ndarray(tensor_pb2.TensorProto.FromString(wire))
        assert back.tolist() == value.tolist() and back.shape == value.shape


def test_scalar_broadcast_from_make_tensor_proto():
    theirs = tf.make_tensor_proto(0.25, shape=[2, 2], dtype=tf.float32)
    got = decode_tensor_proto(tf_framework_pb2.TensorProto.FromString(theirs.SerializeToString()))
    assert got.tolist() == [[0.25, 0.25], [0.25, 0.25]]


def test_signature_def_map_reads_in_tensorflow():
    sigmap = tf_serving_pb2.SignatureDefMap()
    sig = sigmap.signature_def["serving_default"]
    sig.method_name = "tensorflow/serving/predict"
    info = sig.inputs["posts"]
    info.name = "serving_default_posts:0"
    info.dtype = tf_framework_pb2.DT_INT32
    info.tensor_shape.dim.add(size=-1)
    response = tf_serving_pb2.GetModelMetadataResponse()
    response.model_spec.name = "posts"
    response.metadata["signature_def"].Pack(sigmap)
    any_msg = tf_serving_pb2.GetModelMetadataResponse.FromString(response.SerializeToString()).metadata["signature_def"]
    assert any_msg.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    # tensorflow-serving-api's SignatureDefMap is field 1: map<string, tensorflow.SignatureDef>.
    theirs = meta_graph_pb2.SignatureDef.FromString(
        tf_serving_pb2.SignatureDefMap.FromString(any_msg.value).signature_def["serving_default"].SerializeToString())
    assert theirs.inputs["posts"].name == "serving_default_posts:0"
    assert theirs.inputs["posts"].tensor_shape.dim[0].size == -1
    assert theirs.method_name == "tensorflow/serving/predict"
