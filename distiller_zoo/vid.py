"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019).

L_vid = sum_l mean(0.5 * ((mu_l(f_s^l) - f_t^l)^2 / sigma_l^2 + log sigma_l^2)) on feat[1:-1]: a Gaussian with a
1x1-conv regressed mean and a learned per-channel variance sigma^2 = softplus(v) + 1e-5 (initially 5); the larger
map is average-pooled to the smaller one's size first.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.norm import probe_features
from .attention import pool_to_smaller
from .base import Distiller
from .registry import register


class VIDRegressor(nn.Module):
    """Gaussian predictor of one teacher map: mean from three 1x1 convs (ReLU between), variance learned per channel."""

    def __init__(self, c_in, c_mid, c_out, init_var=5.0, eps=1e-5):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(c_in, c_mid, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_out, kernel_size=1, bias=False),
        )
        # softplus^-1(init_var - eps), so that the initial variance is exactly init_var
        self.log_scale = nn.Parameter(torch.full((c_out,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def variance(self):
        """Per-channel predicted variance."""
        return F.softplus(self.log_scale) + self.eps

    def forward(self, f_s, f_t):
        f_s, f_t = pool_to_smaller(f_s, f_t)
        var = self.variance().view(1, -1, 1, 1)
        return (0.5 * ((self.mean(f_s) - f_t).pow(2) / var + var.log())).mean()


@register("vid")
class VID(Distiller):
    """VID with one regressor per intermediate map (student C_s -> C_t -> C_t); RepDistiller's -a 0 -b 1."""

    needs_stages = True

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}

    def __init__(self, student, teacher, regressors, **weights):
        super().__init__(student, teacher, **weights)
        self.regressors = regressors

    @classmethod
    def build(cls, student, teacher, opt, data):
        feat_s = probe_features(student, data["image_size"], data["in_channels"])[1:-1]
        feat_t = probe_features(teacher, data["image_size"], data["in_channels"])[1:-1]
        regressors = nn.ModuleList(VIDRegressor(s.shape[1], t.shape[1], t.shape[1]) for s, t in zip(feat_s, feat_t))
        return cls(student, teacher, regressors, **cls.weights(opt))

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        loss = sum(reg(s, t) for reg, s, t in zip(self.regressors, feat_s[1:-1], feat_t[1:-1]))
        return {"vid": self.beta * loss}
