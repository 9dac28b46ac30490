#!/usr/bin/env bash
# Fetch RepDistiller's pretrained CIFAR-100 teachers (the ones the NORM paper distils from) into
# save/models/<name>_vanilla/ckpt_epoch_240.pth, where scripts/table1.sh and scripts/table2.sh look for them.
#
# usage: bash scripts/fetch_pretrained_teachers.sh [--dry-run] [NAME ...]
#   NAME      wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50 (default: all six)
#   --dry-run print the commands instead of running them (same as DRY_RUN=1)
# env: TEACHER_DIR  where the <name>_vanilla folders go (default save/models, relative to the repository root)
#      TIMEOUT      seconds to wait for a server to answer (default 20)
#      ORIGINAL_URL, ARCHIVE_URL: other addresses (mirrors) of the two sources
#      KEEP_ARCHIVE 1 keeps mdistiller's cifar_teachers.tar after unpacking (default: deleted)
#      PYTHON       the interpreter used to check the files (default python3)
#      TEACHER_REGISTRY  another teacher registry file (default scripts/teachers.json)
#
# For each teacher: a file already present that loads is kept; otherwise it is downloaded (resumably, through a
# .part file) from RepDistiller's original address http://shape2prog.csail.mit.edu/repo/<name>_vanilla/..., and
# what that does not give comes from mdistiller's archive of the same files (GitHub release "checkpoints" of
# megvii-research/mdistiller). Each file must load strictly into models.model_dict[name](num_classes=100) and,
# where the teacher registry (scripts/teachers.json) publishes a SHA-256 for it, have that hash: a file that fails
# either is deleted (one line saying why). The registry publishes none for these six today (see its notes).
# When neither source is reachable it says so on stderr, points to scripts/train_cifar_teacher.sh, and exits 1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
cd "$REPO_ROOT"

registry="$("$PYTHON" helper/teachers/registry.py files cifar100)" || die "cannot read the teacher registry"
ALL_TEACHERS=()
while read -r name _; do [[ -z "$name" ]] || ALL_TEACHERS+=("$name"); done <<<"$registry"
ORIGINAL_URL="${ORIGINAL_URL:-http://shape2prog.csail.mit.edu/repo}"
MDISTILLER_RELEASE="https://github.com/megvii-research/mdistiller/releases/download/checkpoints"
ARCHIVE_URL="${ARCHIVE_URL:-$MDISTILLER_RELEASE/cifar_teachers.tar}"
TEACHER_DIR="${TEACHER_DIR:-save/models}"
TIMEOUT="${TIMEOUT:-20}"
# load the file strictly into the CIFAR-100 architecture; a bad file gives one "error: ..." line and exit status 2
VERIFY_PY="import sys; from helper.cli.entry import run_cli; from helper.teachers.loading import load_model_file; \
from models import model_dict; run_cli(lambda _: load_model_file(model_dict, sys.argv[1], sys.argv[2], 100))"

names=("$@")
if ((${#names[@]} == 0)); then names=("${ALL_TEACHERS[@]}"); fi
for name in "${names[@]}"; do
    [[ " ${ALL_TEACHERS[*]} " == *" $name "* ]] || die "unknown teacher '$name'; choose from ${ALL_TEACHERS[*]}"
done

download() {  # URL OUT: resumable download into OUT.part, renamed to OUT once complete; curl/wget's exit status
    local url="$1" out="$2"
    if command -v curl >/dev/null 2>&1; then
        run curl -fL --progress-bar --connect-timeout "$TIMEOUT" --retry 1 --speed-limit 1024 --speed-time 60 \
            -C - -o "$out.part" "$url" || return $?
    else
        run wget -c -T "$TIMEOUT" -t 2 -O "$out.part" "$url" || return $?
    fi
    run mv "$out.part" "$out"
}

unreachable() {  # exit status of curl/wget -> 0 when it means the server could not be reached at all
    case "$1" in 4|5|6|7|28|35) return 0 ;; *) return 1 ;; esac  # wget 4/5: network/SSL; curl 6/7/28/35
}

verify() {  # NAME FILE: FILE's SHA-256 against the registry (no torch needed), then load it strictly into NAME
    run "$PYTHON" helper/teachers/registry.py check cifar100 "$1" "$2" && run "$PYTHON" -c "$VERIFY_PY" "$1" "$2"
}

target_of() { printf '%s/%s_vanilla/ckpt_epoch_240.pth' "$TEACHER_DIR" "$1"; }

missing=()
original_up=1
for name in "${names[@]}"; do
    target="$(target_of "$name")"
    if [[ -f "$target" ]]; then
        if verify "$name" "$target"; then ok "$target (already present)"; continue; fi
        say "$target is not a usable $name; fetching it again"
        run rm -f "$target"
    fi
    run mkdir -p "$(dirname "$target")"
    if [[ "$original_up" == 1 ]]; then
        say "fetching $name from $ORIGINAL_URL"
        status=0
        download "$ORIGINAL_URL/${name}_vanilla/ckpt_epoch_240.pth" "$target" || status=$?
        if [[ "$DRY_RUN" == 1 ]]; then
            verify "$name" "$target"
            missing+=("$name")  # a dry run cannot know whether it worked: show the fallback too
            continue
        fi
        if ((status == 0)); then
            if verify "$name" "$target"; then ok "$target"; continue; fi
            run rm -f "$target"
        elif unreachable "$status"; then
            say "the original server ($ORIGINAL_URL) is not reachable; trying mdistiller's archive instead"
            original_up=0
        else
            say "the original address gave no usable $name (exit status $status)"
        fi
    fi
    missing+=("$name")
done

if ((${#missing[@]})); then
    [[ "$DRY_RUN" != 1 ]] || say "# if any of those fails, the rest comes from mdistiller's archive:"
    say "fetching ${missing[*]} from $ARCHIVE_URL"
    archive="$TEACHER_DIR/cifar_teachers.tar"
    unpack="$TEACHER_DIR/.cifar_teachers_unpack"
    run mkdir -p "$TEACHER_DIR"
    if download "$ARCHIVE_URL" "$archive"; then
        run rm -rf "$unpack"
        run mkdir -p "$unpack"
        if run tar -xf "$archive" -C "$unpack"; then
            still=()
            for name in "${missing[@]}"; do
                target="$(target_of "$name")"
                src="$unpack/cifar_teachers/${name}_vanilla/ckpt_epoch_240.pth"
                if [[ "$DRY_RUN" != 1 && ! -f "$src" ]]; then  # tolerate another top folder in the archive
                    src="$(find "$unpack" -path "*/${name}_vanilla/ckpt_epoch_240.pth" -print -quit)"
                fi
                if [[ -n "$src" ]] && { [[ "$DRY_RUN" == 1 ]] || [[ -f "$src" ]]; }; then
                    run mkdir -p "$(dirname "$target")"
                    run mv "$src" "$target"
                    if verify "$name" "$target"; then ok "$target"; continue; fi
                    run rm -f "$target"
                else
                    say "the archive holds no ${name}_vanilla/ckpt_epoch_240.pth"
                fi
                still+=("$name")
            done
            missing=("${still[@]}")
        else
            say "could not unpack $archive"
        fi
        run rm -rf "$unpack"
        [[ "${KEEP_ARCHIVE:-0}" == 1 ]] || run rm -f "$archive"
    fi
fi

if [[ "$DRY_RUN" != 1 ]] && ((${#missing[@]})); then
    say "$(basename "$0"): error: could not fetch the teacher(s) ${missing[*]}: neither RepDistiller's server"
    say "  ($ORIGINAL_URL) nor mdistiller's archive ($ARCHIVE_URL) gave a loadable file."
    say "  Train them instead (240 epochs each, plain cross-entropy; they land in $TEACHER_DIR/<name>_vanilla/):"
    prefix=""
    [[ "$TEACHER_DIR" == save/models ]] || prefix="TEACHER_DIR=$(quote "$TEACHER_DIR") "
    say "    ${prefix}TEACHERS=\"${missing[*]}\" bash scripts/train_cifar_teacher.sh"
    say "  or copy checkpoints you have to $TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth and rerun this script."
    exit 1
fi
