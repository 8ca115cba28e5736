#!/usr/bin/env bash
# `make test-container`: build the server image from the repo's Dockerfile (unchanged) with small
# demo models baked in, run it, check it end to end (tests/container/: gRPC, REST on the HTTP port,
# the image's defaults published with -p 8500 -p 8501, the HEALTHCHECK), stop it with SIGTERM while
# requests are in flight, and remove what it created. Prints image sizes, build and start-up times.
#
# Needs: root (or sudo) for apt on a fresh machine; ./.venv with the dev extra (make install).
# Env:   ENGINE=podman            container engine (podman; docker should work too)
#        MIMO_CT_EXPORT_ARGS      `mimo export` flags for the demo models (default: small sizes)
#        MIMO_CT_NO_CACHE=1       build without podman's layer cache (a cold build on a warm base)
#        MIMO_CT_KEEP_IMAGE=1     keep the built images (tags below) afterwards
#        MIMO_CT_PRUNE=1          also prune dangling images afterwards (the layer cache that makes a
#                                 rerun take seconds is kept otherwise; the base image always is)
#        MIMO_CT_BUILD_FLAGS      extra build flags (default for podman: --isolation=chroot)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

ENGINE=${ENGINE:-podman}
PY=${PYTHON:-$REPO/.venv/bin/python}
RUN_ID="$$-$(date +%s)"
TAG=${MIMO_CT_TAG:-localhost/mimo-serve}
SERVER_IMAGE="$TAG:ct-$RUN_ID"
DEMO_IMAGE="$TAG:ct-demo-$RUN_ID"
EXPORT_ARGS=${MIMO_CT_EXPORT_ARGS:---image-size 71 --epochs 1 --samples 64}
BASE=docker.io/library/python:3.11-slim
RUST_BASE=docker.io/library/rust:1-slim-bookworm   # the Dockerfile's transport stage
# A machine without an image registry has a local stand-in for the base image (and podman settings
# for its kernel) next to the repository; a normal machine pulls the real base image.
TOOLS=$REPO/../shared/tools/containers
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mimo-ct.XXXXXX")

say() { printf '== %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
human() { awk -v b="$1" 'BEGIN { split("B KB MB GB TB", u); i = 1; while (b >= 1000 && i < 5) { b /= 1000; i++ } printf "%.2f %s", b, u[i] }'; }

cleanup() {
  local rc=$?
  set +e
  ids=$($ENGINE ps -aq --filter "label=mimo.container-test=$RUN_ID" 2>/dev/null)
  [ -z "$ids" ] || $ENGINE rm -f $ids >/dev/null 2>&1
  if [ "${MIMO_CT_KEEP_IMAGE:-0}" != 1 ]; then
    $ENGINE rmi -f "$DEMO_IMAGE" "$SERVER_IMAGE" >/dev/null 2>&1
    [ "${MIMO_CT_PRUNE:-0}" != 1 ] || $ENGINE image prune -f >/dev/null 2>&1
  else
    say "kept images $SERVER_IMAGE $DEMO_IMAGE"
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools ----
bash scripts/install_container_tools.sh >/dev/null
[ -x "$PY" ] || { echo "no $PY: run 'make install' first" >&2; exit 2; }
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] && [ -f "$TOOLS/containers.conf" ]; then
  export CONTAINERS_CONF=$TOOLS/containers.conf
fi
if [ "$ENGINE" = podman ]; then
  read -r -a BUILD_FLAGS <<< "${MIMO_CT_BUILD_FLAGS:---isolation=chroot}"
  BUILD_FLAGS+=(--format docker)   # keeps HEALTHCHECK (the OCI format has none)
else
  read -r -a BUILD_FLAGS <<< "${MIMO_CT_BUILD_FLAGS:-}"
fi
[ "${MIMO_CT_NO_CACHE:-0}" != 1 ] || BUILD_FLAGS+=(--no-cache)
say "$($ENGINE --version)"

# ---- base image ----
if $ENGINE image exists "$BASE" 2>/dev/null || $ENGINE image inspect "$BASE" >/dev/null 2>&1; then
  say "base image $BASE: present"
elif [ -x "$TOOLS/make-python-base.sh" ]; then
  say "base image $BASE: building the local stand-in (no registry here; about 1-3 min, once)"
  t=$(now); "$TOOLS/make-python-base.sh" "$ENGINE"; say "stand-in built in $(elapsed "$t") s"
else
  say "base image $BASE: pulling"; $ENGINE pull "$BASE"
fi

if $ENGINE image exists "$RUST_BASE" 2>/dev/null || $ENGINE image inspect "$RUST_BASE" >/dev/null 2>&1; then
  say "base image $RUST_BASE: present"
elif [ -x "$TOOLS/make-python-base.sh" ]; then
  say "base image $RUST_BASE: building the local stand-in from this machine's Rust toolchain (once)"
  t=$(now); bash scripts/make_rust_base.sh "$ENGINE"; say "stand-in built in $(elapsed "$t") s"
else
  say "base image $RUST_BASE: pulling"; $ENGINE pull "$RUST_BASE"
fi

# ---- build: the server image (default target), then the demo image (models baked in) ----
say "building $SERVER_IMAGE (default target) ${BUILD_FLAGS[*]}"
t=$(now)
$ENGINE build --pull=never "${BUILD_FLAGS[@]}" -t "$SERVER_IMAGE" . > "$WORK/build-server.log" 2>&1 \
  || { tail -40 "$WORK/build-server.log"; exit 1; }
BUILD_SERVER_S=$(elapsed "$t")
say "built in $BUILD_SERVER_S s"

say "building $DEMO_IMAGE (target demo, DEMO_EXPORT_ARGS=\"$EXPORT_ARGS\")"
t=$(now)
$ENGINE build --pull=never "${BUILD_FLAGS[@]}" --target demo --build-arg "DEMO_EXPORT_ARGS=$EXPORT_ARGS" \
  -t "$DEMO_IMAGE" . > "$WORK/build-demo.log" 2>&1 || { tail -40 "$WORK/build-demo.log"; exit 1; }
BUILD_DEMO_S=$(elapsed "$t")
say "built in $BUILD_DEMO_S s"
grep -E '^== ' "$WORK/build-demo.log" | sed 's/^/   export: /' || true

size() { $ENGINE image inspect --format '{{.Size}}' "$1"; }
SERVER_SIZE=$(size "$SERVER_IMAGE"); DEMO_SIZE=$(size "$DEMO_IMAGE")

# ---- run and check (tests/container/) ----
say "running tests/container against $DEMO_IMAGE"
set +e
MIMO_CT_IMAGE=$DEMO_IMAGE MIMO_CT_ENGINE=$ENGINE MIMO_CT_RUN_ID=$RUN_ID MIMO_CT_REPORT=$WORK/report.json \
  "$PY" -m pytest tests/container -v -rs -s -p no:cacheprovider
rc=$?
set -e

report() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get(sys.argv[2], "?"))' "$WORK/report.json" "$1" 2>/dev/null || echo "?"; }
echo
say "summary ($ENGINE)"
printf '   %-34s %s\n' \
  "server image (no models)" "$(human "$SERVER_SIZE")" \
  "demo image (models baked in)" "$(human "$DEMO_SIZE")" \
  "build, server target" "$BUILD_SERVER_S s" \
  "build, demo target (export)" "$BUILD_DEMO_S s" \
  "run to ready (gRPC health SERVING)" "$(report run_to_ready_s) s" \
  "run -p 8501 to ready (HTTP 200)" "$(report published_run_to_http_ready_s) s" \
  "SIGTERM to exit, in flight" "$(report sigterm_to_exit_s) s, $(report in_flight_requests) requests" \
  "exit status after SIGTERM" "$(report exit_code)"
[ "$rc" -eq 0 ] && say "container test passed" || say "container test FAILED (pytest exit $rc)"
exit "$rc"
