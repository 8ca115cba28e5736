"""gRPC server reflection, both versions: grpc.reflection.v1 (what grpcurl and current clients ask
for first) and v1alpha (older ones).

grpcio-reflection implements only v1alpha. v1 is the same protocol, message for message and field
for field, under another package: so one servicer answers both, v1's calls are read and written
with v1alpha's classes (identical on the wire), and v1's descriptor, which clients resolve through
reflection itself, is v1alpha's renamed (no copied .proto file).
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from mimo.protos import POOL

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1 = "grpc.reflection.v1.ServerReflection"
_ALPHA_PACKAGE, _V1_PACKAGE = "grpc.reflection.v1alpha", "grpc.reflection.v1"


def register_in_pool(*modules) -> None:
    """Reflection answers from one descriptor pool; ours must also know health and reflection."""
    for module in modules:
        try:
            POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)


def add_reflection(server, services: list[str]) -> list[str]:
    """Serve reflection v1 and v1alpha for `services` (and themselves); returns their names."""
    register_in_pool(reflection_pb2)
    _register_v1_descriptor()
    names = [*services, V1ALPHA, V1]
    # Not enable_server_reflection(): it picks the sync servicer for anything but grpc.aio.
    servicer = reflection.aio.ReflectionServicer(names, pool=POOL)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handlers = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, handlers),))
    server.add_registered_method_handlers(V1, handlers)
    return [V1ALPHA, V1]


def _register_v1_descriptor() -> None:
    name = reflection_pb2.DESCRIPTOR.name.replace("v1alpha", "v1")
    try:
        POOL.FindFileByName(name)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = name, _V1_PACKAGE
    file.ClearField("options")  # v1alpha's (java/go packages, deprecated) are not v1's
    rename = lambda type_name: type_name.replace(f".{_ALPHA_PACKAGE}.", f".{_V1_PACKAGE}.")
    for message in file.message_type:
        for field in message.field:
            if field.type_name:  # message-typed fields only
                field.type_name = rename(field.type_name)
    for service in file.service:
        for method in service.method:
            method.input_type, method.output_type = rename(method.input_type), rename(method.output_type)
    POOL.Add(file)
