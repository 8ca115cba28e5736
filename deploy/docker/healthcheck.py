"""Container health check: asks the server's grpc.health.v1.Health service.

Exit 0 when the server (service "", or the model named as the first argument) is SERVING, else 1.
The port comes from MIMO_PORT (default 8500); the server listens on 0.0.0.0 in the image, so the
check talks to 127.0.0.1. Used by the Dockerfile's HEALTHCHECK; Kubernetes uses its own `grpc:`
probes instead (deploy/kubernetes/).
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    service = sys.argv[1] if len(sys.argv) > 1 else ""
    target = os.environ.get("MIMO_HEALTH_TARGET") or f"127.0.0.1:{os.environ.get('MIMO_PORT', '8500')}"
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=float(os.environ.get("MIMO_HEALTH_TIMEOUT", "3"))
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
