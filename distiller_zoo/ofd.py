"""OFD: Heo et al., "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019).

On the pre-ReLU stage maps feat[1:-1] (the last n common to both networks), with r_i a connector (conv1x1 + BN onto
the teacher's channels), t_i the teacher map average-pooled to the student's size and m the per-channel margin
E[x | x < 0] of x ~ N(beta, gamma^2) from the teacher's BatchNorm before that ReLU:
L_ofd = sum_i 2^-(n-1-i) / B * sum_{b,c,h,w} (r_i(s) - max(t_i, m))^2 [r_i(s) > max(t_i, m) or t_i > 0],
the "partial L2" (no loss where the student is already below a teacher value that the ReLU cuts off), and
L = gamma * CE + beta * L_ofd with beta = 1e-3, the reference's sum / batch / 1000.
Reference: clovaai/overhaul-distillation `CIFAR-100/distiller.py` and its port on RepDistiller's models,
mdistiller `distillers/OFD.py` (feature choice, stage alignment, teacher maps pooled to the student's size).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.norm import probe_features
from .base import Distiller
from .registry import register


def normal_cdf(x):
    """Phi(x) of the standard normal distribution (scipy's norm.cdf, from the error function)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def bn_margin(weight, bias):
    """Per-channel margin E[x | x < 0] for x ~ N(bias, weight^2), as a float32 vector (the reference's arithmetic).

    It is -|w| phi(b/|w|) / Phi(-b/|w|) + b, or -3 |w| where Phi(-b/|w|) <= 1e-3 (almost no mass below zero). A
    channel with w = 0, where the reference divides by zero, gets the limit of the formula, min(b, 0).
    """
    margins = []
    for w, b in zip(weight.detach().cpu().tolist(), bias.detach().cpu().tolist()):
        s = abs(w)
        if s == 0.0:
            margins.append(min(b, 0.0))
            continue
        mass_below = normal_cdf(-b / s)
        if mass_below > 0.001:
            margins.append(-s * math.exp(-(b / s) ** 2 / 2) / math.sqrt(2 * math.pi) / mass_below + b)
        else:
            margins.append(-3 * s)
    return torch.tensor(margins, dtype=torch.float32)


def partial_l2(source, target, margin):
    """Partial L2 of one stage summed over C, H, W and averaged over the batch (margin shaped (C,) or (1, C, 1, 1))."""
    target = torch.max(target, margin.view(1, -1, 1, 1).to(target))
    mask = (source > target) | (target > 0)
    return ((source - target).pow(2) * mask).sum() / source.shape[0]


def ofd_loss(student_maps, teacher_maps, margins):
    """Stage-weighted partial L2: stage i of n weighs 1 / 2^(n-1-i); teacher maps pooled to the student's size."""
    n = len(student_maps)
    total = 0.0
    for i, (f_s, f_t, margin) in enumerate(zip(student_maps, teacher_maps, margins)):
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[-2:])
        total = total + partial_l2(f_s, f_t, margin) / 2 ** (n - i - 1)
    return total


def connector(s_channels, t_channels):
    """conv1x1 (no bias) + BN onto the teacher's channels, initialised as the reference: N(0, 2/C_t), BN 1 and 0."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))
    bn = nn.BatchNorm2d(t_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


@register("ofd")
class OFD(Distiller):
    """OFD: connectors on the student's pre-ReLU stages, partial L2 to the teacher's with BN margins; -b 1e-3."""

    needs_stages = True

    preact = True
    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1e-3}

    def __init__(self, student, teacher, connectors, margins, **weights):
        super().__init__(student, teacher, **weights)
        self.connectors = connectors
        # derived from the teacher, so kept out of checkpoints (persistent=False); buffers follow .to(device)
        for i, margin in enumerate(margins):
            self.register_buffer(f"margin{i}", margin.view(1, -1, 1, 1), persistent=False)
        self.stages = len(margins)

    @classmethod
    def build(cls, student, teacher, opt, data):
        feat_s = probe_features(student, data["image_size"], data["in_channels"])[1:-1]
        feat_t = probe_features(teacher, data["image_size"], data["in_channels"])[1:-1]
        try:
            bns = list(teacher.get_bn_before_relu())
        except (AttributeError, NotImplementedError):
            raise ValueError(f"OFD takes its margins from the teacher's BatchNorms before each ReLU, and "
                             f"{type(teacher).__name__} has none (get_bn_before_relu)") from None
        if len(bns) != len(feat_t):
            raise ValueError(f"the teacher has {len(feat_t)} stage maps but {len(bns)} BatchNorms before ReLUs")
        n = min(len(feat_s), len(feat_t))  # the last n stages of each, as mdistiller's _align_list
        feat_s, feat_t, bns = feat_s[-n:], feat_t[-n:], bns[-n:]
        for f_s, f_t, bn in zip(feat_s, feat_t, bns):
            if f_s.dim() != 4 or f_t.dim() != 4:
                raise ValueError("OFD needs spatial maps at feat[1:-1] of both networks")
            if bn.num_features != f_t.shape[1]:
                raise ValueError(f"a teacher map has {f_t.shape[1]} channels but its BatchNorm {bn.num_features}")
        connectors = nn.ModuleList(connector(f_s.shape[1], f_t.shape[1]) for f_s, f_t in zip(feat_s, feat_t))
        margins = [bn_margin(bn.weight, bn.bias) for bn in bns]
        return cls(student, teacher, connectors, margins, **cls.weights(opt))

    def margins(self):
        """The per-stage margins, each (1, C_t, 1, 1)."""
        return [getattr(self, f"margin{i}") for i in range(self.stages)]

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        n = self.stages
        g_s = [connect(f) for connect, f in zip(self.connectors, feat_s[1:-1][-n:])]
        return {"ofd": self.beta * ofd_loss(g_s, feat_t[1:-1][-n:], self.margins())}
