"""Checkpoint safety (atomic writes, safe and legacy reads) and the learning-rate schedules."""
import argparse
import errno
import math
import os

import pytest
import torch

from helper.runs import checkpoint
from helper.errors import CheckpointWriteError
from helper.runs.checkpoint import load_checkpoint, model_state, save_atomic
from helper.errors import UsageError
from helper.training.schedule import learning_rate


@pytest.mark.parametrize("epoch,expected", [(1, 0.05), (150, 0.05), (151, 0.005), (180, 0.005), (181, 0.0005),
                                            (211, 0.00005), (240, 0.00005)])
def test_step_schedule_matches_repdistiller(epoch, expected):
    assert learning_rate(epoch, 0.05, 240, "step", [150, 180, 210]) == pytest.approx(expected)


def test_cosine_schedule_starts_at_base_and_decays_to_near_zero():
    assert learning_rate(1, 0.1, 100, "cos") == pytest.approx(0.1)
    assert learning_rate(51, 0.1, 100, "cos") == pytest.approx(0.05)
    assert learning_rate(100, 0.1, 100, "cos") == pytest.approx(0.05 * (1 + math.cos(math.pi * 99 / 100)))


def test_atomic_save_round_trip(tmp_path):
    path = tmp_path / "a.pth"
    save_atomic({"epoch": 3, "model": {"w": torch.arange(4.0)}, "accuracy": 71.5}, str(path))
    loaded = load_checkpoint(str(path))
    assert loaded["epoch"] == 3 and loaded["accuracy"] == 71.5
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]  # no temporary file left behind


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("No space left on device (unexpected pos 4096)")],
                         ids=["OSError", "torch RuntimeError"])
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path = str(tmp_path / "last.pth")
    save_atomic({"epoch": 1}, path)

    def disk_full(obj, handle):
        handle.write(b"partial")
        raise error

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


def test_official_last_file_with_namespace_and_cuda_tensors_loads_on_cpu(tmp_path, monkeypatch):
    path = str(tmp_path / "resnet8x4_last.pth")
    # write tensors tagged as CUDA storages, as the official scripts did on their GPUs
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"opt": argparse.Namespace(model_s="resnet8x4", co_sponge=8), "model": {"w": torch.ones(2)},
                "best_acc": torch.tensor(76.2)}, path)
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert loaded["opt"].co_sponge == 8
    assert loaded["model"]["w"].device.type == "cpu"
    assert checkpoint.plain_number(loaded["best_acc"]) == pytest.approx(76.2)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_arbitrary_pickles_are_refused_not_executed(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"model": Exploit()}, path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(UsageError, match="cannot read checkpoint .* objects other than tensors"):
            load_checkpoint(path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "cut.pth"
    save_atomic({"model": {"w": torch.ones(1000)}}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UsageError, match="truncated or corrupt"):
        load_checkpoint(str(path))


def test_model_state_strips_module_prefix_and_accepts_raw_state_dicts():
    assert list(model_state({"model": {"module.fc.weight": torch.ones(1)}})) == ["fc.weight"]
    assert list(model_state({"fc.weight": torch.ones(1)})) == ["fc.weight"]
    with pytest.raises(UsageError):
        model_state({"epoch": 3})


def test_model_state_reads_state_dict_entries_and_unwraps_compiled_and_parallel_keys(tmp_path):
    # a trainer's {'state_dict': ...} file of a DDP-wrapped, torch.compile'd resnet8, saved for real
    from models import model_dict

    net = model_dict["resnet8"](num_classes=10)
    wrapped = {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "trainer.pth"
    save_atomic({"epoch": 5, "state_dict": wrapped, "optimizer_name": "sgd"}, str(path))
    state = model_state(load_checkpoint(str(path)), str(path))
    assert state.keys() == net.state_dict().keys()
    fresh = model_dict["resnet8"](num_classes=10)
    fresh.load_state_dict(state)  # strict
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    # 'model' wins over 'state_dict' (the official layout); a prefix on only some keys stays
    assert list(model_state({"model": {"a": torch.ones(1)}, "state_dict": {"b": torch.ones(1)}})) == ["a"]
    assert sorted(model_state({"module.a": torch.ones(1), "b": torch.ones(1)})) == ["b", "module.a"]


def test_momentum_buffers_take_the_parameters_layout_after_loading():
    from helper.training.optim import match_parameter_layouts

    saved_net = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)  # run saved with --channels_last
    saved_opt = torch.optim.SGD(saved_net.parameters(), lr=0.1, momentum=0.9)
    saved_net(torch.randn(2, 4, 5, 5)).sum().backward()
    saved_opt.step()
    net = torch.nn.Conv2d(4, 8, 3)  # resumed without it
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    optimizer.load_state_dict(saved_opt.state_dict())
    buffer = optimizer.state[net.weight]["momentum_buffer"]
    assert buffer.stride() != net.weight.stride()  # what fused SGD on CUDA refuses
    match_parameter_layouts(optimizer)
    moved = optimizer.state[net.weight]["momentum_buffer"]
    assert moved.stride() == net.weight.stride() and torch.equal(moved, buffer)


def test_a_line_append_is_whole_or_absent(tmp_path, monkeypatch):
    # a write that stops half way (disk full) is cut back: the file holds its earlier lines and no half line
    from helper.runs import files

    path = tmp_path / "log.jsonl"
    files.append_line(str(path), '{"a": 1}')
    real_write = os.write

    def half_write(fd, data):
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(CheckpointWriteError, match="could not append to .*log.jsonl: the disk is full"):
        files.append_line(str(path), '{"b": 2, "padding": "' + "x" * 100 + '"}')
    monkeypatch.undo()
    assert path.read_text() == '{"a": 1}\n'
    files.append_line(str(path), '{"c": 3}')
    assert path.read_text().splitlines() == ['{"a": 1}', '{"c": 3}']
