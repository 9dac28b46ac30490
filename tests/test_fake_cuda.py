"""Device placement on a fake CUDA device (tests/fake_cuda.py): no GPU is needed, and any op that mixes a CUDA and a
CPU tensor raises, as it would on a GPU.

Covered for every registered method and the paper's four pairs: building the method with its networks on the device
(the probe forwards), `runtime.to_device`, the student/teacher forward with features, every loss term (CRD's memories
and index tensors, moved by the loop's own transfer), the inference teacher (BatchNorm fold and layout), --gpu_data's
batch transforms and the validation step. Backward does not run under the mode (see tests/fake_cuda.py).
"""
import argparse

import pytest
import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from distiller_zoo import METHODS
from distiller_zoo.crd import ContrastMemory
from helper.training.engine import _to_device, validate
from helper.runtime.device import Runtime
from models import model_dict

from tests.fake_cuda import CUDA, devices_of, fake_cuda, on_the_host_for_real
from tests.test_baselines import PAIRS as BASELINE_PAIRS

pytestmark = pytest.mark.fake_cuda

PAIRS = {**BASELINE_PAIRS, "NORM": ("resnet8x4", "resnet8"), "NORM_CRD": ("resnet8x4", "resnet8"),
         "crd": ("resnet8x4", "resnet8"), "kd": ("resnet8x4", "resnet8"),
         **{name: ("resnet20", "resnet8") for name in ("dkd", "dist", "reviewkd", "ofd", "simkd", "srrl", "semckd")}}
PAPER_PAIRS = [("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8")]
N_DATA, NCE_K, BATCH = 20, 8, 4


def test_every_registered_method_has_a_pair_here():
    assert set(METHODS) <= set(PAIRS), "a new method needs a pair in PAIRS (its placement is tested here)"


def make_opt():
    """The options every method's build reads: the student script's defaults (every method's own flags), at toy
    sizes (alpha on, so that KD runs too)."""
    import train_cifar_student
    from helper.cli.parser import student_parser

    opt = student_parser(train_cifar_student.CIFAR_PROFILE).parse_args([])
    opt.__dict__.update(alpha=0.9, epochs=2, feat_dim=16, learning_rate=0.05, model_s="resnet8", co_sponge=2,
                        nce_k=NCE_K, batch_size=BATCH)
    return opt


def cpu_batch(num_classes=10, image_size=32):
    """A batch as the CPU DataLoader hands it over: images, targets, CRD's sample index and contrast indices."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(BATCH, 3, image_size, image_size, generator=generator),
            torch.randint(0, num_classes, (BATCH,), generator=generator),
            torch.arange(BATCH), torch.randint(0, N_DATA, (BATCH, NCE_K + 1), generator=generator))


# Methods whose build reads values on the host (OFD's margins from the teacher's BatchNorm parameters, SimKD's check
# that the teacher's classifier pools its last map): fake tensors hold no values, so these are built on the CPU, as
# the scripts build every method, and then moved; their training forward still runs on the fake device.
BUILT_ON_THE_HOST = {"ofd", "simkd"}


def build_on_fake_cuda(name, t_name, s_name, runtime):
    """Networks made on the CPU (as the scripts do), moved to the fake device, the method built there and moved."""
    torch.manual_seed(0)
    if name in BUILT_ON_THE_HOST:
        with unset_fake_temporarily():
            teacher, student = model_dict[t_name](num_classes=10), model_dict[s_name](num_classes=10)
            method = METHODS[name].build(student, teacher, make_opt(), {"n_data": N_DATA, "image_size": 32,
                                                                        "in_channels": 3, "schedule_kind": "cifar"})
    else:
        teacher, student = model_dict[t_name](num_classes=10), model_dict[s_name](num_classes=10)
        runtime.to_device(teacher)
        runtime.to_device(student)
        method = METHODS[name].build(student, teacher, make_opt(),
                                     {"n_data": N_DATA, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"})
    runtime.to_device(method)
    for module in method.modules():
        if isinstance(module, ContrastMemory):
            # CRD estimates its normalisation Z from the first batch, reading it once per process (a documented
            # host sync that fake tensors cannot run): here Z stands estimated, as from a step before
            module.z_s.fill_(float(N_DATA))
            module.z_t.fill_(float(N_DATA))
            module._z_checked = True
    return method


def check_forward(method, runtime, stage="main"):
    """The training forward of `stage` on a moved batch: logits and every loss term on the device."""
    images, targets, index, contrast = _to_device(cpu_batch(), runtime)
    assert {images.device, targets.device, index.device, contrast.device} == {CUDA}
    method.train()
    with runtime.autocast():
        logits, losses = method(images, targets, index=index, contrast_index=contrast)
    assert logits.device == CUDA and logits.shape == (BATCH, 10)
    assert losses and all(v.device == CUDA and v.dim() == 0 for v in losses.values()), losses
    assert sum(losses.values()).device == CUDA
    return losses


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_builds_and_runs_its_forward_and_losses_on_cuda(name):
    t_name, s_name = PAIRS[name]
    runtime = Runtime(CUDA)
    with fake_cuda():
        method = build_on_fake_cuda(name, t_name, s_name, runtime)
        assert devices_of(method) == {CUDA}
        if method.has_init_stage:
            method.set_stage("init")
            assert list(check_forward(method, runtime, "init")) == ["init"]
            method.set_stage("main")
        losses = check_forward(method, runtime)
        assert "ce" in losses
        if method.needs_contrast:  # CRD without given contrast indices: the memory draws them on the device
            images, targets, index, _ = _to_device(cpu_batch(), runtime)
            _, losses = method(images, targets, index=index, contrast_index=None)
            assert all(v.device == CUDA for v in losses.values())
        feat_t, logits_t = method.teacher_forward(_to_device(cpu_batch(), runtime)[0])
        assert logits_t.device == CUDA and all(f.device == CUDA for f in feat_t)


@pytest.mark.parametrize("t_name,s_name", PAPER_PAIRS, ids=[f"{t}-{s}" for t, s in PAPER_PAIRS])
def test_paper_pair_trains_forward_with_the_inference_teacher_and_validates_on_cuda(t_name, s_name, monkeypatch):
    from helper.training import engine
    from helper.teachers.inference import InferenceTeacher

    runtime = Runtime(CUDA, channels_last=True)
    reduced, sums = [], torch.tensor([1.0, 0.0, 0.0, 2.0])  # a real tensor: its values can be read in the mode

    def all_reduce_sum(tensor, runtime):  # validation's one host read (.tolist()) cannot run on fake tensors
        reduced.append(tensor.device)
        return sums

    monkeypatch.setattr(engine, "all_reduce_sum", all_reduce_sum)
    # The inference copy is made on the CPU here: making it needs copy.deepcopy of the teacher, which crashes the
    # process on fake tensors (torch 2.14 reads their data_ptr). Its forward is then served on the fake device.
    torch.manual_seed(0)
    teacher = model_dict[t_name](num_classes=10).eval()
    inference = InferenceTeacher(teacher, torch.randn(BATCH, 3, 32, 32), memory_format="channels_last")
    assert inference.folded > 0 and not inference.notes, inference.summary()
    with fake_cuda():
        method = build_on_fake_cuda("NORM", t_name, s_name, runtime)
        assert set(check_forward(method, runtime)) == {"ce", "kd", "norm"}
        inference.network.to(CUDA)
        inference.device, inference._forward = CUDA, inference.network
        method.inference_teacher = inference
        assert set(check_forward(method, runtime)) == {"ce", "kd", "norm"}  # the teacher's forward from the copy
        assert validate(method.student, [cpu_batch()[:2]] * 2, runtime) == {"acc1": 0.0, "acc5": 0.0, "loss": 0.5}
    assert reduced == [CUDA]


@pytest.mark.parametrize("dataset", ["cifar100", "fashion_mnist"])
def test_gpu_data_batches_are_made_on_cuda(dataset, tmp_path):
    from dataset import build_dataset
    from helper.loaders.sampler import EpochSampler
    from helper.loaders.device import DeviceLoader, device_loader_for
    from tests.datafakes import write_tiny_cifar, write_tiny_fashion_mnist

    if dataset == "cifar100":
        write_tiny_cifar(str(tmp_path), num_classes=100, n_train=16, n_test=8, seed=0)
    else:
        write_tiny_fashion_mnist(str(tmp_path), n_train=16, n_test=8)
    train_set = build_dataset(dataset, str(tmp_path), "train", download=False, image_size=None, seed=0)
    runtime = Runtime(CUDA, channels_last=True)
    with fake_cuda(), on_the_host_for_real(EpochSampler, "__iter__"), on_the_host_for_real(DeviceLoader, "epoch_draws"):
        loader = device_loader_for(train_set, 8, 0, runtime)
        assert {loader.images.device, loader.targets.device} == {CUDA}
        loader.sampler.set_epoch(1, 0)
        batches = list(loader)
    assert len(batches) == len(loader) == 2
    for images, targets, index in batches:
        assert {images.device, targets.device, index.device} == {CUDA}
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
