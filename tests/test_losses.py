"""Golden values of the NORM, KD and CRD losses against hand computation, and NORM's copy-free form."""
import math

import pytest
import torch
import torch.nn.functional as F

from distiller_zoo.base import kd_loss, normalize_logits
from distiller_zoo.crd import ContrastMemory, Embed, nce_loss
from distiller_zoo.norm import norm_loss, norm_schedule_weight


def test_norm_loss_single_channel_by_hand():
    e = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)          # N = 2 groups of C_t = 1
    t = torch.tensor([2.0]).view(1, 1, 1, 1)
    # N * mean over the 2 tiled elements of (1-2)^2, (3-2)^2 = 2 * 1
    assert norm_loss(e, t).item() == pytest.approx(2.0)


def test_norm_loss_uses_block_tiling_not_interleaving():
    e = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)  # N = 2, C_t = 2
    t = torch.tensor([1.0, 5.0]).view(1, 2, 1, 1)
    # block tile [1,5,1,5]: squared diffs 0,9,4,1 -> mean 3.5 -> x2 = 7 (interleaved [1,1,5,5] would give 3)
    assert norm_loss(e, t).item() == pytest.approx(7.0)


def test_norm_loss_max_pools_the_larger_teacher_map():
    e = torch.zeros(1, 1, 1, 1)
    t = torch.tensor([[1.0, -2.0], [0.5, 3.0]]).view(1, 1, 2, 2)
    assert norm_loss(e, t).item() == pytest.approx(9.0)   # max-pooled to 3, (0-3)^2, N = 1


def test_norm_loss_max_pools_the_larger_student_map():
    e = torch.tensor([[1.0, -2.0], [0.5, 3.0]]).view(1, 1, 2, 2)
    t = torch.ones(1, 1, 1, 1)
    assert norm_loss(e, t).item() == pytest.approx(4.0)   # student pooled to 3, (3-1)^2


@pytest.mark.parametrize("n,c_t,hw", [(8, 4, 3), (3, 5, 2), (1, 6, 4)])
def test_norm_loss_equals_official_tile_then_mse_in_value_and_gradient(n, c_t, hw):
    g = torch.Generator().manual_seed(0)
    e = torch.randn(3, n * c_t, hw, hw, generator=g, requires_grad=True)
    t = torch.randn(3, c_t, hw, hw, generator=g)
    ours = norm_loss(e, t)
    (grad_ours,) = torch.autograd.grad(ours, e)
    official = n * F.mse_loss(e, t.repeat(1, n, 1, 1))
    (grad_official,) = torch.autograd.grad(official, e)
    torch.testing.assert_close(ours, official)
    torch.testing.assert_close(grad_ours, grad_official)


def test_norm_loss_accepts_channels_last():
    e = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    t = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(norm_loss(e, t), 2 * F.mse_loss(e, t.repeat(1, 2, 1, 1)))


def test_kd_loss_by_hand():
    # p_t = softmax([2 ln 3, 0] / 2) = (3/4, 1/4), p_s = (1/2, 1/2): KL = .75 ln 1.5 + .25 ln .5
    z_t = torch.tensor([[2 * math.log(3.0), 0.0]])
    z_s = torch.zeros(1, 2)
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert kd_loss(z_s, z_t, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_averages_over_batch_and_sums_over_classes():
    z_t = torch.tensor([[2 * math.log(3.0), 0.0], [0.0, 0.0]])
    z_s = torch.zeros(2, 2)
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2  # second sample has KL 0
    assert kd_loss(z_s, z_t, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_logit_layer_norm_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    out = normalize_logits(z, 2.5)
    std = math.sqrt(2 / 3 + 1e-7)   # biased variance over the classes
    torch.testing.assert_close(out, torch.tensor([[-2.5 / std, 0.0, 2.5 / std]]))
    assert normalize_logits(z, 0) is z


def test_nce_loss_by_hand():
    scores = torch.tensor([[1.0, 0.5, 0.25]])  # positive then m = 2 negatives, n_data = 4 -> m*Pn = 0.5
    positive = math.log(1.0 / 1.5)
    negatives = math.log(0.5 / 1.0) + math.log(0.5 / 0.75)
    assert nce_loss(scores, n_data=4).item() == pytest.approx(-(positive + negatives), rel=1e-5)


def test_embed_is_unit_norm():
    out = Embed(6, 4)(torch.randn(3, 6, 1, 1))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_contrast_memory_scores_and_momentum_update():
    torch.manual_seed(0)
    mem = ContrastMemory(feat_dim=4, n_data=10, k=3, temperature=0.5, momentum=0.5)
    emb_s = F.normalize(torch.randn(2, 4), dim=1)
    emb_t = F.normalize(torch.randn(2, 4), dim=1)
    index = torch.tensor([1, 7])
    contrast = torch.tensor([[1, 2, 3, 4], [7, 0, 5, 9]])
    memory_s, memory_t = mem.memory_s.clone(), mem.memory_t.clone()
    scores_s, scores_t = mem(emb_s, emb_t, index, contrast)
    raw_s = torch.exp((memory_t[contrast] * emb_s[:, None]).sum(-1) / 0.5)
    raw_t = torch.exp((memory_s[contrast] * emb_t[:, None]).sum(-1) / 0.5)
    z_s, z_t = raw_s.mean() * 10, raw_t.mean() * 10   # Z estimated on the first batch
    torch.testing.assert_close(scores_s, raw_s / z_s)
    torch.testing.assert_close(scores_t, raw_t / z_t)
    expected = F.normalize(memory_s[index] * 0.5 + emb_s * 0.5, dim=1)
    torch.testing.assert_close(mem.memory_s[index], expected)
    untouched = [i for i in range(10) if i not in (1, 7)]
    torch.testing.assert_close(mem.memory_s[untouched], memory_s[untouched])
    mem(emb_s, emb_t, index, contrast)
    assert mem.z_s.item() == pytest.approx(z_s.item())  # not re-estimated


# Our epoch e (1..240) is the official epoch e-1 (0..239): 0.1 for official 0-9, 0.5 for 10-19, 1.0 for 20-179, ...
@pytest.mark.parametrize("epoch,weight", [(1, 0.1), (10, 0.1), (11, 0.5), (20, 0.5), (21, 1.0), (180, 1.0),
                                          (181, 0.5), (210, 0.5), (211, 0.1), (240, 0.1)])
def test_official_cifar_norm_schedule(epoch, weight):
    assert norm_schedule_weight(epoch, 240, "cifar") == weight


@pytest.mark.parametrize("epoch,weight", [(1, 0.1), (5, 0.1), (6, 0.5), (15, 0.5), (16, 0.9), (60, 0.9),
                                          (61, 0.5), (80, 0.5), (81, 0.1), (100, 0.1)])
def test_official_imagenet_norm_schedule(epoch, weight):
    assert norm_schedule_weight(epoch, 100, "imagenet") == weight


def test_norm_schedule_scales_with_run_length():
    # 120 epochs: our epoch e is official epoch (e-1)*2, so the 0.1 warm-up lasts 5 epochs, then 0.5 for 5
    assert [norm_schedule_weight(e, 120, "cifar") for e in (1, 5, 6, 10, 11)] == [0.1, 0.1, 0.5, 0.5, 1.0]
    assert norm_schedule_weight(1, 2, "cifar") == 0.1   # even a 2-epoch run starts with the warm-up weight
