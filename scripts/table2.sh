#!/usr/bin/env bash
# The NORM paper's Table 2 on CIFAR-100 (teacher and student of different families): 6 pairs x {NORM, NORM+KD,
# NORM+CRD} x trials 1..3 = 54 runs of train_cifar_student.py, one after the other. Summarise them with
# python scripts/summarize_results.py.
#
# usage: bash scripts/table2.sh [--dry-run] [EXTRA_ARGS ...]
# Arguments, environment (TRIALS, METHODS, ONLY, TEACHER_DIR, KD_WEIGHT, KEEP_GOING, PYTHON) and the shared
# hyperparameters (-b 1 -s 8; NORM -a 0; NORM+KD -a 1; NORM+CRD --distill NORM_CRD -a 0, CRD weight 2.5) are those
# of scripts/table1.sh. MobileNetV2 and the ShuffleNets train at lr 0.01, as in the official code.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi

# teacher    student     -r    (no Table 2 pair has an official -r: 1, the CE weight's default)
PAIRS=(
    "vgg13      MobileNetV2 1"
    "ResNet50   MobileNetV2 1"
    "ResNet50   vgg8        1"
    "resnet32x4 ShuffleV1   1"
    "resnet32x4 ShuffleV2   1"
    "wrn_40_2   ShuffleV1   1"
)
source "$(dirname "${BASH_SOURCE[0]}")/norm_table.sh"
