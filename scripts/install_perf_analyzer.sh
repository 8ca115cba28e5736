#!/usr/bin/env bash
# Installs Triton's perf_analyzer into a venv of its own (default .venv-pa).
# The PyPI package `perf-analyzer` is an empty placeholder; the binary ships in the
# tritonclient 2.41.1 wheel. It links libb64 (Debian libb64-0d) and libcudart (PyPI
# nvidia-cuda-runtime-cu12; no GPU is needed for gRPC load). `bin/perf_analyzer` in the venv
# is a wrapper that sets LD_LIBRARY_PATH.
set -euo pipefail
venv="${1:-.venv-pa}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q 'tritonclient[grpc]==2.41.1' 'nvidia-cuda-runtime-cu12==12.9.79'
if ! ldconfig -p | grep -q 'libb64.so.0d'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq libb64-0d >/dev/null
  fi
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[ -x "$venv/bin/perf_analyzer.real" ] || mv "$venv/bin/perf_analyzer" "$venv/bin/perf_analyzer.real"
cat > "$venv/bin/perf_analyzer" <<WRAP
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$site/nvidia/cuda_runtime/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$(cd "$venv/bin" && pwd)/perf_analyzer.real" "\$@"
WRAP
chmod +x "$venv/bin/perf_analyzer"
"$venv/bin/perf_analyzer" --version 2>&1 | head -1 || true
