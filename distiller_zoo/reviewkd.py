"""ReviewKD: Chen et al., "Distilling Knowledge via Knowledge Review" (CVPR 2021).

The student's features feat[1:] (post-ReLU; the pooled vector as a 1x1 map) are fused from the deepest up by
attention-based fusion (ABF) and each fused map is matched to the teacher's pre-activation feature of the same level
by the hierarchical context loss (HCL):
L = gamma * CE + beta * min((epoch - 1) / warmup, 1) * sum_levels HCL(ABF_l, t_l),
HCL(s, t) = [MSE(s, t) + sum_k w_k MSE(pool_k(s), pool_k(t))] / (1 + sum_k w_k), pool_k = adaptive average pooling to
4x4, 2x2, 1x1, each only when smaller than the map, w_k = 1/2, 1/4, 1/8 in the order of the pools that are used.
Reference: dvlab-research/ReviewKD CIFAR-100 (`model/reviewkd.py`, `train.py`, `script/reviewKD.sh`), with the same
ABF and HCL as mdistiller's `distillers/ReviewKD.py`.
"""
import torch
import torch.nn.functional as F
from torch import nn

from helper.argtypes import non_negative_float
from models.norm import probe_features
from .base import Distiller
from .registry import add_argument_once, register

# The weights of the reference's script/reviewKD.sh, by (teacher, student); every other pair gets 5.0, the script's
# most common weight and the one mdistiller's port uses.
PAIR_WEIGHTS = {("resnet56", "resnet20"): 0.6, ("resnet110", "resnet32"): 1.0, ("resnet32x4", "ShuffleV2"): 8.0}
DEFAULT_WEIGHT = 5.0
MAX_MID_CHANNELS = 512  # the reference's cap on the ABFs' width: min(512, channels of the deepest student feature)


def as_map(feature):
    """A feature as a 4-d map: the pooled (N, C) vector becomes (N, C, 1, 1), as in the reference's models."""
    return feature[:, :, None, None] if feature.dim() == 2 else feature


class ABF(nn.Module):
    """Attention-based fusion of one student level with the residual from the deeper levels.

    conv1x1 + BN to `mid_channels`; then (except for the deepest level) the residual, nearest-resized to this map,
    is mixed in with a 2-channel sigmoid attention (conv1x1 over both); the result is nearest-resized to the teacher's
    size (it is also the residual handed to the next, shallower level) and mapped by conv3x3 + BN to the teacher's
    channels.
    """

    def __init__(self, in_channels, mid_channels, out_channels, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        # the reference's initialisation of the two convolutions (the attention conv keeps PyTorch's default)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, residual=None, out_size=None):
        """(output matched to the teacher, residual for the next level) of student map `x`."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def hcl_loss(student_maps, teacher_maps):
    """Hierarchical context loss summed over levels (see the module docstring for the formula)."""
    total = 0.0
    for f_s, f_t in zip(student_maps, teacher_maps):
        height = f_s.shape[2]
        loss = F.mse_loss(f_s, f_t)
        weight, weights_sum = 1.0, 1.0
        for size in (4, 2, 1):
            if size >= height:  # the reference skips pools that would not shrink the map
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size))
            weights_sum += weight
        total = total + loss / weights_sum
    return total


def review_warmup_factor(epoch, warmup):
    """The reference's min(e / warmup, 1) with its 0-based epoch e; our `epoch` counts from 1, so e = epoch - 1."""
    if warmup <= 0:
        return 1.0
    return min(max(epoch - 1, 0) / warmup, 1.0)


class ReviewFusion(nn.Module):
    """The ABFs of one pair, deepest level first, with the sizes each level works at."""

    def __init__(self, in_channels, out_channels, out_sizes):
        super().__init__()
        mid = min(MAX_MID_CHANNELS, in_channels[-1])
        levels = len(in_channels)
        # built shallow-to-deep as in the reference, then stored deepest first (its `abfs[::-1]`)
        abfs = [ABF(c_in, mid, c_out, fuse=i < levels - 1)
                for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))]
        self.abfs = nn.ModuleList(abfs[::-1])
        self.out_sizes = [tuple(size) for size in out_sizes[::-1]]

    def forward(self, student_maps):
        """Fused student maps, shallowest first (the order of the teacher's feat[1:]), from shallow-first maps."""
        maps = student_maps[::-1]
        out, residual = self.abfs[0](maps[0], out_size=self.out_sizes[0])
        results = [out]
        for x, abf, out_size in zip(maps[1:], self.abfs[1:], self.out_sizes[1:]):
            out, residual = abf(x, residual, out_size)
            results.insert(0, out)
        return results


@register("reviewkd")
class ReviewKD(Distiller):
    """ReviewKD: ABF-fused student features feat[1:] matched by HCL to the teacher's pre-activation feat[1:].

    -b is the HCL weight, the reference script's per pair (0.6 for resnet56->resnet20, 8 for resnet32x4->ShuffleV2,
    1 for resnet110->resnet32, else 5); the weight ramps up over --reviewkd_warmup epochs, 0 in the first epoch as in
    the reference. No KD by default (the reference's --use-kl is off; -a turns it on).
    """

    needs_stages = True

    preact = False          # the student's features after the ReLU, as the reference's `is_feat=True`
    teacher_preact = True   # the teacher's before it (`preact=True`)
    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": DEFAULT_WEIGHT}

    def __init__(self, student, teacher, fusion, warmup=20.0, **weights):
        super().__init__(student, teacher, **weights)
        self.fusion = fusion
        self.warmup = warmup
        self.warmup_factor = review_warmup_factor(1, warmup)

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--reviewkd_warmup", type=non_negative_float, default=20.0,
                          help="ReviewKD: epochs over which the HCL weight ramps up linearly (0 = none)")

    @classmethod
    def weights(cls, opt):
        chosen = super().weights(opt)
        if getattr(opt, "beta", None) is None:
            pair = (getattr(opt, "model_t", None), getattr(opt, "model_s", None))
            chosen["beta"] = PAIR_WEIGHTS.get(pair, DEFAULT_WEIGHT)
        return chosen

    @classmethod
    def build(cls, student, teacher, opt, data):
        feat_s = [as_map(f) for f in probe_features(student, data["image_size"], data["in_channels"])[1:]]
        feat_t = [as_map(f) for f in probe_features(teacher, data["image_size"], data["in_channels"])[1:]]
        if len(feat_s) != len(feat_t):
            raise ValueError(f"ReviewKD pairs feat[1:] level by level, but the student has {len(feat_s)} levels and "
                             f"the teacher {len(feat_t)}")
        if feat_s[-1].shape[-2:] != (1, 1) or feat_t[-1].shape[-2:] != (1, 1):
            raise ValueError("ReviewKD needs the pooled vector as the last feature of both networks")
        warmup = getattr(opt, "reviewkd_warmup", 20.0)
        if warmup < 0:
            raise ValueError(f"--reviewkd_warmup must be >= 0, got {warmup}")
        fusion = ReviewFusion([f.shape[1] for f in feat_s], [f.shape[1] for f in feat_t],
                              [f.shape[-2:] for f in feat_t])
        return cls(student, teacher, fusion, warmup, **cls.weights(opt))

    def set_epoch(self, epoch):
        self.warmup_factor = review_warmup_factor(epoch, self.warmup)

    def logged_scalars(self):
        """The epoch's warm-up factor on the HCL weight."""
        return {"reviewkd_warmup": self.warmup_factor}

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        fused = self.fusion([as_map(f) for f in feat_s[1:]])
        loss = hcl_loss(fused, [as_map(f) for f in feat_t[1:]])
        return {"reviewkd": loss * self.warmup_factor * self.beta}  # the reference's order of factors
