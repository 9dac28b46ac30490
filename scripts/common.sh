# Sourced by the shell scripts in this folder (not run on its own): repository root, Python, dry-run, messages.
#
# A script sources it, then takes an optional `--dry-run` first argument itself:
#     source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#     if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
# run CMD ARGS...  executes CMD, or with DRY_RUN=1 prints it (shell-quoted, one line on stdout) instead.
# say MESSAGE      prints a progress line on stderr (so a dry run's stdout holds nothing but commands);
# ok MESSAGE       the same as 'ok: MESSAGE', skipped in a dry run; die MESSAGE: error line and exit 1.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"

quote() {  # ARG: ARG as is when it needs no quoting, else in single quotes (copy-pasteable into a shell)
    if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        local out="" arg
        for arg in "$@"; do out+="$(quote "$arg") "; done
        printf '%s\n' "${out% }"
    else
        "$@"
    fi
}

say() {
    printf '%s\n' "$*" >&2
}

ok() {  # a success line, except in a dry run (where nothing happened)
    [[ "$DRY_RUN" == 1 ]] || say "ok: $*"
}

die() {
    printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}
