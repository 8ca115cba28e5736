"""Offline validation of deploy/kubernetes/.

Core kinds (Deployment, Service, HorizontalPodAutoscaler, PersistentVolumeClaim) are checked with
`kubernetes-validate --strict` (unknown fields are errors) against the oldest Kubernetes that has
gRPC probes (1.27) and the newest schema it ships. KServe's ServingRuntime and InferenceService are
checked against the openAPIV3Schema of KServe's CRDs (../shared/kserve-crds, or $MIMO_KSERVE_CRDS),
turned into JSON Schema with the API server's structural semantics: an object's unlisted fields are
errors (the API server would prune them silently) unless the schema says
x-kubernetes-preserve-unknown-fields; int-or-string, nullable, list-type set/map are honoured.
Deliberately broken manifests prove that both validators reject unknown fields and wrong types.
Then a few cross-checks the schemas cannot make (names that refer to each other, probe ports, the
image's user and ports).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
CRD_DIR = Path(os.environ.get("MIMO_KSERVE_CRDS") or REPO / ".." / "shared" / "kserve-crds").resolve()
KSERVE_GROUP = "serving.kserve.io"
K8S_VERSIONS = ("1.27.0", "1.37.0")  # gRPC probes are GA from 1.27


# ---------------------------------------------------------------------------------------------
# loading


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB of YAML


def _documents(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.load_all(f, Loader=_LOADER) if d]


def _manifest_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def _all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in _manifest_files() for d in _documents(p)]


def _is_kserve(doc: dict) -> bool:
    return str(doc.get("apiVersion", "")).startswith(KSERVE_GROUP + "/")


def _core_files() -> list[Path]:
    return [p for p in _manifest_files() if not any(_is_kserve(d) for d in _documents(p))]


def _kserve_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _all_docs() if _is_kserve(d)]


def _find(kind: str, name: str | None = None) -> list[dict]:
    return [d for _, d in _all_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def test_the_manifests_exist():
    kinds = {d["kind"] for _, d in _all_docs()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServingRuntime", "InferenceService"} <= kinds
    for path, doc in _all_docs():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path


# ---------------------------------------------------------------------------------------------
# core kinds: kubernetes-validate --strict


def _kubernetes_validate_cli() -> str:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    found = str(exe) if exe.exists() else shutil.which("kubernetes-validate")
    if not found:
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[dev]')")
    return found


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_core_kinds_pass_kubernetes_validate_strict(k8s_version):
    files = [str(p) for p in _core_files()]
    assert files
    run = subprocess.run(
        [_kubernetes_validate_cli(), "--strict", "--no-warn", "-k", k8s_version, *files],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # every resource was checked (it skips nothing silently)
    passed = run.stdout.count(" passed for resource ")
    assert passed == sum(len(_documents(Path(f))) for f in files), run.stdout


def _core_errors(doc: dict, version: str = K8S_VERSIONS[-1]) -> str | None:
    kv = pytest.importorskip("kubernetes_validate")
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        return f"{'.'.join(map(str, exc.path))}: {exc.message}"
    return None


def test_kubernetes_validate_rejects_a_broken_deployment():
    good = copy.deepcopy(_find("Deployment", "mimo-serve")[0])
    assert _core_errors(good) is None

    typo = copy.deepcopy(good)  # unknown field (a misspelt probe is silently dropped by kubectl)
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    assert "livenesProbe" in (_core_errors(typo) or "")

    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["replicas"] = "two"
    assert _core_errors(wrong_type) is not None

    bad_probe = copy.deepcopy(good)
    bad_probe["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    assert _core_errors(bad_probe) is not None  # grpc probes take a number, not a port name


# ---------------------------------------------------------------------------------------------
# KServe kinds: the CRDs' openAPIV3Schema as JSON Schema, unknown fields are errors

OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _structural(node, *, root: bool = False):
    """An OpenAPI v3 structural schema node -> JSON Schema, closing objects the API server prunes."""
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if k not in ("nullable", "properties", "items", "additionalProperties",
                                                     "anyOf", "allOf", "oneOf", "not")}
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [_structural(n) for n in node[key]]
    if "not" in node:
        out["not"] = _structural(node["not"])
    if "items" in node:
        out["items"] = _structural(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(node["additionalProperties"])
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    if "properties" in node:
        out["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", OBJECT_META)
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    is_object = node.get("type") == "object"
    if is_object and not preserve and "additionalProperties" not in out:
        # listed fields only; an object with no listed fields (and no map) keeps nothing
        out.setdefault("properties", {})
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if root:
        out.setdefault("properties", {})["metadata"] = OBJECT_META
    return out


def _list_type(validator, list_type, instance, schema):
    """x-kubernetes-list-type: `set` items are unique, `map` items are unique by their keys."""
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = [json.dumps(i, sort_keys=True) for i in instance]
        if len(seen) != len(set(seen)):
            yield jsonschema.ValidationError(f"duplicate items in a list-type=set: {instance!r}")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = [tuple(json.dumps(i.get(k)) for k in keys) for i in instance if isinstance(i, dict)]
        if len(seen) != len(set(seen)):
            yield jsonschema.ValidationError(f"duplicate keys {keys} in a list-type=map")


StructuralValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type}
)

_VALIDATORS: dict[tuple[str, str], object] = {}


def _crd_validator(api_version: str, kind: str):
    key = (api_version, kind)
    if key in _VALIDATORS:
        return _VALIDATORS[key]
    if not CRD_DIR.is_dir():
        pytest.skip(f"KServe CRDs not found at {CRD_DIR} (set MIMO_KSERVE_CRDS)")
    group, version = api_version.split("/")
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in _documents(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            if spec["group"] != group or spec["names"]["kind"] != kind:
                continue
            served = {v["name"]: v for v in spec["versions"] if v.get("served")}
            assert version in served, f"{kind} {version} is not served by the CRD (served: {sorted(served)})"
            schema = _structural(served[version]["schema"]["openAPIV3Schema"], root=True)
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            schema["properties"]["apiVersion"] = {"const": api_version}
            schema["properties"]["kind"] = {"const": kind}
            _VALIDATORS[key] = StructuralValidator(schema)
            return _VALIDATORS[key]
    raise AssertionError(f"no CRD for {api_version} {kind} in {CRD_DIR}")


def _kserve_errors(doc: dict, kind: str | None = None) -> list[str]:
    validator = _crd_validator(doc["apiVersion"], kind or doc["kind"])
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def _kserve_ids():
    return [f"{p.relative_to(DEPLOY)}:{d['kind']}/{d['metadata']['name']}" for p, d in _kserve_docs()]


@pytest.mark.parametrize("doc", [d for _, d in _kserve_docs()], ids=_kserve_ids())
def test_kserve_kinds_match_the_crd_schema(doc):
    assert _kserve_errors(doc) == []


def test_crd_validation_rejects_unknown_fields_and_wrong_types():
    runtime = copy.deepcopy(_find("ServingRuntime", "kserve-mimo")[0])
    isvc = copy.deepcopy(_find("InferenceService", "mimo")[0])
    assert _kserve_errors(runtime) == [] and _kserve_errors(isvc) == []

    broken = copy.deepcopy(runtime)
    broken["spec"]["containers"][0]["portz"] = [{"containerPort": 8500}]      # unknown, deep in a Container
    broken["spec"]["multiModel"] = "no"                                       # boolean expected
    broken["spec"]["supportedModelFormats"][0]["priority"] = 0                # minimum 1
    broken["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "8500"  # int32 expected
    broken["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "two"       # not a quantity
    broken["spec"]["surprise"] = True                                         # unknown at the top of spec
    errors = "\n".join(_kserve_errors(broken))
    for needle in ("containers.0: Additional properties", "portz", "multiModel", "priority",
                   "readinessProbe.grpc.port", "limits.cpu", "surprise"):
        assert needle in errors, f"{needle!r} not reported in:\n{errors}"

    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["model"]["storageURI"] = broken["spec"]["predictor"]["model"].pop("storageUri")
    broken["spec"]["predictor"]["minReplicas"] = "1"
    broken["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] = True  # strings only
    broken["kind"] = "InferenceServices"
    errors = "\n".join(_kserve_errors(broken, kind="InferenceService"))
    for needle in ("storageURI", "minReplicas", "enable-prometheus-scraping", "kind"):
        assert needle in errors, f"{needle!r} not reported in:\n{errors}"

    duplicate_ports = copy.deepcopy(runtime)  # list-type=map keyed by containerPort+protocol
    ports = duplicate_ports["spec"]["containers"][0]["ports"]
    ports.append(dict(ports[0], name="again"))
    assert any("duplicate" in e for e in _kserve_errors(duplicate_ports))


def test_the_structural_conversion_keeps_what_kubernetes_keeps():
    """The converter must not close objects KServe leaves open (preserve-unknown-fields, maps)."""
    schema = _structural({
        "type": "object",
        "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "qty": {"x-kubernetes-int-or-string": True},
            "maybe": {"type": "string", "nullable": True},
        },
    })
    StructuralValidator(schema).validate({"open": {"anything": [1]}, "map": {"k": "v"}, "qty": 3, "maybe": None})
    StructuralValidator(schema).validate({"qty": "3"})
    assert list(StructuralValidator(schema).iter_errors({"extra": 1}))
    assert list(StructuralValidator(schema).iter_errors({"map": {"k": 1}}))


# ---------------------------------------------------------------------------------------------
# cross-checks the schemas cannot make


def _dockerfile_facts() -> dict:
    text = (REPO / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\d+)", text, re.M)
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", text, re.M) for p in line.split()}
    return {"uid": int(user[-1]) if user else None, "ports": exposed}


def _pod_containers(doc: dict) -> list[tuple[dict, dict]]:
    """(pod-level spec, container) pairs for Deployments and ServingRuntimes."""
    if doc["kind"] == "Deployment":
        pod = doc["spec"]["template"]["spec"]
        return [(pod, c) for c in pod["containers"]]
    if doc["kind"] == "ServingRuntime":
        return [(doc["spec"], c) for c in doc["spec"]["containers"]]
    return []


def _servers():
    return [d for _, d in _all_docs() if d["kind"] in ("Deployment", "ServingRuntime")]


@pytest.mark.parametrize("doc", _servers(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_probes_ask_the_grpc_health_service_on_the_served_port(doc):
    facts = _dockerfile_facts()
    for pod, container in _pod_containers(doc):
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert ports and ports <= facts["ports"], (ports, facts["ports"])
        args = " ".join(container.get("args", []))
        grpc_port = int(re.search(r"--port[= ](\d+)", args).group(1)) if "--port" in args else 8500
        assert grpc_port in ports
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert "grpc" in container[probe], f"{probe} must be a grpc: probe"
            assert container[probe]["grpc"]["port"] == grpc_port
            assert container[probe]["grpc"].get("service", "") == ""  # "" = the server is ready
        res = container["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True
        assert security.get("runAsUser") == facts["uid"], "runAsUser must be the image's USER"
        assert security.get("allowPrivilegeEscalation", False) is False


def test_gpu_variants_request_a_gpu():
    gpu = [d for d in _servers() + _find("InferenceService") if "gpu" in d["metadata"]["name"]]
    assert {d["kind"] for d in gpu} == {"Deployment", "ServingRuntime", "InferenceService"}
    for doc in gpu:
        if doc["kind"] == "InferenceService":
            containers = [doc["spec"]["predictor"]["model"]]
        else:
            containers = [c for _, c in _pod_containers(doc)]
        for c in containers:
            assert c["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    for doc in _servers():
        if "gpu" not in doc["metadata"]["name"]:
            for _, c in _pod_containers(doc):
                assert "nvidia.com/gpu" not in c["resources"].get("limits", {})


def test_services_and_autoscalers_point_at_the_deployments():
    deployments = {d["metadata"]["name"]: d for d in _find("Deployment")}
    for svc in _find("Service"):
        matched = [n for n, d in deployments.items()
                   if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {matched}"
        named = {p["name"] for c in deployments[matched[0]]["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in named
    for hpa in _find("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for dep in deployments.values():
        assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        claims = [v["persistentVolumeClaim"]["claimName"] for v in dep["spec"]["template"]["spec"]["volumes"]
                  if "persistentVolumeClaim" in v]
        for claim in claims:
            assert _find("PersistentVolumeClaim", claim), f"no PVC {claim}"


def test_inference_services_use_a_runtime_that_serves_them():
    runtimes = {d["metadata"]["name"]: d for d in _find("ServingRuntime")}
    for isvc in _find("InferenceService"):
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]
        formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
        assert model["modelFormat"]["name"] in formats
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
        assert re.match(r"^(s3|gs|pvc|https?|hdfs|webhdfs|oci|hf)://", model["storageUri"])
        for c in runtime["spec"]["containers"]:
            assert "--model-repository=/mnt/models" in c["args"]  # where the storage initializer writes
            assert c["ports"][0]["name"] == "h2c"  # gRPC: Knative/KServe route HTTP/2 cleartext to it


def test_runtimes_advertise_only_the_protocols_their_ports_speak():
    """KServe routes `v2` (REST) traffic to the runtime's port: listing it beside a gRPC-only port
    would send HTTP/1.1 requests to gRPC. `v2` needs an HTTP container port."""
    for runtime in _find("ServingRuntime"):
        protocols = set(runtime["spec"]["protocolVersions"])
        ports = [p for c in runtime["spec"]["containers"] for p in c.get("ports", [])]
        assert "grpc-v2" in protocols and any(p["name"] == "h2c" for p in ports)
        if "v2" in protocols:
            assert any(p["name"].startswith("http") for p in ports), runtime["metadata"]["name"]
