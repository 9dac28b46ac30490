"""RKD: Park et al., "Relational Knowledge Distillation" (CVPR 2019).

L_rkd = 25 * smoothL1(psi_D(s), psi_D(t)) + 50 * smoothL1(psi_A(s), psi_A(t)) on the pooled features feat[-1];
psi_D = pairwise Euclidean distances divided by their mean over distinct pairs, psi_A = cosines of the angles
<x_j - x_i, x_k - x_i> over all triplets (zero where two indices coincide).
"""
import torch
import torch.nn.functional as F

from .base import Distiller
from .registry import register


def pairwise_distances(x, eps=1e-12):
    """Euclidean distance matrix (squared distances clamped at eps before the root), with a zero diagonal."""
    sq = x.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * x @ x.t()).clamp(min=eps)
    d = d2.sqrt()
    off_diagonal = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return d * off_diagonal


def distance_potential(x):
    """Pairwise distances normalised by their mean over the strictly positive entries."""
    d = pairwise_distances(x)
    # the mean over the positive entries without selecting them (d[d > 0] makes the host wait for the GPU)
    return d / (d.sum() / (d > 0).sum())


def angle_potential(x):
    """Flattened cos of the angle at vertex i between x_j and x_k, for every triplet (i, j, k)."""
    unit = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # unit[i, j] = direction from x_i to x_j
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()


def rkd_loss(f_s, f_t, w_distance=25.0, w_angle=50.0):
    """Weighted smooth-L1 distance and angle terms; the teacher's potentials carry no gradient."""
    s, t = f_s.flatten(1), f_t.flatten(1)
    with torch.no_grad():
        t_distance, t_angle = distance_potential(t), angle_potential(t)
    loss_distance = F.smooth_l1_loss(distance_potential(s), t_distance)
    loss_angle = F.smooth_l1_loss(angle_potential(s), t_angle)
    return w_distance * loss_distance + w_angle * loss_angle


@register("rkd")
class RKD(Distiller):
    """RKD with distance weight 25 and angle weight 50 on feat[-1]; RepDistiller's -a 0 -b 1."""

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        return {"rkd": self.beta * rkd_loss(feat_s[-1], feat_t[-1])}
