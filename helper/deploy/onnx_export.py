"""ONNX export of the deployed model, and ONNX Runtime sessions that run and check it."""
import inspect
import io
import warnings

import torch
from torch import nn

from helper.deploy.verify import Check, compare

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


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
