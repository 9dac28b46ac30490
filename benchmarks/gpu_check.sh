#!/usr/bin/env bash
# The whole first-GPU session in one script (issue 24): the on-device tests, bench_train.py on the four paper pairs,
# epoch_check.py and a short Fashion-MNIST ledger, each stage under its own time limit so that the whole stays under
# 8 minutes on one H100/H200 (stage limits 90 + 210 + 100 + 70 s). Writes at most 8 files into OUT:
#   summary.md      the README speed-table rows (reference against fast, per pair), then one status line per stage
#   tests.txt       pytest's output of tests/test_on_device.py on the device
#   bench.md        every bench_train.py configuration's row, per pair
#   epoch_check.md  epoch_check.py's report (and epoch_check.json)
#   ledger.md       the ledger's report
#   log.txt         every stage's command, exit status, seconds and the tail of its output
#
#   benchmarks/gpu_check.sh [--data FASHION_DIR] [--device cuda] OUT     # on the GPU machine
#   benchmarks/gpu_check.sh --smoke OUT                                   # every stage at toy size on the CPU
#
# FASHION_DIR holds the four Fashion-MNIST idx files (.gz or not; the GPU machine has no network; default Debian's
# /usr/share/datasets/fashion-mnist). --smoke writes its own tiny Fashion-MNIST and CIFAR and runs on the CPU
# (the test suite runs it: tests/test_gpu_check.py). Exit status: 0 when every stage passed, else 1.
set -u

usage() { echo "usage: $0 [--smoke] [--data FASHION_DIR] [--device DEVICE] OUT" >&2; exit 2; }
SMOKE=0 DATA=/usr/share/datasets/fashion-mnist DEVICE=cuda OUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --data) [ $# -ge 2 ] || usage; DATA=$2; shift ;;
        --device) [ $# -ge 2 ] || usage; DEVICE=$2; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [ -z "$OUT" ] || usage; OUT=$1 ;;
    esac
    shift
done
[ -n "$OUT" ] || usage

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
cd "$ROOT" || exit 2
: > "$OUT/log.txt"
STATUS=()
FAILED=0

# stage NAME LIMIT_SECONDS COMMAND...: run it under a time limit, log it, remember its status
stage() {
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "== $name: $*" >> "$OUT/log.txt"
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$SCRATCH/$name.out" 2>&1
    rc=$?
    tail -n 40 "$SCRATCH/$name.out" >> "$OUT/log.txt"
    local seconds=$(( $(date +%s) - start ))
    echo "== $name: exit $rc after ${seconds}s" >> "$OUT/log.txt"
    if [ "$rc" -eq 0 ]; then
        STATUS+=("| $name | passed | ${seconds} s |")
    else
        [ "$rc" -eq 124 ] && rc="$rc (time limit ${limit} s)"
        STATUS+=("| $name | FAILED, exit $rc | ${seconds} s |")
        FAILED=1
    fi
}

if [ "$SMOKE" -eq 1 ]; then
    DEVICE=cpu
    DATA=$SCRATCH/fashion
    "$PY" -c "import sys; sys.path.insert(0, '.'); from tests.datafakes import write_tiny_fashion_mnist, write_tiny_cifar; \
write_tiny_fashion_mnist('$DATA', n_train=64, n_test=32); write_tiny_cifar('$SCRATCH/cifar', num_classes=100, n_train=64, n_test=32)" \
        || exit 1
    PAIRS=resnet8:resnet8
    COMPILE_PAIRS=
    BENCH=(--device cpu --configs reference,fast --steps 2 --rounds 1 --warmup 1
           --breakdown_steps 1 --conv_time 1 --batch_size 8 --n_data 64 --num_classes 10 --n 2 --threads 1)
    EPOCH=(--device cpu --pair resnet8:resnet8 --n_train 32 --n_test 16 --epochs 1 --fashion_pair resnet8:resnet8
           --fashion_epochs 1 --fast_flags "--gpu_data --channels_last" --num_workers 0 --in_process)
    LEDGER=(--device cpu --teacher resnet8 --student resnet8 --teacher_epochs 1 --epochs 1 --train_subset 64
            --test_subset 32 --seeds 0 --methods NORM)
    LIMITS=(110 110 110 110)
else
    PAIRS=resnet32x4:resnet8x4,resnet56:resnet20,wrn_40_2:wrn_16_2,vgg13:vgg8
    COMPILE_PAIRS=resnet32x4:resnet8x4  # fast_compile compiles for about a minute: one pair shows what it gives
    BENCH=(--device "$DEVICE" --configs reference,nosync,device_data,fast --steps 60 --rounds 3 --warmup 10
           --breakdown_steps 0 --conv_time 3)
    # the fast path without --compile here: two compilations would take the stage's whole budget
    EPOCH=(--device "$DEVICE" --n_train 10000 --n_test 2000 --epochs 2 --fashion_epochs 2
           --fast_flags "--gpu_data --amp bf16 --channels_last --fused_sgd")
    LEDGER=(--device "$DEVICE" --teacher_epochs 2 --epochs 2 --train_subset 10000 --test_subset 2000 --seeds 0
            --methods NORM KD --nce_k 4096)
    LIMITS=(90 210 100 70)  # 470 s in all: under 8 minutes
fi

# 1. the checks that need the device (tests/test_on_device.py; GPU_CHECK_DEVICE names the device)
stage tests "${LIMITS[0]}" env GPU_CHECK_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider tests/test_on_device.py
cp "$SCRATCH/tests.out" "$OUT/tests.txt"

# 2. bench_train.py on each pair: every configuration's row (bench.md) and the README speed-table rows
stage bench "${LIMITS[1]}" "$PY" benchmarks/gpu_bench.py --pairs "$PAIRS" --compile_pairs "$COMPILE_PAIRS" \
    --table "$OUT/bench.md" --summary "$SCRATCH/speed_rows.md" -- "${BENCH[@]}"

# 3. epoch_check.py: epoch time through the real scripts, Fashion-MNIST accuracy reference against fast
stage epoch_check "${LIMITS[2]}" "$PY" benchmarks/epoch_check.py --out "$SCRATCH/epoch" --fashion_root "$DATA" \
    "${EPOCH[@]}"
for name in epoch_check.md epoch_check.json; do
    [ -f "$SCRATCH/epoch/$name" ] && cp "$SCRATCH/epoch/$name" "$OUT/$name"
done

# 4. a short Fashion-MNIST ledger through the real scripts
stage ledger "${LIMITS[3]}" "$PY" scripts/ledger.py --out "$SCRATCH/ledger" --data_root "$DATA" "${LEDGER[@]}"
[ -f "$SCRATCH/ledger/report.md" ] && cp "$SCRATCH/ledger/report.md" "$OUT/ledger.md"

{
    if [ -f "$SCRATCH/speed_rows.md" ]; then cat "$SCRATCH/speed_rows.md"; else echo "(no speed rows: bench failed)"; fi
    echo
    echo "| stage | result | time |"
    echo "|---|---|---:|"
    printf '%s\n' "${STATUS[@]}"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
exit "$FAILED"
