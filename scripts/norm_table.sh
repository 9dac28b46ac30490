# Sourced (not run) by table1.sh, table2.sh and table_field.sh once they have set PAIRS, an array of
# "teacher student r" lines (r: NORM's CE weight for the pair), and optionally TABLE_METHODS (the default METHODS);
# runs every selected pair x method x trial with train_cifar_student.py, passing the caller's arguments through.
# The environment variables it reads are documented in table1.sh.

cd "$REPO_ROOT"
read -r -a trials <<<"${TRIALS:-1 2 3}"
read -r -a methods <<<"${METHODS:-${TABLE_METHODS:-NORM NORM+KD NORM+CRD}}"
KNOWN_METHODS="NORM NORM+KD NORM+CRD KD DKD ReviewKD OFD SimKD SRRL SemCKD DIST KD+LS"
read -r -a only <<<"${ONLY:-}"
TEACHER_DIR="${TEACHER_DIR:-save/models}"
KD_WEIGHT="${KD_WEIGHT:-1}"  # -a of NORM+KD: the official code does not give it

method_flags() {  # METHOD R -> the flags that select it, in the global array `flags`
    # NORM's runs: the pair's CE weight R, -b 1 -s 8. The other methods run with their reference's defaults, which
    # --distill NAME applies by itself (per pair where the reference sets them per pair, e.g. DKD's beta).
    case "$1" in
        NORM) flags=(--distill NORM -r "$2" -a 0 -b 1 -s 8) ;;
        NORM+KD) flags=(--distill NORM -r "$2" -a "$KD_WEIGHT" -b 1 -s 8) ;;
        NORM+CRD) flags=(--distill NORM_CRD -r "$2" -a 0 -b 1 -s 8) ;;  # CRD weight: --crd_weight, 2.5 officially
        KD|DKD|ReviewKD|OFD|SimKD|SRRL|SemCKD|DIST) flags=(--distill "${1,,}") ;;
        KD+LS) flags=(--distill kd --logit_standardize) ;;  # KD on z-scored logits with the reference's T and weight
        *) die "unknown method '$1' in METHODS; choose from $KNOWN_METHODS" ;;
    esac
}
for method in "${methods[@]}"; do method_flags "$method" 1; done

selected=()
for pair in "${PAIRS[@]}"; do
    read -r t s r <<<"$pair"
    if ((${#only[@]} == 0)) || [[ " ${only[*]} " == *" $t:$s "* ]]; then selected+=("$t $s $r"); fi
done
for want in "${only[@]}"; do
    found=0
    for pair in "${PAIRS[@]}"; do read -r t s r <<<"$pair"; [[ "$want" != "$t:$s" ]] || found=1; done
    ((found)) || die "ONLY: no pair '$want' in this table (teacher:student, e.g. resnet32x4:resnet8x4)"
done

if [[ "$DRY_RUN" != 1 ]]; then  # every teacher must be in place before hours of training start
    absent=()
    for pair in "${selected[@]}"; do
        read -r t s r <<<"$pair"
        [[ -f "$TEACHER_DIR/${t}_vanilla/ckpt_epoch_240.pth" || " ${absent[*]} " == *" $t "* ]] || absent+=("$t")
    done
    if ((${#absent[@]})); then
        die "no $TEACHER_DIR/<name>_vanilla/ckpt_epoch_240.pth for ${absent[*]}; fetch them with" \
            "'bash scripts/fetch_pretrained_teachers.sh ${absent[*]}' or train them with" \
            "'TEACHERS=\"${absent[*]}\" bash scripts/train_cifar_teacher.sh'"
    fi
fi

total=$((${#trials[@]} * ${#selected[@]} * ${#methods[@]}))
count=0
failed=()
for trial in "${trials[@]}"; do
    for pair in "${selected[@]}"; do
        read -r t s r <<<"$pair"
        for method in "${methods[@]}"; do
            count=$((count + 1))
            method_flags "$method" "$r"
            say "=== [$count/$total] $t -> $s $method trial $trial ==="
            cmd=("$PYTHON" train_cifar_student.py --path_t "$TEACHER_DIR/${t}_vanilla/ckpt_epoch_240.pth"
                 --model_t "$t" --model_s "$s" "${flags[@]}" --trial "$trial" "$@")
            if [[ "${KEEP_GOING:-0}" == 1 ]]; then
                run "${cmd[@]}" || failed+=("$t->$s $method trial $trial")
            else
                run "${cmd[@]}"
            fi
        done
    done
done
if ((${#failed[@]})); then
    say "$(basename "$0"): ${#failed[@]} of $total runs failed:"
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
