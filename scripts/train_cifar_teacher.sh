#!/usr/bin/env bash
# Train the NORM paper's six CIFAR-100 teachers from scratch with train_cifar_teacher.py (the official recipe:
# 240 epochs, batch 64, SGD lr 0.05, step decay at 150/180/210), one after the other, when the pretrained ones
# cannot be fetched (scripts/fetch_pretrained_teachers.sh).
#
# usage: bash scripts/train_cifar_teacher.sh [--dry-run] [EXTRA_ARGS ...]
#   EXTRA_ARGS go to every train_cifar_teacher.py call, last (so they override), e.g. --data_root, --save_root,
#              --epochs 1 for a smoke run
#   --dry-run  print the commands instead of running them (same as DRY_RUN=1)
# env: TEACHERS     the teachers to train (default "wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50")
#      TRIAL        the --trial name (default 0)
#      TEACHER_DIR  where table1.sh/table2.sh look for <name>_vanilla/ckpt_epoch_240.pth (default save/models)
#      INSTALL      auto (default): after a finished 240-epoch CIFAR-100 run, copy its final weights to
#                   TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth unless a file is there already;
#                   1: the same whatever the epochs/dataset; 0: never
#      PYTHON       the interpreter (default python3)
# Runs are written to <save_root>/models/<name>_cifar100_lr_0.05_decay_0.0005_trial_<TRIAL>/ and summarised in
# <save_root>/results.jsonl (the run folder found there is the one installed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
cd "$REPO_ROOT"

read -r -a teachers <<<"${TEACHERS:-wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50}"
TRIAL="${TRIAL:-0}"
TEACHER_DIR="${TEACHER_DIR:-save/models}"
INSTALL="${INSTALL:-auto}"

save_root="./save"  # the --save_root among the extra arguments (the last one wins, as in argparse)
args=("$@")
for i in "${!args[@]}"; do
    case "${args[$i]}" in
        --save_root) save_root="${args[$((i + 1))]:-$save_root}" ;;
        --save_root=*) save_root="${args[$i]#--save_root=}" ;;
    esac
done

# Copy the final weights of the newest vanilla run of argv[1] recorded in argv[2]/results.jsonl to argv[3].
INSTALL_PY='import json, os, shutil, sys
name, save_root, target, mode = sys.argv[1:]
runs = [json.loads(line) for line in open(os.path.join(save_root, "results.jsonl")) if line.strip()]
runs = [r for r in runs if r.get("student") == name and r.get("method") == "vanilla"]
if not runs:
    sys.exit(f"no finished {name} run in {save_root}/results.jsonl; nothing installed")
run = runs[-1]
epochs, dataset, folder = run.get("epochs"), run.get("dataset"), run["run"]
if mode == "auto" and (epochs != 240 or dataset != "cifar100"):
    print(f"not installing {folder} as {target}: {epochs} epochs on {dataset} (INSTALL=1 forces it)",
          file=sys.stderr)
    sys.exit(0)
source = os.path.join(folder, f"ckpt_epoch_{epochs}.pth")
if not os.path.isfile(source):
    source = os.path.join(folder, f"{name}_last.pth")
os.makedirs(os.path.dirname(target), exist_ok=True)
shutil.copyfile(source, target)
best, last = run.get("best_acc"), run.get("last_acc")
print(f"installed {source} as {target} (acc@1 best {best}, last {last})",
      file=sys.stderr)'

for name in "${teachers[@]}"; do
    say "=== teacher $name (trial $TRIAL) ==="
    run "$PYTHON" train_cifar_teacher.py --model "$name" --trial "$TRIAL" "$@"
    target="$TEACHER_DIR/${name}_vanilla/ckpt_epoch_240.pth"
    if [[ "$INSTALL" == 0 ]]; then
        continue
    elif [[ -e "$target" ]]; then
        say "$target exists already; leaving it as it is"
    elif [[ "$DRY_RUN" == 1 ]]; then
        say "# then: copy the run's final weights to $target (INSTALL=$INSTALL)"
    else
        "$PYTHON" -c "$INSTALL_PY" "$name" "$save_root" "$target" "$INSTALL"
    fi
done
