"""Plot runs: training curves of run folders, and per teacher->student pair every method's top-1 next to the paper's.

python scripts/plot_results.py curves save/student_model/<run> [<run> ...] --out curves   # or a --save_root
python scripts/plot_results.py results save/results.jsonl --out results

`curves` draws one panel per quantity (test top-1, every loss term, the learning rate, NORM's beta1) and one line
per run, coloured by method; the values come from the history in each run's `<model>_last.pth`, and from its
TensorBoard logs for a quantity the history lacks. `results` groups a results.jsonl as summarize_results.py does and
draws, per teacher->student pair, each method's best (or --last) top-1 as mean ± sample std over trials, with the
official README's number beside it where it is known for that pair and method, and the teacher's measured accuracy
as a dashed line. Each writes PREFIX.png and PREFIX.svg (matplotlib's Agg renderer; no display needed).
"""
import glob
import io
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, never a window
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from helper.runs.files import write_bytes_atomic  # noqa: E402
from helper.cli.entry import ArgumentParser, run_cli  # noqa: E402
from helper.errors import UsageError  # noqa: E402
from scripts.summarize_results import (LABEL_ORDER, InputError, label_and_settings, read_results,  # noqa: E402
                                       summarize)

# how the methods are named in plots and reports (the results files keep the --distill names)
DISPLAY = {"kd": "KD", "hint": "FitNet", "crd": "CRD", "attention": "AT", "similarity": "SP", "correlation": "CC",
           "vid": "VID", "rkd": "RKD", "pkt": "PKT", "abound": "AB", "factor": "FT", "fsp": "FSP", "nst": "NST",
           "kdsvd": "KDSVD", "dkd": "DKD", "reviewkd": "ReviewKD", "ofd": "OFD", "simkd": "SimKD", "srrl": "SRRL",
           "semckd": "SemCKD", "dist": "DIST", "kd+LS": "KD+LS", "dkd+LS": "DKD+LS"}
CURVE_LABELS = {"test_acc": "test top-1 (%)", "lr": "learning rate", "beta1": "β1 (NORM weight schedule)",
                "train_acc1": "train top-1 (%)", "test_loss": "test loss"}
OURS_LABEL, PAPER_LABEL = "ours (mean ± std)", "published (NORM README; other methods: their own)"  # the bar series' legend labels
PLAIN_KEYS = ("test_acc", "lr", "beta1")  # the default panels besides the loss terms
CORE_KEYS = ("test_acc", "lr", "loss/total")  # what every run logs: one missing sends read_curves to TensorBoard


def display_name(label):
    """The plotted name of a summarize_results method label (kd -> KD, hint -> FitNet, ...)."""
    return DISPLAY.get(label, label)


def method_order(label):
    """Sort key of method labels: vanilla, NORM, NORM+KD, NORM+CRD, then the others by name."""
    return LABEL_ORDER.get(label, 9), display_name(label)


def method_colours(labels):
    """One colour per method label (matplotlib's tab10 cycle, in method order), the same across figures."""
    palette = matplotlib.colormaps["tab10"].colors
    return {label: palette[i % len(palette)]
            for i, label in enumerate(sorted(set(labels) | set(LABEL_ORDER), key=method_order))}


# ------------------------------------------------------------------------------------------------ run folders


def find_runs(paths):
    """The run folders (config.json plus a `*_last.pth`) among `paths` and below them, sorted; UsageError if none."""
    found = set()
    for path in paths:
        if not os.path.isdir(path):
            raise UsageError(f"{path} is not a folder; pass run folders or a --save_root")
        for config in glob.glob(os.path.join(glob.escape(path), "**", "config.json"), recursive=True):
            folder = os.path.dirname(config)
            if glob.glob(os.path.join(glob.escape(folder), "*_last.pth")):
                found.add(os.path.normpath(folder))
    if not found:
        raise UsageError(f"no run folders (config.json and <model>_last.pth) in {', '.join(paths)}")
    return sorted(found)


def run_method(config):
    """The method label of a run from its config.json (a teacher-script run is 'vanilla')."""
    return label_and_settings({"method": config.get("distill") or "vanilla", "config": config})[0]


def tensorboard_scalars(run_dir):
    """{tag: {epoch: value}} from the run's TensorBoard event files ({} when there are none)."""
    folder = os.path.join(run_dir, "tensorboard")
    if not glob.glob(os.path.join(glob.escape(folder), "events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder, size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    # a later event of the same epoch (a resumed run logs again) replaces the earlier one
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags().get("scalars", [])}


def read_curves(run_dir, keys=None):
    """A run's per-epoch values: {'run', 'method', 'model', 'series': {key: (epochs, values)}}.

    The history in `<model>_last.pth` first; when it lacks one of `keys` (default: test top-1, learning rate, total
    loss — an older run's history holds only the accuracy), every key it lacks comes from the TensorBoard logs.
    """
    from helper.runs.checkpoint import load_checkpoint

    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    model = config.get("model_s") or config.get("model")
    last = os.path.join(run_dir, f"{model}_last.pth")
    if not os.path.isfile(last):
        last = sorted(glob.glob(os.path.join(glob.escape(run_dir), "*_last.pth")))[0]
    history = load_checkpoint(last).get("history") or []
    series = {}
    for key in dict.fromkeys(k for entry in history for k in entry if k != "epoch"):
        points = [(e["epoch"], e[key]) for e in history if isinstance(e.get(key), (int, float)) and "epoch" in e]
        if points:
            series[key] = tuple(map(list, zip(*sorted(points))))
    if any(key not in series for key in (keys or CORE_KEYS)):  # reading the event files costs seconds
        for key, points in tensorboard_scalars(run_dir).items():
            if key not in series and points:
                series[key] = tuple(map(list, zip(*sorted(points.items()))))
    return {"run": run_dir, "method": run_method(config), "model": model, "series": series}


def default_keys(runs):
    """The panels drawn by default: test top-1, each loss term (total first), lr, beta1 — those some run has."""
    present = {k for run in runs for k in run["series"]}
    losses = sorted((k for k in present if k.startswith("loss/")), key=lambda k: (k != "loss/total", k))
    return [k for k in ("test_acc",) if k in present] + losses + [k for k in PLAIN_KEYS[1:] if k in present]


def curve_groups(runs):
    """{run folder: legend label}: the method, plus the model when the runs train more than one architecture."""
    several = len({run.get("model") for run in runs}) > 1
    return {run["run"]: display_name(run["method"]) + (f" ({run.get('model')})" if several else "") for run in runs}


def curves_figure(runs, keys=None):
    """Figure with one panel per key and one line per run (gid = the run folder), coloured by method (and model)."""
    keys = list(keys) if keys else default_keys(runs)
    if not keys:
        raise UsageError("the runs hold no per-epoch values to plot")
    runs = sorted(runs, key=lambda r: (method_order(r["method"]), str(r.get("model")), r["run"]))
    labels = curve_groups(runs)
    palette = matplotlib.colormaps["tab10"].colors
    colours = {label: palette[i % len(palette)] for i, label in enumerate(dict.fromkeys(labels.values()))}
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(5 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        seen, ticks = set(), set()
        for run in runs:
            if key not in run["series"]:
                continue
            epochs, values = run["series"][key]
            ticks.update(epochs)
            label = labels[run["run"]]
            ax.plot(epochs, values, color=colours[label], marker="o" if len(epochs) < 20 else None, markersize=3,
                    linewidth=1.2, alpha=0.85, gid=run["run"], label=label if label not in seen else "_nolegend_")
            seen.add(label)
        ax.set_title(CURVE_LABELS.get(key, key))
        ax.set_xlabel("epoch")
        if 0 < len(ticks) <= 12:
            ax.set_xticks(sorted(ticks))  # every epoch of a short run
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize="small")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return fig


# ------------------------------------------------------------------------------------------------ results.jsonl


def pair_groups(rows):
    """{(dataset, teacher, student): rows}: each pair's groups plus the vanilla groups of its student."""
    pairs = {}
    for row in rows:
        if row["teacher"] is not None:
            pairs.setdefault((row["dataset"], row["teacher"], row["student"]), []).append(row)
    for (dataset, _, student), members in pairs.items():
        members[:0] = [r for r in rows if r["teacher"] is None and r["dataset"] == dataset and r["student"] == student]
    return pairs


def bar_labels(members):
    """The x labels of a pair's groups: the method, plus settings and epochs where one method appears twice."""
    names = [display_name(r["method"]) for r in members]
    labels = []
    for name, row in zip(names, members):
        if names.count(name) > 1:
            name += f"\n{row['settings'] or ''} {row['epochs']} ep".rstrip()
        labels.append(name)
    return labels


def pairs_figure(rows, primary="best"):
    """Figure with one panel per teacher->student pair: bars 'ours' (mean, ± std error bars) and 'paper'.

    `rows` are summarize_results.summarize rows; `primary` is 'best' or 'last'.
    """
    pairs = pair_groups(rows)
    if not pairs:
        raise UsageError("no teacher->student runs to plot (only models trained alone)")
    colours = method_colours(r["method"] for r in rows)
    cols = min(2, len(pairs))
    panels = math.ceil(len(pairs) / cols)
    widest = max(len(m) for m in pairs.values())
    fig = Figure(figsize=(max(5.0, 1.1 * widest + 2) * cols, 4.2 * panels), layout="constrained")
    axes = fig.subplots(panels, cols, squeeze=False).ravel()
    for ax, ((dataset, teacher, student), members) in zip(axes, sorted(pairs.items())):
        members = sorted(members, key=lambda r: (method_order(r["method"]), r["settings"], str(r["epochs"])))
        means = [r[f"{primary}_mean"] for r in members]
        stds = [r[f"{primary}_std"] or 0.0 for r in members]  # one trial: no spread to draw
        papers = [r["paper"] for r in members]
        with_paper = any(p is not None for p in papers)
        width = 0.4 if with_paper else 0.7
        x = list(range(len(members)))
        ours_x = [i - width / 2 for i in x] if with_paper else x
        ours = ax.bar(ours_x, means, width, yerr=stds, capsize=4, color=[colours[r["method"]] for r in members],
                      edgecolor="black", linewidth=0.6, label=OURS_LABEL, gid="ours")
        for bar, row, mean in zip(ours, members, means):
            spread = "" if row[f"{primary}_std"] is None else f"±{row[f'{primary}_std']:.2f}"
            ax.annotate(f"{mean:.2f}{spread}\nn={row['n']}", (bar.get_x() + bar.get_width() / 2, mean),
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=7)
        known = [(i + width / 2, p) for i, p in zip(x, papers) if p is not None]
        if known:
            ax.bar([k[0] for k in known], [k[1] for k in known], width, color="white", edgecolor="dimgray",
                   hatch="//", linewidth=0.8, label=PAPER_LABEL, gid="paper")
        teacher_accs = [r["teacher_acc"] for r in members if r.get("teacher_acc") is not None]
        values = means + [p for p in papers if p is not None]
        if teacher_accs:
            teacher_acc = sum(teacher_accs) / len(teacher_accs)
            ax.axhline(teacher_acc, color="gray", linestyle="--", linewidth=1,
                       label=f"teacher {teacher} ({teacher_acc:.2f})", gid="teacher")
            values.append(teacher_acc)
        low = min(v - s for v, s in zip(means, stds))
        low = min([low] + values)
        high = max(m + s for m, s in zip(means, stds))
        high = max([high] + values)
        margin = max(1.0, 0.15 * (high - low))
        ax.set_ylim(max(0.0, low - margin), min(100.0, high + 2 * margin))
        ax.set_xticks(x, bar_labels(members))
        ax.set_ylabel(f"{primary} top-1 (%)")
        ax.set_title(f"{dataset}: {teacher} → {student}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    return fig


def results_figure(path, primary="best"):
    """pairs_figure of a results.jsonl file (UsageError for a missing or malformed file)."""
    try:
        rows = summarize(read_results(path))
    except InputError as err:
        raise UsageError(str(err)) from None
    return pairs_figure(rows, primary)


def save_figure(fig, prefix):
    """Write PREFIX.png and PREFIX.svg; returns their paths."""
    folder = os.path.dirname(os.path.abspath(prefix))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create {folder} ({err.strerror}); pass another --out") from None
    paths = [f"{prefix}.png", f"{prefix}.svg"]
    for path in paths:  # rendered in memory, then written atomically: a kill never leaves half an image
        image = io.BytesIO()
        fig.savefig(image, dpi=120, format=os.path.splitext(path)[1][1:])
        write_bytes_atomic(image.getvalue(), path)  # its failure is a one-line CheckpointWriteError
    return paths


# ------------------------------------------------------------------------------------------------ command line


def parser():
    """The command-line flags."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    curves = sub.add_parser("curves", help="training curves of run folders")
    curves.add_argument("paths", nargs="+", help="run folders, or folders holding them (a --save_root)")
    curves.add_argument("--keys", nargs="+", default=None,
                        help="history keys to draw (default: test_acc, every loss/<term>, lr, beta1)")
    curves.add_argument("--out", default="curves", help="output prefix: PREFIX.png and PREFIX.svg (default curves)")
    results = sub.add_parser("results", help="per pair, every method's top-1 from a results.jsonl")
    results.add_argument("path", nargs="?", default=os.path.join(".", "save", "results.jsonl"))
    results.add_argument("--last", action="store_true", help="the last epoch's top-1 instead of the best")
    results.add_argument("--out", default="results", help="output prefix (default results)")
    return p


def main(argv=None):
    """Draw and write the figure; returns the written paths."""
    opt = parser().parse_args(argv)
    if opt.command == "curves":
        fig = curves_figure([read_curves(run, opt.keys) for run in find_runs(opt.paths)], opt.keys)
    else:
        fig = results_figure(opt.path, "last" if opt.last else "best")
    paths = save_figure(fig, opt.out)
    print("wrote " + " and ".join(paths))
    return paths


if __name__ == "__main__":
    run_cli(main)
