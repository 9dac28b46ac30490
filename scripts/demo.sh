#!/usr/bin/env bash
# The quick CPU demo (teacher, vanilla student and NORM student on Fashion-MNIST; see scripts/demo.py --help).
# usage: bash scripts/demo.sh [--dry-run] [demo.py options, e.g. --subset 2000 --data_root DIR]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
run "$PYTHON" "$REPO_ROOT/scripts/demo.py" "$@"
