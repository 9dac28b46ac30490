"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (2017).

L_nst = sum_l [mean k(T,T) + mean k(S,S) - 2 mean k(S,T)] on feat[1:-1], k(a, b) = (a . b)^2 over the per-channel
spatial maps, each L2-normalised (MMD with a degree-2 polynomial kernel); the larger map is average-pooled to the
smaller one's size first.
"""
import torch.nn.functional as F

from .attention import pool_to_smaller
from .base import Distiller
from .registry import register


def _poly_kernel(a, b):
    """(B, C_a, C_b) matrix of squared dot products between the channel vectors of a and b."""
    return (a @ b.transpose(1, 2)).pow(2)


def nst_loss(f_s, f_t):
    """Squared MMD between the normalised channel maps of student and teacher (teacher-only term detached)."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return _poly_kernel(t, t).mean().detach() + _poly_kernel(s, s).mean() - 2 * _poly_kernel(s, t).mean()


@register("nst")
class NST(Distiller):
    """NST on the intermediate maps feat[1:-1]; RepDistiller's -a 0 -b 50."""

    needs_stages = True

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 50.0}

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        loss = sum(nst_loss(s, t) for s, t in zip(feat_s[1:-1], feat_t[1:-1]))
        return {"nst": self.beta * loss}
