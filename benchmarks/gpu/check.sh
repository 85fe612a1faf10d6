#!/usr/bin/env bash
# Every GPU-only claim of dialsum, checked in one command on a GPU machine with no network (under 10 minutes):
#
#   bash benchmarks/gpu/check.sh [--dry-run] [--overwrite] [--budget SECONDS] [RESULTS_DIR]
#
# Steps, each under its own time limit, none stopping the ones after it:
#   wheels                  install the wheels prepare.sh put in .whl/ into a temporary target (--no-index --no-deps)
#                           and check their requirements against what the machine has
#   environment             Python, torch, the GPU, package versions; dialsum's modules import
#   pytest                  pytest -m gpu tests/test_gpu.py (precision, packing, QLoRA, FSDP, CUDA = CPU greedy,
#                           gpu_step on the 3B architecture)
#   gpu_step_checkpointing  benchmarks/gpu_step.py the preset's way (checkpointing on): memory vs dialsum plan
#   gpu_step                benchmarks/gpu_step.py without checkpointing: tokens/s and MFU
# RESULTS_DIR (default gpu-results/, git-ignored; new or empty unless --overwrite) gets three files, rewritten after
# every step so a kill leaves what was done: results.json (every step's status, rc, seconds, figures; the claims),
# check.log (every step's output) and junit.xml (pytest's own record).
#
# --dry-run runs the same plumbing on a machine without a GPU (CUDA hidden even where there is one): nothing is
# installed, the tests skip, gpu_step runs its tiny CPU variant, and every GPU step says it was skipped.
# PYTHON (default python3) is the interpreter; the repository's src/ goes on PYTHONPATH (no install needed);
# DIALSUM_GPU_WHEELS (default .whl) is where the carried wheels are.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD

DRY=0
OVERWRITE=()
BUDGET=570
OUT=gpu-results
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --overwrite) OVERWRITE=(--overwrite) ;;
        --budget)
            shift
            BUDGET=${1:-}
            [[ $BUDGET =~ ^[0-9]+$ ]] || { echo "check.sh: --budget needs a number of seconds" >&2; exit 2; }
            ;;
        -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) OUT=$1 ;;
    esac
    shift
done

PY=${PYTHON:-python3}
WHEELS=${DIALSUM_GPU_WHEELS:-$ROOT/.whl}  # what prepare.sh downloaded
HELPER=(env PYTHONPATH="$ROOT/src" "$PY" "$ROOT/benchmarks/gpu/gpucheck.py")
"${HELPER[@]}" claim --out "$OUT" "${OVERWRITE[@]}" || exit 2
mkdir -p "$OUT"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dialsum-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SITE=$WORK/site
STARTED=$(date -Iseconds)
STARTED_EPOCH=$(date +%s)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HF_HOME=$WORK/hf DIALSUM_TINY_CACHE=$WORK/tiny MPLBACKEND=Agg WANDB_DISABLED=true
export DIALSUM_GPU_FIGURES=$WORK/figures.jsonl
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
if [ $DRY = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # the plumbing only, also on a machine with a GPU
fi
DRYFLAG=()
[ $DRY = 1 ] && DRYFLAG=(--dry-run)

collect() {
    "${HELPER[@]}" collect --work "$WORK" --out "$OUT" --started "$STARTED" --started-epoch "$STARTED_EPOCH" \
        "${DRYFLAG[@]}" "$@"
}

record() {  # record NAME STATUS RC SECONDS LIMIT REASON COMMAND
    "${HELPER[@]}" record --steps "$WORK/steps.jsonl" --name "$1" --status "$2" ${3:+--rc "$3"} \
        ${4:+--seconds "$4"} ${5:+--limit "$5"} ${6:+--reason "$6"} ${7:+--command "$7"}
    collect >/dev/null || echo "check.sh: could not write $OUT/results.json" >&2
}

skip() {  # skip NAME REASON
    echo "=== $1: skipped ($2)" | tee -a "$WORK/check.log"
    record "$1" skipped "" "" "" "$2" ""
}

# run NAME LIMIT COMMAND...: under min(LIMIT, what is left of the budget); output to the terminal and the logs.
# Sets STEP_RC.
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - STARTED_EPOCH) - 15))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 30 ]; then
        skip "$name" "no time left in the ${BUDGET} s budget"
        STEP_RC=
        return
    fi
    echo "=== $name (limit ${limit} s): $*" | tee -a "$WORK/check.log"
    local start end
    start=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    STEP_RC=${PIPESTATUS[0]}
    end=$(date +%s.%N)
    cat "$WORK/$name.log" >>"$WORK/check.log"
    STEP_SECONDS=$(awk "BEGIN {printf \"%.1f\", $end - $start}")
    echo "=== $name: rc $STEP_RC in $STEP_SECONDS s" | tee -a "$WORK/check.log"
    STEP_LIMIT=$limit
}

# 1. the carried wheels
if [ $DRY = 1 ]; then
    skip wheels "dry run: the carried wheels are for the GPU image's Python 3.12; nothing installed"
else
    run wheels 150 "${HELPER[@]}" install --wheels "$WHEELS" --target "$SITE" --figures "$WORK/wheels.figures.json"
    [ -n "$STEP_RC" ] && record wheels ran "$STEP_RC" "$STEP_SECONDS" "$STEP_LIMIT" "" "gpucheck.py install"
    export PYTHONPATH="$SITE:$PYTHONPATH"  # carried packages first; they replace nothing the image needs
fi

# 2. the environment
run environment 120 "$PY" "$ROOT/benchmarks/gpu/gpucheck.py" env --figures "$WORK/environment.figures.json"
[ -n "$STEP_RC" ] && record environment ran "$STEP_RC" "$STEP_SECONDS" "$STEP_LIMIT" "" "gpucheck.py env"

# 3. the gpu tests
PYTEST=("$PY" -m pytest -m gpu tests/test_gpu.py -v -rA -p no:cacheprovider --junitxml="$WORK/junit.xml")
PYTEST+=(-o junit_family=xunit1)
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    PYTEST+=(--timeout 240)  # one hung test (a stuck NCCL init) leaves time for the others
fi
run pytest 330 "${PYTEST[@]}"
[ -n "$STEP_RC" ] && record pytest ran "$STEP_RC" "$STEP_SECONDS" "$STEP_LIMIT" "" "${PYTEST[*]}"

# 4-5. the benchmark: the preset's way (memory vs plan), then without checkpointing (MFU)
benchmark() {  # benchmark NAME ARGS...
    local name=$1
    shift
    local command=("$PY" "$ROOT/benchmarks/gpu_step.py" "$@" --json "$WORK/$name.json")
    if [ $DRY = 1 ]; then
        command+=(--arch tiny --device cpu --steps 1 --warmup 1 --tokens 512 --max-length 128)
    fi
    run "$name" 150 "${command[@]}"
    [ -z "$STEP_RC" ] && return
    if [ $DRY = 1 ] && [ "$STEP_RC" = 0 ]; then
        record "$name" skipped "$STEP_RC" "$STEP_SECONDS" "$STEP_LIMIT" \
            "dry run: no GPU measurement; the tiny CPU variant ran (plumbing only)" "${command[*]}"
    else
        record "$name" ran "$STEP_RC" "$STEP_SECONDS" "$STEP_LIMIT" "" "${command[*]}"
    fi
}
benchmark gpu_step_checkpointing --checkpointing --steps 8
benchmark gpu_step --steps 8 --tokens 8192

collect --finished
