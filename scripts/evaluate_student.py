"""Evaluate a saved student (ours, or an officially released NORM checkpoint with --official) without training.

python scripts/evaluate_student.py --path save/student_model/<run>/resnet8x4_best.pth [--json]
python scripts/evaluate_student.py --official --path resnet8x4_norm.pth --model_s resnet8x4 -s 8
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset import build_dataset, num_classes  # noqa: E402
from helper.checkpoint import load_checkpoint  # noqa: E402
from helper.data import eval_loader, worker_count  # noqa: E402
from helper.engine import validate  # noqa: E402
from helper.errors import ArgumentParser, UsageError, run_cli  # noqa: E402
from helper.model_loading import checkpoint_config, load_student  # noqa: E402
from helper.options import non_negative_int, positive_int  # noqa: E402
from helper.runtime import setup_runtime  # noqa: E402
from models import imagenet_model_dict, model_dict  # noqa: E402

DEFAULT_WORKERS = 4


def parser():
    """Flags of the evaluator."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", required=True, help="student checkpoint")
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
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="also print one JSON line with the results")
    return p


def output_count(model):
    """The number of classes `model` predicts (the rows of its classifier)."""
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


def evaluate(opt):
    """Load, evaluate and return the metrics dict."""
    runtime = setup_runtime(opt.device)
    checkpoint = load_checkpoint(opt.path)
    config = checkpoint_config(checkpoint)
    dataset = opt.dataset or config.get("dataset") or "cifar100"
    model_s = opt.model_s or config.get("model_s") or config.get("model")
    zoo = imagenet_model_dict if dataset == "imagenet" or model_s in imagenet_model_dict else model_dict
    root = opt.data_root or ("./data/imagenet" if dataset == "imagenet" else "./data")
    model, info = load_student(zoo, checkpoint, opt.path, model_s=model_s, n=opt.co_sponge, ft=opt.ft,
                               official=opt.official)
    if config.get("norm_variant") and hasattr(model, "prepare_norm_student"):
        model.prepare_norm_student()  # a folded export of NORM's MobileNetV2 variant: no key says so
    val = validation_set(model, opt, dataset, root, config)
    workers = worker_count(opt.num_workers, DEFAULT_WORKERS, runtime)
    metrics = validate(runtime.to_device(model), eval_loader(val, opt.batch_size, runtime, workers), runtime)
    return {"path": opt.path, "model_s": info["model_s"], "dataset": dataset, "top1": metrics["acc1"],
            "top5": metrics["acc5"], "loss": metrics["loss"], "saved_accuracy": info["saved_accuracy"]}


def main(argv=None):
    """Entry point."""
    opt = parser().parse_args(argv)
    result = evaluate(opt)
    print(f"{result['model_s']} on {result['dataset']}: top-1 {result['top1']:.2f} top-5 {result['top5']:.2f}")
    if opt.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main)
