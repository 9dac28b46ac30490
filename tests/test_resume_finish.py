"""A run killed after its last checkpoint but before its results line: --resume records the line, exactly once."""
import json
import os

import pytest

import train_cifar_teacher
from helper.runs.checkpoint import load_checkpoint, plain_number
from helper.runs.store import RunStore


class Killed(BaseException):
    """Stands in for SIGKILL: no clean-up code of the run catches it."""


def teacher_args(tiny_cifar, save, *extra):
    return ["--model", "resnet8", "--data_root", tiny_cifar, "--save_root", str(save), "--epochs", "2",
            "--batch_size", "16", "--num_workers", "0", "--seed", "1", "--print_freq", "100", *extra]


def lines_of(results, run):
    """The results.jsonl records whose run folder is `run` (however the path was spelled)."""
    records = [json.loads(raw) for raw in results.read_text().splitlines() if raw.strip()]
    return [r for r in records if os.path.realpath(r["run"]) == os.path.realpath(run)]


def killed_before_its_line(tiny_cifar, save, monkeypatch):
    """A finished teacher run whose process died right before it appended its results line; returns the run folder."""
    def die(self, summary):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(RunStore, "append_result", die)
        with pytest.raises(Killed):
            train_cifar_teacher.main(teacher_args(tiny_cifar, save))
    return next((save / "models").iterdir())


def test_resuming_a_run_killed_before_its_results_line_records_it_once(tiny_cifar, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"  # the same run, not killed: the line it should have written
    expected = train_cifar_teacher.main(teacher_args(tiny_cifar, reference))
    save = tmp_path / "save"
    run = killed_before_its_line(tiny_cifar, save, monkeypatch)
    results = save / "results.jsonl"
    results.write_text('{"run": "some/other/run", "best_acc": 1.0}\n')  # another run's line stays as it is
    capsys.readouterr()

    summary = train_cifar_teacher.main(teacher_args(tiny_cifar, save, "--resume"))
    assert "already finished its 2 epochs" in capsys.readouterr().out
    [line] = lines_of(results, run)
    # the accuracies the killed run saved in its own last checkpoint, and the line's fields as a normal run writes them
    saved = load_checkpoint(str(run / "resnet8_last.pth"))
    assert line["best_acc"] == pytest.approx(plain_number(saved["best_acc"]))
    assert line["last_acc"] == pytest.approx(saved["history"][-1]["test_acc"])
    assert (summary["best_acc"], summary["last_acc"]) == (line["best_acc"], line["last_acc"])
    assert set(line) - {"recorded_on_resume"} == set(expected)
    assert line["epochs"] == 2 and line["trial"] == "0" and line["recorded_on_resume"] is True
    assert results.read_text().splitlines()[0] == '{"run": "some/other/run", "best_acc": 1.0}'

    before = results.read_bytes()
    train_cifar_teacher.main(teacher_args(tiny_cifar, save, "--resume"))
    assert results.read_bytes() == before  # the second resume adds no duplicate
    assert "missing result line" not in capsys.readouterr().out


def test_a_run_whose_line_is_there_under_another_spelling_of_its_path_gets_no_second_line(tiny_cifar, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_cifar_teacher.main(teacher_args(tiny_cifar, "save"))  # a relative --save_root: a relative "run" path
    results = tmp_path / "save" / "results.jsonl"
    before = results.read_bytes()
    assert not json.loads(before)["run"].startswith("/")
    train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path / "save", "--resume"))  # now spelled absolute
    assert results.read_bytes() == before


def test_a_line_left_by_an_earlier_run_in_the_folder_is_not_taken_for_this_runs(tiny_cifar, tmp_path, monkeypatch):
    run = killed_before_its_line(tiny_cifar, tmp_path, monkeypatch)
    results = tmp_path / "results.jsonl"
    stale = {"run": str(run), "epochs": 2, "best_acc": -1.0, "last_acc": -1.0}  # the folder's previous occupant
    results.write_text(json.dumps(stale) + "\n")
    summary = train_cifar_teacher.main(teacher_args(tiny_cifar, tmp_path, "--resume"))
    records = lines_of(results, run)
    assert records[0] == stale and len(records) == 2
    assert records[1]["best_acc"] == summary["best_acc"] >= 0
