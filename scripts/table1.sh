#!/usr/bin/env bash
# The NORM paper's Table 1 on CIFAR-100 (teacher and student of the same family): 7 pairs x {NORM, NORM+KD,
# NORM+CRD} x trials 1..3 = 63 runs of train_cifar_student.py, one after the other. Summarise them with
# python scripts/summarize_results.py (mean and std over the trials, next to the paper's numbers).
#
# usage: bash scripts/table1.sh [--dry-run] [EXTRA_ARGS ...]
#   EXTRA_ARGS go last to every train_cifar_student.py call, so they override the per-pair flags: e.g.
#              --epochs 1 --data_root ~/cifar (smoke run), --save_root out, -r 0.5 (one CE weight for every pair)
#   --dry-run  print the 63 commands instead of running them (same as DRY_RUN=1); e.g. hand them to a scheduler
# env: TRIALS       trial names (default "1 2 3")
#      METHODS      subset of "NORM NORM+KD NORM+CRD" (default all three)
#      ONLY         pairs to run, as teacher:student (default all), e.g. ONLY="resnet32x4:resnet8x4 vgg13:vgg8"
#      TEACHER_DIR  folder of the teachers <name>_vanilla/ckpt_epoch_240.pth (default save/models; fetch them with
#                   scripts/fetch_pretrained_teachers.sh or train them with scripts/train_cifar_teacher.sh)
#      KD_WEIGHT    -a of NORM+KD (default 1)
#      KEEP_GOING   1: go on after a failed run and list the failures at the end (exit 1); default: stop at it
#      PYTHON       the interpreter (default python3)
#
# Hyperparameters (the official repository gives them for two CIFAR pairs only):
#   every run: -b 1 (NORM loss weight, paper alpha), -s 8 (N), official defaults otherwise (240 epochs, batch 64,
#              lr 0.05 (0.01 for MobileNetV2/ShuffleNets), step decay at 150/180/210, logit scale 2.5)
#   NORM:      -a 0, -r per pair (the CE weight) as in PAIRS below
#   NORM+KD:   -a KD_WEIGHT (default 1; the official value is not given), KD temperature 4, -r as for NORM
#   NORM+CRD:  --distill NORM_CRD -a 0, CRD term weighted 2.5 (--crd_weight, the official code's value), -r as NORM
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi

# teacher    student   -r
PAIRS=(
    "wrn_40_2   wrn_16_2  1"     # -r not given officially: 1 (the CE weight's default)
    "wrn_40_2   wrn_40_1  1"     # not given officially
    "resnet56   resnet20  1"     # not given officially
    "resnet110  resnet20  1"     # not given officially
    "resnet110  resnet32  0.25"  # the official script sweeps -r 0.0625/0.125/0.25/0.5 without saying which
                                 # gave the table; 0.25 taken (between the README's 0.1 and the ImageNet 1)
    "resnet32x4 resnet8x4 0.1"   # the README's example command
    "vgg13      vgg8      1"     # not given officially
)
source "$(dirname "${BASH_SOURCE[0]}")/norm_table.sh"
