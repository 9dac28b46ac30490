"""The method contract: a module holding the student, a frozen teacher and the method's own trainable parts.

`forward(images, targets, index=None, contrast_index=None)` returns the student's logits and a dict of named,
already-weighted losses; the engine sums them and logs each by name. It never branches on a method's name.
"""
import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UsageError
from .logit_standard import LS_KD, logit_standardize_on, ls_kd_loss, ls_settings, refuse_without_kd_terms


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


def beta_text(value):
    """-b as typed: (1.0, 8.0) -> '1.0+8.0'."""
    return value if isinstance(value, str) else "+".join(str(v) for v in value)


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
    needs_targets = False  # True: feature_losses also gets the labels, as `targets=`
    kd_style_terms = False  # True: its own terms compare softened logits (--logit_standardize applies to them)
    # True: it compares intermediate stage maps (feat[1:-1], a --hint_layer index), which a wrapped torchvision/timm
    # model has only when --feature_modules names them
    needs_stages = False

    @classmethod
    def add_arguments(cls, parser):
        """Declare the method's own flags (use registry.add_argument_once for shared ones)."""

    @classmethod
    def weights(cls, opt):
        """gamma/alpha/beta/logit scale from the command line, the method's defaults filling what is not given.

        With --logit_standardize the KD term is the standardized one (`logit_standardize`, `ls_T`), and a method
        whose default KD weight is positive takes the reference's weight w for it.
        """
        if isinstance(getattr(opt, "beta", None), (tuple, str)):
            raise UsageError(f"-b {beta_text(opt.beta)} gives one weight per part of a combination, but --distill "
                             f"{getattr(opt, 'distill', cls.__name__)} has one part; give one number")
        chosen = {k: (getattr(opt, k, None) if getattr(opt, k, None) is not None else v)
                  for k, v in cls.defaults.items()}
        scale = getattr(opt, "ceta", None)
        chosen["logit_scale"] = cls.default_logit_scale if scale is None else scale
        chosen["kd_T"] = getattr(opt, "kd_T", 4.0)
        stray = [flag for flag in ("ls_T", "ls_weight") if getattr(opt, flag, None) is not None]
        if stray and not logit_standardize_on(opt):
            what = "temperature" if stray[0] == "ls_T" else "weight"
            raise UsageError(f"--{stray[0]} sets --logit_standardize's {what}; add --logit_standardize or leave it out")
        if logit_standardize_on(opt):
            temperature, weight = ls_settings(opt, LS_KD)[:2]
            if getattr(opt, "alpha", None) is None and chosen.get("alpha", 0) > 0:
                chosen["alpha"] = weight
            chosen.update(logit_standardize=True, ls_T=temperature)
            if not getattr(opt, "part_of_combination", False):  # a combination checks all its parts at once
                refuse_without_kd_terms(getattr(opt, "distill", cls.__name__),
                                        cls.kd_style_terms or chosen["alpha"] > 0)
        return chosen

    @classmethod
    def contrast_sampling(cls, opt):
        """The contrast sampling of the training set this method needs, as `dataset.crd_dataset`'s (k, mode), or None.

        With `needs_contrast`, CRD's sampler with the CRD flags (--nce_k, --mode); the loaders ask the method and never
        read a method's flags.
        """
        return (opt.nce_k, opt.mode) if cls.needs_contrast else None

    @classmethod
    def build(cls, student, teacher, opt, data):
        """Construct the method for this pair; `data` gives n_data, image_size and in_channels."""
        return cls(student, teacher, **cls.weights(opt))

    def __init__(self, student, teacher, gamma=1.0, alpha=0.0, beta=0.0, logit_scale=0.0, kd_T=4.0,
                 logit_standardize=False, ls_T=None):
        super().__init__(student)
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        self.gamma, self.alpha, self.beta = gamma, alpha, beta
        self.logit_scale, self.kd_T = logit_scale, kd_T
        self.logit_standardize, self.ls_T = logit_standardize, ls_T
        # set by the trainer (helper.teachers.inference.install_inference_teacher): a callable images -> (features,
        # logits) serving teacher_forward; a plain object, outside the module tree, in no state dict
        self.inference_teacher = None

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
        if self.alpha and self.logit_standardize:  # raw logits standardized, in float32 (a std of half values)
            with torch.autocast(logits_s.device.type, enabled=False):
                losses["kd"] = self.alpha * ls_kd_loss(logits_s.float(), logits_t.float(), self.ls_T)
        elif self.alpha:
            z_t = normalize_logits(logits_t, self.logit_scale)
            losses["kd"] = self.alpha * kd_loss(z_s, z_t, self.kd_T)
        extra = {"targets": targets} if self.needs_targets else {}
        if self.losses_in_float32:
            with torch.autocast(logits_s.device.type, enabled=False):
                losses.update(self.feature_losses([f.float() for f in feat_s], [f.float() for f in feat_t],
                                                  logits_s.float(), logits_t.float(), index, contrast_index,
                                                  **extra))
        else:
            losses.update(self.feature_losses(feat_s, feat_t, logits_s, logits_t, index, contrast_index, **extra))
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
