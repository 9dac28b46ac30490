"""AB: Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons" (AAAI 2019).

On the pre-activation maps feat[1:-1] (n of them), with r_l a connector (ConvReg without ReLU, or the identity when
the shapes match) and margin m = 1:
L_ab = 3/1000 * sum_l 2^(l-n+1) / B * sum[(r_l(s) + m)^2 [r_l(s) > -m, t <= 0] + (r_l(s) - m)^2 [r_l(s) <= m, t > 0]].
As in RepDistiller, L_ab is used only in an init stage that trains the connectors and the student's feature
modules; the main stage then trains on cross-entropy (+ KD) alone.
"""
from torch import nn

from models.norm import probe_features
from .base import Distiller
from .hint import ConvReg
from .registry import add_argument_once, register

STAGES = ("init", "main")


class TwoStageDistiller(Distiller):
    """A method with RepDistiller's init stage: `set_stage('init')` trains `init_modules()` on `init_loss` only."""

    has_init_stage = True

    def __init__(self, student, teacher, **weights):
        super().__init__(student, teacher, **weights)
        self.stage = "main"

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--init_epochs", type=int, default=30,
                          help="epochs of the init stage of abound/factor/fsp (0 skips it)")

    def init_modules(self):
        """The modules trained (and put in train mode) during the init stage."""
        raise NotImplementedError

    def init_only_modules(self):
        """The method's modules trained only in the init stage: frozen and in eval mode in the main stage."""
        return []

    def init_loss(self, images):
        """(student logits, the unweighted init-stage loss)."""
        raise NotImplementedError

    def set_stage(self, stage):
        """Switch between 'init' and 'main'; (un)freezes the init-only modules and re-applies the train modes."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {STAGES}")
        self.stage = stage
        for module in self.init_only_modules():
            module.requires_grad_(stage == "init")
        self.train(self.training)

    def init_stage_parameters(self):
        """The parameters the init stage optimises (each once)."""
        seen, params = set(), []
        for module in self.init_modules():
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def init_learning_rate(self, opt):
        """RepDistiller's init stage uses the main learning rate."""
        return opt.learning_rate

    def train(self, mode=True):
        """Init stage: all in eval mode but the init modules; main stage: teacher and init-only modules in eval."""
        super().train(mode)
        if self.stage == "init":
            for child in self.children():
                child.eval()
            for module in self.init_modules():
                module.train(mode)
        else:
            for module in self.init_only_modules():
                module.eval()
        return self

    def forward(self, images, targets, index=None, contrast_index=None):
        if self.stage == "init":
            logits, loss = self.init_loss(images)
            return logits, {"init": loss}
        return super().forward(images, targets, index, contrast_index)


def student_feature_modules(student):
    """The student's `get_feat_modules()`, or a ValueError when the architecture does not provide it."""
    if not hasattr(student, "get_feat_modules"):
        raise ValueError(f"the init stage trains the student's feature modules, and {type(student).__name__} "
                         "has no get_feat_modules()")
    return student.get_feat_modules()


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
