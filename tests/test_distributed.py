"""DDP on CPU (gloo, 2 ranks): gradients of the global batch, per-stage wrapping, per-rank RNG, --gids, --sync_bn."""
import copy
import gc
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helper.runs.checkpoint import load_checkpoint
from helper.runtime.distributed import (StageWrapper, broadcast_from_rank0, check_sync_bn, gather_rng_states,
                                per_process_batch, restore_rng_state)
from helper.errors import UsageError
from helper.runtime.device import Runtime, ranks_done, seed_everything

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def freeze_batchnorm(module):
    """BN in eval mode: each sample's gradient no longer depends on the rest of its shard."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def rank_worker(rank, rendezvous):
    import faulthandler

    faulthandler.enable()  # should the process abort, its stderr shows where
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    runtime = Runtime(torch.device("cpu"), rank=rank, world_size=2)
    try:
        from distiller_zoo.base import Distiller
        from models import model_dict

        torch.manual_seed(0)  # the same networks and global batch on both ranks
        method = Distiller(model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10),
                           gamma=1.0, alpha=0.9, logit_scale=2.5)
        images, targets = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        reference = copy.deepcopy(method).train()
        freeze_batchnorm(reference)
        sum(reference(images, targets)[1].values()).backward()

        ddp = StageWrapper(method, runtime).for_stage("main")
        assert not ddp.find_unused_parameters  # the main stage pays for no graph walk
        ddp.train()
        freeze_batchnorm(method)
        shard = slice(rank, None, 2)  # the sampler's shard of the global batch
        sum(ddp(images[shard], targets[shard])[1].values()).backward()
        for (name, p), q in zip(method.named_parameters(), reference.parameters()):
            if p.requires_grad:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)

        seed_everything(100 + rank)  # each rank its own stream
        states = gather_rng_states(runtime)
        expected = torch.rand(4)
        torch.manual_seed(12345)
        restore_rng_state({"rng_per_rank": states, "rng": states[0]}, runtime)
        assert torch.equal(torch.rand(4), expected)
        both = [torch.zeros(4), torch.zeros(4)]
        dist.all_gather(both, expected)
        assert not torch.equal(both[0], both[1])  # rank 1 did not get rank 0's state back
        ranks_done()  # as the training scripts do: no rank tears gloo down under its peer
        with open(f"{rendezvous}.rank{rank}.checked", "w"):
            pass
        del ddp  # its reducer holds the process group: gone before the group is
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_two_rank_gradients_equal_the_global_batch_and_each_rank_keeps_its_rng(tmp_path):
    # a file rendezvous: no free port to pick (and lose to another process) first
    rendezvous = str(tmp_path / "rendezvous")
    try:
        mp.spawn(rank_worker, args=(rendezvous,), nprocs=2, join=True)
    except mp.ProcessExitedException as err:
        # gloo has been seen to abort a process ("terminate called without an active exception") while the group
        # is torn down; once both ranks have passed every check that is not what this test is about
        checked = all(os.path.exists(f"{rendezvous}.rank{rank}.checked") for rank in (0, 1))
        if not (checked and err.signal_name == "SIGABRT"):
            raise


class LayoutRecorder:
    """A method whose inference teacher 'measures' a different layout on each rank, and records what it was asked."""

    def __init__(self, measured):
        self.measured, self.asked, self.compiled = measured, [], []

    def install_inference_teacher(self, example, memory_format, compile=False, **options):
        from types import SimpleNamespace

        self.asked.append(memory_format)
        self.compiled.append(compile)
        chosen = self.measured if memory_format == "auto" else memory_format
        return SimpleNamespace(memory_format=chosen, notes=[], summary=lambda: chosen)


def layout_worker(rank, rendezvous):
    from types import SimpleNamespace

    from helper.teachers.inference import share_layout

    def install(trainer, train_set):  # what the trainer runs to install its inference teacher, on the fake method
        return share_layout(lambda fmt, compile: trainer.method.install_inference_teacher(
            train_set[0][0], memory_format=fmt, compile=compile), trainer.runtime, compile=trainer.opt.compile,
            deterministic=trainer.opt.deterministic)

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        assert broadcast_from_rank0({"rank": rank}, Runtime(torch.device("cpu"), rank=rank, world_size=2)) == \
            {"rank": 0}
        method = LayoutRecorder("channels_last" if rank == 0 else "contiguous")
        trainer = SimpleNamespace(opt=SimpleNamespace(compile=False, deterministic=False), method=method, batch=2,
                                  runtime=Runtime(torch.device("cpu"), rank=rank, world_size=2))
        summary = install(trainer, [(torch.zeros(3, 4, 4), 0)])
        assert summary == "channels_last"  # rank 1 runs rank 0's measured choice, without measuring
        assert method.asked == (["auto"] if rank == 0 else ["channels_last"])
        assert all(not compiled for compiled in method.compiled)
        # with --compile, rank 0 measures uncompiled before the broadcast; every rank compiles rank 0's layout after it
        method.asked, method.compiled, trainer.opt.compile = [], [], True
        assert install(trainer, [(torch.zeros(3, 4, 4), 0)]) == "channels_last"
        expected = [("auto", False), ("channels_last", True)] if rank == 0 else [("channels_last", True)]
        assert list(zip(method.asked, method.compiled)) == expected
        trainer.opt.compile = False
        trainer.opt.deterministic = True  # a fixed layout: no collective, nothing measured
        assert install(trainer, [(torch.zeros(3, 4, 4), 0)]) == "contiguous"
        ranks_done()
    finally:
        dist.destroy_process_group()


def test_under_ddp_every_rank_uses_rank_0s_teacher_layout(tmp_path):
    mp.spawn(layout_worker, args=(str(tmp_path / "rendezvous"),), nprocs=2, join=True)


def test_broadcast_from_rank0_is_the_value_itself_in_one_process():
    assert broadcast_from_rank0([1, 2], Runtime(torch.device("cpu"))) == [1, 2]


def test_the_global_batch_is_split_over_the_processes():
    assert per_process_batch(256, 8) == 32 and per_process_batch(64, 1) == 64
    with pytest.raises(UsageError, match=r"--batch_size 100 is the global batch .* 8 processes; use 96 or 104"):
        per_process_batch(100, 8)


def test_sync_bn_is_refused_on_cpu_ddp_and_a_warned_no_op_in_one_process():
    with pytest.raises(UsageError, match="--sync_bn needs CUDA"):
        check_sync_bn(True, Runtime(torch.device("cpu"), rank=0, world_size=2))
    with pytest.warns(UserWarning, match="does nothing in a single process"):
        assert check_sync_bn(True, Runtime(torch.device("cpu"))) is False
    assert check_sync_bn(False, Runtime(torch.device("cpu"), rank=0, world_size=2)) is False


ARGS = ["--model_t", "resnet8", "--model_s", "resnet8", "--num_workers", "0", "--seed", "3", "--deterministic",
        "--batch_size", "16", "--print_freq", "1", "--epochs", "1"]


def torchrun(worker_args, dump, extra_env=None, nproc=2):
    env = {**os.environ, "DUMP_DIR": str(dump), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "tests", "ddp_cifar_worker.py"), *worker_args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_two_stage_method_under_ddp_wraps_per_stage_and_resumes_bit_exactly(tiny_cifar, teacher_file, tmp_path):
    common = ["--path_t", teacher_file("resnet8"), "--data_root", tiny_cifar, "--distill", "abound",
              "--init_epochs", "2", *ARGS]
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    done = torchrun([*common, "--save_root", str(full)], full)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "global batch 16 = 2 x 8; freed host memory kept for reuse" in done.stdout  # the CPU step's setting
    ranks = [torch.load(full / f"rank{r}.pth", weights_only=True) for r in (0, 1)]
    # the init stage may leave parameters unused; the main stage is wrapped anew without that tax
    assert ranks[0]["wrapped"] == [("init", True), ("main", False)] and ranks[0]["batch"] == 8
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key

    # 16 samples on 2 ranks of 8: 4 steps per init epoch; stop in the middle of the second init epoch
    stopped = torchrun([*common, "--save_root", str(part)], part, {"STOP_AFTER": "6"})
    assert stopped.returncode != 0 and "--resume" in stopped.stderr
    ckpt = load_checkpoint(next((part / "student_model").iterdir()) / "resnet8_last.pth")
    assert (ckpt["init_done"], ckpt["init_epoch"], ckpt["init_step"]) == (False, 2, 2)
    assert len(ckpt["rng_per_rank"]) == 2 and not torch.equal(ckpt["rng_per_rank"][0]["torch"],
                                                              ckpt["rng_per_rank"][1]["torch"])
    resumed = torchrun([*common, "--save_root", str(part), "--resume"], part)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    again = torch.load(part / "rank0.pth", weights_only=True)
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, again["model"][key]), key
    for key, value in ranks[0]["optimizer"].items():
        assert torch.equal(value["momentum_buffer"], again["optimizer"][key]["momentum_buffer"]), key
    assert torch.equal(again["rng"], ranks[0]["rng"])  # rank 0 continued its own stream


def test_gids_starts_one_process_per_id_like_torchrun(tiny_cifar, teacher_file, tmp_path):
    common = ["--path_t", teacher_file("resnet8"), "--data_root", tiny_cifar, "--distill", "kd", *ARGS]
    by_torchrun = torchrun([*common, "--save_root", str(tmp_path / "a")], tmp_path)
    assert by_torchrun.returncode == 0, by_torchrun.stderr[-2000:]
    cmd = [sys.executable, os.path.join(ROOT, "train_cifar_student.py"), *common, "--save_root", str(tmp_path / "b"),
           "--gids=0,1", "--device", "cpu"]
    by_gids = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                             text=True, timeout=600)
    assert by_gids.returncode == 0, by_gids.stderr[-2000:]
    assert "global batch 16 = 2 x 8" in by_gids.stdout
    runs = [next((tmp_path / side / "student_model").iterdir()) / "resnet8_last.pth" for side in "ab"]
    a, b = (load_checkpoint(str(path)) for path in runs)
    assert b["config"]["world_size"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


@pytest.mark.parametrize("gids,needle", [("0,x", "distinct GPU ids"), ("1,1", "an id is repeated"),
                                         ("0,,1", "an empty id"), ("0,1,", "an empty id"), ("", "an empty id"),
                                         ("0, 1", "no spaces or signs"), ("-1", "no spaces or signs"),
                                         ("+1", "no spaces or signs"), ("0", "no CUDA device is available")])
def test_bad_gids_are_one_line(capsys, tiny_cifar, teacher_file, tmp_path, gids, needle, monkeypatch):
    import train_cifar_student
    from helper.cli.entry import run_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cifar_student.main, ["--path_t", teacher_file("resnet8"), "--data_root", tiny_cifar,
                                           "--save_root", str(tmp_path), *ARGS, f"--gids={gids}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_gids_grammar():
    from helper.argtypes import gpu_id_list

    assert gpu_id_list("0") == [0] and gpu_id_list("3,1,2") == [3, 1, 2] and gpu_id_list("10,11") == [10, 11]
    for bad in ("0,,1", ",0", "0,", "", " 0", "0 ,1", "-1", "+1", "1,1", "0x1", "1.0", "\u0663"):
        with pytest.raises(ValueError):
            gpu_id_list(bad)
