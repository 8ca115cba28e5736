"""TensorFlow Serving's REST API: `POST /v1/models/{m}[/versions/{v}]:predict` in the row
("instances") and columnar ("inputs") formats with `signature_name`, `GET /v1/models/{m}` (status)
and `GET /v1/models/{m}/metadata` (SignatureDefs), as TF Serving writes them.

Status and metadata are the gRPC front end's messages written as protobuf JSON, which is what TF
Serving's REST API sends (64-bit integers as strings there).
"""

from __future__ import annotations

from google.protobuf import json_format

from mimo.protos import rest_codec
from mimo.protos.errors import CodecError
from mimo.serving.core.core import Core
from mimo.serving.core.errors import InvalidArgument, NotFound
from mimo.serving.core.validation import signature_of
from mimo.serving.frontends.http_status import json_response
from mimo.serving.frontends.json_limit import MAX_TENSOR_ELEMENTS, check_json_size
from mimo.serving.frontends.tfserving_grpc import model_status, signature_defs
from mimo.serving.transports.base import HttpRequest, HttpResponse



class TfServingRest:
    def __init__(self, core: Core):
        self.core = core

    async def call(self, request: HttpRequest, model: str, verb: str, version: str = "") -> HttpResponse:
        if verb != "predict":
            raise NotFound(f"':{verb}' is not served: mimo's TensorFlow Serving REST API answers ':predict' "
                           "(classify and regress need tf.Example models)")
        info = self.core.model(model, version)  # the contract tells the decoder each input's dtype and rank
        def ranks(signature: str) -> dict[str, tuple[str, int]]:
            names = signature_of(info.spec, signature)["inputs"]
            return {t.name: (t.datatype, len(t.shape)) for t in info.spec.inputs if t.name in names}

        check_json_size(len(request.body), "split the batch over several requests, or send large tensors over "
                                           "gRPC (tensor_content) or KServe v2 REST's binary tensors")
        try:
            decoded = rest_codec.decode_predict_request(request.body, ranks, MAX_TENSOR_ELEMENTS)
        except CodecError as exc:
            raise InvalidArgument(str(exc)) from None
        # The version decoded against: a newer one taking over meanwhile must not change the contract.
        result = await self.core.infer(model, str(info.version), decoded.inputs, (), decoded.signature_name)
        return HttpResponse(200, rest_codec.encode_predict_response(result.outputs, decoded.row_format),
                            [("content-type", "application/json")])

    async def status(self, request: HttpRequest, model: str, version: str = "") -> HttpResponse:
        return json_response(_proto_json(model_status(self.core.versions(model, _number(version)))))

    async def metadata(self, request: HttpRequest, model: str, version: str = "") -> HttpResponse:
        info = self.core.model(model, version)
        return json_response({
            "model_spec": {"name": info.name, "signature_name": "", "version": str(info.version)},
            "metadata": {"signature_def": _proto_json(signature_defs(info.spec))},
        })


def _number(version: str) -> int | None:
    if not version:
        return None
    if not (version.isascii() and version.isdigit()):
        raise NotFound(f"version '{version}' is not a version number")
    return int(version)


def _proto_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
