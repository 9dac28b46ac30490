"""What differs between the training scripts (a typed profile each), and a resolved command line (a job)."""
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Tuple

SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # the official scripts train these at lr 0.01


@dataclass(frozen=True)
class Profile:
    """One training script: its role, defaults (the official ones), model zoo and data."""

    script: str  # the script's path (--gids reruns it under torchrun)
    role: str  # "teacher": train a model from scratch; "student": distil one from a teacher; "folder_teacher":
    # train or fine-tune a torchvision/timm classifier on a user's image folder (scripts/train_teacher.py)
    description: str
    zoo: Mapping[str, Callable]
    datasets: Tuple[str, ...]
    dataset: str
    epochs: int
    batch_size: int
    learning_rate: float  # the official one; SMALL_LR_MODELS train at 0.01
    weight_decay: float
    lr_decay_epochs: Tuple[int, ...]
    lr_decay: str = "step"
    num_workers: int = 8
    save_freq: int = 40
    model: str = "resnet110"  # the default architecture trained (--model, or --model_s for a student)
    image_size: Optional[int] = None  # the default of an --image_size flag (ImageNet); None: no flag
    probe_size: int = 32  # the input size methods probe the networks with when there is no --image_size
    schedule_kind: str = "cifar"
    official_num_cls: str = "checked"  # --num_cls: "checked" against the dataset, or "inert" (official ImageNet)
    num_classes: Optional[Callable] = None  # parsed options -> the dataset's class count
    default_path_t: Optional[Callable] = None  # parsed options -> the teacher file used without --path_t, or None
    teacher_hint: str = ""  # where a missing teacher comes from
    own_models: Optional[str] = None  # "models": torchvision:/timm: names too; "folders": and users' image folders

    def default_learning_rate(self, model):
        """The official learning rate of `model` when --learning_rate is not given."""
        return 0.01 if model in SMALL_LR_MODELS else self.learning_rate


@dataclass(frozen=True)
class Job:
    """A resolved command line: every option (config.json's content; the seed is drawn later), the run folder, and
    what the role builds once the data is loaded."""

    options: Mapping[str, object]
    run_dir: str
    name: str  # the trained model: <name>_last.pth and <name>_best.pth in the run folder
    contrast: Optional[Tuple[int, str]]  # the method's contrast sampling of the training set (CRD), or None
    init_epochs: int  # of a two-stage method's init stage
    image_size: Optional[int]
    build: Callable  # (options, n_data) -> (method, student, record, check); check(trainer, runtime) or None
    # options -> (train set, val set), in place of the profile's dataset (helper.loaders.loader.load_datasets): a
    # user's image folder, whose split the job keeps in its run folder (helper.cli.external.UserFolder)
    datasets: Optional[Callable] = None
