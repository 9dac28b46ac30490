"""FSP: Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer
Learning" (CVPR 2017).

For consecutive maps f^l, f^(l+1) of feat[:-1] (the larger average-pooled to the smaller size),
G^l_ij = mean_positions f^(l+1)_i f^l_j, and L_fsp = sum_l mean((G^l_s - G^l_t)^2); it needs the same widths in
student and teacher. As in RepDistiller, L_fsp is used only in an init stage that trains the student's feature
modules; the main stage then trains on cross-entropy (+ KD) alone.
"""
from models.norm import probe_features
from .two_stage import TwoStageDistiller, student_feature_modules
from .attention import pool_to_smaller
from .registry import register


def fsp_matrices(features):
    """The (B, C_(l+1), C_l) FSP matrix of every consecutive pair of maps."""
    matrices = []
    for bottom, top in zip(features[:-1], features[1:]):
        bottom, top = pool_to_smaller(bottom, top)
        matrices.append(top.flatten(2) @ bottom.flatten(2).transpose(1, 2) / bottom[0, 0].numel())
    return matrices


def fsp_loss(g_s, g_t):
    """Sum over the consecutive pairs of the mean squared difference of the FSP matrices."""
    return sum((s - t).pow(2).mean() for s, t in zip(fsp_matrices(g_s), fsp_matrices(g_t)))


@register("fsp")
class FSP(TwoStageDistiller):
    """FSP: init stage on the FSP loss (student feature modules), then CE only; RepDistiller's -a 0 -b 50."""

    needs_stages = True

    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 50.0}

    def __init__(self, student, teacher, **weights):
        super().__init__(student, teacher, **weights)
        self.set_stage("main")

    @classmethod
    def build(cls, student, teacher, opt, data):
        student_feature_modules(student)
        feat_s = probe_features(student, data["image_size"], data["in_channels"])[:-1]
        feat_t = probe_features(teacher, data["image_size"], data["in_channels"])[:-1]
        widths_s = [f.shape[1] for f in feat_s]
        widths_t = [f.shape[1] for f in feat_t]
        if widths_s != widths_t:
            stages = ", ".join(f"stage {i} (student {s}, teacher {t})"
                               for i, (s, t) in enumerate(zip(widths_s, widths_t)) if s != t)
            if len(widths_s) != len(widths_t):
                stages = (f"{stages}; " if stages else "") + \
                    f"and the student has {len(widths_s)} maps, the teacher {len(widths_t)}"
            raise ValueError("FSP needs equal student/teacher channels at every stage of feat[:-1] (student "
                             f"{widths_s}, teacher {widths_t}); they differ at {stages}")
        return cls(student, teacher, **cls.weights(opt))

    def init_modules(self):
        return [self.student.get_feat_modules()]

    def init_loss(self, images):
        feat_s, logits = self.student(images, is_feat=True)
        feat_t, _ = self.teacher_forward(images)
        return logits, fsp_loss(feat_s[:-1], feat_t[:-1])
