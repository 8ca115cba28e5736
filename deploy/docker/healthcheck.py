"""Container health check: exit 0 when the server is ready, else 1. Used by the Dockerfile's
HEALTHCHECK; Kubernetes uses its own httpGet/grpc probes instead (deploy/kubernetes/).

1. HTTP, when MIMO_HTTP_PORT (default 8501) is not 0: GET /v2/health/ready (KServe v2 REST; open,
   no token needed). 200 = ready; any other answer (503: loading, draining, no model version ready)
   or no answer in time = not ready. HTTPS when MIMO_TLS_CERT is set (the server uses the same TLS
   on both ports; the check asks whether this server is ready, not who it is, so the certificate
   is not verified).
2. gRPC, grpc.health.v1.Health/Check on MIMO_PORT (default 8500), service "" (the server is ready)
   or the model named as the first argument: when HTTP is off (MIMO_HTTP_PORT=0), when nothing
   listens on the HTTP port (a flag such as `--http-port 0` after the image name turned it off or
   moved it), and for a named model (/v2/models/{m}/ready takes the bearer token when one is set).

The server listens on 0.0.0.0 in the image, so the check talks to 127.0.0.1. MIMO_HEALTH_TARGET
overrides the gRPC address, MIMO_HEALTH_TIMEOUT the time allowed per call (3 s; keep both calls
under the HEALTHCHECK's --timeout).
"""

import os
import ssl
import sys
import urllib.error
import urllib.request


def _timeout() -> float:
    return float(os.environ.get("MIMO_HEALTH_TIMEOUT", "3"))


def http_ready(port: str) -> bool | None:
    """True/False: the HTTP front end's answer; None: nothing listens there (ask gRPC instead)."""
    tls = bool(os.environ.get("MIMO_TLS_CERT"))
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/health/ready"
    context = ssl._create_unverified_context() if tls else None  # noqa: S323 - loopback readiness only
    try:
        with urllib.request.urlopen(url, timeout=_timeout(), context=context) as reply:
            print(f"HTTP {reply.status} {url}")
            return reply.status == 200
    except urllib.error.HTTPError as exc:  # the server answered: 503 is "not ready"
        print(f"unhealthy: HTTP {exc.code} {url}: {exc.read(200).decode(errors='replace')}", file=sys.stderr)
        return False
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            return None
        print(f"unhealthy: {url}: {reason}", file=sys.stderr)  # a timeout: something listens, answers nothing
        return False


def grpc_ready(service: str) -> bool:
    import grpc  # only here: the HTTP check needs none of it
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = os.environ.get("MIMO_HEALTH_TARGET") or f"127.0.0.1:{os.environ.get('MIMO_PORT', '8500')}"
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=_timeout())
        except grpc.RpcError as exc:
            print(f"unhealthy: gRPC {target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    print(f"gRPC {target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main() -> int:
    service = sys.argv[1] if len(sys.argv) > 1 else ""
    http_port = os.environ.get("MIMO_HTTP_PORT", "8501").strip()
    if not service and http_port not in ("", "0"):
        ready = http_ready(http_port)
        if ready is not None:
            return 0 if ready else 1
    return 0 if grpc_ready(service) else 1


if __name__ == "__main__":
    sys.exit(main())
