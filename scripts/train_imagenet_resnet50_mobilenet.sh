#!/usr/bin/env bash
# The official README's quick demo (its scripts/train_imagenet_resnet50_mobilenet.sh was never published): fetch
# torchvision's ResNet-50 to where train_imagenet_student.py looks by default, then distil MobileNet from it with
# NORM as in Table 3 (-r 0.125 -a 0 -b 1 -s 8 --lr_decay cos, 256 images per step over NPROC GPUs).
#
# usage: bash scripts/train_imagenet_resnet50_mobilenet.sh [--dry-run] [EXTRA_ARGS ...]
#   EXTRA_ARGS go to train_imagenet_student.py (e.g. --data_root /data/imagenet); the environment (NPROC, NNODES,
#   NODE_RANK, MASTER_ADDR, MASTER_PORT, BATCH_SIZE, TRIALS, TEACHER_DIR) is that of scripts/train_imagenet_norm.sh.
#   --dry-run  print the commands instead of running them (same as DRY_RUN=1)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
export DRY_RUN

bash "$REPO_ROOT/scripts/fetch_pretrained_imagenet_teacher.sh" resnet50
ONLY=resnet50:MobileNet bash "$REPO_ROOT/scripts/train_imagenet_norm.sh" "$@"
