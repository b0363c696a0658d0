#!/usr/bin/env bash
# The GPU check (issue 14): the search step on the GPU against the CPU, its speed on
# JAX and PyTorch, and the projected wall time of the paper's full CIFAR-10 search.
# Under 8 minutes on one H200; each part runs in its own process under its own time
# limit and prints Markdown table rows for docs/BENCHMARKS.md ("GPU check"). What each
# part measures: bench/device_check.py's docstring.
#
# Usage, from the repository root:
#   bash bench/device_check.sh                 # every part
#   bash bench/device_check.sh --quick         # the tiny correctness parts only; a missing
#                                              # GPU is replaced by the CPU (the smoke test)
#   bash bench/device_check.sh --parts correctness-jax,speed-jax,projection
# Parts: correctness-jax, correctness-torch, speed-jax, speed-torch, projection.
# A backend that is not installed is skipped with a line saying so. The exit status is
# 1 if any part failed (a correctness FAIL, a failed measurement, a part past its time
# limit); every part runs regardless. Set DEVICE_CHECK_RESULTS to keep the parts' files
# (the speed rows as JSON, the correctness runs' arrays and JAX compilation cache)
# somewhere other than a temporary folder removed at the end; a second run with the same
# folder takes the correctness steps' compiled programs from that cache.
#
# The GPU machine (/work/.library/device/KINDS.md) has JAX, PyTorch and most of keras'
# dependencies, but no TensorFlow, no keras and no network. Of keras 3.15.1's
# requirements (absl-py, numpy, rich, namex, h5py, optree, ml-dtypes, packaging) it lacks
# namex and optree; optree's own (typing-extensions) is there. So the tree travels with
# three wheels in .whl/ (kept out of git: `echo /.whl/ >> .git/info/exclude`), fetched
# once, where the package registry is reachable:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
# (2.9 MB). There, with .whl carried, the whole command is:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD \
#     && bash bench/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

ALL_PARTS="correctness-jax correctness-torch speed-jax speed-torch projection"
QUICK_PARTS="correctness-jax correctness-torch"
# 470 s in all. The JAX correctness part compiles the tiny step for the CPU as well,
# which is its longest wait. The speed parts print each row as it is measured, so a
# part stopped at its limit still reports the batches it finished.
declare -A LIMIT=([correctness-jax]=150 [correctness-torch]=60 [speed-jax]=180
                  [speed-torch]=70 [projection]=10)
# On a CPU the tiny step takes minutes (JAX compiles or dispatches every operation).
declare -A QUICK_LIMIT=([correctness-jax]=600 [correctness-torch]=300)

usage() { sed -n '8,13p' "$0" | sed 's/^# \{0,1\}//'; }
quick=0
parts=""
while (($#)); do
    case "$1" in
        --quick) quick=1 ;;
        --parts)
            [[ $# -ge 2 ]] || {
                echo "error: --parts needs a comma-separated list of: ${ALL_PARTS// /, }" >&2
                exit 2
            }
            parts="${2//,/ }"
            shift ;;
        --parts=*) parts="${1#--parts=}"; parts="${parts//,/ }" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option '$1' (allowed: --quick, --parts LIST)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z "$parts" ]]; then
    if ((quick)); then parts="$QUICK_PARTS"; else parts="$ALL_PARTS"; fi
fi
for part in $parts; do
    [[ " $ALL_PARTS " == *" $part "* ]] || {
        echo "error: --parts: unknown part '$part' (allowed: ${ALL_PARTS// /, })" >&2
        exit 2
    }
done

results="${DEVICE_CHECK_RESULTS:-}"
if [[ -z "$results" ]]; then
    results="$(mktemp -d)"
    trap 'rm -rf "$results"' EXIT
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
command -v nvidia-smi >/dev/null \
    && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | sed 's/^/GPU: /'
python3 - <<'EOF'
from importlib import metadata


def version(name):
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return f"{name} (not installed)"


print("Python packages:", ", ".join(map(version, ("keras", "jax", "torch", "numpy"))))
EOF

status=0
summary=()
for part in $parts; do
    backend=()  # the part's KERAS_BACKEND; the projection reads files only
    [[ "$part" == *-* ]] && backend=("KERAS_BACKEND=${part#*-}")
    if ((quick)) && [[ -n "${QUICK_LIMIT[$part]:-}" ]]; then limit="${QUICK_LIMIT[$part]}"
    else limit="${LIMIT[$part]}"; fi
    quick_flag=()
    ((quick)) && quick_flag=(--quick)
    start=$SECONDS
    env "${backend[@]}" timeout "$limit" \
        python3 bench/device_check.py "${part%%-*}" --results "$results" "${quick_flag[@]}"
    rc=$?
    if ((rc == 124)); then
        echo "$part: stopped at its time limit of ${limit} s; the rows above are what it finished."
        summary+=("$part: timed out (${limit} s)")
        status=1
    elif ((rc != 0)); then
        summary+=("$part: FAIL (exit $rc, $((SECONDS - start)) s)")
        status=1
    else
        summary+=("$part: ok ($((SECONDS - start)) s)")
    fi
done
echo
printf -- '- %s\n' "${summary[@]}"
exit "$status"
