"""Evaluate a saved student (ours, an officially released NORM checkpoint with --official, or an exported .onnx).

python scripts/evaluate_student.py --path save/student_model/<run>/resnet8x4_best.pth [--json]
python scripts/evaluate_student.py --official --path resnet8x4_norm.pth --model_s resnet8x4 -s 8
python scripts/evaluate_student.py --path resnet8x4.onnx      # ONNX Runtime on CPU; dataset from the file
python scripts/evaluate_student.py --path student.onnx --data_root photos   # your classes: per-class top-1 too
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset import build_dataset, num_classes  # noqa: E402
from dataset import user_folder  # noqa: E402
from helper.runs.checkpoint import load_checkpoint  # noqa: E402
from helper.deploy import external as external_deploy  # noqa: E402
from helper.deploy import OnnxStudent  # noqa: E402
from helper.loaders.loader import eval_loader, worker_count  # noqa: E402
from helper.training.engine import validate  # noqa: E402
from helper.cli.entry import ArgumentParser, run_cli  # noqa: E402
from helper.errors import UsageError  # noqa: E402
from helper.teachers.loading import checkpoint_config, load_student  # noqa: E402
from helper.argtypes import non_negative_int, positive_int  # noqa: E402
from helper.runtime.device import setup_runtime  # noqa: E402
from models import imagenet_model_dict, model_dict  # noqa: E402
from models.external import is_external  # noqa: E402

DEFAULT_WORKERS = 4


def parser():
    """Flags of the evaluator."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", required=True, help="student checkpoint, or an .onnx file from export_student.py")
    p.add_argument("--model_s", default=None, help="architecture (default: from the checkpoint's config)")
    p.add_argument("--dataset", default=None, choices=["cifar100", "cifar10", "fashion_mnist", "imagenet"],
                   help="dataset (default: from the checkpoint's config, else cifar100)")
    p.add_argument("--data_root", default=None, help="dataset folder (default ./data, ./data/imagenet for imagenet)")
    p.add_argument("--download", action="store_true", help="download the dataset when it is missing (online)")
    p.add_argument("-s", "--co-sponge", dest="co_sponge", type=positive_int, default=None, help="N of the transform")
    p.add_argument("--ft", choices=["residual", "plain"], default=None,
                   help="transform variant (ShuffleNet releases: try both, see the README)")
    p.add_argument("--official", action="store_true", help="the file is an official NORM release (convert keys)")
    p.add_argument("--image_size", type=positive_int, default=None,
                   help="ImageFolder crop size (default: the run's, else 224)")
    p.add_argument("--batch_size", type=positive_int, default=128)
    p.add_argument("--num_workers", type=non_negative_int, default=None,
                   help=f"data-loading workers (default: {DEFAULT_WORKERS}, capped by the CPUs available)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (.onnx files run on the CPU)")
    p.add_argument("--json", action="store_true", help="also print one JSON line with the results")
    p.add_argument("--per_class", action="store_true",
                   help="also report top-1 per class of an image folder (always, for a model that names its classes)")
    return p


def output_count(model):
    """The number of classes `model` predicts (the rows of its classifier, or the ONNX model's output width)."""
    if isinstance(model, OnnxStudent):
        return model.num_classes
    return model.get_submodule(model.classifier_name).weight.shape[0]


def check_classes(model, classes, dataset, trained_on, path):
    """Refuse a model whose classifier does not have one output per class of the dataset."""
    outputs = output_count(model)
    if outputs == classes:
        return
    if trained_on and trained_on != dataset:
        hint = f"it was trained on {trained_on}: pass --dataset {trained_on}"
    else:
        hint = "pass the --dataset it was trained on"
    raise UsageError(f"{path} predicts {outputs} classes but {dataset} has {classes}; {hint}")


def validation_set(model, opt, dataset, root, config):
    """The dataset's validation split, after checking that `model` has one output per class."""
    trained_on = config.get("dataset")
    if dataset != "imagenet":  # the class count is fixed: refuse before reading or downloading any data
        check_classes(model, num_classes(dataset), dataset, trained_on, opt.path)
    image_size = (opt.image_size or config.get("image_size") or 224) if dataset == "imagenet" else None
    val = build_dataset(dataset, root, "val", download=opt.download, image_size=image_size)
    if dataset == "imagenet":
        check_classes(model, len(val.classes), dataset, trained_on, opt.path)
    return val


def load_onnx(opt):
    """(model run by ONNX Runtime, info, config from the file's metadata) of an exported .onnx student."""
    given = [flag for flag, value in (("--official", opt.official), ("-s", opt.co_sponge), ("--ft", opt.ft),
                                      ("--model_s", opt.model_s)) if value]
    if given:
        raise UsageError(f"{', '.join(given)} apply to .pth checkpoints; an .onnx file holds its deployed model: "
                         "drop them")
    if opt.device not in ("auto", "cpu"):
        raise UsageError(f"an .onnx file runs on ONNX Runtime's CPU provider; drop --device {opt.device}")
    if not os.path.isfile(opt.path):
        raise UsageError(f"{opt.path} does not exist; check the path")
    try:
        model = OnnxStudent(opt.path)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own classes for unreadable files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot read {opt.path} as an ONNX model ({reason[:200]}); export it again with "
                         "scripts/export_student.py --onnx") from None
    if opt.image_size and model.image_size and opt.image_size != model.image_size:
        raise UsageError(f"{opt.path} takes {model.image_size}x{model.image_size} inputs; drop --image_size or "
                         "export the student again at that size")
    config = {"dataset": model.metadata.get("dataset"), "image_size": model.image_size,
              **{k: model.metadata[k] for k in ("classes", "mean", "std", "folded_from") if k in model.metadata}}
    saved = model.metadata.get("saved_accuracy")
    info = {"model_s": model.metadata.get("model_s", os.path.basename(opt.path)),
            "saved_accuracy": float(saved) if saved not in (None, "", "None") else None}
    return model, info, config


def load_checkpoint_student(opt):
    """(PyTorch student, info, config) of a .pth checkpoint (ours, a folded export, or an official release)."""
    checkpoint = load_checkpoint(opt.path)
    config = checkpoint_config(checkpoint)
    dataset = opt.dataset or config.get("dataset")
    model_s = opt.model_s or config.get("model_s") or config.get("model")
    zoo = imagenet_model_dict if dataset == "imagenet" or model_s in imagenet_model_dict else model_dict
    external = is_external(model_s)  # torchvision:/timm: students (helper/deploy/external.py)
    if external:
        zoo, checkpoint = external_deploy.zoo_for(config), external_deploy.with_hook_prefix(checkpoint)
    model, info = load_student(zoo, checkpoint, opt.path, model_s=model_s, n=opt.co_sponge, ft=opt.ft,
                               official=opt.official, num_classes=config.get("num_classes") if external else None)
    if config.get("norm_variant") and hasattr(model, "prepare_norm_student"):
        model.prepare_norm_student()  # a folded export of NORM's MobileNetV2 variant: no key says so
    return model, info, config


def evaluate(opt):
    """Load, evaluate and return the metrics dict."""
    onnx = opt.path.lower().endswith(".onnx")
    if onnx:
        model, info, config = load_onnx(opt)
    else:
        model, info, config = load_checkpoint_student(opt)
    runtime = setup_runtime("cpu" if onnx else opt.device)
    dataset = opt.dataset or config.get("dataset") or ("imagenet" if info["model_s"] in imagenet_model_dict
                                                       else "cifar100")
    root = opt.data_root or ("./data/imagenet" if dataset == "imagenet" else "./data")
    classes = external_deploy.model_classes(config)
    if classes and dataset == "imagenet":  # a model of your own classes: the folder's, checked by name
        image_size = opt.image_size or config.get("image_size") or 224
        split = external_deploy.run_split(config, opt.path)  # a flat folder: the run's validation images only
        val = external_deploy.folder_eval_set(root, config, int(image_size), split)
        user_folder.check_classes(classes, val.classes, opt.path, flag="--path", verb="predicts")
    else:
        val = validation_set(model, opt, dataset, root, config)
    workers = worker_count(opt.num_workers, DEFAULT_WORKERS, runtime)
    model = runtime.to_device(model)
    metrics = validate(model, eval_loader(val, opt.batch_size, runtime, workers), runtime)
    result = {"path": opt.path, "model_s": info["model_s"], "dataset": dataset, "top1": metrics["acc1"],
              "top5": metrics["acc5"], "loss": metrics["loss"], "saved_accuracy": info["saved_accuracy"]}
    if classes:
        result["dataset"] = root  # your folder, not ImageNet
        result["images"] = len(val)
        result["split"] = split if split and not os.path.isdir(os.path.join(root, "val")) else None
    if (classes or opt.per_class) and hasattr(val, "classes"):
        rows = external_deploy.per_class_accuracy(model, val, runtime, opt.batch_size)
        result["per_class"] = {name: {"correct": c, "images": t} for name, c, t in rows}
    return result


def main(argv=None):
    """Entry point."""
    opt = parser().parse_args(argv)
    result = evaluate(opt)
    print(f"{result['model_s']} on {result['dataset']}: top-1 {result['top1']:.2f} top-5 {result['top5']:.2f}")
    if result.get("split"):
        print(f"(the {result['images']} validation images listed in {result['split']})")
    if "per_class" in result:
        print("per-class top-1 (worst first):")
        print("\n".join(external_deploy.per_class_table(
            [(name, row["correct"], row["images"]) for name, row in result["per_class"].items()])))
    if opt.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main)
