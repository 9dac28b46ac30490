"""DKD: Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022), as mdistiller's `dkd_loss` and CIFAR-100 configs.

With b = (p_target, sum of the other p) and p = softmax(z / T), and p^ = softmax(z / T - 1000 * onehot(y)):
L_dkd = min(epoch / warmup, 1) * [alpha * T^2 KL(b_t || b_s) + beta * T^2 KL(p^_t || p^_s)], each KL summed and
divided by the batch. The epoch counts from 1 (mdistiller's first epoch is 1), so the first epoch has 1/warmup.
With --logit_standardize (Sun et al. 2024) the logits are z-scored first, T is the base temperature and alpha, beta
are multiplied by the weight w, as that reference does.
"""
import torch
import torch.nn.functional as F

from helper.argtypes import non_negative_float, non_negative_int, positive_float
from .base import Distiller
from .logit_standard import LS_DKD, add_ls_arguments, logit_standardize_on, ls_settings, standardize
from .registry import add_argument_once, register

# beta (the NCKD weight) of mdistiller's configs/cifar100/dkd/*.yaml; every other pair takes the default 8
DKD_BETA = {("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0, ("vgg13", "vgg8"): 6.0,
            ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0, ("vgg13", "MobileNetV2"): 6.0}
DKD_DEFAULT_BETA = 8.0
# mdistiller's configs/imagenet/{r34_r18,r50_mv1}/dkd.yaml: beta per pair (0.5 for any other), T 1, warm-up 1 epoch
DKD_BETA_IMAGENET = {("resnet34", "resnet18"): 0.5, ("resnet34", "resnet18S"): 0.5, ("resnet50", "MobileNet"): 2.0}
DKD_IMAGENET = {"beta": 0.5, "T": 1.0, "warmup": 1}
DKD_CIFAR = {"T": 4.0, "warmup": 20}


def _imagenet(opt):
    """Whether the run is on ImageNet (mdistiller's ImageNet configs apply)."""
    return getattr(opt, "dataset", None) == "imagenet"


def _binary(probs, gt_mask, other_mask):
    """(B, 2): the target-class probability and the sum of the others (mdistiller's cat_mask)."""
    return torch.cat([(probs * gt_mask).sum(1, keepdim=True), (probs * other_mask).sum(1, keepdim=True)], dim=1)


def dkd_loss(student_logits, teacher_logits, targets, alpha, beta, temperature, logit_stand=False):
    """alpha * TCKD + beta * NCKD, each T^2 * summed KL / batch (no warm-up factor)."""
    if logit_stand:
        student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
    gt_mask = torch.zeros_like(student_logits).scatter_(1, targets.reshape(-1, 1), 1).bool()
    other_mask = torch.ones_like(student_logits).scatter_(1, targets.reshape(-1, 1), 0).bool()
    b_s = _binary(F.softmax(student_logits / temperature, dim=1), gt_mask, other_mask)
    b_t = _binary(F.softmax(teacher_logits / temperature, dim=1), gt_mask, other_mask)
    batch = targets.shape[0]
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature ** 2 / batch
    log_q_s = F.log_softmax(student_logits / temperature - 1000.0 * gt_mask, dim=1)
    q_t = F.softmax(teacher_logits / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * temperature ** 2 / batch
    return alpha * tckd + beta * nckd


@register("dkd")
class DKD(Distiller):
    """Decoupled KD on the logits: CE + warm-up * (alpha TCKD + beta NCKD); -b is beta (mdistiller's per pair).

    CIFAR: T 4, a 20-epoch warm-up, beta 8/6/2 by pair; ImageNet (--dataset imagenet): T 1, a 1-epoch warm-up, beta
    0.5 (resnet34->resnet18) or 2 (resnet50->MobileNet), as mdistiller's configs.
    """

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": DKD_DEFAULT_BETA}
    losses_in_float32 = False  # it casts the two logit tensors it uses, not every feature map
    needs_targets = True
    kd_style_terms = True

    def __init__(self, student, teacher, dkd_alpha=1.0, dkd_T=4.0, warmup=20, ls_weight=None, **weights):
        super().__init__(student, teacher, **weights)
        self.dkd_alpha, self.dkd_T, self.warmup, self.ls_weight = dkd_alpha, dkd_T, warmup, ls_weight
        self.epoch = 1  # the reference's epochs count from 1

    @classmethod
    def add_arguments(cls, parser):
        """DKD's flags and those of --logit_standardize."""
        # defaults None (resolved in build): runs from before these flags existed resume unchanged
        add_argument_once(parser, "--dkd_alpha", type=non_negative_float, default=None,
                          help="DKD: weight of the target-class term TCKD (default 1; -b is NCKD's beta)")
        add_argument_once(parser, "--dkd_T", type=positive_float, default=None,
                          help="DKD temperature (default 4; ImageNet 1)")
        add_argument_once(parser, "--dkd_warmup", type=non_negative_int, default=None,
                          help="DKD: epochs of the linear warm-up of its term, counted from epoch 1 (default 20; "
                               "ImageNet 1; 0: none)")
        add_ls_arguments(parser)

    @classmethod
    def weights(cls, opt):
        """The base weights with beta = mdistiller's for the pair (DKD+LS's under --logit_standardize)."""
        chosen = super().weights(opt)
        pair = (getattr(opt, "model_t", None), getattr(opt, "model_s", None))
        if getattr(opt, "beta", None) is None:
            chosen["beta"] = (DKD_BETA_IMAGENET.get(pair, DKD_IMAGENET["beta"]) if _imagenet(opt)
                              else DKD_BETA.get(pair, DKD_DEFAULT_BETA))
            if logit_standardize_on(opt):
                chosen["beta"] = (ls_settings(opt, LS_DKD)[2:] or (chosen["beta"],))[0]
        return chosen

    @classmethod
    def build(cls, student, teacher, opt, data):
        """DKD with its flags, or the dataset's reference defaults where they are not given."""
        weights = cls.weights(opt)
        ls_weight = None
        if weights.get("logit_standardize"):
            weights["ls_T"], ls_weight = ls_settings(opt, LS_DKD)[:2]
        given = {k: getattr(opt, k, None) for k in ("dkd_alpha", "dkd_T", "dkd_warmup")}
        default = DKD_IMAGENET if _imagenet(opt) else DKD_CIFAR
        return cls(student, teacher, dkd_alpha=1.0 if given["dkd_alpha"] is None else given["dkd_alpha"],
                   dkd_T=default["T"] if given["dkd_T"] is None else given["dkd_T"],
                   warmup=default["warmup"] if given["dkd_warmup"] is None else given["dkd_warmup"],
                   ls_weight=ls_weight, **weights)

    def set_epoch(self, epoch):
        """Remember the epoch (1-based) for the warm-up."""
        self.epoch = epoch

    def warmup_factor(self):
        """min(epoch / warmup, 1), the reference's linear warm-up (1 without one)."""
        return min(self.epoch / self.warmup, 1.0) if self.warmup else 1.0

    def logged_scalars(self):
        """The epoch's warm-up factor of the DKD term."""
        return {"dkd_warmup": self.warmup_factor()}

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index, targets=None):
        """{'dkd': warm-up * (alpha TCKD + beta NCKD)} on the raw (or standardized) logits, in float32."""
        if self.logit_standardize:  # the reference multiplies alpha and beta by w and uses the base temperature
            alpha, beta, temperature = self.dkd_alpha * self.ls_weight, self.beta * self.ls_weight, self.ls_T
        else:
            alpha, beta, temperature = self.dkd_alpha, self.beta, self.dkd_T
        with torch.autocast(logits_s.device.type, enabled=False):
            loss = dkd_loss(logits_s.float(), logits_t.float(), targets, alpha, beta, temperature,
                            self.logit_standardize)
        return {"dkd": self.warmup_factor() * loss}
