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
    bad_probe["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {"grpc": {"port": "grpc"}}
    assert _core_errors(bad_probe) is not None  # grpc probes take a number, not a port name

    bad_http_probe = copy.deepcopy(good)
    bad_http_probe["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/v2"
    assert "paht" in (_core_errors(bad_http_probe) or "")


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
    broken["spec"]["containers"][0]["readinessProbe"] = {"grpc": {"port": "8500"}}  # int32 expected
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
    broken["spec"]["predictor"]["model"]["ports"] = [{"name": "http1", "containerPort": "8501"}]  # int32
    errors = "\n".join(_kserve_errors(broken, kind="InferenceService"))
    for needle in ("storageURI", "minReplicas", "enable-prometheus-scraping", "kind", "ports.0.containerPort"):
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


def _flag(args: list[str], name: str) -> str | None:
    """The value of `--name` in a container's args, as `--name=value` or `--name value` (last wins,
    as argparse does); None when absent."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _served_ports(container: dict) -> tuple[int, int]:
    """(gRPC port, HTTP port) the server listens on, from its args; the server's defaults when absent
    (8500, 8501); HTTP 0 = off."""
    args = container.get("args", [])
    grpc_port, http_port = _flag(args, "--port"), _flag(args, "--http-port")
    return int(grpc_port or 8500), int(8501 if http_port is None else http_port)


def _port_number(container: dict, port) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"probe port {port!r} names no container port ({sorted(named)})"
    return named[port]


# the health endpoints each probe may ask (KServe v2 REST): not-ready must never restart a pod
HTTP_PROBE_PATHS = {
    "startupProbe": {"/v2/health/ready"},
    "readinessProbe": {"/v2/health/ready"},
    "livenessProbe": {"/v2/health/live", "/v2/health/ready"},
}


@pytest.mark.parametrize("doc", _servers(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_probes_ask_the_health_endpoints_on_the_served_ports(doc):
    """Each probe is either `grpc:` on --port (grpc.health.v1, service "" = the server is ready) or
    `httpGet:` on --http-port (HTTP on) asking KServe v2 REST's health endpoint for that probe."""
    facts = _dockerfile_facts()
    for pod, container in _pod_containers(doc):
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert ports and ports <= facts["ports"], (ports, facts["ports"])
        grpc_port, http_port = _served_ports(container)
        assert grpc_port in ports
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            spec = container[probe]
            kinds = {"grpc", "httpGet", "tcpSocket", "exec"} & set(spec)
            assert kinds in ({"grpc"}, {"httpGet"}), f"{probe} must be a grpc: or an httpGet: probe, not {kinds}"
            if "grpc" in spec:
                assert spec["grpc"]["port"] == grpc_port, f"{probe}: gRPC health lives on --port {grpc_port}"
                assert spec["grpc"].get("service", "") == ""  # "" = the server is ready
            else:
                get = spec["httpGet"]
                assert http_port, f"{probe} asks HTTP, but the server runs with --http-port 0"
                assert _port_number(container, get["port"]) == http_port, f"{probe}: HTTP lives on --http-port {http_port}"
                assert get["path"] in HTTP_PROBE_PATHS[probe], (probe, get["path"])
                assert get.get("scheme", "HTTP") == "HTTP"  # the manifests configure no TLS
                assert not get.get("httpHeaders"), "health is open: a probe needs no token"
        res = container["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True
        assert security.get("runAsUser") == facts["uid"], "runAsUser must be the image's USER"
        assert security.get("allowPrivilegeEscalation", False) is False


@pytest.mark.parametrize("doc", _servers(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_the_http_port_is_a_container_port_the_image_exposes(doc):
    """--http-port is given explicitly (a change of the server's default must not move the probes'
    port), is a containerPort with an HTTP name, the Dockerfile EXPOSEs it, and a Deployment's
    Services publish it as appProtocol http."""
    exposed = _dockerfile_facts()["ports"]
    assert 8501 in exposed, "the Dockerfile must EXPOSE the HTTP port (8501)"
    for _, container in _pod_containers(doc):
        assert _flag(container.get("args", []), "--http-port") is not None, "pass --http-port explicitly"
        _, http_port = _served_ports(container)
        assert http_port, "HTTP is off (--http-port 0): the REST APIs and the HTTP probes need it"
        by_number = {p["containerPort"]: p for p in container.get("ports", [])}
        assert http_port in by_number, f"--http-port {http_port} is not a containerPort"
        assert by_number[http_port]["name"].startswith("http"), by_number[http_port]
        assert by_number[http_port].get("protocol", "TCP") == "TCP"
        assert http_port in exposed, f"the Dockerfile does not EXPOSE {http_port}"
        if doc["kind"] != "Deployment":
            continue
        http_name = by_number[http_port]["name"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        services = [s for s in _find("Service") if s["spec"]["selector"].items() <= labels.items()
                    and s["spec"].get("clusterIP") != "None"]
        assert services, f"no Service for Deployment {doc['metadata']['name']}"
        for svc in services:
            http = [p for p in svc["spec"]["ports"] if p["targetPort"] in (http_name, http_port)]
            assert len(http) == 1 and http[0].get("appProtocol") == "http", (svc["metadata"]["name"], http)


def test_the_dockerfile_environment_matches_its_exposed_ports():
    """The image's MIMO_PORT, MIMO_HTTP_PORT and MIMO_METRICS_PORT are the ports it EXPOSEs."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    env_lines = " ".join(line for line in text.splitlines() if re.match(r"\s*ENV\s", line))
    env = dict(re.findall(r"\b(MIMO_(?:HTTP_|METRICS_)?PORT)=(\d+)", env_lines))
    assert set(env) == {"MIMO_PORT", "MIMO_HTTP_PORT", "MIMO_METRICS_PORT"}, env
    assert {int(v) for v in env.values()} == _dockerfile_facts()["ports"], (env, _dockerfile_facts()["ports"])
    assert env["MIMO_HTTP_PORT"] == "8501"


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


def _merged_ports(runtime_ports: list[dict], isvc_ports: list[dict]) -> list[dict]:
    """The predictor container's ports as KServe makes them: MergeRuntimeContainers applies the
    InferenceService's container to the runtime's as a strategic merge patch, and Container.ports
    merges by containerPort. Order, as apimachinery's mergeSlice/normalizeElementOrder/mergeSortedSlice
    make it: the patch's entries in the patch's order, each runtime-only entry inserted before the
    first patch entry it precedes in the runtime's list (so an entry both lists keeps the runtime's
    place unless the patch names every port). test_the_port_merge_matches_kubectl checks this against
    the real library where kubectl is installed."""
    key = lambda p: p["containerPort"]  # noqa: E731
    original = [key(p) for p in runtime_ports]
    patch = [{**next((o for o in runtime_ports if key(o) == key(p)), {}), **p} for p in isvc_ports]
    server_only = [o for o in runtime_ports if key(o) not in {key(p) for p in isvc_ports}]
    place = lambda p: original.index(key(p)) if key(p) in original else -1  # noqa: E731
    merged, i, j = [], 0, 0
    while i < len(server_only) or j < len(patch):
        if j >= len(patch) or (i < len(server_only) and 0 <= place(server_only[i]) < place(patch[j])):
            merged.append(server_only[i])
            i += 1
        else:
            merged.append(patch[j])
            j += 1
    return merged


PORT_MERGE_CASES = [  # (runtime ports, InferenceService ports, first merged port)
    ([("h2c", 8500), ("http1", 8501)], [], 8500),
    ([("h2c", 8500), ("http1", 8501)], [("http1", 8501)], 8500),  # listing only http1 does not move it
    ([("h2c", 8500), ("http1", 8501)], [("http1", 8501), ("h2c", 8500)], 8501),
    ([("h2c", 8500)], [("http1", 8501)], 8501),
    ([], [("h2c", 9000)], 9000),  # KServe's Triton grpc-v2 example
]


def _ports(pairs) -> list[dict]:
    return [{"name": n, "containerPort": c, "protocol": "TCP"} for n, c in pairs]


@pytest.mark.parametrize("runtime_ports,isvc_ports,first", PORT_MERGE_CASES)
def test_the_port_merge_matches_kubectl(tmp_path, runtime_ports, isvc_ports, first):
    merged = _merged_ports(_ports(runtime_ports), _ports(isvc_ports))
    assert merged[0]["containerPort"] == first
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed: the emulation is checked against the cases above only")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "x", "ports": _ports(runtime_ports)}]}}
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    patch = {"spec": {"containers": [{"name": "c", "ports": _ports(isvc_ports)}]}}
    run = subprocess.run([kubectl, "patch", "--local", "-f", str(tmp_path / "pod.json"), "--type", "strategic",
                          "-p", json.dumps(patch), "-o", "json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)["spec"]["containers"][0].get("ports", [])
    assert [p["containerPort"] for p in got] == [p["containerPort"] for p in merged]


def test_inference_services_use_a_runtime_that_serves_them():
    """KServe routes to the predictor's first container port: grpc-v2 must land on h2c (--port),
    v2 (REST) on the HTTP port (--http-port), after the InferenceService's `ports` are merged in."""
    runtimes = {d["metadata"]["name"]: d for d in _find("ServingRuntime")}
    for isvc in _find("InferenceService"):
        name = isvc["metadata"]["name"]
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]
        formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
        assert model["modelFormat"]["name"] in formats
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
        assert re.match(r"^(s3|gs|pvc|https?|hdfs|webhdfs|oci|hf)://", model["storageUri"])
        for c in runtime["spec"]["containers"]:
            assert "--model-repository=/mnt/models" in c["args"]  # where the storage initializer writes
            assert c["ports"][0]["name"] == "h2c"  # the runtime's default route: gRPC, HTTP/2 cleartext
        container = runtime["spec"]["containers"][0]  # KServe merges the model into the first container
        grpc_port, http_port = _served_ports(container)
        own = model.get("ports", [])
        merged = _merged_ports(container.get("ports", []), own)
        assert len({p["name"] for p in merged}) == len(merged), f"{name}: duplicate port names {merged}"
        first = merged[0]
        if model["protocolVersion"] == "v2":
            assert own and own[0]["name"].startswith("http"), f"{name}: v2 needs its own ports, HTTP first"
            assert first["name"].startswith("http") and first["containerPort"] == http_port, (name, merged)
        elif model["protocolVersion"] == "grpc-v2":
            assert first["name"] == "h2c" and first["containerPort"] == grpc_port, (name, merged)
        else:
            raise AssertionError(f"{name}: protocolVersion {model['protocolVersion']} is not served")
    assert {i["spec"]["predictor"]["model"]["protocolVersion"] for i in _find("InferenceService")} == {"v2", "grpc-v2"}


def test_runtimes_advertise_only_the_protocols_their_ports_speak():
    """KServe routes `v2` (REST) traffic to an HTTP port and `grpc-v2` to h2c: each protocol listed
    needs a container port that speaks it, where the server listens (--http-port, --port)."""
    for runtime in _find("ServingRuntime"):
        name = runtime["metadata"]["name"]
        protocols = set(runtime["spec"]["protocolVersions"])
        assert protocols <= {"v2", "grpc-v2"}, f"{name}: mimo serves no {protocols - {'v2', 'grpc-v2'}}"
        for container in runtime["spec"]["containers"]:
            grpc_port, http_port = _served_ports(container)
            ports = container.get("ports", [])
            assert "grpc-v2" in protocols
            assert [p["containerPort"] for p in ports if p["name"] == "h2c"] == [grpc_port], (name, ports)
            http = [p["containerPort"] for p in ports if p["name"].startswith("http")]
            if "v2" in protocols:
                assert http_port and http == [http_port], (name, http_port, ports)
            else:
                assert not http, f"{name}: an HTTP port but no v2 in protocolVersions"
