#!/usr/bin/env bash
# NORM against the rest of the field under one recipe, one teacher file and one set of seeds: the paper's five
# CIFAR-100 pairs x {NORM, NORM+KD, DKD, ReviewKD, OFD, SimKD, SRRL, SemCKD, DIST, KD+LS} x trials 1..3 = 150 runs of
# train_cifar_student.py, one after the other. Summarise them with python scripts/summarize_results.py, which puts
# each method's published number beside ours where the reference gives one.
#
# usage: bash scripts/table_field.sh [--dry-run] [EXTRA_ARGS ...]
#   EXTRA_ARGS go last to every call (e.g. --epochs 1 --data_root ~/cifar for a smoke run)
#   --dry-run  print the commands instead of running them (same as DRY_RUN=1)
# env: TRIALS, ONLY, TEACHER_DIR, KD_WEIGHT, KEEP_GOING, PYTHON as in table1.sh;
#      METHODS  subset of "NORM NORM+KD DKD ReviewKD OFD SimKD SRRL SemCKD DIST KD+LS" (default all ten; KD and
#               NORM+CRD may be added)
#
# Hyperparameters: NORM and NORM+KD as in table1.sh/table2.sh (-b 1 -s 8, the pair's -r); every other method runs
# with its reference's CIFAR-100 defaults, which --distill NAME applies (per pair where the reference gives them per
# pair); the official recipe otherwise (240 epochs, batch 64, lr 0.05, 0.01 for ShuffleV2, step decay 150/180/210).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi

# teacher    student   -r (NORM's CE weight, as in table1.sh and table2.sh)
PAIRS=(
    "resnet32x4 resnet8x4 0.1"
    "wrn_40_2   wrn_16_2  1"
    "resnet56   resnet20  1"
    "vgg13      vgg8      1"
    "resnet32x4 ShuffleV2 1"
)
TABLE_METHODS="NORM NORM+KD DKD ReviewKD OFD SimKD SRRL SemCKD DIST KD+LS"
source "$(dirname "${BASH_SOURCE[0]}")/norm_table.sh"
