"""TensorFlow Serving's Predict API (`tensorflow.serving.PredictionService` and `ModelService`).

Wire-compatible with tensorflow-serving-api clients: Predict with `signature_name` and
`output_filter`, GetModelMetadata with SignatureDefs, GetModelStatus. Same inference path as v2.
"""

from __future__ import annotations

from mimo.protos import codec
from mimo.protos import tf_error_codes_pb2 as tf_errors
from mimo.protos import tf_serving_pb2 as tfs
from mimo.protos import tf_serving_pb2_grpc as tfs_grpc
from mimo.protos.dtypes import datatype_to_tf
from mimo.serving.core.core import LOADING, READY, UNAVAILABLE, UNLOADING, Core
from mimo.serving.core.errors import InvalidArgument, NotFound
from mimo.serving.frontends.grpc_services import add_service
from mimo.serving.frontends.grpc_status import abort

PREDICT_METHOD = "tensorflow/serving/predict"
VERSION_STATES = {
    READY: tfs.ModelVersionStatus.AVAILABLE,
    LOADING: tfs.ModelVersionStatus.LOADING,
    UNLOADING: tfs.ModelVersionStatus.UNLOADING,
    UNAVAILABLE: tfs.ModelVersionStatus.END,
}


def _version(spec) -> str:
    if spec.HasField("version"):
        return str(spec.version.value)
    if spec.version_label:
        raise NotFound(f"version labels are not supported (got '{spec.version_label}')")
    return ""


class PredictionServicer(tfs_grpc.PredictionServiceServicer):
    def __init__(self, core: Core):
        self.core = core

    async def Predict(self, parsed: codec.PredictRequest, context):
        request, contents = parsed
        try:
            # One typed value broadcasts to the whole shape: no larger than a raw request could be.
            inputs = codec.decode_predict_request(request, self.core.settings.max_message_bytes, contents)
            spec = request.model_spec
            result = await self.core.infer(spec.name, _version(spec), inputs, list(request.output_filter),
                                           spec.signature_name, context.time_remaining())
            return codec.encode_predict_response(
                result.outputs, result.model, result.version, spec.signature_name or "serving_default"
            )
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)

    async def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field) or ["signature_def"]
            if fields != ["signature_def"]:
                raise InvalidArgument(f"unsupported metadata_field {fields}; only 'signature_def'")
            info = self.core.model(request.model_spec.name, _version(request.model_spec))
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)
        response = tfs.GetModelMetadataResponse()
        response.model_spec.name = info.name
        response.model_spec.version.value = info.version
        response.metadata["signature_def"].Pack(signature_defs(info.spec))
        return response


def signature_defs(spec) -> tfs.SignatureDefMap:
    result = tfs.SignatureDefMap()
    for name, signature in spec.signatures.items():
        definition = result.signature_def[name]
        definition.method_name = PREDICT_METHOD
        for kind, names in (("inputs", signature["inputs"]), ("outputs", signature["outputs"])):
            for tensor_name in names:
                tensor = spec.input(tensor_name) if kind == "inputs" else spec.output(tensor_name)
                info = getattr(definition, kind)[tensor_name]
                info.name = f"{tensor_name}:0"
                info.dtype = datatype_to_tf(tensor.datatype)
                for size in tensor.shape:
                    info.tensor_shape.dim.add(size=size)
    return result


class ModelStatusServicer(tfs_grpc.ModelServiceServicer):
    def __init__(self, core: Core):
        self.core = core

    async def GetModelStatus(self, request, context):
        wanted = request.model_spec.version.value if request.model_spec.HasField("version") else None
        try:
            found = self.core.versions(request.model_spec.name, wanted)
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)
        return model_status(found)


def model_status(versions) -> tfs.GetModelStatusResponse:
    """GetModelStatus's answer for the core's VersionStates (the REST status sends it as JSON)."""
    response = tfs.GetModelStatusResponse()
    for version in versions:
        status = response.model_version_status.add(version=version.version, state=VERSION_STATES[version.state])
        status.status.error_code = tf_errors.OK if version.state == READY else tf_errors.UNAVAILABLE
        status.status.error_message = version.reason
    return response


def add_tf_serving(server, core: Core) -> list[str]:
    """Register both TF Serving services; returns their names for reflection."""
    services = tfs.DESCRIPTOR.services_by_name
    return [add_service(server, PredictionServicer(core), services["PredictionService"], tfs,
                        {"Predict": codec.parse_predict_request}),
            add_service(server, ModelStatusServicer(core), services["ModelService"], tfs)]
