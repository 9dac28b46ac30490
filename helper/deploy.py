"""Deploying a NORM student: the folded model, its ONNX export checked by ONNX Runtime, and its cost.

A student's eval-mode feature transform (FT) is an affine map per pixel (`NormTransform.as_affine`). Where the FT
feeds global average pooling and the linear classifier directly it folds into the classifier and the deployed
model is the plain architecture; elsewhere (WRN: FT -> BN -> ReLU -> pool) it is kept as one 1x1 convolution.
Every export is compared with the student as trained, on images in the dataset's real test format, and refused
when it differs beyond the tolerances below.
"""
import copy
import inspect
import io
import warnings
from collections import namedtuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import UsageError

# max |logit difference| over the verification batch divided by max(1, max |reference logit|). float32 rounding
# through a deep network stays near 1e-6; a wrong fold or a broken graph is off by 1e-2 or more.
FOLD_TOLERANCE = 1e-4   # the folded PyTorch model (.pth) against the student with its FT
ONNX_TOLERANCE = 1e-4   # ONNX Runtime (CPU) on the exported file against the student with its FT
VERIFY_IMAGES = 16      # images in the fixed verification batch
VERIFY_SEED = 0
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"

Deployed = namedtuple("Deployed", "module state kind")  # state: the plain model's state dict (None when kept FT)
Check = namedtuple("Check", "error agree total")


# --- the verification batch ------------------------------------------------------------------------------------


def input_dataset(dataset, imagenet):
    """The dataset whose test transform shapes the inputs: imagenet, fashion_mnist, cifar10 or cifar100."""
    if imagenet or dataset == "imagenet":
        return "imagenet"
    return dataset if dataset in ("cifar10", "cifar100", "fashion_mnist") else "cifar100"


def eval_transform(dataset, image_size):
    """The dataset's own test-time transform (PIL image -> normalised 3-channel tensor)."""
    from dataset import cifar_transforms, fashion_mnist_transforms, imagenet_transforms

    if dataset == "imagenet":
        return imagenet_transforms(False, image_size)
    if dataset == "fashion_mnist":
        return fashion_mnist_transforms(False)
    return cifar_transforms(10 if dataset == "cifar10" else 100, False)


def _smooth_image(rng, height, width, channels):
    """uint8 H x W [x C]: a bilinearly upsampled 4x4 random colour field plus pixel noise (image-like statistics)."""
    coarse = rng.integers(0, 256, size=(4, 4, channels), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"
    field = np.asarray(Image.fromarray(coarse.squeeze(-1) if channels == 1 else coarse, mode)
                       .resize((width, height), Image.BILINEAR), dtype=np.int64)
    noise = rng.integers(-24, 25, size=field.shape)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def verification_images(dataset, image_size, count=VERIFY_IMAGES, seed=VERIFY_SEED):
    """`count` deterministic PIL images in the dataset's stored format (CIFAR 32x32 RGB, Fashion-MNIST 28x28 grey
    zero-padded to 32, ImageNet-like RGB photos larger than the crop and not square)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        if dataset == "fashion_mnist":
            images.append(Image.fromarray(np.pad(_smooth_image(rng, 28, 28, 1), 2), "L"))
        elif dataset == "imagenet":
            height = round(image_size * 1.25)
            images.append(Image.fromarray(_smooth_image(rng, height, round(height * 4 / 3), 3), "RGB"))
        else:
            images.append(Image.fromarray(_smooth_image(rng, 32, 32, 3), "RGB"))
    return images


def verification_batch(dataset, image_size, count=VERIFY_IMAGES, seed=VERIFY_SEED):
    """The fixed batch every export is checked on: `verification_images` through the real test transform."""
    transform = eval_transform(dataset, image_size)
    return torch.stack([transform(image) for image in verification_images(dataset, image_size, count, seed)])


# --- comparing outputs -----------------------------------------------------------------------------------------


def relative_difference(reference, candidate):
    """max|candidate - reference| relative to the largest reference logit magnitude (at least 1)."""
    difference = (candidate.float() - reference.float()).abs().max().item()
    return difference / max(1.0, reference.abs().max().item())


def compare(reference, candidate):
    """Check(relative logit difference, images whose top-1 class agrees, images)."""
    agree = int((reference.argmax(1) == candidate.argmax(1)).sum().item())
    return Check(relative_difference(reference, candidate), agree, reference.shape[0])


def require(check, tolerance, what):
    """Refuse (UsageError, nothing written) unless top-1 agrees on every image and the logits are within tolerance."""
    if check.agree == check.total and check.error <= tolerance:
        return check
    raise UsageError(f"export refused, nothing written: {what} differs from the student with its feature transform "
                     f"(largest logit difference {check.error:.2e} relative to the largest logit, tolerance "
                     f"{tolerance:.0e}; top-1 agrees on {check.agree}/{check.total} verification images); "
                     "report this with the checkpoint")


def describe(check, tolerance):
    """One phrase for the output: the measured difference, the tolerance and the top-1 agreement."""
    return (f"largest logit difference to the student with its FT {check.error:.2e} relative to its largest logit "
            f"(tolerance {tolerance:.0e}), top-1 agrees on {check.agree}/{check.total} verification images")


# --- the deployed model --------------------------------------------------------------------------------------


class AffineTransform(nn.Module):
    """An eval-mode NORM FT as one 1x1 convolution with bias (both BNs and the identity folded in): (y, y)."""

    def __init__(self, ft):
        super().__init__()
        a, c = ft.as_affine()
        self.conv = nn.Conv2d(a.shape[1], a.shape[0], 1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(a[:, :, None, None])
            self.conv.bias.copy_(c)

    def forward(self, x):
        y = self.conv(x)
        return y, y  # the host's (output, matched feature) contract


def deployed_student(model, zoo, name):
    """The model to deploy for the eval-mode student `model` (architecture `name` of `zoo`).

    kind 'folded': the plain architecture with the FT folded into the classifier (its state dict in `state`);
    'kept_ft': a copy whose FT is one 1x1 convolution (the FT cannot be folded); 'plain': the student had no FT;
    'simkd': a models.simkd.SimKDStudent, deployed as it is (its state dict in `state`).
    """
    from models.norm import fold_transform_into_classifier
    from .model_loading import build_model

    model.eval()
    if getattr(model, "deploys_as_is", False):  # SimKD: backbone + projector + the teacher's classifier, no FT
        return Deployed(model, model.state_dict(), "simkd")
    if model.feature_transform is not None and not getattr(model, "transform_foldable", False):
        kept = copy.deepcopy(model)
        kept.feature_transform = AffineTransform(model.feature_transform)
        return Deployed(kept.eval(), None, "kept_ft")
    state = fold_transform_into_classifier(model)
    plain = build_model(zoo, name, state[model.classifier_name + ".weight"].shape[0], "--model_s")
    if getattr(model, "norm_student", False):
        plain.prepare_norm_student()  # MobileNetV2's NORM variant: same keys, two ReLUs fewer
    plain.load_state_dict(state, strict=True)
    return Deployed(plain.eval(), state, "folded" if model.feature_transform is not None else "plain")


# --- ONNX ----------------------------------------------------------------------------------------------------


class LogitsOnly(nn.Module):
    """`model(x)` with no keyword arguments, so the traced graph has one input and one output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def onnx_bytes(model, example, metadata=None):
    """Serialised ONNX of eval-mode `model` (input 'input', output 'logits', dynamic batch axis) with `metadata`.

    The TorchScript exporter (`dynamo=False`) is used: it needs no onnxscript, exports about four times faster
    than the dynamo exporter and exists from torch 2.1 to 2.14 (deprecated since 2.9); `check_onnx` guards
    whatever it produces.
    """
    import onnx

    buffer = io.BytesIO()
    # torch >= 2.5 takes `dynamo` (True by default from 2.9); older versions have only the TorchScript exporter
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice and tracer chatter say nothing about this model
        torch.onnx.export(LogitsOnly(model).eval(), (example,), buffer, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **legacy)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        if value is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def onnx_session(source, threads=None):
    """An ONNX Runtime CPU session on a file path or serialised bytes (`threads`: intra-op threads, default torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def run_session(session, images):
    """Logits (a float32 CPU tensor) of an ONNX Runtime session on a batch of images."""
    feed = {session.get_inputs()[0].name: images.detach().cpu().float().contiguous().numpy()}
    return torch.from_numpy(session.run(None, feed)[0])


def check_onnx(data, images, reference):
    """Run the serialised model on the whole batch and on its first image alone (the batch axis must be dynamic);
    returns the Check against `reference` (the larger error; an image counts as agreeing only in both runs)."""
    session = onnx_session(data)
    whole = run_session(session, images)
    single = run_session(session, images[:1])
    total = reference.shape[0]
    if tuple(whole.shape) != tuple(reference.shape) or tuple(single.shape) != tuple(reference[:1].shape):
        return Check(float("inf"), 0, total)
    batch, alone = compare(reference, whole), compare(reference[:1], single)
    return Check(max(batch.error, alone.error), max(0, batch.agree - (1 - alone.agree)), total)


def onnx_metadata(session):
    """The metadata_props an exported file carries ({} when none)."""
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxStudent(nn.Module):
    """An exported .onnx student run by ONNX Runtime on CPU, callable like the PyTorch model (logits)."""

    def __init__(self, path):
        super().__init__()
        self.session = onnx_session(path)
        self.metadata = onnx_metadata(self.session)
        classes = self.session.get_outputs()[0].shape[-1]
        self.num_classes = classes if isinstance(classes, int) else int(self.metadata.get("num_classes", 0)) or None
        size = self.session.get_inputs()[0].shape[-1]  # the export fixes the image size, only the batch is dynamic
        self.image_size = size if isinstance(size, int) else None

    def forward(self, images):
        return run_session(self.session, images)


# --- cost ----------------------------------------------------------------------------------------------------


def parameter_count(model):
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


def flop_count(model, input_shape):
    """FLOPs of one eval forward pass at `input_shape` by torch.utils.flop_counter (2 per multiply-accumulate of
    convolutions and matrix products; BatchNorm, activations and pooling are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    param = next(model.parameters())
    x = torch.zeros(input_shape, dtype=param.dtype, device=param.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()


def si_number(value):
    """A count with a K, M or G suffix and two decimals."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


def cost_rows(models, input_shape):
    """[(label, role, parameters, FLOPs)] for [(label, role, model)]."""
    return [(label, role, parameter_count(model), flop_count(model, input_shape)) for label, role, model in models]


def cost_table(rows, input_shape):
    """A markdown table of cost_rows, with each model's FLOPs relative to the first row's."""
    shape = "x".join(str(d) for d in input_shape)
    lines = [f"| model | role | parameters | FLOPs ({shape}) | FLOPs vs {rows[0][0]} |", "|---|---|---|---|---|"]
    for label, role, params, flops in rows:
        ratio = flops / max(rows[0][3], 1)
        lines.append(f"| {label} | {role} | {si_number(params)} | {si_number(flops)} | {ratio:.3f} |")
    return "\n".join(lines)
