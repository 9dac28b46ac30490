"""AB: Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons" (AAAI 2019).

On the pre-activation maps feat[1:-1] (n of them), with r_l a connector (ConvReg without ReLU, or the identity when
the shapes match) and margin m = 1:
L_ab = 3/1000 * sum_l 2^(l-n+1) / B * sum[(r_l(s) + m)^2 [r_l(s) > -m, t <= 0] + (r_l(s) - m)^2 [r_l(s) <= m, t > 0]].
As in RepDistiller, L_ab is used only in an init stage that trains the connectors and the student's feature
modules; the main stage then trains on cross-entropy (+ KD) alone.
"""
from torch import nn

from models.norm import probe_features
from .hint import ConvReg
from .registry import register
from .two_stage import TwoStageDistiller, student_feature_modules

def ab_layer_loss(source, target, margin=1.0):
    """Summed activation-boundary hinge of one layer (student responses `source`, teacher pre-activations `target`)."""
    off = (source + margin).pow(2) * ((source > -margin) & (target <= 0))
    on = (source - margin).pow(2) * ((source <= margin) & (target > 0))
    return (off + on).sum()


def ab_loss(g_s, g_t, margin=1.0):
    """Layer-weighted (2^(l-n+1)) hinge summed over layers, divided by the batch size and scaled by 3/1000."""
    n = len(g_s)
    batch = g_s[0].shape[0]
    total = sum(2.0 ** (i - n + 1) * ab_layer_loss(s, t, margin) for i, (s, t) in enumerate(zip(g_s, g_t)))
    return total / batch * 3 / 1000


@register("abound")
class ActivationBoundary(TwoStageDistiller):
    """AB: init stage on the boundary loss (connectors + student feature modules), then CE; RepDistiller -a 0 -b 1."""

    needs_stages = True

    preact = True
    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}

    def __init__(self, student, teacher, connectors, **weights):
        super().__init__(student, teacher, **weights)
        self.connectors = connectors
        self.set_stage("main")

    @classmethod
    def build(cls, student, teacher, opt, data):
        student_feature_modules(student)
        feat_s = probe_features(student, data["image_size"], data["in_channels"])[1:-1]
        feat_t = probe_features(teacher, data["image_size"], data["in_channels"])[1:-1]
        if len(feat_s) != len(feat_t):
            raise ValueError(f"AB pairs the intermediate maps one to one, but the student has {len(feat_s)} and the "
                             f"teacher {len(feat_t)}")
        connectors = nn.ModuleList(
            nn.Identity() if s.shape[1:3] == t.shape[1:3] else ConvReg(s.shape, t.shape, relu=False)
            for s, t in zip(feat_s, feat_t))
        return cls(student, teacher, connectors, **cls.weights(opt))

    def init_modules(self):
        return [self.connectors, self.student.get_feat_modules()]

    def init_only_modules(self):
        return [self.connectors]

    def init_loss(self, images):
        feat_s, logits = self.student(images, is_feat=True, preact=True)
        feat_t, _ = self.teacher_forward(images)
        g_s = [connect(f) for connect, f in zip(self.connectors, feat_s[1:-1])]
        return logits, ab_loss(g_s, feat_t[1:-1])
