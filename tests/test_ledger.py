"""scripts/ledger.py end to end on a tiny idx subset through the real scripts: cells, reruns, failures, report."""
import json
import os
import re

import pytest

from helper.errors import UsageError
from helper.runs.files import append_line
from scripts import ledger
from scripts.summarize_results import read_results
from tests.datafakes import write_tiny_fashion_mnist

TINY = ["--teacher", "resnet8", "--student", "resnet8", "--teacher_epochs", "1", "--epochs", "1",
        "--train_subset", "24", "--test_subset", "12", "--seeds", "0", "--batch_size", "12"]


def attempts(out):
    return [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]


def test_ledger_runs_the_grid_skips_finished_cells_and_records_failures(tmp_path, monkeypatch, capsys):
    write_tiny_fashion_mnist(str(tmp_path / "src"), n_train=30, n_test=15)
    # a cell whose script cannot start: a real child process that fails at once
    monkeypatch.setitem(ledger.METHODS, "broken", ("no_such_script.py", []))
    out = tmp_path / "ledger"
    argv = ["--out", str(out), "--data_root", str(tmp_path / "src"), *TINY, "--methods", "vanilla", "NORM", "broken"]
    ledger.main(argv)

    records = {r["trial"]: r for r in read_results(str(out / "save" / "results.jsonl"))}
    assert set(records) == {"ledger-teacher-s0", "ledger-vanilla-s0", "ledger-norm-s0"}
    assert records["ledger-norm-s0"]["method"] == "NORM" and records["ledger-vanilla-s0"]["method"] == "vanilla"
    assert records["ledger-norm-s0"]["config"]["co_sponge"] == 8 and records["ledger-norm-s0"]["epochs"] == 1
    first = attempts(out)
    assert [(a["cell"], a["status"]) for a in first] == [("ledger-teacher-s0", "done"), ("ledger-vanilla-s0", "done"),
                                                         ("ledger-norm-s0", "done"), ("ledger-broken-s0", "failed")]
    assert "no_such_script.py" in first[-1]["error"] and first[-1]["returncode"] != 0
    norm_log = (out / "logs" / "ledger-norm-s0.log").read_text()
    assert "--distill NORM -r 1 -a 0 -b 1 -s 8 --epochs 1 --seed 0 --trial ledger-norm-s0" in norm_log
    assert "--resume" not in norm_log
    # the subset: the first 24 training and 12 test images of the source
    from dataset.fashion_mnist import find_idx_files, read_idx
    images = read_idx(find_idx_files(str(out / "data"), True)[0])
    assert (images == read_idx(find_idx_files(str(tmp_path / "src"), True)[0])[:24]).all()
    assert len(read_idx(find_idx_files(str(out / "data"), False)[1])) == 12

    # the report's table holds the runs' numbers; the failed cell is named; the plots exist
    report = (out / "report.md").read_text()
    for method, trial in (("vanilla", "ledger-vanilla-s0"), ("NORM", "ledger-norm-s0")):
        row = next(line for line in report.splitlines() if line.startswith(f"| {method} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "1"
        assert cells[2] == f"{records[trial]['best_acc']:.2f}" and cells[3] == f"{records[trial]['last_acc']:.2f}"
        assert cells[4] == f"{records[trial]['wall_time_s']:.0f}"
    assert re.search(r"- broken seed 0: .*no_such_script\.py", report)
    assert "![best top-1 per method](results.png)" in report
    assert (out / "results.png").stat().st_size > 0 and (out / "curves.svg").stat().st_size > 0
    assert f"Command: `python scripts/ledger.py --out {out}" in report

    # rerun: finished cells are skipped (no new process, no new line), the failed one is retried
    logs = {p.name: p.stat().st_size for p in (out / "logs").iterdir()}
    capsys.readouterr()
    ledger.main(argv)
    printed = capsys.readouterr().out
    assert printed.count("done already, skipped") == 3
    assert [(a["cell"], a["status"]) for a in attempts(out)[len(first):]] == [("ledger-broken-s0", "failed")]
    assert len(read_results(str(out / "save" / "results.jsonl"))) == 3
    assert {p.name: p.stat().st_size for p in (out / "logs").iterdir() if p.name != "ledger-broken-s0.log"} == {
        k: v for k, v in logs.items() if k != "ledger-broken-s0.log"}

    # the same folder with another budget is refused before anything runs
    with pytest.raises(UsageError, match=r"other settings: epochs \(saved 1, now 2\)"):
        ledger.main([*argv, "--epochs", "2"])


def test_an_interrupted_cell_resumes_and_cells_never_share_a_folder(tmp_path):
    opt = ledger.parser().parse_args(["--teacher", "resnet14", "--student", "resnet8"])
    save = tmp_path / "save"
    crd, norm_crd = ledger.Cell("CRD", 1), ledger.Cell("NORM+CRD", 1)
    assert crd.trial == "ledger-crd-s1" and norm_crd.trial == "ledger-norm-crd-s1"
    folder = save / "student_model" / "T_resnet14_S_resnet8_fashion_mnist_NORM_CRD_r_1.0_a_0.0_b_1.0_c_2.5_s_8_"
    folder = folder.parent / (folder.name + norm_crd.trial)
    folder.mkdir(parents=True)
    (folder / "resnet8_last.pth").write_bytes(b"")
    # the NORM+CRD folder ends in "_ledger-norm-crd-s1", which is not CRD's "_ledger-crd-s1"
    assert ledger.run_folder(str(save), crd, "train_cifar_student.py") is None
    assert ledger.run_folder(str(save), norm_crd, "train_cifar_student.py") == str(folder)
    resumed = ledger.cell_command(opt, norm_crd, "data", str(save), "t.pth")
    fresh = ledger.cell_command(opt, crd, "data", str(save), "t.pth")
    assert resumed[-1] == "--resume" and "--resume" not in fresh
    assert fresh[fresh.index("--nce_k") + 1] == "4096" and "-s" not in fresh
    assert resumed[resumed.index("-s") + 1] == "8" and resumed[resumed.index("--distill") + 1] == "NORM_CRD"
    teacher = ledger.cell_command(opt, ledger.Cell(None, 0, teacher=True), "data", str(save))
    assert os.path.basename(teacher[1]) == "train_cifar_teacher.py"
    assert teacher[teacher.index("--model") + 1] == "resnet14" and teacher[teacher.index("--epochs") + 1] == "10"


def test_bad_methods_and_models_are_refused_in_one_line(tmp_path):
    with pytest.raises(UsageError, match="unknown --methods NORM\\+FOO"):
        ledger.main(["--out", str(tmp_path), "--methods", "NORM", "NORM+FOO"])
    with pytest.raises(UsageError, match="--student"):
        ledger.main(["--out", str(tmp_path), "--student", "resnet9"])
    assert not os.listdir(tmp_path)  # nothing written


def test_attempt_records_survive_a_torn_or_edited_line(tmp_path, capsys):
    # two records, then a line cut off by a kill (or edited by hand), then a later record of the first cell
    path = tmp_path / "cells.jsonl"
    append_line(str(path), json.dumps({"cell": "a", "status": "failed"}))
    append_line(str(path), json.dumps({"cell": "b", "status": "done"}))
    with open(path, "a") as handle:
        handle.write('{"cell": "a", "stat\n[1, 2]\n')
    append_line(str(path), json.dumps({"cell": "a", "status": "done"}))
    attempts = ledger.read_attempts(str(tmp_path))
    assert attempts == {"a": {"cell": "a", "status": "done"}, "b": {"cell": "b", "status": "done"}}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "line 3 of" in err[0] and "line 4 of" in err[1]


def test_the_default_grid_holds_the_whole_field_and_each_cell_command_parses():
    import train_cifar_student
    from helper.cli.parser import student_parser

    field = {"DKD", "ReviewKD", "OFD", "SimKD", "SRRL", "SemCKD", "DIST", "KD+LS"}
    opt = ledger.parser().parse_args(["--out", "x"])
    assert field <= set(opt.methods) and len(opt.seeds) == 3
    parse = student_parser(train_cifar_student.CIFAR_PROFILE).parse_args
    for method in sorted(field):
        cell = ledger.Cell(method, 0)
        argv = ledger.cell_command(opt, cell, "/data", "/save", teacher_path="/t.pth")
        parsed = parse(argv[2:])  # the student script accepts the cell's flags
        assert parsed.distill.lower() == ledger.METHODS[method][1][1]
        assert bool(getattr(parsed, "logit_standardize", False)) == (method == "KD+LS")
