#!/usr/bin/env bash
# The NORM paper's Table 3 on ImageNet with DDP under torchrun: resnet34 -> resnet18S (-r 1), resnet50 -> MobileNet
# (-r 0.125), and resnet50 -> resnet50_4S (-r 1; not given officially, the released model's row of Table 6),
# every run with --distill NORM -a 0 -b 1 -s 8 --lr_decay cos and the official 256 images per step
# (--batch_size is the global batch: 8 GPUs x 32 by default). The teachers are torchvision's V1 weights: scripts/fetch_pretrained_imagenet_teacher.sh.
#
# usage: bash scripts/train_imagenet_norm.sh [--dry-run] [EXTRA_ARGS ...]
#   EXTRA_ARGS go last to every train_imagenet_student.py call (so they override), e.g. --data_root /data/imagenet,
#              --epochs 1, --num_workers 8 (per process)
#   --dry-run  print the commands instead of running them (same as DRY_RUN=1)
# env: NPROC        processes (GPUs) per node (default 8)
#      NNODES       nodes (default 1); with more than one, run the script on every node with its NODE_RANK
#      NODE_RANK    this node's rank (default 0); MASTER_ADDR (required when NNODES > 1), MASTER_PORT (default 29500)
#      BATCH_SIZE   images per step over all processes (default the paper's 256; it must divide by NPROC x NNODES)
#      ONLY         pairs to run as teacher:student (default all three), e.g. ONLY=resnet50:MobileNet
#      TRIALS       trial names (default 1)
#      TEACHER_DIR  folder of <name>_imagenet_vanilla/<torchvision file> (default save/models)
#      TORCHRUN     the launcher (default torchrun)
# (The official ImageNet script calls files that do not exist; this one runs what it meant.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
cd "$REPO_ROOT"

NPROC="${NPROC:-8}"
NNODES="${NNODES:-1}"
TEACHER_DIR="${TEACHER_DIR:-save/models}"
read -r -a trials <<<"${TRIALS:-1}"
read -r -a only <<<"${ONLY:-}"
world=$((NPROC * NNODES))
BATCH_SIZE="${BATCH_SIZE:-256}"
((BATCH_SIZE % world == 0)) || die "BATCH_SIZE=$BATCH_SIZE (the global batch) does not divide over $world processes"

launcher=("${TORCHRUN:-torchrun}" "--nproc_per_node=$NPROC")
if ((NNODES > 1)); then
    [[ -n "${MASTER_ADDR:-}" ]] || die "NNODES=$NNODES needs MASTER_ADDR (the address of the node with NODE_RANK=0)"
    launcher+=("--nnodes=$NNODES" "--node_rank=${NODE_RANK:-0}" "--master_addr=$MASTER_ADDR"
               "--master_port=${MASTER_PORT:-29500}")
else
    launcher+=(--standalone)
fi

# teacher  student     -r     torchvision weights      source of -r
PAIRS=(
    "resnet34 resnet18S   1     resnet34-333f7ec4.pth"   # the official scripts/train_imagenet_norm.sh
    "resnet50 MobileNet   0.125 resnet50-19c8e357.pth"   # the same script (its command calls a missing file)
    "resnet50 resnet50_4S 1     resnet50-19c8e357.pth"   # not given officially (no script): 1 as for ResNet18
)
for want in "${only[@]}"; do
    found=0
    for pair in "${PAIRS[@]}"; do read -r t s _ <<<"$pair"; [[ "$want" != "$t:$s" ]] || found=1; done
    ((found)) || die "ONLY: no pair '$want' (choose from resnet34:resnet18S resnet50:MobileNet resnet50:resnet50_4S)"
done

for trial in "${trials[@]}"; do
    for pair in "${PAIRS[@]}"; do
        read -r t s r file <<<"$pair"
        if ((${#only[@]})) && [[ " ${only[*]} " != *" $t:$s "* ]]; then continue; fi
        path_t="$TEACHER_DIR/${t}_imagenet_vanilla/$file"
        if [[ "$DRY_RUN" != 1 && ! -f "$path_t" ]]; then
            die "teacher weights $path_t not found; run: bash scripts/fetch_pretrained_imagenet_teacher.sh $t"
        fi
        say "=== $t -> $s NORM trial $trial: global batch $BATCH_SIZE = $world x $((BATCH_SIZE / world)) ==="
        run "${launcher[@]}" train_imagenet_student.py --path_t "$path_t" --model_t "$t" --model_s "$s" \
            --distill NORM -r "$r" -a 0 -b 1 -s 8 --lr_decay cos --batch_size "$BATCH_SIZE" --trial "$trial" "$@"
    done
done
