"""A gRPC service's handlers registered from its descriptor, as the generated add_..._to_server
functions do, except that a front end may parse chosen methods' requests with its own parser (the
codec's, which leaves a large request's tensor bytes where they arrived)."""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Mapping

import grpc

_HANDLERS = {  # (request streaming, response streaming) -> grpc's handler constructor
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_service(server, servicer, service, messages: ModuleType,
                parsers: Mapping[str, Callable] | None = None) -> str:
    """Register every method of `service` (a ServiceDescriptor) on `server` (either transport),
    served by `servicer`'s method of the same name; request and response classes come from
    `messages`, and a method named in `parsers` parses its requests with that. Returns the
    service's full name."""
    parsers = parsers or {}
    handlers = {}
    for method in service.methods:
        request, response = getattr(messages, method.input_type.name), getattr(messages, method.output_type.name)
        make = _HANDLERS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(getattr(servicer, method.name),
                                     request_deserializer=parsers.get(method.name, request.FromString),
                                     response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
    return service.full_name
