"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017).

L_at = sum_l mean((a(f_s^l) - a(f_t^l))^2), a(f) = L2-normalise(mean_c f^2) over the flattened positions; the
larger of the two maps is first average-pooled to the smaller one's size (RepDistiller's step).
"""
import torch.nn.functional as F

from .base import Distiller
from .registry import register


def pool_to_smaller(f_s, f_t):
    """Adaptive average pooling of whichever map is spatially larger down to the other's size."""
    h_s, h_t = f_s.shape[2], f_t.shape[2]
    if h_s > h_t:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif h_t > h_s:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    return f_s, f_t


def attention_map(f, p=2):
    """Spatial attention: channel mean of |f|^p per position, flattened and L2-normalised per sample."""
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s, f_t):
    """Mean squared difference of the two attention maps after pooling to the smaller size."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return (attention_map(f_s) - attention_map(f_t)).pow(2).mean()


@register("attention")
class Attention(Distiller):
    """AT on the intermediate maps feat[1:-1]: beta * sum_l at_loss; RepDistiller's -a 0 -b 1000."""

    needs_stages = True

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1000.0}

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        loss = sum(at_loss(s, t) for s, t in zip(feat_s[1:-1], feat_t[1:-1]))
        return {"attention": self.beta * loss}
