"""Summarise <save_root>/results.jsonl as a Markdown table: mean ± std over trials, next to the NORM paper's numbers.

python scripts/summarize_results.py [save/results.jsonl] [--last] [--json]

Runs are grouped by dataset, teacher, student, method, the settings that change what is learned (r, a, b and, for
NORM, N and a non-default transform) and the number of epochs. The method label is NORM, NORM+KD (NORM with a KD
weight -a > 0), NORM+CRD (--distill NORM_CRD), vanilla (a model trained alone by train_cifar_teacher.py) or the
--distill name (with "+LS" under --logit_standardize). The ± is the sample standard deviation over the trials (n - 1
in the denominator); with one trial there is none. The paper column holds the official NORM README's numbers (its
Tables 1-3: top-1 means over trials) and, for the other methods on the paper's five CIFAR pairs, the number their
own paper or README publishes; "—" where none is published.
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.cli.entry import ArgumentParser  # noqa: E402 - stdlib only: the summary stays light

# The official NORM README (github.com/OSVAI/NORM, README.md at commit c6dfc39, "Main Results", Tables 1-3): top-1 (%)
# on CIFAR-100 (means over trials) and ImageNet.
# Keys: (dataset, teacher, student, label); vanilla rows (teacher None) are its "Teacher" and
# "Student (our reproduced)" rows; "NORM (plain FT)" is its "NORM (w/ 1 plain FT)" / "NORM (w/ plain FT)" row.
_TABLE1 = {  # teacher, student: NORM, NORM+KD, NORM+CRD, NORM (plain FT)
    ("wrn_40_2", "wrn_16_2"): (75.65, 76.26, 76.02, 75.57),
    ("wrn_40_2", "wrn_40_1"): (74.82, 75.42, 75.37, 74.78),
    ("resnet56", "resnet20"): (71.35, 71.61, 71.51, 70.70),
    ("resnet110", "resnet20"): (71.55, 72.00, 71.90, 71.01),
    ("resnet110", "resnet32"): (73.67, 73.95, 73.81, 73.27),
    ("resnet32x4", "resnet8x4"): (76.49, 76.98, 76.49, 76.76),
    ("vgg13", "vgg8"): (73.95, 74.46, 73.58, 73.64),
    # Table 2
    ("vgg13", "MobileNetV2"): (68.94, 69.38, 69.17, 69.37),
    ("ResNet50", "MobileNetV2"): (70.56, 71.17, 71.08, 70.94),
    ("ResNet50", "vgg8"): (75.17, 75.67, 75.51, 74.37),
    ("resnet32x4", "ShuffleV1"): (77.42, 77.79, 77.50, 75.93),
    ("resnet32x4", "ShuffleV2"): (78.07, 78.32, 77.96, 77.34),
    ("wrn_40_2", "ShuffleV1"): (77.06, 77.63, 77.09, 76.61),
}
_VANILLA = {  # the "Teacher" and "Student (our reproduced)" rows of Tables 1-2
    "wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64, "ResNet50": 79.34,
    "wrn_16_2": 73.80, "wrn_40_1": 71.70, "resnet20": 69.53, "resnet32": 71.56, "resnet8x4": 72.87, "vgg8": 70.75,
    "MobileNetV2": 64.81, "ShuffleV1": 71.63, "ShuffleV2": 72.96,
}
PAPER = {("imagenet", "resnet34", "resnet18S", "NORM"): 72.14, ("imagenet", "resnet50", "MobileNet", "NORM"): 74.26}
for (_t, _s), _values in _TABLE1.items():
    for _label, _value in zip(("NORM", "NORM+KD", "NORM+CRD", "NORM (plain FT)"), _values):
        PAPER[("cifar100", _t, _s, _label)] = _value
PAPER.update({("cifar100", None, _name, "vanilla"): _value for _name, _value in _VANILLA.items()})

# The rest of the field on the paper's five CIFAR-100 pairs, as each method's own paper or README publishes it (each
# trained with its reference's recipe and, for ReviewKD and SimKD, its own teachers: orientation, not a like-for-like
# comparison). Keys: the labels below (the --distill name; "+LS" with --logit_standardize). None: none published.
FIELD_PAIRS = (("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("vgg13", "vgg8"),
               ("resnet32x4", "ShuffleV2"))
_FIELD = {
    "dkd": (76.32, 76.23, 71.97, 74.68, 77.07),  # mdistiller README
    "reviewkd": (75.63, 76.12, 71.89, 74.84, 77.78),  # ReviewKD paper (CVPR 2021)
    "ofd": (74.95, 75.24, 70.98, 73.95, 76.82),  # as cited in the ReviewKD and DKD papers
    "simkd": (78.08, None, None, None, None),  # DefangChen/SimKD README (its own resnet32x4 teacher)
    "srrl": (75.39, None, None, None, None),  # DefangChen/SimKD README
    "semckd": (76.23, None, None, 74.43, 77.62),  # SemCKD (AAAI 2021), as cited by the NORM paper
    "dist": (76.31, None, 71.75, None, 77.35),  # hunto/DIST_KD README (logs v0.0.2)
    "kd+LS": (76.62, 76.11, 71.43, 74.36, 75.56),  # sunshangquan/logit-standardization-KD README
    "dkd+LS": (77.01, 76.39, 72.32, 74.81, 77.37),  # same
}
for _label, _values in _FIELD.items():
    for (_t, _s), _value in zip(FIELD_PAIRS, _values):
        if _value is not None:
            PAPER[("cifar100", _t, _s, _label)] = _value

REQUIRED = {"teacher": (str, type(None)), "student": str, "method": str, "dataset": str,
            "best_acc": (int, float), "last_acc": (int, float)}
NORM_DEFAULTS = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}  # distiller_zoo/norm.py
LABEL_ORDER = {"vanilla": 0, "NORM": 1, "NORM+KD": 2, "NORM+CRD": 3}


class InputError(Exception):
    """A missing or malformed results file."""


def _number(value):
    """A real number (not a bool, not None)."""
    return value is not None and not isinstance(value, bool) and isinstance(value, (int, float))


def _fmt_number(value):
    return f"{value:g}"


def label_and_settings(record):
    """(method label, settings string) of one results.jsonl record."""
    config = record.get("config") or {}
    method = record["method"]
    alpha = config.get("alpha")
    with_kd = _number(alpha) and alpha > 0  # None: the flag was not given, NORM's default 0
    if method == "NORM":
        label = "NORM+KD" if with_kd else "NORM"
    elif method == "NORM_CRD":
        label = "NORM+CRD+KD" if with_kd else "NORM+CRD"
    else:
        label = method
    if config.get("logit_standardize"):
        label += "+LS"
    norm = method in ("NORM", "NORM_CRD")
    if norm and config.get("ft") not in (None, "residual"):
        label += " (plain FT)" if config["ft"] == "plain" else " (no FT)"
    parts = []
    if method != "vanilla":
        for flag, key in (("r", "gamma"), ("a", "alpha"), ("b", "beta")):
            value = config.get(key)
            if value is None and norm:
                value = NORM_DEFAULTS[key]  # what the NORM scripts use when the flag is not given
            if _number(value):
                parts.append(f"{flag}={_fmt_number(value)}")
    if norm and _number(config.get("co_sponge")):
        parts.append(f"N={config['co_sponge']}")
    if method == "NORM_CRD" and _number(config.get("crd_weight")) and config["crd_weight"] != 2.5:
        parts.append(f"crd={_fmt_number(config['crd_weight'])}")
    if method == "simkd" and _number(config.get("simkd_factor")) and config["simkd_factor"] != 2:
        parts.append(f"f={config['simkd_factor']}")  # the projector's bottleneck (the reference's -f)
    if norm and config.get("norm_schedule") not in (None, "official"):
        parts.append(f"β1 {config['norm_schedule']}")
    return label, " ".join(parts)


def read_results(path):
    """The records of a results.jsonl file; InputError (naming the line) for anything malformed."""
    if not os.path.isfile(path):
        raise InputError(f"{path} does not exist; pass the results.jsonl of a --save_root (default ./save)")
    records = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InputError(f"{path} line {number}: not UTF-8 text") from None
            except ValueError as err:
                raise InputError(f"{path} line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
            for key, kinds in REQUIRED.items():
                if key not in record:
                    raise InputError(f"{path} line {number}: no {key!r}")
                value = record[key]
                if not isinstance(value, kinds) or isinstance(value, bool) or (
                        isinstance(value, float) and not math.isfinite(value)):
                    raise InputError(f"{path} line {number}: {key!r} is {value!r}")
            if "config" in record and not isinstance(record["config"], (dict, type(None))):
                raise InputError(f"{path} line {number}: 'config' is not an object")
            records.append(record)
    return records


def mean_std(values):
    """Mean and sample standard deviation (None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(records):
    """One dict per group of runs, in table order (a run folder counts once: its latest line, e.g. after --resume)."""
    latest = {}
    for number, record in enumerate(records):
        latest[record.get("run") or number] = record
    groups = {}
    for record in latest.values():
        label, settings = label_and_settings(record)
        key = (record["dataset"], record["teacher"], record["student"], label, settings, record.get("epochs"))
        groups.setdefault(key, []).append(record)
    rows = []
    for (dataset, teacher, student, label, settings, epochs), runs in groups.items():
        best_mean, best_std = mean_std([r["best_acc"] for r in runs])
        last_mean, last_std = mean_std([r["last_acc"] for r in runs])
        teacher_accs = [r["teacher_acc"] for r in runs if _number(r.get("teacher_acc"))]
        times = [r["wall_time_s"] for r in runs if _number(r.get("wall_time_s"))]
        rows.append({"dataset": dataset, "teacher": teacher, "student": student, "method": label,
                     "settings": settings, "epochs": epochs, "n": len(runs),
                     "trials": [r.get("trial") for r in runs],
                     "best_mean": best_mean, "best_std": best_std, "last_mean": last_mean, "last_std": last_std,
                     "teacher_acc": mean_std(teacher_accs)[0] if teacher_accs else None,
                     "time_mean": mean_std(times)[0] if times else None, "runs": [r.get("run") for r in runs],
                     "paper": PAPER.get((dataset, teacher, student, label))})
    rows.sort(key=lambda r: (r["dataset"], r["teacher"] or "", r["student"], LABEL_ORDER.get(r["method"], 9),
                             r["method"], r["settings"], r["epochs"] if isinstance(r["epochs"], int) else -1))
    return rows


def _cell(mean, std):
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def markdown(rows, primary="best"):
    """The Markdown table (the primary accuracy first, then the other one, the paper's number and the gap)."""
    other = "last" if primary == "best" else "best"
    lines = [f"| dataset | teacher | student | method | settings | epochs | trials | {primary} top-1 (%) | "
             f"{other} top-1 (%) | paper | Δ {primary} − paper |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = "—" if r["paper"] is None else f"{r['paper']:.2f}"
        gap = "—" if r["paper"] is None else f"{r[primary + '_mean'] - r['paper']:+.2f}"
        lines.append(f"| {r['dataset']} | {r['teacher'] or '—'} | {r['student']} | {r['method']} | "
                     f"{r['settings'] or '—'} | {r['epochs'] if r['epochs'] is not None else '—'} | {r['n']} | "
                     f"{_cell(r[primary + '_mean'], r[primary + '_std'])} | "
                     f"{_cell(r[other + '_mean'], r[other + '_std'])} | {paper} | {gap} |")
    lines.append("")
    lines.append("mean ± sample standard deviation (n − 1) over the trials; paper: the official NORM README "
                 "(Tables 1-3, means over trials)")
    return "\n".join(lines)


def parser():
    """The command-line flags."""
    p = ArgumentParser(description=__doc__.splitlines()[0])  # one-line errors, as every script's
    p.add_argument("path", nargs="?", default=os.path.join(".", "save", "results.jsonl"),
                   help="results.jsonl written by the training scripts (default ./save/results.jsonl)")
    p.add_argument("--last", action="store_true", help="the last epoch's accuracy as the primary column")
    p.add_argument("--json", action="store_true", help="print the groups as JSON instead of Markdown")
    return p


def main(argv=None):
    """Print the summary (Markdown or JSON); a missing or malformed file is one error line and exit status 2."""
    opt = parser().parse_args(argv)
    try:
        rows = summarize(read_results(opt.path))
    except InputError as err:
        print(f"summarize_results.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    if opt.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no runs in {opt.path}")
    else:
        print(markdown(rows, "last" if opt.last else "best"))
    return rows


if __name__ == "__main__":
    main()
