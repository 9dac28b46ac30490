"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019).

L_sp = ||n(G_t) - n(G_s)||_F^2 / B^2, G = F F^T the batch Gram of the flattened last maps (feat[-2]),
n = L2 normalisation of each row.
"""
import torch.nn.functional as F

from .base import Distiller
from .registry import register


def similarity_loss(f_s, f_t):
    """Squared Frobenius distance of the row-normalised batch Gram matrices, divided by batch^2."""
    batch = f_s.shape[0]
    f_s, f_t = f_s.reshape(batch, -1), f_t.reshape(batch, -1)
    g_s = F.normalize(f_s @ f_s.t(), dim=1)
    g_t = F.normalize(f_t @ f_t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / batch ** 2


@register("similarity")
class Similarity(Distiller):
    """SP on the last spatial map feat[-2]; RepDistiller's -a 0 -b 3000."""

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 3000.0}

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        return {"similarity": self.beta * similarity_loss(feat_s[-2], feat_t[-2])}
