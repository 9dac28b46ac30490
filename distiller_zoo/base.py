"""The method contract: a module holding the student, a frozen teacher and the method's own trainable parts.

`forward(images, targets, index=None, contrast_index=None)` returns the student's logits and a dict of named,
already-weighted losses; the engine sums them and logs each by name. It never branches on a method's name.
"""
import torch
import torch.nn.functional as F
from torch import nn


def normalize_logits(logits, scale):
    """NORM's logit recipe: `scale * layer_norm(logits)` over classes (eps 1e-7, no affine); scale 0 = raw logits."""
    if not scale:
        return logits
    return scale * F.layer_norm(logits, logits.shape[-1:], eps=1e-7)


def kd_loss(student_logits, teacher_logits, temperature):
    """Hinton KD as RepDistiller's DistillKL: T^2 * sum KL(p_t || p_s) / batch, with p = softmax(z / T)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature ** 2 / student_logits.shape[0]


class Vanilla(nn.Module):
    """Plain supervised training (teachers, or students without distillation): cross-entropy on raw logits."""

    needs_contrast = False
    has_init_stage = False

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, images, targets, index=None, contrast_index=None):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, targets)}

    def set_epoch(self, epoch):
        """Hook for weight schedules; nothing to do here."""

    def logged_scalars(self):
        """Per-epoch values worth logging beside the losses (a schedule's weight); none here."""
        return {}

    def method_state_dict(self):
        """State of the method's own parts (none)."""
        return {}

    def load_method_state_dict(self, state):
        """Restore what `method_state_dict` returned."""


class Distiller(Vanilla):
    """Base of every distillation method: gamma*CE + alpha*KD on (optionally normalised) logits + the method's terms.

    Subclasses implement `feature_losses(feat_s, feat_t, logits_s, logits_t, index, contrast_index)`.
    """

    preact = False  # AB asks for pre-activation features
    teacher_preact = None  # the teacher's `preact` when it differs from the student's (ReviewKD); None: `preact`
    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 0.0}  # RepDistiller's script weights, per method
    default_logit_scale = 0.0  # NORM's logit layer-norm is opt-in for the baselines (-c 2.5 turns it on)
    # Under AMP, feature_losses gets float32 copies and runs outside autocast: half precision overflows in the
    # baselines' sums (an SP Gram entry of resnet32x4 reaches 8e4 > 65504). False: the method casts what it uses.
    losses_in_float32 = True

    @classmethod
    def add_arguments(cls, parser):
        """Declare the method's own flags (use registry.add_argument_once for shared ones)."""

    @classmethod
    def weights(cls, opt):
        """gamma/alpha/beta/logit scale from the command line, the method's defaults filling what is not given."""
        chosen = {k: (getattr(opt, k, None) if getattr(opt, k, None) is not None else v)
                  for k, v in cls.defaults.items()}
        scale = getattr(opt, "ceta", None)
        chosen["logit_scale"] = cls.default_logit_scale if scale is None else scale
        chosen["kd_T"] = getattr(opt, "kd_T", 4.0)
        return chosen

    @classmethod
    def build(cls, student, teacher, opt, data):
        """Construct the method for this pair; `data` gives n_data, image_size and in_channels."""
        return cls(student, teacher, **cls.weights(opt))

    def __init__(self, student, teacher, gamma=1.0, alpha=0.0, beta=0.0, logit_scale=0.0, kd_T=4.0):
        super().__init__(student)
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        self.gamma, self.alpha, self.beta = gamma, alpha, beta
        self.logit_scale, self.kd_T = logit_scale, kd_T
        self.inference_teacher = None  # a plain object, outside the module tree (see install_inference_teacher)

    def install_inference_teacher(self, example, **options):
        """Serve `teacher_forward` from an inference copy of the teacher (BN folded, own layout; `options` as
        helper.teacher_inference.InferenceTeacher). Call it after the method is on its device; returns the copy.

        `self.teacher` stays the original, for checkpoints and validation; the copy is in no state dict.
        """
        from helper.teacher_inference import InferenceTeacher

        self.inference_teacher = None
        self.inference_teacher = InferenceTeacher(self.teacher, example, preact=self.teacher_preact_features(),
                                                  **options)
        return self.inference_teacher

    def train(self, mode=True):
        """Train the student and the method's parts; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_preact_features(self):
        """Whether the teacher's features are taken before the last ReLU (`teacher_preact`, else `preact`)."""
        return self.preact if self.teacher_preact is None else self.teacher_preact

    def teacher_forward(self, images):
        """Teacher features and logits, without gradients (from the inference copy when one is installed)."""
        if self.inference_teacher is not None:
            return self.inference_teacher(images)
        with torch.no_grad():
            return self.teacher(images, is_feat=True, preact=self.teacher_preact_features())

    def forward(self, images, targets, index=None, contrast_index=None):
        feat_s, logits_s = self.student(images, is_feat=True, preact=self.preact)
        feat_t, logits_t = self.teacher_forward(images)
        z_s = normalize_logits(logits_s, self.logit_scale)
        losses = {"ce": self.gamma * F.cross_entropy(z_s, targets)}
        if self.alpha:
            z_t = normalize_logits(logits_t, self.logit_scale)
            losses["kd"] = self.alpha * kd_loss(z_s, z_t, self.kd_T)
        if self.losses_in_float32:
            with torch.autocast(logits_s.device.type, enabled=False):
                losses.update(self.feature_losses([f.float() for f in feat_s], [f.float() for f in feat_t],
                                                  logits_s.float(), logits_t.float(), index, contrast_index))
        else:
            losses.update(self.feature_losses(feat_s, feat_t, logits_s, logits_t, index, contrast_index))
        return logits_s, losses

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index):
        """The method's own weighted terms; KD alone has none."""
        return {}

    def extra_modules(self):
        """The method's trainable modules besides the student (their parameters join the optimizer)."""
        return [m for name, m in self.named_children() if name not in ("student", "teacher")]

    def method_state_dict(self):
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("student.", "teacher."))}

    def load_method_state_dict(self, state):
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(("student.", "teacher."))]
        if missing or result.unexpected_keys:
            raise KeyError(f"method state does not match: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
