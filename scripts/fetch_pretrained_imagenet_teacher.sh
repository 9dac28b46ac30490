#!/usr/bin/env bash
# Fetch torchvision's V1 ImageNet ResNet weights (the NORM paper's ImageNet teachers) into
# save/models/<name>_imagenet_vanilla/<file>, the default --path_t of train_imagenet_student.py.
#
# usage: bash scripts/fetch_pretrained_imagenet_teacher.sh [--dry-run] [resnet18|resnet34|resnet50 ...]
#   (default: all three; the paper's Table 3 needs resnet34 and resnet50)
#   --dry-run print the commands instead of running them (same as DRY_RUN=1)
# env: TEACHER_DIR  where the <name>_imagenet_vanilla folders go (default save/models, relative to the repository
#                   root; train_imagenet_student.py looks in <--save_root>/models, --save_root defaulting to ./save)
#      TIMEOUT      seconds to wait for the server to answer (default 20)
#      BASE_URL     another address (a mirror) of the files (default https://download.pytorch.org/models)
#
# Files come from https://download.pytorch.org/models/ through a resumable .part download; each is checked against
# the SHA-256 prefix in its name (as torchvision does) and a file already present with the right hash is kept.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
cd "$REPO_ROOT"

BASE_URL="${BASE_URL:-https://download.pytorch.org/models}"
TEACHER_DIR="${TEACHER_DIR:-save/models}"
TIMEOUT="${TIMEOUT:-20}"
declare -A FILES=([resnet18]=resnet18-5c106cde.pth [resnet34]=resnet34-333f7ec4.pth [resnet50]=resnet50-19c8e357.pth)

names=("$@")
if ((${#names[@]} == 0)); then names=(resnet18 resnet34 resnet50); fi
for name in "${names[@]}"; do
    [[ -n "${FILES[$name]:-}" ]] || die "unknown teacher '$name'; choose from resnet18 resnet34 resnet50"
done

hash_ok() {  # FILE NAME: FILE's SHA-256 starts with the hex suffix of NAME (resnet34-333f7ec4.pth -> 333f7ec4)
    local file="$1" want="${2##*-}"
    want="${want%.pth}"
    if [[ "$DRY_RUN" == 1 ]]; then
        run sha256sum "$file"
        say "# expect a SHA-256 starting with $want"
        return 0
    fi
    [[ "$(sha256sum "$file" | cut -c1-${#want})" == "$want" ]]
}

failed=()
for name in "${names[@]}"; do
    file="${FILES[$name]}"
    target="$TEACHER_DIR/${name}_imagenet_vanilla/$file"
    if [[ -f "$target" && "$DRY_RUN" != 1 ]]; then
        if hash_ok "$target" "$file"; then ok "$target (already present)"; continue; fi
        say "$target has the wrong SHA-256; fetching it again"
        rm -f "$target"
    fi
    say "fetching $BASE_URL/$file"
    run mkdir -p "$(dirname "$target")"
    status=0
    if command -v curl >/dev/null 2>&1; then
        run curl -fL --progress-bar --connect-timeout "$TIMEOUT" --retry 2 --speed-limit 1024 --speed-time 60 \
            -C - -o "$target.part" "$BASE_URL/$file" || status=$?
    else
        run wget -c -T "$TIMEOUT" -t 3 -O "$target.part" "$BASE_URL/$file" || status=$?
    fi
    if ((status != 0)); then
        say "download of $file failed (exit status $status); rerun to resume it"
        failed+=("$name")
        continue
    fi
    if hash_ok "$target.part" "$file"; then
        run mv "$target.part" "$target"
        ok "$target"
    else
        say "$target.part does not have the SHA-256 its name promises; deleted it"
        rm -f "$target.part"
        failed+=("$name")
    fi
done

if ((${#failed[@]})); then
    die "could not fetch ${failed[*]} from $BASE_URL (offline? rerun to resume the download), or put" \
        "torchvision's files under $TEACHER_DIR/<name>_imagenet_vanilla/ by hand"
fi
