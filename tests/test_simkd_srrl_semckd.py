"""SimKD, SRRL and SemCKD: each loss against hand arithmetic, gradients by finite differences, one epoch per paper
pair, refusals, and SimKD's student through evaluation and both exports."""
import argparse
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo import METHODS
from distiller_zoo.semckd import SemCKD, SemanticAttention
from distiller_zoo.simkd import SimKD, simkd_loss
from distiller_zoo.srrl import SRRL
from helper.runs.checkpoint import load_checkpoint
from models import model_dict
from models.simkd import SimKDStudent, is_simkd_state
from scripts import evaluate_student, export_student
from scripts.summarize_results import label_and_settings
from tests.test_bad_input import fails
from tests.test_cifar_scripts import run_student, train_cifar_student
from tests.test_export_onnx import randomise_batchnorm_layers

DATA = {"n_data": 20, "image_size": 32, "in_channels": 3, "schedule_kind": "cifar"}
PAPER_PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("vgg13", "vgg8"),
               ("resnet32x4", "ShuffleV2")]
QUIET = ["--num_workers", "0", "--batch_size", "16"]


def make_opt(**overrides):
    opt = dict(gamma=None, alpha=None, beta=None, ceta=None, kd_T=4.0, batch_size=8, simkd_factor=2)
    opt.update(overrides)
    return argparse.Namespace(**opt)


def randomise(module, seed):
    """Non-trivial BatchNorm statistics and affine parameters, so eval- and train-mode arithmetic both matter."""
    return randomise_batchnorm_layers(module, torch.Generator().manual_seed(seed))


def bn_train(x, bn):
    """BatchNorm with the batch's statistics (biased variance), written out."""
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
    mean, var = x.mean(dims), x.var(dims, unbiased=False)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def bn_eval(x, bn):
    """BatchNorm with the running statistics, written out."""
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def conv1x1(x, conv):
    return torch.einsum("oi,bihw->bohw", conv.weight[:, :, 0, 0], x)


def pool_to(x, size):
    """Average pooling of a square map onto `size` x `size` by reshaping (the heights divide)."""
    b, c, h, _ = x.shape
    k = h // size
    return x.reshape(b, c, size, k, size, k).mean((3, 5))


def ce_by_hand(logits, y):
    return -(logits - logits.exp().sum(1, keepdim=True).log()).gather(1, y[:, None]).mean()


def kd_by_hand(z_s, z_t, t=4.0):
    p_t = (z_t / t).softmax(1)
    return (p_t * ((z_t / t).log_softmax(1) - (z_s / t).log_softmax(1))).sum() / z_s.shape[0] * t * t


# ------------------------------------------------------------------ SimKD
@pytest.mark.parametrize("teacher, student, pooled", [("resnet14", "resnet8", None),   # equal 8x8 maps
                                                      ("vgg8", "resnet8", "student"),  # 8x8 student onto 4x4
                                                      ("resnet8", "vgg8", "teacher"),  # 8x8 teacher onto 4x4
                                                      ("wrn_16_1", "resnet8", None)])  # the teacher's BN+ReLU
def test_simkd_loss_and_prediction_by_hand(teacher, student, pooled):
    torch.manual_seed(0)
    t_net = randomise(model_dict[teacher](num_classes=10), 1)
    method = SimKD.build(model_dict[student](num_classes=10), t_net, make_opt(), DATA).train()
    randomise(method.student.projector, 2)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    logits, losses = method(x, y)
    assert set(losses) == {"ce", "simkd"} and losses["ce"].item() == 0  # -c 0 -d 0 -b 1

    feats, _ = method.student.backbone(x, is_feat=True)
    f = pool_to(feats[-2], 4) if pooled == "student" else feats[-2]
    p = method.student.projector
    h = F.relu(bn_train(conv1x1(f, p[0]), p[1]))
    h = F.relu(bn_train(F.conv2d(h, p[3].weight, padding=1), p[4]))
    projected = F.relu(bn_train(conv1x1(h, p[6]), p[7]))
    with torch.no_grad():
        feats_t, _ = t_net(x, is_feat=True)
    target = F.relu(bn_eval(feats_t[-2], t_net.bn1)) if teacher.startswith("wrn") else feats_t[-2]
    if pooled == "teacher":
        target = pool_to(target, 4)
    fc = t_net.get_submodule(t_net.classifier_name)
    assert losses["simkd"].item() == pytest.approx(((projected - target) ** 2).mean().item(), rel=1e-5)
    torch.testing.assert_close(logits, projected.mean((2, 3)) @ fc.weight.t() + fc.bias, rtol=1e-5, atol=1e-5)
    # the deployed model predicts the same, in eval mode with the projector's running statistics
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method.student(x), method.student.forward_parts(x)[3])
    assert method.student.classifier is not fc and not method.student.classifier.weight.requires_grad
    torch.testing.assert_close(method.student.classifier.weight, fc.weight, rtol=0, atol=0)


def test_simkd_ce_and_kd_weights_act_on_the_backbones_own_logits():
    torch.manual_seed(0)
    t_net = model_dict["resnet14"](num_classes=10)
    method = SimKD.build(model_dict["resnet8"](num_classes=10), t_net, make_opt(gamma=0.5, alpha=2.0), DATA).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, losses = method(x, y)
    _, own = method.student.backbone(x, is_feat=True)
    with torch.no_grad():
        _, z_t = t_net(x, is_feat=True)
    assert losses["ce"].item() == pytest.approx(0.5 * ce_by_hand(own, y).item(), rel=1e-5)
    assert losses["kd"].item() == pytest.approx(2.0 * kd_by_hand(own, z_t).item(), rel=1e-5)


def test_simkd_gradient_matches_finite_differences():
    torch.manual_seed(0)
    method = SimKD.build(model_dict["resnet8"](num_classes=5), model_dict["resnet8"](num_classes=5),
                         make_opt(), DATA).double().train()
    proj = method.student.projector
    f = torch.randn(3, 64, 2, 2, dtype=torch.double, requires_grad=True)
    target = torch.rand(3, 64, 2, 2, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda v: simkd_loss(proj(v), target), (f,))
    # the loss's own gradient is 2 (p - t) / numel
    p = torch.randn(2, 3, 2, 2, dtype=torch.double, requires_grad=True)
    simkd_loss(p, target[:2, :3]).backward()
    torch.testing.assert_close(p.grad, 2 * (p.detach() - target[:2, :3]) / p.numel())


def test_simkd_trains_only_the_student_and_projector():
    torch.manual_seed(0)
    t_net = model_dict["resnet14"](num_classes=10)
    method = SimKD.build(model_dict["resnet8"](num_classes=10), t_net, make_opt(), DATA).train()
    _, losses = method(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    sum(losses.values()).backward()
    assert all(p.grad is None for p in t_net.parameters())
    assert method.student.classifier.weight.grad is None
    assert all(p.grad is not None for p in method.student.projector.parameters())
    assert method.student.backbone.fc.weight.grad is not None  # in the graph (weight 0), as DDP needs


# ------------------------------------------------------------------ SRRL
def test_srrl_losses_by_hand():
    torch.manual_seed(0)
    s_net, t_net = model_dict["resnet8"](num_classes=10), randomise(model_dict["wrn_16_2"](num_classes=10), 3)
    method = SRRL.build(s_net, t_net, make_opt(), DATA).train()
    randomise(method.connector, 4)
    assert (method.gamma, method.alpha, method.beta) == (1.0, 1.0, 1.0)  # -c 1 -d 1 -b 1
    x, y = torch.randn(5, 3, 32, 32), torch.randint(0, 10, (5,))
    logits, losses = method(x, y)
    feats, own = s_net(x, is_feat=True)
    with torch.no_grad():
        feats_t, z_t = t_net(x, is_feat=True)
    conv, bn = method.connector[0], method.connector[1]
    connected = F.relu(bn_train(feats[-1] @ conv.weight[:, :, 0, 0].t(), bn))
    fc = t_net.fc
    assert losses["srrl_fm"].item() == pytest.approx(((connected - feats_t[-1]) ** 2).mean().item(), rel=1e-5)
    regressed = connected @ fc.weight.t() + fc.bias
    assert losses["srrl_sr"].item() == pytest.approx(((regressed - z_t) ** 2).mean().item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(ce_by_hand(own, y).item(), rel=1e-5)
    assert losses["kd"].item() == pytest.approx(kd_by_hand(own, z_t).item(), rel=1e-5)
    torch.testing.assert_close(logits, own)  # SRRL's student keeps its own classifier


def test_srrl_gradient_matches_finite_differences():
    torch.manual_seed(0)
    t_net = model_dict["resnet8"](num_classes=5).double()
    method = SRRL.build(model_dict["resnet8"](num_classes=5).double(), t_net, make_opt(), DATA).double().train()
    pooled_t, z_t = torch.rand(4, 64, dtype=torch.double), torch.randn(4, 5, dtype=torch.double)
    v = torch.randn(4, 64, dtype=torch.double, requires_grad=True)

    def loss(f):
        terms = method.feature_losses([f], [pooled_t], None, z_t, None, None)
        return terms["srrl_fm"] + terms["srrl_sr"]

    assert torch.autograd.gradcheck(loss, (v,))
    loss(v).backward()
    assert all(p.grad is None for p in t_net.parameters())


def test_srrl_refuses_a_teacher_without_a_linear_classifier_on_its_pooled_feature():
    t_net = model_dict["resnet8"](num_classes=10)
    t_net.classifier_name = "layer3"
    with pytest.raises(ValueError, match="does not take feat\\[-1\\]"):
        SRRL.build(model_dict["resnet8"](num_classes=10), t_net, make_opt(), DATA)


# ------------------------------------------------------------------ SemCKD
def semckd_by_hand(method, feat_s, feat_t, batch_size):
    """SemCKD's loss written out: Gram rows (zero-padded to the MLP width), MLPs, softmax, projections, MSE."""
    att = method.attention
    b = feat_s[0].shape[0]

    def embed(mlp, f):
        flat = f.reshape(b, -1)
        gram = torch.cat([flat @ flat.t(), torch.zeros(b, batch_size - b)], 1)
        h = F.relu(gram @ mlp.linear1.weight.t() + mlp.linear1.bias) @ mlp.linear2.weight.t() + mlp.linear2.bias
        return h / h.pow(2).sum(1, keepdim=True).sqrt()

    q = [embed(m, f) for m, f in zip(att.queries, feat_s)]
    k = [embed(m, f) for m, f in zip(att.keys, feat_t)]
    energy = torch.stack([torch.stack([(q[i] * k[j]).sum(1) for j in range(len(k))], 1) for i in range(len(q))], 1)
    alpha = energy.exp() / energy.exp().sum(2, keepdim=True)
    total = 0.0
    for i, f_s in enumerate(feat_s):
        for j, f_t in enumerate(feat_t):
            p = att.projections[i][j]
            s_h, t_h = f_s.shape[2], f_t.shape[2]
            source = pool_to(f_s, t_h) if s_h > t_h else f_s
            target = f_t if s_h > t_h else pool_to(f_t, s_h)
            h = F.relu(bn_train(conv1x1(source, p[0]), p[1]))
            h = F.relu(bn_train(F.conv2d(h, p[3].weight, padding=1), p[4]))
            out = conv1x1(h, p[6])
            total = total + (alpha[:, i, j] * ((out - target) ** 2).reshape(b, -1).mean(1)).sum()
    return total / (b * len(feat_s))


def tiny_semckd(batch_size=8, seed=0):
    torch.manual_seed(seed)
    attention = SemanticAttention(batch_size, [2, 3], [3, 2, 2])  # n_s != n_t: the sums' axes must be right
    randomise(attention, seed + 1)
    return SemCKD(nn.Linear(1, 1), nn.Linear(1, 1), attention, beta=400.0)


def tiny_features(b, seed):
    g = torch.Generator().manual_seed(seed)
    feat_s = [torch.rand(b, 2, 4, 4, generator=g), torch.rand(b, 3, 2, 2, generator=g)]
    feat_t = [torch.rand(b, 3, 4, 4, generator=g), torch.rand(b, 2, 2, 2, generator=g),
              torch.rand(b, 2, 1, 1, generator=g)]
    return feat_s, feat_t


@pytest.mark.parametrize("b", [8, 5])  # a full batch, and the epoch's last smaller one
def test_semckd_loss_by_hand(b):
    method = tiny_semckd().train()
    feat_s, feat_t = tiny_features(b, 3)
    losses = method.feature_losses([None, *feat_s, None], [None, *feat_t, None], None, None, None, None)
    expected = 400 * semckd_by_hand(method, feat_s, feat_t, 8)
    assert losses["semckd"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_semckd_refuses_a_batch_larger_than_its_attention():
    method = tiny_semckd().train()
    feat_s, feat_t = tiny_features(9, 3)
    with pytest.raises(ValueError, match="sized for batches of 8"):
        method.feature_losses([None, *feat_s, None], [None, *feat_t, None], None, None, None, None)


def test_semckd_gradient_matches_finite_differences():
    method = tiny_semckd(batch_size=4).double().train()
    feat_s, feat_t = tiny_features(4, 5)
    feat_s = [f.double().requires_grad_() for f in feat_s]
    feat_t = [f.double() for f in feat_t]

    def loss(a, b):
        return method.feature_losses([None, a, b, None], [None, *feat_t, None], None, None, None, None)["semckd"]

    assert torch.autograd.gradcheck(loss, tuple(feat_s))
    loss(*feat_s).backward()  # the attention MLPs learn from the loss itself
    assert all(p.grad is not None for p in method.attention.parameters())


def test_semckd_defaults_and_attention_size():
    method = METHODS["semckd"].build(model_dict["resnet8"](num_classes=10), model_dict["resnet14"](num_classes=10),
                                     make_opt(batch_size=64), DATA)
    assert (method.gamma, method.alpha, method.beta, method.kd_T) == (1.0, 1.0, 400.0, 4.0)
    assert method.attention.queries[0].linear1.weight.shape == (32, 64)  # MLPEmbed(64 -> 32 -> 16)
    assert len(method.attention.projections) == 3 and len(method.attention.projections[0]) == 3


# ------------------------------------------------------------------ one epoch per paper pair
@pytest.mark.parametrize("method", ["simkd", "srrl", "semckd"])
@pytest.mark.parametrize("model_t, model_s", PAPER_PAIRS)
def test_one_epoch_on_each_paper_pair(tiny_cifar, teacher_file, tmp_path, method, model_t, model_s):
    # batch 24: 64 images end with a batch of 16, which SemCKD's attention (sized 24) takes zero-padded. The
    # teachers are random (a deep one's maps reach 1e5 without trained BatchNorms): a small learning rate keeps the
    # feature terms finite for the few steps
    summary = run_student(tiny_cifar, tmp_path, teacher_file(model_t), model_t, model_s, "--distill", method,
                          "--batch_size", "24", "--learning_rate", "1e-4")
    assert summary["method"] == method and 0 <= summary["best_acc"] <= 100
    best = load_checkpoint(os.path.join(summary["run"], f"{model_s}_best.pth"))
    assert is_simkd_state(best["model"]) == (method == "simkd")


def test_simkd_student_evaluates_and_exports_with_the_same_predictions(tiny_cifar, teacher_file, tmp_path, capsys):
    teacher = teacher_file("wrn_40_2")
    summary = run_student(tiny_cifar, tmp_path / "save", teacher, "wrn_40_2", "wrn_16_2", "--distill", "simkd")
    best = os.path.join(summary["run"], "wrn_16_2_best.pth")
    state = load_checkpoint(best)["model"]
    torch.testing.assert_close(state["classifier.weight"], load_checkpoint(teacher)["model"]["fc.weight"])

    out = tmp_path / "deploy" / "simkd.pth"
    export_student.main(["--path", best, "--format", "both", "--out", str(out), "--report"])
    printed = capsys.readouterr().out
    assert "SimKD student deploys as wrn_16_2 + its projector" in printed
    assert "| wrn_16_2 | student as trained (with projector and the teacher's classifier) |" in printed
    results = {path: evaluate_student.main(["--path", path, "--data_root", tiny_cifar, *QUIET])
               for path in (best, str(out), str(out.with_suffix(".onnx")))}
    for result in results.values():
        assert result["top1"] == summary["best_acc"] and result["model_s"] == "wrn_16_2"
        assert result["top5"] == results[best]["top5"]
        assert result["loss"] == pytest.approx(results[best]["loss"], rel=1e-4)

    from helper.teachers.loading import load_student
    trained, _ = load_student(model_dict, load_checkpoint(best), best)
    exported, _ = load_student(model_dict, load_checkpoint(str(out)), str(out))
    assert isinstance(trained, SimKDStudent) and isinstance(exported, SimKDStudent)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(x), trained.eval()(x), rtol=0, atol=0)

    # a SimKD student is no plain model for another run's teacher
    err = fails(train_cifar_student.main, ["--path_t", best, "--model_t", "wrn_16_2", "--model_s", "wrn_16_1",
                                           "--data_root", tiny_cifar, "--save_root", str(tmp_path / "other")], capsys)
    assert "is a SimKD student" in err


# ------------------------------------------------------------------ refusals and the summary
def test_simkd_refuses_a_teacher_whose_classifier_does_not_pool_its_last_map(tiny_cifar, teacher_file, tmp_path,
                                                                               capsys):
    argv = ["--path_t", teacher_file("MobileNetV2"), "--model_t", "MobileNetV2", "--model_s", "resnet8",
            "--distill", "simkd", "--data_root", tiny_cifar, "--save_root", str(tmp_path), "--num_workers", "0"]
    err = fails(train_cifar_student.main, argv, capsys)
    assert "--distill simkd cannot distill MobileNetV2 into resnet8" in err and "does not pool" in err


def test_semckd_refuses_a_batch_too_small_for_its_attention(tiny_cifar, teacher_file, tmp_path, capsys):
    argv = ["--path_t", teacher_file("resnet8"), "--model_t", "resnet8", "--model_s", "resnet8", "--distill",
            "semckd", "--batch_size", "2", "--data_root", tiny_cifar, "--save_root", str(tmp_path),
            "--num_workers", "0"]
    err = fails(train_cifar_student.main, argv, capsys)
    assert "--distill semckd cannot distill resnet8 into resnet8" in err and "too small" in err


def test_summary_settings_name_a_non_default_simkd_factor():
    config = {"gamma": 0.0, "alpha": 0.0, "beta": 1.0, "simkd_factor": 4}
    assert label_and_settings({"method": "simkd", "config": config}) == ("simkd", "r=0 a=0 b=1 f=4")
    config["simkd_factor"] = 2
    assert label_and_settings({"method": "simkd", "config": config}) == ("simkd", "r=0 a=0 b=1")


@pytest.mark.parametrize("method", ["simkd", "semckd"])
def test_interrupted_and_resumed_run_is_bit_identical(tiny_cifar, teacher_file, tmp_path, monkeypatch, capsys,
                                                      method):
    """The projector (inside SimKD's student) and SemCKD's attention resume exactly, mid-epoch."""
    from tests.test_resume import assert_same, interrupt_after

    teacher = teacher_file("resnet8")
    args = ["--path_t", teacher, "--model_t", "resnet8", "--model_s", "resnet8", "--distill", method, "--epochs", "2",
            "--batch_size", "24", "--num_workers", "0", "--seed", "7", "--deterministic", "--data_root", tiny_cifar]

    def final(save, *extra):
        summary = train_cifar_student.main([*args, "--save_root", str(save), *extra])
        ckpt = load_checkpoint(os.path.join(summary["run"], "resnet8_last.pth"))
        return ckpt["model"], ckpt["method"], ckpt["optimizer"]["state"]

    whole = final(tmp_path / "whole")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(SystemExit):
            final(tmp_path / "cut")
    capsys.readouterr()
    for got, expected in zip(final(tmp_path / "cut", "--resume"), whole):
        assert_same(got, expected)
    assert is_simkd_state(whole[0]) == (method == "simkd") and bool(whole[1]) == (method == "semckd")


def test_simkd_student_pools_by_a_python_size_restored_when_its_state_loads():
    # the forward reads no device value (a host sync per step on CUDA); a loaded state brings its own pool size
    from models.simkd import projector

    def student(pool_to):
        torch.manual_seed(0)
        return SimKDStudent(model_dict["resnet8x4"](num_classes=10), projector(256, 64, 2), nn.Linear(64, 10),
                            pool_to=pool_to)

    pooled, plain = student(4), student(0)
    assert (pooled.pool_size, plain.pool_size) == (4, 0)
    plain.load_state_dict(pooled.state_dict())
    assert plain.pool_size == 4
    x = torch.randn(2, 3, 32, 32)
    pooled.eval(), plain.eval()
    torch.testing.assert_close(plain(x), pooled(x))


def test_simkd_refuses_logit_standardization_in_one_line(tiny_cifar, tmp_path, teacher_file, capsys):
    err = fails(train_cifar_student.main, ["--path_t", teacher_file("resnet20"), "--model_t", "resnet20",
                                           "--model_s", "resnet8", "--data_root", tiny_cifar, "--save_root",
                                           str(tmp_path), "--distill", "simkd", "-a", "1", "--logit_standardize"],
                capsys)
    assert "--logit_standardize does not apply to --distill simkd" in err
    assert not (tmp_path / "student_model").exists()
