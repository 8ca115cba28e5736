"""mimo.client: send named numpy arrays to a mimo (or any Open Inference Protocol) gRPC server and
get back a dict of named output heads.

    from mimo.client import Client
    with Client("localhost:8500") as c:
        heads = c.predict("posts", posts=tokens)    # {"age": ..., "income": ..., "gender": ...}

int64/float64 arrays and lists are sent as the model's declared datatypes when no value changes
(mimo.client.convert); the server accepts only the declared ones.
Imports numpy, grpcio, protobuf and mimo.protos only (never TensorFlow or ONNX Runtime).
"""

from mimo.client.aio import AsyncClient
from mimo.client.errors import InferenceError, ServerUnavailableError
from mimo.client.metadata import ModelMetadata, ModelStatus, TensorMetadata
from mimo.client.samples import random_inputs
from mimo.client.sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "InferenceError",
    "ModelMetadata",
    "ModelStatus",
    "ServerUnavailableError",
    "TensorMetadata",
    "random_inputs",
]
