"""Fold a NORM student's feature transform into its classifier: a plain architecture with the same logits.

python scripts/export_student.py --path save/student_model/<run>/resnet8x4_best.pth --out resnet8x4_folded.pth
The output loads strictly into `models.model_dict[model_s](num_classes=...)` (RepDistiller's {'model': ...} format).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from helper.checkpoint import load_checkpoint, save_atomic  # noqa: E402
from helper.errors import ArgumentParser, UsageError, run_cli  # noqa: E402
from helper.model_loading import build_model, checkpoint_config, load_student  # noqa: E402
from helper.options import positive_int  # noqa: E402
from models import imagenet_model_dict, model_dict  # noqa: E402
from models.norm import fold_transform_into_classifier  # noqa: E402


def parser():
    """Flags of the exporter."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", required=True, help="student checkpoint with a feature transform")
    p.add_argument("--out", required=True, help="where to write the folded checkpoint")
    p.add_argument("--model_s", default=None, help="architecture (default: from the checkpoint's config)")
    p.add_argument("-s", "--co-sponge", dest="co_sponge", type=positive_int, default=None, help="N of the transform")
    p.add_argument("--ft", choices=["residual", "plain"], default=None, help="transform variant")
    p.add_argument("--official", action="store_true", help="the file is an official NORM release (convert keys)")
    return p


def relative_difference(plain, model, x):
    """max|plain(x) - model(x)| relative to the largest logit magnitude (at least 1)."""
    with torch.no_grad():
        reference = model(x)
        difference = (plain(x) - reference).abs().max().item()
    return difference / max(1.0, reference.abs().max().item())


def exported_config(config, info, opt, variant, imagenet):
    """The folded file's config: what evaluate_student.py needs to run it without extra flags."""
    exported = {"model": info["model_s"], "folded_from": opt.path, "norm_variant": variant}
    exported.update({key: config[key] for key in ("dataset", "image_size") if config.get(key) is not None})
    if imagenet:  # official ImageNet releases carry no config, but their architecture says it
        exported.setdefault("dataset", "imagenet")
    return exported


def prepare_out(path):
    """Create the folder of --out when it is missing."""
    if os.path.isdir(path):
        raise UsageError(f"--out {path} is a folder; give a file name, e.g. {os.path.join(path, 'student.pth')}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the folder {folder} for --out ({err.strerror or err}); "
                         "choose a writable --out") from None


def export(opt):
    """Fold, verify on a random batch, write; returns the largest relative logit difference and the variant flag."""
    checkpoint = load_checkpoint(opt.path)
    config = checkpoint_config(checkpoint)
    model_s = opt.model_s or config.get("model_s") or config.get("model")
    zoo = imagenet_model_dict if model_s in imagenet_model_dict else model_dict
    model, info = load_student(zoo, checkpoint, opt.path, model_s=model_s, n=opt.co_sponge, ft=opt.ft,
                                    official=opt.official)
    model.eval()
    if model.feature_transform is not None and not getattr(model, "transform_foldable", False):
        raise UsageError(f"{info['model_s']}: its transform sits before the final BatchNorm+ReLU, so it cannot be "
                         "folded into the classifier; deploy the checkpoint as it is (one extra 1x1 conv)")
    folded = fold_transform_into_classifier(model)
    num_classes = folded[model.classifier_name + ".weight"].shape[0]
    plain = build_model(zoo, info["model_s"], num_classes, "--model_s")
    variant = getattr(model, "norm_student", False)
    if variant:
        plain.prepare_norm_student()
    plain.load_state_dict(folded, strict=True)
    plain.eval()
    size = 224 if zoo is imagenet_model_dict else 32
    x = torch.randn(4, 3, size, size)
    error = relative_difference(plain, model, x)
    prepare_out(opt.out)
    save_atomic({"model": folded, "epoch": None, "accuracy": info["saved_accuracy"],
                 "config": exported_config(config, info, opt, variant, zoo is imagenet_model_dict)}, opt.out)
    return error, variant


def main(argv=None):
    """Entry point."""
    opt = parser().parse_args(argv)
    error, variant = export(opt)
    print(f"wrote {opt.out}; largest logit difference to the unfolded student, relative to its largest logit: "
          f"{error:.2e}")
    if variant:
        print("note: load it into MobileNetV2(num_classes=..., norm_student=True), NORM's student variant "
              "without ReLU after conv1 and conv2")
    return error


if __name__ == "__main__":
    run_cli(main)
