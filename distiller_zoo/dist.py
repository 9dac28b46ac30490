"""DIST: Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022), as hunto/
image_classification_sota `lib/models/losses/dist_kd.py` with its CIFAR config (`kd: dist_t4`, KD weight 2).

With p = softmax(z / tau) and rho the Pearson correlation (cosine of the centred vectors, eps 1e-8 added to the
product of the norms):
L_dist = beta_inter * tau^2 * (1 - mean_i rho(p_s[i, :], p_t[i, :])) + gamma_intra * tau^2 * (1 - mean_c rho(p_s[:, c],
p_t[:, c])), weighted by -b (2). With --logit_standardize the logits are z-scored first, tau is the base temperature
and the weight defaults to w (the reference has no DIST+LS: this follows what it does for KD).
"""
import torch

from helper.argtypes import non_negative_float, positive_float
from .base import Distiller
from .logit_standard import LS_KD, add_ls_arguments, logit_standardize_on, ls_settings, standardize
from .registry import add_argument_once, register


def pearson_rows(a, b, eps=1e-8):
    """Per row, the Pearson correlation of a[i] and b[i] (the reference's cosine of the mean-centred rows)."""
    a = a - a.mean(1).unsqueeze(1)
    b = b - b.mean(1).unsqueeze(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits, teacher_logits, tau=4.0, inter=1.0, intra=1.0, logit_stand=False):
    """inter * tau^2 (1 - mean row correlation) + intra * tau^2 (1 - mean column correlation) of the softmaxes."""
    if logit_stand:
        student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
    y_s = (student_logits / tau).softmax(dim=1)
    y_t = (teacher_logits / tau).softmax(dim=1)
    inter_loss = tau ** 2 * (1 - pearson_rows(y_s, y_t).mean())
    intra_loss = tau ** 2 * (1 - pearson_rows(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean())
    return inter * inter_loss + intra * intra_loss


@register("dist")
class DIST(Distiller):
    """DIST on the logits: CE + 2 * (inter-class + intra-class relation loss) at tau 4; -b is the weight 2."""

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 2.0}
    losses_in_float32 = False  # it casts the two logit tensors it uses
    kd_style_terms = True

    def __init__(self, student, teacher, tau=4.0, inter=1.0, intra=1.0, **weights):
        super().__init__(student, teacher, **weights)
        self.tau, self.inter, self.intra = tau, inter, intra

    @classmethod
    def add_arguments(cls, parser):
        """DIST's flags and those of --logit_standardize."""
        add_argument_once(parser, "--dist_tau", type=positive_float, default=None, help="DIST temperature (default 4)")
        add_argument_once(parser, "--dist_inter", type=non_negative_float, default=None,
                          help="DIST: weight of the inter-class (per sample) relation, the paper's beta (default 1)")
        add_argument_once(parser, "--dist_intra", type=non_negative_float, default=None,
                          help="DIST: weight of the intra-class (per class) relation, the paper's gamma (default 1)")
        add_ls_arguments(parser)

    @classmethod
    def weights(cls, opt):
        """The base weights; under --logit_standardize the DIST weight defaults to the reference's w."""
        chosen = super().weights(opt)
        if logit_standardize_on(opt) and getattr(opt, "beta", None) is None:
            chosen["beta"] = ls_settings(opt, LS_KD)[1]
        return chosen

    @classmethod
    def build(cls, student, teacher, opt, data):
        """DIST with its flags (tau: the base temperature under --logit_standardize)."""
        def given(name, default):
            value = getattr(opt, name, None)
            return default if value is None else value

        weights = cls.weights(opt)
        tau = weights["ls_T"] if weights.get("logit_standardize") else given("dist_tau", 4.0)
        return cls(student, teacher, tau=tau, inter=given("dist_inter", 1.0), intra=given("dist_intra", 1.0),
                   **weights)

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        """{'dist': -b * L_dist} on the raw (or standardized) logits, in float32."""
        with torch.autocast(logits_s.device.type, enabled=False):
            loss = dist_loss(logits_s.float(), logits_t.float(), self.tau, self.inter, self.intra,
                             self.logit_standardize)
        return {"dist": self.beta * loss}
