"""CC: Peng et al., "Correlation Congruence for Knowledge Distillation" (ICCV 2019), RepDistiller's form.

L_cc = mean_i sum_d |Δ_i,d| |Δ_i+1,d|, Δ = e_s - e_t, e = a trainable linear embedding (to --feat_dim) of the
pooled features feat[-1]; i runs over consecutive samples of the batch.
"""
from torch import nn

from models.norm import probe_features
from helper.argtypes import positive_int
from .base import Distiller
from .registry import add_argument_once, register


class LinearEmbed(nn.Module):
    """Flatten and project linearly to `dim_out`."""

    def __init__(self, dim_in, dim_out=128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return self.linear(x.flatten(1))


def correlation_loss(e_s, e_t):
    """Mean over consecutive batch pairs of the dot product of their absolute embedding differences."""
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register("correlation")
class Correlation(Distiller):
    """CC with both embeddings trainable; RepDistiller's -a 0 -b 0.02."""

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 0.02}

    def __init__(self, student, teacher, embed_s, embed_t, **weights):
        super().__init__(student, teacher, **weights)
        self.embed_s, self.embed_t = embed_s, embed_t

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--feat_dim", type=positive_int, default=128, help="CRD/CC embedding size")

    @classmethod
    def build(cls, student, teacher, opt, data):
        s_dim = probe_features(student, data["image_size"], data["in_channels"])[-1].flatten(1).shape[1]
        t_dim = probe_features(teacher, data["image_size"], data["in_channels"])[-1].flatten(1).shape[1]
        return cls(student, teacher, LinearEmbed(s_dim, opt.feat_dim), LinearEmbed(t_dim, opt.feat_dim),
                   **cls.weights(opt))

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        return {"correlation": self.beta * correlation_loss(self.embed_s(feat_s[-1]), self.embed_t(feat_t[-1]))}
