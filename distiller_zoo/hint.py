"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015).

L_hint = mean((r(f_s) - f_t)^2) on the maps at index --hint_layer, r = ConvReg (conv, BN, ReLU) onto the
teacher's shape.
"""
import torch.nn.functional as F
from torch import nn

from models.norm import probe_features
from .base import Distiller
from .registry import add_argument_once, register


class ConvReg(nn.Module):
    """Regress a student map (C_s, H_s, W_s) onto the teacher's (C_t, H_t, W_t): conv + BN (+ ReLU).

    H_s = 2 H_t: 3x3 stride-2 conv; 2 H_s = H_t: 4x4 stride-2 transposed conv; H_s >= H_t otherwise: an unpadded
    conv whose kernel (1 + H_s - H_t, 1 + W_s - W_t) shrinks the map to the teacher's size.
    """

    def __init__(self, s_shape, t_shape, relu=True):
        super().__init__()
        c_s, h_s, w_s = s_shape[-3:]
        c_t, h_t, w_t = t_shape[-3:]
        if h_s == 2 * h_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif 2 * h_s == h_t:
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(f"a student map of {c_s}x{h_s}x{w_s} cannot be regressed onto a teacher map of "
                             f"{c_t}x{h_t}x{w_t} (the student map is neither half the teacher's size nor larger)")
        self.bn = nn.BatchNorm2d(c_t)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


def hint_loss(regressed, target):
    """Mean squared error between the regressed student map and the teacher map."""
    return F.mse_loss(regressed, target)


@register("hint")
class FitNet(Distiller):
    """FitNet hint: beta * MSE(ConvReg(f_s[l]), f_t[l]), l = --hint_layer; RepDistiller's -a 0 -b 100."""

    needs_stages = True

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 100.0}

    def __init__(self, student, teacher, regressor, hint_layer=2, **weights):
        super().__init__(student, teacher, **weights)
        self.regressor = regressor
        self.hint_layer = hint_layer

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--hint_layer", type=int, default=2, choices=[0, 1, 2, 3, 4],
                          help="FitNet: index of the is_feat map used as the hint")

    @classmethod
    def build(cls, student, teacher, opt, data):
        feat_s = probe_features(student, data["image_size"], data["in_channels"])
        feat_t = probe_features(teacher, data["image_size"], data["in_channels"])
        layer = opt.hint_layer
        if not (0 <= layer < min(len(feat_s), len(feat_t))):
            raise ValueError(f"--hint_layer {layer} is out of range (student has {len(feat_s)} features, "
                             f"teacher {len(feat_t)})")
        f_s, f_t = feat_s[layer], feat_t[layer]
        if f_s.dim() != 4 or f_t.dim() != 4:
            raise ValueError(f"--hint_layer {layer} must name a spatial map in both networks (shapes "
                             f"{tuple(f_s.shape[1:])} and {tuple(f_t.shape[1:])})")
        return cls(student, teacher, ConvReg(f_s.shape, f_t.shape), layer, **cls.weights(opt))

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        layer = self.hint_layer
        return {"hint": self.beta * hint_loss(self.regressor(feat_s[layer]), feat_t[layer])}
