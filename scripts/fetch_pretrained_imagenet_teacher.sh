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
#      TEACHER_REGISTRY  another registry file (default scripts/teachers.json); PYTHON the interpreter reading it
#
# The file names and their SHA-256 come from the teacher registry, scripts/teachers.json. Files come from
# https://download.pytorch.org/models/ through a resumable .part download; each is checked against the registry's
# SHA-256 (the full published digest; the prefix in the file name where none is published), a file already present
# with the right hash is kept, and a download with another hash is deleted (one line saying so, exit status 1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
cd "$REPO_ROOT"

BASE_URL="${BASE_URL:-https://download.pytorch.org/models}"
TEACHER_DIR="${TEACHER_DIR:-save/models}"
TIMEOUT="${TIMEOUT:-20}"
declare -A FILES=() SHA=()
ALL_TEACHERS=()
registry="$("$PYTHON" helper/teachers/registry.py files imagenet)" || die "cannot read the teacher registry"
while read -r name file digest; do
    [[ -n "$name" ]] || continue
    ALL_TEACHERS+=("$name")
    FILES[$name]="$file"
    SHA[$name]="$digest"
done <<<"$registry"

names=("$@")
if ((${#names[@]} == 0)); then names=("${ALL_TEACHERS[@]}"); fi
for name in "${names[@]}"; do
    [[ -n "${FILES[$name]:-}" ]] || die "unknown teacher '$name'; choose from ${ALL_TEACHERS[*]}"
done

expected_sha() {  # NAME: the registry's SHA-256 of NAME's file, or the hex suffix of its name (x-333f7ec4.pth)
    local want="${SHA[$1]}"
    if [[ "$want" == - ]]; then want="${FILES[$1]##*-}"; want="${want%.pth}"; fi
    printf '%s' "$want"
}

hash_ok() {  # FILE NAME: FILE's SHA-256 is (or, for a prefix, starts with) the expected one
    local file="$1" want
    want="$(expected_sha "$2")"
    if [[ "$DRY_RUN" == 1 ]]; then
        run sha256sum "$file"
        say "# expect the SHA-256 $want"
        return 0
    fi
    [[ "$(sha256sum "$file" | cut -d' ' -f1)" == "$want"* ]]
}

failed=()
for name in "${names[@]}"; do
    file="${FILES[$name]}"
    target="$TEACHER_DIR/${name}_imagenet_vanilla/$file"
    if [[ -f "$target" && "$DRY_RUN" != 1 ]]; then
        if hash_ok "$target" "$name"; then ok "$target (already present)"; continue; fi
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
    if hash_ok "$target.part" "$name"; then
        run mv "$target.part" "$target"
        ok "$target"
    else
        say "$target.part does not have the published SHA-256 ($(expected_sha "$name" | cut -c1-16)...); deleted it"
        rm -f "$target.part"
        failed+=("$name")
    fi
done

if ((${#failed[@]})); then
    die "could not fetch ${failed[*]} from $BASE_URL (offline? rerun to resume the download), or put" \
        "torchvision's files under $TEACHER_DIR/<name>_imagenet_vanilla/ by hand"
fi
