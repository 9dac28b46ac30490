"""KDSVD: Lee et al., "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (ECCV 2018).

For each intermediate map feat[1:-1], viewed as (H*W) x C, take the teacher's top right singular vector v_t
(k = 1) and, of the student's top k + 3, the one with the largest |cosine| to v_t, sign-aligned. Between consecutive
layers l-1, l: R(v)_cc' = exp(-(v^l_c - v^(l-1)_c')^2 / 8), and
L_kdsvd = sum_l sum_cc' (R_s - R_t)^2 / B (non-finite terms dropped).
"""
import torch
import torch.nn.functional as F

from models.norm import probe_features
from .base import Distiller
from .registry import register


def _finite(x):
    """Non-finite entries replaced by zero."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def top_singular(feature, n):
    """The n largest singular values (L2-normalised as a vector) and right singular vectors (unit columns)."""
    x = feature.float().flatten(2).transpose(1, 2)  # (B, H*W, C)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(1, 2))
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align_to(candidates, reference):
    """Of the candidate columns (B, C, n), the one of largest |cosine| to `reference` (B, C, 1), sign-matched."""
    cosine = candidates.transpose(1, 2) @ reference  # (B, n, 1)
    best = cosine.abs() == cosine.abs().amax(dim=1, keepdim=True)
    selector = torch.where(best, torch.sign(cosine), torch.zeros_like(cosine))
    return candidates @ selector


def _relation(v_now, v_before):
    """RBF affinity between the components of two consecutive layers' vectors: (B, C_now, C_before, 1)."""
    return torch.exp(-(v_now.unsqueeze(2) - v_before.unsqueeze(1)).pow(2) / 8)


def kdsvd_loss(g_s, g_t, k=1):
    """Summed squared differences of the consecutive-layer RBF relations of student and teacher, / batch."""
    losses = []
    previous = None
    for f_s, f_t in zip(g_s, g_t):
        s_t, v_t = top_singular(f_t, k)
        _, v_s = top_singular(f_s, k + 3)
        v_s = align_to(v_s, v_t)
        scale = s_t.unsqueeze(1)
        v_s, v_t = v_s * scale, v_t * scale
        if previous is not None:
            diff = (_relation(v_s, previous[0]) - _relation(v_t, previous[1]).detach()).pow(2)
            losses.append(_finite(diff).sum())
        previous = (v_s, v_t)
    return sum(losses) / g_s[0].shape[0]


@register("kdsvd")
class KDSVD(Distiller):
    """KDSVD on feat[1:-1] (equal student/teacher widths per layer); -a 0 -b 1 (RepDistiller's script gives none)."""

    needs_stages = True

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}

    @classmethod
    def build(cls, student, teacher, opt, data):
        feat_s = probe_features(student, data["image_size"], data["in_channels"])[1:-1]
        feat_t = probe_features(teacher, data["image_size"], data["in_channels"])[1:-1]
        pairs = list(zip(feat_s, feat_t))
        if len(pairs) < 2:
            raise ValueError("KDSVD relates consecutive intermediate maps and needs at least two of them")
        unequal = [f"map {i} (student {s.shape[1]}, teacher {t.shape[1]})"
                   for i, (s, t) in enumerate(pairs, start=1) if s.shape[1] != t.shape[1]]
        if unequal:
            raise ValueError("KDSVD compares student and teacher singular vectors channel by channel, so the "
                             f"widths of feat[1:-1] must match; they differ at {', '.join(unequal)}")
        return cls(student, teacher, **cls.weights(opt))

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        return {"kdsvd": self.beta * kdsvd_loss(feat_s[1:-1], feat_t[1:-1])}
