"""Export a NORM student for deployment: its feature transform folded away, as a .pth and/or an ONNX model.

python scripts/export_student.py --path save/student_model/<run>/resnet8x4_best.pth --out resnet8x4_deploy.pth
python scripts/export_student.py --path <run>/resnet8x4_best.pth --onnx resnet8x4.onnx --report --model_t resnet32x4
The .pth loads strictly into `models.model_dict[model_s](num_classes=...)` (RepDistiller's {'model': ...} format;
a SimKD student's is a models.simkd.SimKDStudent state dict: backbone, projector and the teacher's classifier),
a torchvision:NAME student's into `torchvision.models.NAME(num_classes=K)` (its ONNX metadata lists the classes);
the .onnx has a dynamic batch axis. Every output is checked on a fixed batch of images in the dataset's test format
against the student with its transform (the .onnx by ONNX Runtime on CPU) and written only when it agrees.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from helper import deploy  # noqa: E402
from helper.deploy import external as external_deploy  # noqa: E402
from helper.runs.checkpoint import load_checkpoint, model_state, save_atomic  # noqa: E402
from helper.cli.entry import ArgumentParser, run_cli  # noqa: E402
from helper.errors import UsageError  # noqa: E402
from helper.runs.files import is_run_folder, write_bytes_atomic  # noqa: E402
from helper.teachers.loading import build_model, checkpoint_config, load_model_state, load_student  # noqa: E402
from helper.argtypes import positive_int  # noqa: E402
from models import imagenet_model_dict, model_dict  # noqa: E402
from models.external import is_external  # noqa: E402

FORMATS = ("pt", "onnx", "both")


def parser():
    """Flags of the exporter."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", required=True, help="student checkpoint with a feature transform")
    p.add_argument("--out", default=None, help="where to write the folded .pth checkpoint")
    p.add_argument("--onnx", default=None, help="where to write the ONNX model")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="what to write (default: what --out/--onnx name; 'both' derives a missing name from the other)")
    p.add_argument("--model_s", default=None, help="architecture (default: from the checkpoint's config)")
    p.add_argument("-s", "--co-sponge", dest="co_sponge", type=positive_int, default=None, help="N of the transform")
    p.add_argument("--ft", choices=["residual", "plain"], default=None, help="transform variant")
    p.add_argument("--official", action="store_true", help="the file is an official NORM release (convert keys)")
    p.add_argument("--dataset", default=None, choices=["cifar100", "cifar10", "fashion_mnist", "imagenet"],
                   help="input format of the check and of the export (default: the checkpoint's)")
    p.add_argument("--image_size", type=positive_int, default=None,
                   help="ImageNet input size (default: the run's, else 224)")
    p.add_argument("--report", action="store_true",
                   help="print parameters and FLOPs of the teacher, the student with FT and the deployed student")
    p.add_argument("--model_t", default=None, help="teacher architecture for --report (default: the run's)")
    p.add_argument("--path_t", default=None, help="teacher checkpoint for --report (instead of --model_t)")
    return p


def exported_config(config, info, opt, variant, imagenet):
    """The folded file's config: what evaluate_student.py needs to run it without extra flags."""
    exported = {"model": info["model_s"], "folded_from": opt.path, "norm_variant": variant}
    exported.update({key: config[key] for key in ("dataset", "image_size") if config.get(key) is not None})
    exported.update({key: getattr(opt, key) for key in ("dataset", "image_size") if getattr(opt, key, None)})
    if imagenet:  # official ImageNet releases carry no config, but their architecture says it
        exported.setdefault("dataset", "imagenet")
    return exported


def output_paths(opt):
    """(pt path or None, onnx path or None) from --out, --onnx and --format."""
    fmt = opt.format or ("both" if opt.out and opt.onnx else "onnx" if opt.onnx else "pt" if opt.out else None)
    if fmt is None:
        if opt.report:
            return None, None
        raise UsageError("nothing to export: give --out FILE.pth and/or --onnx FILE.onnx (or --report)")
    pt, onnx = opt.out, opt.onnx
    if fmt == "both":
        pt = pt or os.path.splitext(onnx)[0] + ".pth"
        onnx = onnx or os.path.splitext(pt)[0] + ".onnx"
    elif fmt == "pt" and (onnx or not pt):
        raise UsageError("--format pt writes --out FILE.pth only; " + ("drop --onnx" if onnx else "give --out"))
    elif fmt == "onnx" and (pt or not onnx):
        raise UsageError("--format onnx writes --onnx FILE.onnx only; " + ("drop --out" if pt else "give --onnx"))
    if pt and onnx and os.path.abspath(pt) == os.path.abspath(onnx):
        raise UsageError(f"--out and --onnx name the same file {pt}; give two names")
    for path, flag in ((pt, "--out"), (onnx, "--onnx")):
        if path and os.path.isdir(path):
            raise UsageError(f"{flag} {path} is a folder; give a file name, e.g. {os.path.join(path, 'student')}")
        if path:
            refuse_overwriting_inputs(path, flag, opt)
    return pt, onnx


def _same_file(a, b):
    """Whether two paths name one file: through links when both exist, else by their absolute paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def refuse_overwriting_inputs(path, flag, opt):
    """An output must not replace the checkpoint being exported, the teacher, or any file of a training run.

    The folded file lacks the transform and the resume state, so writing it over a run's checkpoint (or into a run
    folder, which a running or resumed training owns) would lose them for good.
    """
    for source, source_flag in ((opt.path, "--path"), (getattr(opt, "path_t", None), "--path_t")):
        if source and os.path.exists(source) and _same_file(path, source):  # a missing one is reported on loading
            raise UsageError(f"{flag} {path} is the {source_flag} checkpoint itself; write the export elsewhere, "
                             "e.g. --out student_deploy.pth")
    folder = os.path.dirname(os.path.abspath(path))
    if is_run_folder(folder):
        raise UsageError(f"{flag} {path} is inside the training run folder {folder}; write the export outside it")


def prepare_out(path, flag="--out"):
    """Create the folder of an output file when it is missing."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the folder {folder} for {flag} ({err.strerror or err}); "
                         f"choose a writable {flag}") from None


def report_teacher(opt, config, zoo, num_classes):
    """(name, model) of the teacher for --report: --path_t's weights, else --model_t (or the run's) built randomly."""
    from helper.teachers.loading import infer_teacher_name

    if opt.path_t:
        state = model_state(load_checkpoint(opt.path_t), opt.path_t)
        name = opt.model_t or infer_teacher_name(zoo, state, opt.path_t, num_classes)
        return name, load_model_state(zoo, name, state, opt.path_t, num_classes, "--model_t")
    name = opt.model_t or config.get("model_t")
    if not name:
        raise UsageError("--report needs the teacher: pass --model_t NAME (its cost does not depend on its weights) "
                         "or --path_t FILE")
    if is_external(name):  # built with the teacher's own module choices, not the student's
        zoo = external_deploy.zoo_for(config, role="t")
    return name, build_model(zoo, name, num_classes, "--model_t")


def cost_report(opt, config, zoo, model, deployed, name, image_size):
    """The markdown table of parameters and FLOPs (batch 1) of teacher, student with FT and deployed student."""
    num_classes = model.get_submodule(model.classifier_name).weight.shape[0]
    teacher_name, teacher = report_teacher(opt, config, zoo, num_classes)
    shape = (1, 3, image_size, image_size)
    kept = " + FT as one 1x1 conv" if deployed.kind == "kept_ft" else ""
    trained = ("student as trained (with projector and the teacher's classifier)" if deployed.kind == "simkd" else
               "student as trained (with FT)")
    rows = deploy.cost_rows([(teacher_name, "teacher", teacher),
                             (name, trained, model),
                             (name + kept, "deployed student", deployed.module)], shape)
    return deploy.cost_table(rows, shape)


def export(opt):
    """Load, build the deployed model, verify every requested output, write them; returns what to print."""
    pt_path, onnx_path = output_paths(opt)
    checkpoint = load_checkpoint(opt.path)
    config = checkpoint_config(checkpoint)
    model_s = opt.model_s or config.get("model_s") or config.get("model")
    zoo = imagenet_model_dict if model_s in imagenet_model_dict else model_dict
    external = is_external(model_s)  # torchvision:/timm: students (helper/deploy/external.py)
    if external:
        zoo, checkpoint = external_deploy.zoo_for(config), external_deploy.with_hook_prefix(checkpoint)
    imagenet = zoo is imagenet_model_dict or (external and config.get("dataset") in (None, "imagenet"))
    model, info = load_student(zoo, checkpoint, opt.path, model_s=model_s, n=opt.co_sponge, ft=opt.ft,
                               official=opt.official, num_classes=config.get("num_classes") if external else None)
    model.eval()
    name = info["model_s"]
    foldable = model.feature_transform is None or getattr(model, "transform_foldable", False)
    if pt_path and not foldable and external:
        raise UsageError(f"{name}: layers other than global average pooling sit between the map NORM matches "
                         f"({model.matched_module_name}) and the classifier, so the transform cannot be folded and no "
                         f"plain {name} .pth exists; export it with --onnx FILE.onnx (the transform kept as one 1x1 "
                         "convolution) or deploy the checkpoint as it is")
    if pt_path and not foldable:
        raise UsageError(f"{name}: its transform sits before the final BatchNorm+ReLU, so it cannot be folded into "
                         "the classifier and no plain .pth exists; export it with --onnx FILE.onnx (the transform "
                         "kept as one 1x1 convolution) or deploy the checkpoint as it is")
    dataset = deploy.input_dataset(opt.dataset or config.get("dataset"), imagenet)
    image_size = (opt.image_size or config.get("image_size") or 224) if dataset == "imagenet" else 32
    images = deploy.verification_batch(dataset, image_size)
    with torch.no_grad():
        reference = model(images)
        deployed = deploy.deployed_student(model, zoo, name)
        lines = []
        if not foldable:
            conv = deployed.module.feature_transform.conv
            where = (f"layers other than global average pooling follow {model.matched_module_name}" if external
                     else "it sits before the final BatchNorm+ReLU")
            lines.append(f"note: {name}'s transform cannot be folded into the classifier ({where}): the ONNX model "
                         f"keeps it as one {conv.in_channels}->{conv.out_channels} 1x1 convolution with bias (both "
                         "BatchNorms and the identity folded in)")
        variant = getattr(model, "norm_student", False)
        exported = exported_config(config, info, opt, variant, imagenet)
        if external:
            exported.update(external_deploy.config_extras(config))
        pt_check = onnx_check = data = None
        if pt_path:
            pt_check = deploy.require(deploy.compare(reference, deployed.module(images)), deploy.FOLD_TOLERANCE,
                                      "the folded .pth model")
        if onnx_path:
            metadata = {**{("model_s" if key == "model" else key): external_deploy.metadata_value(value)
                           for key, value in exported.items()},
                        "num_classes": reference.shape[1], "deployed": deployed.kind,
                        "saved_accuracy": info["saved_accuracy"]}
            data = deploy.onnx_bytes(deployed.module, images[:2], metadata)
            onnx_check = deploy.require(deploy.check_onnx(data, images, reference), deploy.ONNX_TOLERANCE,
                                        "ONNX Runtime on the exported model")
    if pt_path:  # written only after every requested output passed its check
        prepare_out(pt_path, "--out")
        state = external_deploy.library_state(deployed.state) if external else deployed.state
        save_atomic({"model": state, "epoch": None, "accuracy": info["saved_accuracy"],
                     "config": exported}, pt_path)
        lines.append(f"wrote {pt_path}; {deploy.describe(pt_check, deploy.FOLD_TOLERANCE)}")
    if onnx_path:
        prepare_out(onnx_path, "--onnx")
        write_bytes_atomic(data, onnx_path)
        lines.append(f"wrote {onnx_path} (ONNX opset {deploy.OPSET}, dynamic batch axis, checked by ONNX Runtime "
                     f"on CPU at batch {images.shape[0]} and 1); {deploy.describe(onnx_check, deploy.ONNX_TOLERANCE)}")
    if deployed.kind == "simkd":
        lines.append(f"note: a SimKD student deploys as {name} + its projector + the teacher's classifier "
                     "(models.simkd.SimKDStudent; the .pth is its state dict, which evaluate_student.py loads)")
    if variant and pt_path:
        lines.append("note: load the .pth into MobileNetV2(num_classes=..., norm_student=True), NORM's student "
                     "variant without ReLU after conv1 and conv2")
    if opt.report:
        lines.append(cost_report(opt, config, zoo, model, deployed, name, image_size))
    errors = [check.error for check in (pt_check, onnx_check) if check is not None]
    return lines, max(errors) if errors else None


def main(argv=None):
    """Entry point; returns the largest relative logit difference of the outputs written (None for --report only)."""
    opt = parser().parse_args(argv)
    lines, error = export(opt)
    print("\n".join(lines))
    return error


if __name__ == "__main__":
    run_cli(main)
