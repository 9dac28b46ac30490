"""Combinations of methods: `--distill A+B[+C]` (each part any registered method, in any letter case).

One run, one loss: the shared terms once, then every part's own terms, in the order the parts are written.
* CE: weight -r, else the first part's default; on logits layer-normed by -c, else the first part's default scale
  (NORM first: 2.5).
* KD (Hinton, at --kd_T): weight -a, else the largest default KD weight of the parts (NORM+kd: kd's 0.9); with
  --logit_standardize the standardized KD (see logit_standard.py).
* Each part's own terms with its own flags and its own weight: `-b 1+0.8` gives one weight per part, in order;
  a single `-b` number is the first part's; a part without one takes its own default (per pair where it has one).
  A term is logged under its own name, prefixed `<part>_` only when two parts name a term alike.
* The parts' trainable modules keep their own names (prefixed `<part>_` only on a clash), so `NORM_CRD`, which is
  `NORM+crd` with the CRD weight --crd_weight (2.5, the official code's), keeps its checkpoint layout.

Refused (one line): an unknown or repeated part, a part that is itself a combination, a part with its own training
step (a changed prediction path such as SimKD's, or an init stage such as AB's, FT's and FSP's: they override
`forward`) or its own teacher forward (`teacher_forward`), and parts that read different student features
(pre-activation against post-activation): one student forward serves all parts. Parts that read different teacher
features (ReviewKD's pre-activation maps beside NORM's) get one teacher forward per kind.
"""
import argparse

import torch

from helper.errors import UsageError
from helper.argtypes import non_negative_float
from .base import Distiller, beta_text
from .logit_standard import refuse_without_kd_terms
from .registry import METHODS

SEPARATOR = "+"
_CLASSES = {}


def split_parts(name):
    """'NORM+dkd' -> ['NORM', 'dkd'] (as typed)."""
    return [part.strip() for part in str(name).split(SEPARATOR)]


def is_combination(name):
    """Whether `name` is a '+' combination of methods."""
    return SEPARATOR in str(name)


def _registered(name):
    """The registered spelling of one part (any letter case), or None."""
    return next((known for known in METHODS if known.lower() == name.lower()), None)


def canonical_name(name):
    """The registered spelling of each part joined by '+', or `name` unchanged when a part is unknown."""
    parts = [_registered(part) for part in split_parts(name)]
    return SEPARATOR.join(parts) if all(parts) else name


def combination_class(name):
    """The method class of the combination `name` (one class per combination, made once)."""
    canonical = canonical_name(name)
    if canonical in _CLASSES:
        return _CLASSES[canonical]
    typed = split_parts(name)
    unknown = [part for part in typed if not _registered(part)]
    if unknown:
        shown = ", ".join(repr(part) for part in unknown)
        raise KeyError(f"unknown --distill part {shown} in {name!r}; combine registered methods with '+', "
                       f"e.g. NORM+dkd; choose from {', '.join(sorted(METHODS))}")
    parts = [METHODS[_registered(part)] for part in typed]
    check_parts(canonical, parts)
    cls = type(canonical, (Combination,), {"parts": tuple(parts), "name": canonical,
                                           "__doc__": f"The combination {canonical} (see distiller_zoo.compose)."})
    _CLASSES[canonical] = cls
    return cls


def check_parts(name, parts):
    """A UsageError when the parts cannot be trained as one sum of terms."""
    names = [part.name for part in parts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--distill {name} names {repeated[0]} twice; each method can be a part once")
    for part in parts:
        if issubclass(part, Combination):
            raise UsageError(f"--distill {name}: {part.name} is itself a combination; write its parts out "
                             f"(NORM_CRD is NORM+crd with -b 1+2.5)")
        if part.forward is not Distiller.forward or getattr(part, "has_init_stage", False):
            raise UsageError(f"--distill {name}: {part.name} has its own training step (its own prediction path "
                             "or an init stage), so it cannot be combined with another method; run it alone")
        if part.teacher_forward is not Distiller.teacher_forward:
            raise UsageError(f"--distill {name}: {part.name} runs the teacher its own way (other features than the "
                             "shared forward gives), so it cannot be combined with another method; run it alone")
    if len({part.preact for part in parts}) > 1:
        pre = [part.name for part in parts if part.preact]
        raise UsageError(f"--distill {name}: {', '.join(pre)} reads pre-activation features of the student and the "
                         "other parts post-activation ones; one student forward cannot serve both")


def teacher_mode(part):
    """Whether `part` reads the teacher's features before the last ReLU (its `teacher_preact`, else `preact`)."""
    return part.preact if part.teacher_preact is None else part.teacher_preact


class Combination(Distiller):
    """Several methods trained as one: the shared CE/KD once, then each part's own named terms."""

    parts = ()  # the part classes, in the order written
    losses_in_float32 = False  # each part gets float32 copies only when it asks for them

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.parts:
            cls.preact = cls.parts[0].preact
            # the teacher's feature kinds the parts read, the first part's first: served by one teacher forward each
            # (ReviewKD reads the teacher's pre-activation maps, NORM its post-activation ones)
            cls.teacher_modes = tuple(dict.fromkeys(teacher_mode(part) for part in cls.parts))
            cls.teacher_preact = cls.teacher_modes[0]
            cls.needs_contrast = any(part.needs_contrast for part in cls.parts)
            cls.needs_targets = any(part.needs_targets for part in cls.parts)
            cls.kd_style_terms = any(part.kd_style_terms for part in cls.parts)
            cls.needs_stages = any(part.needs_stages for part in cls.parts)

    @classmethod
    def add_arguments(cls, parser):
        """Every part's own flags."""
        for part in cls.parts:
            part.add_arguments(parser)

    @classmethod
    def given_betas(cls, opt):
        """-b as one value (or None) per part: a number is the first part's, 'x+y' one per part."""
        beta = getattr(opt, "beta", None)
        if beta is None or isinstance(beta, (int, float)):
            return [beta] + [None] * (len(cls.parts) - 1)
        values = beta_values(beta)
        if len(values) != len(cls.parts):
            raise UsageError(f"-b {beta_text(beta)} gives "
                             f"{len(values)} weights, but --distill {cls.name} has {len(cls.parts)} parts; give one "
                             "per part (e.g. -b 1+8) or one number for the first part")
        return values

    @classmethod
    def part_options(cls, opt, index, beta):
        """The options part `index` is built from: everything as given, -b its own weight."""
        part_opt = argparse.Namespace(**vars(opt))
        part_opt.beta = beta
        part_opt.part_of_combination = True  # its own weights() leaves the --logit_standardize check to us
        return part_opt

    @classmethod
    def part_weights(cls, opt):
        """Each part's resolved weights (its own defaults where -b gives none)."""
        return [part.weights(cls.part_options(opt, i, beta))
                for i, (part, beta) in enumerate(zip(cls.parts, cls.given_betas(opt)))]

    @classmethod
    def weights(cls, opt):
        """The first part's CE weight and logit scale, the largest KD weight, each part's beta ('1.0+8.0')."""
        parts = cls.part_weights(opt)
        chosen = dict(parts[0])
        chosen["alpha"] = max(w["alpha"] for w in parts)  # -a when given: every part resolved it to -a
        chosen["beta"] = SEPARATOR.join(str(w["beta"]) for w in parts)
        if chosen.get("logit_standardize") and not (chosen["alpha"] > 0 or cls.kd_style_terms):
            refuse_without_kd_terms(cls.name, False)
        return chosen

    @classmethod
    def build(cls, student, teacher, opt, data):
        """Build every part on the same student and teacher, in order, each with its own -b."""
        parts = [part.build(student, teacher, cls.part_options(opt, i, w["beta"]), data)
                 for i, (part, w) in enumerate(zip(cls.parts, cls.part_weights(opt)))]
        return cls(student, teacher, parts, **cls.weights(opt))

    def __init__(self, student, teacher, parts, **weights):
        super().__init__(student, teacher, **weights)
        self.part_methods = list(parts)  # a plain list: the parts are not children (their modules are, below)
        for part in parts:
            for name, module in part.named_children():
                if name in ("student", "teacher"):
                    continue
                self.add_module(name if name not in self._modules else f"{part.name}_{name}", module)

    def train(self, mode=True):
        """The student and the parts' modules, through each part's own train() (the teacher stays in eval mode)."""
        super().train(mode)
        for part in self.part_methods:
            part.train(mode)
        return self

    def teacher_forward(self, images):
        """The teacher's features of the first part's kind and its logits; the features of any other kind a part
        reads come from one more forward of the teacher module, kept for this step's `feature_losses`."""
        feat_t, logits_t = super().teacher_forward(images)
        self._other_teacher_features = {}
        for mode in self.teacher_modes[1:]:
            with torch.no_grad():
                self._other_teacher_features[mode] = self.teacher(images, is_feat=True, preact=mode)[0]
        return feat_t, logits_t

    def set_epoch(self, epoch):
        """Every part's schedules."""
        for part in self.part_methods:
            part.set_epoch(epoch)

    def logged_scalars(self):
        """Every part's per-epoch values."""
        scalars = {}
        for part in self.part_methods:
            scalars.update(part.logged_scalars())
        return scalars

    def feature_losses(self, feat_s, feat_t, logits_s, logits_t, index, contrast_index, targets=None):
        """Every part's terms in order (float32 copies for the parts that ask), prefixed only on a clash."""
        losses, cast = {}, {}
        for part in self.part_methods:
            extra = {"targets": targets} if part.needs_targets else {}
            mode = teacher_mode(part)
            part_feat_t = feat_t if mode == self.teacher_modes[0] else self._other_teacher_features[mode]
            if part.losses_in_float32:
                if mode not in cast:
                    cast[mode] = ([f.float() for f in feat_s], [f.float() for f in part_feat_t], logits_s.float(),
                                  logits_t.float())
                with torch.autocast(logits_s.device.type, enabled=False):
                    terms = part.feature_losses(*cast[mode], index, contrast_index, **extra)
            else:
                terms = part.feature_losses(feat_s, part_feat_t, logits_s, logits_t, index, contrast_index, **extra)
            for name, value in terms.items():
                clash = name in losses or name in ("ce", "kd")
                losses[f"{part.name}_{name}" if clash else name] = value
        return losses


def beta_values(text):
    """'1+8' (or a sequence) -> [1.0, 8.0], each a number >= 0."""
    items = split_parts(text) if isinstance(text, str) else list(text)
    try:
        return [non_negative_float(str(item)) for item in items]
    except ValueError:
        raise UsageError(f"-b {text}: give numbers >= 0 joined by '+', one per part of --distill") from None


def beta_weights(text):
    """argparse type of -b: one number >= 0, or one per part of a combination joined by '+' ('1+0.8')."""
    if SEPARATOR in str(text):  # a ValueError of any part -> argparse's one-line message
        return tuple(non_negative_float(item) for item in split_parts(text))
    return non_negative_float(text)


beta_weights.__name__ = "number >= 0 (or one per part, joined by '+')"
