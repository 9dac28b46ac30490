"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018).

L_pkt = mean_ij q_ij log((q_ij + eps) / (p_ij + eps)), with p (student) and q (teacher) the rows of
(cos_sim + 1) / 2 over the batch normalised to sum 1, on the pooled features feat[-1]; eps = 1e-7.
"""
import torch

from .base import Distiller
from .registry import register


def _conditional_probabilities(x, eps):
    """Row-stochastic matrix of (cosine similarity + 1) / 2 between the samples of x."""
    x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)
    x = torch.nan_to_num(x, nan=0.0)
    similarity = (x @ x.t() + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(f_s, f_t, eps=1e-7):
    """KL(teacher || student) of the similarity distributions, averaged over all B^2 entries."""
    p = _conditional_probabilities(f_s.flatten(1), eps)
    q = _conditional_probabilities(f_t.flatten(1), eps)
    return (q * torch.log((q + eps) / (p + eps))).mean()


@register("pkt")
class PKT(Distiller):
    """PKT on feat[-1]; RepDistiller's -a 0 -b 30000."""

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 30000.0}

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        return {"pkt": self.beta * pkt_loss(feat_s[-1], feat_t[-1])}
