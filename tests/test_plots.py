"""scripts/plot_results.py: the figures hold the numbers of the runs (curves from run folders, bars from results)."""
import json
import os

import pytest
import torch
from matplotlib.container import BarContainer

from helper.runs.checkpoint import save_atomic
from helper.errors import UsageError
from scripts import plot_results
from scripts.summarize_results import read_results, summarize


def write_run(root, name, config, history, model):
    """A run folder as the trainer leaves it: config.json and <model>_last.pth holding the history."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_atomic({"epoch": len(history), "model": {}, "history": history, "config": config, "best_acc": 0.0},
                str(folder / f"{model}_last.pth"))
    return str(folder)


def history(accs, lrs, terms, beta1=None):
    """History entries in the trainer's format (epoch numbered from 1)."""
    rows = []
    for i, (acc, lr) in enumerate(zip(accs, lrs)):
        row = {"epoch": i + 1, "lr": lr, **{f"loss/{k}": v[i] for k, v in terms.items()},
               "loss/total": sum(v[i] for v in terms.values()), "train_acc1": 50.0, "test_acc": acc,
               "test_acc_top5": 99.0, "test_loss": 1.0, "train_s": 3.0}
        if beta1 is not None:
            row["beta1"] = beta1[i]
        rows.append(row)
    return rows


def student_config(distill, **weights):
    return {"distill": distill, "model_s": "resnet8", "model_t": "resnet14", "dataset": "fashion_mnist",
            "gamma": 1.0, "alpha": 0.0, "beta": 1.0, "co_sponge": 8, "ft": "residual", **weights}


@pytest.fixture
def runs(tmp_path):
    made = {
        "norm0": write_run(tmp_path, "norm0", student_config("NORM"),
                           history([60.0, 70.0, 75.0], [0.05, 0.025, 0.0], {"ce": [1.5, 1.0, 0.8],
                                                                            "norm": [0.3, 0.2, 0.1]},
                                   beta1=[0.1, 1.0, 0.1]), "resnet8"),
        "norm1": write_run(tmp_path, "norm1", student_config("NORM"),
                           history([62.0, 71.0, 74.5], [0.05, 0.025, 0.0], {"ce": [1.4, 1.1, 0.7],
                                                                            "norm": [0.35, 0.25, 0.15]},
                                   beta1=[0.1, 1.0, 0.1]), "resnet8"),
        "kd": write_run(tmp_path, "kd", student_config("kd", gamma=0.1, alpha=0.9, beta=0.0),
                        history([55.0, 68.0, 72.0], [0.05, 0.025, 0.0], {"ce": [0.2, 0.1, 0.08],
                                                                         "kd": [2.0, 1.5, 1.2]}), "resnet8"),
        "vanilla": write_run(tmp_path, "vanilla", {"model": "resnet8", "dataset": "fashion_mnist"},
                             history([50.0, 65.0, 70.5], [0.05, 0.025, 0.0], {"ce": [1.6, 1.2, 0.9]}), "resnet8"),
    }
    return tmp_path, made


def panel(fig, title):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def line_of(ax, run):
    (line,) = [line for line in ax.get_lines() if line.get_gid() == run]
    return line


def test_curves_hold_each_runs_history_grouped_by_method(runs):
    root, made = runs
    folders = plot_results.find_runs([str(root)])
    assert folders == sorted(made.values())
    curves = [plot_results.read_curves(f) for f in folders]
    fig = plot_results.curves_figure(curves)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["test top-1 (%)", "loss/total", "loss/ce", "loss/kd", "loss/norm", "learning rate",
                      "β1 (NORM weight schedule)"]
    acc, ce, beta = panel(fig, "test top-1 (%)"), panel(fig, "loss/ce"), panel(fig, "β1 (NORM weight schedule)")
    assert list(line_of(acc, made["norm1"]).get_ydata()) == [62.0, 71.0, 74.5]
    assert list(line_of(acc, made["vanilla"]).get_xdata()) == [1, 2, 3]
    assert list(line_of(ce, made["kd"]).get_ydata()) == [0.2, 0.1, 0.08]
    total = panel(fig, "loss/total")
    assert list(line_of(total, made["norm0"]).get_ydata()) == pytest.approx([1.8, 1.2, 0.9])
    assert {line.get_gid() for line in beta.get_lines()} == {made["norm0"], made["norm1"]}  # only NORM has beta1
    assert {line.get_gid() for line in panel(fig, "loss/kd").get_lines()} == {made["kd"]}
    # the two NORM seeds share a colour and one legend entry; the methods differ
    colour = {gid: line_of(acc, gid).get_color() for gid in made.values()}
    assert colour[made["norm0"]] == colour[made["norm1"]]
    assert len({colour[made["norm0"]], colour[made["kd"]], colour[made["vanilla"]]}) == 3
    assert sorted(t.get_text() for t in acc.get_legend().get_texts()) == ["KD", "NORM", "vanilla"]


def test_missing_history_keys_come_from_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    # an older run: its history holds the accuracy only; the event files hold the rest
    old = [{"epoch": 1, "test_acc": 40.0, "test_acc_top5": 90.0, "train_s": 2.0},
           {"epoch": 2, "test_acc": 55.0, "test_acc_top5": 95.0, "train_s": 2.0}]
    folder = write_run(tmp_path, "old", student_config("NORM"), old, "resnet8")
    writer = SummaryWriter(os.path.join(folder, "tensorboard"))
    for epoch, (lr, ce, acc) in enumerate([(0.05, 2.0, 99.0), (0.01, 1.25, 99.0)], 1):
        writer.add_scalar("lr", lr, epoch)
        writer.add_scalar("loss/ce", ce, epoch)
        writer.add_scalar("test_acc", acc, epoch)  # the history's value wins
    writer.close()
    curves = plot_results.read_curves(folder)
    assert curves["series"]["test_acc"] == ([1, 2], [40.0, 55.0])
    epochs, lrs = curves["series"]["lr"]
    assert epochs == [1, 2] and lrs == pytest.approx([0.05, 0.01])
    assert curves["series"]["loss/ce"][1] == pytest.approx([2.0, 1.25])
    fig = plot_results.curves_figure([curves], ["lr", "beta1"])
    assert list(line_of(panel(fig, "learning rate"), folder).get_ydata()) == pytest.approx([0.05, 0.01])
    assert panel(fig, "β1 (NORM weight schedule)").get_lines() == []  # a key no source has: an empty panel


def record(teacher, student, method, trial, best, last, dataset="cifar100", teacher_acc=79.0, **config):
    tag = "_".join(f"{k}_{v}" for k, v in sorted(config.items()))
    return {"run": f"save/student_model/{teacher}_{student}_{method}_{tag}_{trial}", "teacher": teacher,
            "student": student, "method": method, "dataset": dataset, "trial": str(trial),
            "teacher_acc": teacher_acc, "best_acc": best, "best_acc_top5": 99.0, "last_acc": last,
            "last_acc_top5": 99.0, "epochs": 240, "wall_time_s": 10.0,
            "config": {"gamma": 1.0, "alpha": 0.0, "beta": 1.0, "co_sponge": 8, "ft": "residual", **config}}


@pytest.fixture
def results(tmp_path):
    rows = [record("resnet32x4", "resnet8x4", "NORM", 1, 75.0, 74.0, gamma=0.1),
            record("resnet32x4", "resnet8x4", "NORM", 2, 76.0, 75.0, gamma=0.1),
            record("resnet32x4", "resnet8x4", "NORM", 3, 77.0, 76.5, gamma=0.1),
            record("resnet32x4", "resnet8x4", "NORM", 1, 77.5, 77.0, gamma=0.1, alpha=1.0),
            record("resnet32x4", "resnet8x4", "NORM", 2, 78.5, 78.0, gamma=0.1, alpha=1.0),
            record("resnet32x4", "resnet8x4", "kd", 1, 74.0, 73.0, gamma=0.1, alpha=0.9, beta=0.0),
            record(None, "resnet8x4", "vanilla", 0, 72.5, 72.0, teacher_acc=None, gamma=None, co_sponge=None),
            record("resnet14", "resnet8", "NORM", 0, 80.0, 79.0, dataset="fashion_mnist", teacher_acc=85.0),
            record("resnet14", "resnet8", "NORM", 1, 82.0, 81.0, dataset="fashion_mnist", teacher_acc=85.0)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bars(ax, label):
    (container,) = [c for c in ax.containers if isinstance(c, BarContainer) and c.get_label() == label]
    return container


def test_pair_chart_bars_hold_means_spreads_and_paper_numbers(results):
    fig = plot_results.pairs_figure(summarize(read_results(str(results))))
    cifar = panel(fig, "cifar100: resnet32x4 → resnet8x4")
    ticks = [t.get_text() for t in cifar.get_xticklabels()]
    assert ticks == ["vanilla", "NORM", "NORM+KD", "KD"]  # the student's vanilla runs join its pair
    ours = bars(cifar, plot_results.OURS_LABEL)
    # vanilla 72.5 (1 run); NORM 75, 76, 77 -> 76 ± 1; NORM+KD 77.5, 78.5 -> 78 ± 0.7071; KD 74 (1 run)
    assert [p.get_height() for p in ours.patches] == pytest.approx([72.5, 76.0, 78.0, 74.0])
    (segments,) = [c.get_segments() for c in ours.errorbar.lines[2]]
    # bottom and top of each error bar, flattened: pytest.approx compares flat sequences only (pytest >= 9)
    spans = [end for seg in segments for end in (seg[0][1], seg[1][1])]
    assert spans == pytest.approx([72.5, 72.5, 75.0, 77.0, 78 - 0.5 ** 0.5, 78 + 0.5 ** 0.5, 74.0, 74.0])
    # the official README's numbers, beside ours, only where known for that pair and method (none for KD)
    paper = bars(cifar, plot_results.PAPER_LABEL)
    assert [p.get_height() for p in paper.patches] == pytest.approx([72.87, 76.49, 76.98])
    ours_x = [p.get_x() + p.get_width() / 2 for p in ours.patches]
    paper_x = [p.get_x() + p.get_width() / 2 for p in paper.patches]
    assert all(abs(px - ox - ours.patches[0].get_width()) < 1e-9 for px, ox in zip(paper_x, ours_x[:3]))
    (teacher,) = [line for line in cifar.get_lines() if line.get_gid() == "teacher"]
    assert list(teacher.get_ydata()) == [79.0, 79.0]
    fashion = panel(fig, "fashion_mnist: resnet14 → resnet8")
    assert [p.get_height() for p in bars(fashion, plot_results.OURS_LABEL).patches] == [81.0]
    assert not [c for c in fashion.containers if c.get_label() == plot_results.PAPER_LABEL]  # no paper numbers
    last = plot_results.pairs_figure(summarize(read_results(str(results))), primary="last")
    fashion = panel(last, "fashion_mnist: resnet14 → resnet8")
    assert [p.get_height() for p in bars(fashion, plot_results.OURS_LABEL).patches] == [80.0]


def test_a_figure_that_fails_half_way_leaves_the_old_files_whole(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    prefix = tmp_path / "fig"
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    first = plot_results.save_figure(fig, str(prefix))
    before = {path: open(path, "rb").read() for path in first}

    def dies_mid_write(self, target, **kwargs):  # writes part of the image, then the process "dies"
        target.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        plot_results.save_figure(fig, str(prefix))
    assert {path: open(path, "rb").read() for path in first} == before
    assert sorted(os.listdir(tmp_path)) == ["fig.png", "fig.svg"]  # no temporary left behind


def test_cli_writes_png_and_svg(results, runs, tmp_path):
    prefix = tmp_path / "out" / "pairs"
    paths = plot_results.main(["results", str(results), "--out", str(prefix)])
    assert paths == [f"{prefix}.png", f"{prefix}.svg"]
    assert (tmp_path / "out" / "pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "out" / "pairs.svg").read_text()
    root, _ = runs
    plot_results.main(["curves", str(root), "--out", str(tmp_path / "curves"), "--keys", "test_acc"])
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "curves.svg").stat().st_size > 0
    with pytest.raises(UsageError, match="does not exist"):
        plot_results.main(["results", str(tmp_path / "none.jsonl")])
    with pytest.raises(UsageError, match="no run folders"):
        plot_results.main(["curves", str(tmp_path / "out")])
    only_vanilla = tmp_path / "vanilla.jsonl"
    only_vanilla.write_text(json.dumps(record(None, "resnet8", "vanilla", 0, 70.0, 70.0)) + "\n")
    with pytest.raises(UsageError, match="no teacher->student runs"):
        plot_results.main(["results", str(only_vanilla)])


def test_a_checkpoint_holding_objects_is_refused(runs):
    # the last file is read with weights_only=True: a file holding arbitrary objects is refused, not executed
    root, made = runs
    last = os.path.join(made["kd"], "resnet8_last.pth")
    torch.save({"history": [], "bad": object()}, last)
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        plot_results.read_curves(made["kd"])
