#!/usr/bin/env bash
# Build mimo's native gRPC transport (native/grpc_transport.cc) into serving/, next to the Python
# that loads it. Needs grpc++ headers (Debian: libgrpc++-dev, installed here when missing and we are
# root or have sudo) and pybind11 (the dev extra). Without them the server uses the Python frontend.
# Usage: scripts/build_native.sh [python]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
if ! pkg-config --exists grpc++ 2>/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "installing libgrpc++-dev from apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libgrpc++-dev pkg-config >/dev/null
fi
$PY -c "import pybind11" 2>/dev/null || $PY -m pip install -q 'pybind11>=2.11,<4'
SUFFIX=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
OUT=serving/_grpc_transport$SUFFIX
if [ -f "$OUT" ] && [ "$OUT" -nt native/grpc_transport.cc ] && [ "$OUT" -nt "$0" ]; then
  echo "$OUT is up to date"; exit 0
fi
# shellcheck disable=SC2046
g++ -O2 -g0 -std=c++17 -shared -fPIC -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
  $($PY -m pybind11 --includes) $(pkg-config --cflags grpc++) \
  native/grpc_transport.cc -o "$OUT.tmp" $(pkg-config --libs grpc++)
mv "$OUT.tmp" "$OUT"
echo "built $OUT"
