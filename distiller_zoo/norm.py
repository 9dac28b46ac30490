"""NORM: Liu et al., "Norm: Knowledge Distillation via N-to-One Representation Matching" (ICLR 2023).

L_norm = sum_{i=1..N} mean((e_i - f_t)^2), where e = expand(f_s) is split into N contiguous groups of C_t
channels; equal to N * MSE(e, tile_N(f_t)) of the official code, without materialising the N copies.
"""
import torch
import torch.nn.functional as F

from models.norm import attach_feature_transform, matched_feature, probe_features
from helper.argtypes import non_negative_float
from .base import Distiller
from helper.errors import UsageError
from .compose import Combination, beta_text
from .crd import CRD
from .registry import add_argument_once, register

# β1 of the official code as (first epoch of a phase, weight) on its 240-epoch CIFAR / 100-epoch ImageNet runs.
OFFICIAL_NORM_SCHEDULES = {
    "cifar": (240, [(0, 0.1), (10, 0.5), (20, 1.0), (180, 0.5), (210, 0.1)]),
    "imagenet": (100, [(0, 0.1), (5, 0.5), (15, 0.9), (60, 0.5), (80, 0.1)]),
}


def norm_schedule_weight(epoch, epochs, kind="cifar"):
    """Official β1 for our `epoch` (1..epochs), i.e. the official epoch epoch-1 (its loop starts at 0).

    The phase boundaries scale with `epochs`; at the official length the phases last exactly as long as there.
    """
    length, phases = OFFICIAL_NORM_SCHEDULES[kind]
    official_epoch = (epoch - 1) * length / epochs
    weight = phases[0][1]
    for start, value in phases:
        if official_epoch >= start:
            weight = value
    return weight


def expansion_factor(text):
    """argparse type of N: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


expansion_factor.__name__ = "N (an integer >= 1)"  # argparse puts this name in its error message


def match_spatial(student, teacher):
    """Max-pool whichever map is larger by the integer ratio of their heights (CIFAR pools the teacher)."""
    hs, ht = student.shape[-1], teacher.shape[-1]
    if ht > hs:
        teacher = F.max_pool2d(teacher, ht // hs, ht // hs)
    elif hs > ht:
        student = F.max_pool2d(student, hs // ht, hs // ht)
    return student, teacher


def norm_loss(expanded, teacher_feature):
    """Sum over the N channel groups of expanded (B, N*C_t, H, W) of their MSE to teacher_feature (B, C_t, H, W)."""
    # float32 under autocast too: the loss is a small difference of large, many-element sums
    expanded, teacher_feature = match_spatial(expanded.float(), teacher_feature.float())
    c_t = teacher_feature.shape[1]
    if expanded.shape[1] % c_t:
        raise ValueError(f"student feature has {expanded.shape[1]} channels, not a multiple of the teacher's {c_t}")
    n = expanded.shape[1] // c_t
    # Group along the channel dim of the map's memory order, so that the gradient comes back in the map's own layout:
    # a channels_last map given an NCHW gradient sends its BatchNorm backward to a path ~10x slower on CPU.
    # The teacher map is put in the same layout (a copy only when they differ). mse_loss: one fused backward kernel.
    dim = 3 if _is_channels_last(expanded) else 1
    if dim == 3:
        expanded, teacher_feature = expanded.permute(0, 2, 3, 1), teacher_feature.permute(0, 2, 3, 1)
    groups = expanded.unflatten(dim, (n, c_t))
    target = teacher_feature.contiguous().unsqueeze(dim).expand_as(groups)
    return n * F.mse_loss(groups, target)


def _is_channels_last(x):
    """A 4-d tensor laid out NHWC in memory (and not also NCHW-contiguous, as 1x1 maps are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


@register("NORM")
class NORM(Distiller):
    """N-to-one representation matching of the student's transformed last feature map (+ KD when -a > 0)."""

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    default_logit_scale = 2.5
    losses_in_float32 = False  # norm_loss casts the one map it uses (and CRD its scores): no copies of the rest

    def __init__(self, student, teacher, schedule="official", schedule_kind="cifar", epochs=240, **weights):
        super().__init__(student, teacher, **weights)
        self.schedule, self.schedule_kind, self.epochs = schedule, schedule_kind, epochs
        self.schedule_weight = 1.0

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "-s", "--co-sponge", dest="co_sponge", type=expansion_factor, default=8,
                          help="N, the expansion factor of the feature transform (paper: N; default 8)")
        add_argument_once(parser, "--ft", choices=["residual", "plain", "none"], default="residual",
                          help="student feature transform: residual (default FT), plain (no identity), none")
        add_argument_once(parser, "--norm_schedule", choices=["official", "constant"], default="official",
                          help="official: the β1 warm-up/cool-down on the NORM weight; constant: β1 = 1")

    @staticmethod
    def attach_transform(student, teacher, opt, data):
        """Give the student its FT, sized by the teacher's matched channels read from a probe forward."""
        size, channels = data["image_size"], data["in_channels"]
        f_t = matched_feature(probe_features(teacher, size, channels))
        attach_feature_transform(student, f_t.shape[1], opt.co_sponge, opt.ft)
        f_s = matched_feature(probe_features(student, size, channels))
        if f_s.shape[1] != opt.co_sponge * f_t.shape[1]:
            raise ValueError(f"with --ft {opt.ft} the student feature has {f_s.shape[1]} channels, not "
                             f"N*C_t = {opt.co_sponge}*{f_t.shape[1]}; use --ft residual or plain")
        big, small = max(f_s.shape[-1], f_t.shape[-1]), min(f_s.shape[-1], f_t.shape[-1])
        if big % small:
            raise ValueError(f"feature maps of {f_s.shape[-1]} and {f_t.shape[-1]} pixels cannot be max-pooled "
                             "to the same size")

    @staticmethod
    def schedule_options(opt, data):
        """Arguments of the β1 schedule."""
        return {"schedule": opt.norm_schedule, "schedule_kind": data.get("schedule_kind", "cifar"),
                "epochs": opt.epochs}

    @classmethod
    def build(cls, student, teacher, opt, data):
        cls.attach_transform(student, teacher, opt, data)
        return cls(student, teacher, **cls.schedule_options(opt, data), **cls.weights(opt))

    def set_epoch(self, epoch):
        if self.schedule == "official":
            self.schedule_weight = norm_schedule_weight(epoch, self.epochs, self.schedule_kind)

    def logged_scalars(self):
        """The epoch's beta1 (the NORM loss weight from the schedule), for the logs and the run history."""
        return {"beta1": self.schedule_weight}

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        loss = norm_loss(matched_feature(feat_s), matched_feature(feat_t))
        return {"norm": self.beta * self.schedule_weight * loss}


@register("NORM_CRD")
class NORMCRD(Combination):
    """The official NORM+CRD: `NORM+crd` whose CRD weight is --crd_weight (2.5, the official code's reuse of -c).

    Its weights are NORM's (-b is the NORM weight alone), so its run folder keeps its name; the CRD module keeps
    the name `crd`, so its checkpoints keep their layout.
    """

    parts = (NORM, CRD)

    @classmethod
    def add_arguments(cls, parser):
        super().add_arguments(parser)
        add_argument_once(parser, "--crd_weight", type=non_negative_float, default=2.5,
                          help="weight of the CRD term in NORM_CRD (the official code reuses -c, 2.5)")

    @classmethod
    def given_betas(cls, opt):
        beta = getattr(opt, "beta", None)
        if isinstance(beta, (tuple, str)):
            raise UsageError(f"--distill NORM_CRD takes one -b (the NORM weight) and the CRD weight from "
                             f"--crd_weight; for one -b per part write --distill NORM+crd -b {beta_text(beta)}")
        return [beta, getattr(opt, "crd_weight", 2.5)]

    @classmethod
    def weights(cls, opt):
        cls.given_betas(opt)
        return NORM.weights(opt)
