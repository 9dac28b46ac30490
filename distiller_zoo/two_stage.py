"""The init-stage contract of RepDistiller's two-stage methods (AB, FT, FSP), shared by their modules."""
from helper.argtypes import non_negative_int
from .base import Distiller
from .registry import add_argument_once

STAGES = ("init", "main")


class TwoStageDistiller(Distiller):
    """A method with RepDistiller's init stage: `set_stage('init')` trains `init_modules()` on `init_loss` only."""

    has_init_stage = True

    def __init__(self, student, teacher, **weights):
        super().__init__(student, teacher, **weights)
        self.stage = "main"

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--init_epochs", type=non_negative_int, default=30,
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
