#!/usr/bin/env bash
# The GPU check: mimo on one NVIDIA GPU with both backends (answers against the CPU within 1e-4,
# TensorFlow and ONNX Runtime sharing the GPU, c=32 throughput against in-process ONNX Runtime).
#
#   bench/gpu_check.sh                          # ./models, 420 s budget, report on stdout
#   bench/gpu_check.sh --repository /tmp/repo --budget 300 --out /tmp/gpu.json
#   bench/gpu_check.sh --export                 # export what ./models lacks first (minutes)
#   bench/gpu_check.sh --dry-run                # preflight and the plan only, in seconds
#   bench/gpu_check.sh --allow-cpu              # every step on the CPU: exercises the script, checks no GPU
#
# The work is bench/gpu_check.py (`--help` lists every option). This wrapper picks the project's
# venv ($PYTHON overrides it) and makes sure nothing it started outlives it: the Python side stops
# its children itself; should it be killed, the trap below stops every process group it had
# started, by the group ids it lists in $MIMO_GPU_CHECK_PIDFILE.
# Exit status: 0 pass, 1 a check failed, 2 no GPU, 3 cannot run as asked, 4 steps skipped.
# No test depends on this script (tests/unit/test_gpu_check.py runs only its --dry-run).

set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY=$ROOT/.venv/bin/python
else
    PY=$(command -v python3 || true)
fi
if [ -z "$PY" ]; then
    echo "gpu_check: no Python found (run make install, or set PYTHON)" >&2
    exit 3
fi

PIDFILE=$(mktemp "${TMPDIR:-/tmp}/mimo-gpu-check.XXXXXX") || exit 3
export MIMO_GPU_CHECK_PIDFILE=$PIDFILE
child=""

cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null        # it stops its own children and writes its report
        for _ in $(seq 1 40); do
            kill -0 "$child" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$child" 2>/dev/null
    fi
    # Anything the Python side started and could not stop: by process group, SIGTERM then SIGKILL.
    if [ -s "$PIDFILE" ]; then
        while read -r pgid; do
            case "$pgid" in '' | *[!0-9]*) continue ;; esac
            if kill -0 -- "-$pgid" 2>/dev/null; then
                kill -TERM -- "-$pgid" 2>/dev/null
                sleep 1
                kill -KILL -- "-$pgid" 2>/dev/null
            fi
        done < "$PIDFILE"
    fi
    rm -f "$PIDFILE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# In the background so that the traps run as soon as a signal arrives (bash runs a trap only
# between commands; `wait` returns at once when a trapped signal interrupts it).
"$PY" "$HERE/gpu_check.py" "$@" &
child=$!
wait "$child"
rc=$?
child=""
exit "$rc"
