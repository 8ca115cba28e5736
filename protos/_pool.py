"""The private descriptor pool that mimo's generated modules register in.

Why not protobuf's default pool: tritonclient registers `inference.*` and
TensorFlow registers `tensorflow.TensorProto` & co. there, and our wire
contract needs those very full names; one pool cannot hold a name twice, so
importing mimo next to tritonclient or TensorFlow would fail. A private pool
lets all three share a process.

Consequence: the well-known types our messages embed (google.protobuf.Any,
Int64Value) are this pool's classes, not `any_pb2`/`wrappers_pb2`'s. Set
their fields (`spec.version.value = 3`, `any.Pack(msg)`) instead of assigning
default-pool instances. For grpc reflection pass `pool=POOL`.
"""

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _wkt in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_wkt.DESCRIPTOR.serialized_pb)
del _wkt
