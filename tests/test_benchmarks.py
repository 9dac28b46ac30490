"""The benchmark scripts run end to end (tiny sizes, CPU); their numbers are not checked, their reports are."""
import json
import os
import re
import subprocess
import sys

from tests.datafakes import write_tiny_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_train_prints_a_row_per_configuration():
    # two configurations, one timed step each: the reference step and the fast path with its inference teacher
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_train.py"), "--device", "cpu",
                          "--pair", "resnet8:resnet8", "--n", "2", "--steps", "1", "--rounds", "1", "--warmup", "0",
                          "--breakdown_steps", "1", "--batch_size", "4", "--n_data", "16", "--threads", "1",
                          "--configs", "reference,fast", "--profile", "1", "--conv_time", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table, _, profiles = out.stdout.partition("top operators by self time")
    rows = {line.split("|")[1].strip(): line.split("|")[1:-1] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| config")}
    assert list(rows) == ["reference", "fast"]
    for config, cells in rows.items():
        assert float(cells[8]) > 0  # img/s
        phases = [float(c) for c in cells[11:15]]  # teacher, student fwd+loss, backward, optimizer (ms)
        assert len(phases) == 4 and all(ms >= 0 for ms in phases) and sum(phases) > 0
    assert rows["reference"][4].strip() == "original" and rows["reference"][9].strip() == "1.00x"
    assert rows["fast"][4].strip().startswith("inference teacher: 9 of 9 BatchNorms folded; ")
    assert re.fullmatch(r" \d+\.\d\dx ", rows["fast"][9])
    # a profile per configuration, its operators with their time and calls per step
    assert out.stdout.count("top operators by self time (torch.profiler, 1 steps)") == 2
    operators = re.findall(r"^\| (aten::\w+) \| (\d+\.\d) \| (\d+(?:\.\d)?) \|$", profiles, re.M)
    assert any(name == "aten::mkldnn_convolution" or "conv" in name for name, _, _ in operators)
    assert all(float(calls) > 0 for _, _, calls in operators)
    # the convolutions timed in place: the teacher's forward, the student's (with NORM's two 1x1) forward and backward
    import torch
    from models import model_dict

    def convs(name):
        return sum(isinstance(m, torch.nn.Conv2d) for m in model_dict[name](num_classes=100).modules())
    expected = convs("resnet8") + 2 * (convs("resnet8") + 2)
    floors = re.findall(r"^(reference|fast): convolutions (\d+\.\d) ms per step in (\d+) calls "
                        r"\((\d+)% of its step\); a step of nothing else would be (\d+\.\d\d)x the reference step$",
                        out.stdout, re.M)
    assert [(config, int(calls)) for config, _, calls, _, _ in floors] == [("reference", expected), ("fast", expected)]
    assert all(float(ms) > 0 and float(ratio) > 0 for _, ms, _, _, ratio in floors)


def test_epoch_check_reports_epoch_times_and_accuracies(tmp_path):
    write_tiny_fashion_mnist(str(tmp_path / "fm" / "fashion-mnist"), n_train=64, n_test=16)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "epoch_check.py"), "--out", str(out),
                           "--device", "cpu", "--pair", "resnet8:resnet8", "--n_train", "128", "--n_test", "32",
                           "--epochs", "2", "--fashion_root", str(tmp_path / "fm"), "--fashion_pair",
                           "resnet8:resnet8", "--fashion_epochs", "1", "--fast_flags", "--gpu_data --channels_last",
                           "--in_process", "--num_workers", "0"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "epoch_check.json").read_text())
    reference, fast = report["epochs"]
    assert len(reference["epoch_s"]) == len(fast["epoch_s"]) == 2 and all(s > 0 for s in fast["epoch_s"])
    assert fast["speedup"] == reference["epoch_s"][-1] / fast["epoch_s"][-1]
    assert [row["config"] for row in report["accuracy"]] == ["teacher", "reference", "fast"]
    assert all(0 <= row["best"] <= 100 for row in report["accuracy"])
    markdown = (out / "epoch_check.md").read_text()
    assert re.search(r"^\| fast \| `--gpu_data --channels_last` \| [\d.]+ \| [\d.]+ \| \d+ \| [\d.]+x \|$", markdown,
                     re.M)


def test_bench_methods_prints_each_method_against_norm():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_methods.py"), "--pair",
                          "resnet8:resnet8", "--methods", "NORM,DKD,SimKD,NORM+DKD", "--steps", "1", "--rounds", "1",
                          "--warmup", "0", "--batch_size", "4", "--n_data", "16"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in out.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert list(rows) == ["NORM", "DKD", "SimKD", "NORM+DKD"]
    assert float(rows["NORM"][1]) == 1.0 and all(float(images) > 0 for images, _ in rows.values())
