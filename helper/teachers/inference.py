"""The frozen teacher as an inference engine for the distillation step; the original stays as it is.

The step only reads the teacher's features and logits, so it can run a copy made for inference: BatchNorm folded
into the convolutions (models/fold_bn.py), its own memory format (measured at start-up, cached), optionally
torch.compile'd (on CPU with inductor's freezing, which prepacks the frozen weights for oneDNN). It runs under
`torch.no_grad`, not `torch.inference_mode`: inference tensors may not be saved for backward, and several methods
multiply teacher features with student tensors that need gradients. The copy is a plain attribute of a plain object,
outside any module tree: it never enters a state dict, an optimizer or DDP.
"""
import contextlib
import copy
import hashlib
import json
import os
import time

import torch

from helper.runtime.device import device_model_name
from helper.runtime.distributed import broadcast_from_rank0
from models.fold_bn import count_batchnorms, fold_batchnorms

# safety net only: a folded copy further than this from the original (max |diff| / max |value|) is not used
FOLD_CHECK_RTOL = 1e-3
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def default_cache_path():
    """Where start-up layout measurements are kept: $XDG_CACHE_HOME (or ~/.cache)/norm_kd/teacher_layout.json."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "norm_kd", "teacher_layout.json")


def device_signature(device):
    """The machine as far as speed goes: the GPU's name, or the CPU model and thread count; plus torch's version."""
    name = device_model_name(device)
    if device.type != "cuda":
        name = f"{name}, {torch.get_num_threads()} threads"
    return f"{name}, torch {torch.__version__}"


def network_signature(network):
    """The architecture as far as speed goes: class name and a digest of every parameter's name and shape."""
    shapes = [(name, tuple(t.shape)) for name, t in network.state_dict().items()]
    return f"{type(network).__name__}-{hashlib.sha1(repr(shapes).encode()).hexdigest()[:12]}"


def _read_cache(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path, key, value):
    """Add one entry to the cache file (atomically); an unwritable cache is no error, only no cache."""
    from helper.errors import CheckpointWriteError
    from helper.runs.files import write_text_atomic

    data = _read_cache(path)
    data[key] = value
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_text_atomic(json.dumps(data, indent=1, sort_keys=True), path)
    except (OSError, RuntimeError, CheckpointWriteError):  # the writer reports OSError as CheckpointWriteError
        pass


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_memory_formats(run, network, example, rounds=2):
    """Seconds per call of `run(network, x)` with `network` and `x` in each memory format (interleaved, best of rounds).

    `network` is converted in place and left contiguous; one untimed call per format first (oneDNN/cuDNN set-up).
    """
    inputs = {name: example.contiguous(memory_format=fmt) for name, fmt in FORMATS.items()}
    best = dict.fromkeys(FORMATS, float("inf"))
    for round_ in range(rounds + 1):
        for name, fmt in FORMATS.items():
            network.to(memory_format=fmt)
            _synchronize(example.device)
            tic = time.perf_counter()
            run(network, inputs[name])
            _synchronize(example.device)
            if round_:  # round 0 is the warm-up
                best[name] = min(best[name], time.perf_counter() - tic)
    network.to(memory_format=torch.contiguous_format)
    return best


@contextlib.contextmanager
def full_fp32():
    """TF32 off for convolutions (cuDNN uses it for fp32 by default) and matmuls while inside; restored after.

    On Ampere and later GPUs, TF32 rounds every fp32 convolution's inputs to a 10-bit mantissa, so a folded and an
    unfolded teacher differ by 5e-3 to 5e-2 relative whatever the fold's own error (~1e-5 in fp32).
    """
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def _max_relative_difference(reference, candidate):
    """max |a - b| / max |a| over every tensor of two (features, logits) results."""
    (feat_a, logit_a), (feat_b, logit_b) = reference, candidate
    worst = 0.0
    for a, b in zip(list(feat_a) + [logit_a], list(feat_b) + [logit_b]):
        scale = a.detach().abs().max().clamp_min(1e-12)
        worst = max(worst, ((a.detach() - b.detach()).abs().max() / scale).item())
    return worst


class InferenceTeacher:
    """images -> (features, logits) of an inference copy of `teacher`, as `teacher(images, is_feat=True, preact=...)`.

    `example`: a batch of the training shape on the teacher's device (random values will do), used to find the
    foldable BatchNorms, to check the folded copy and to measure the memory formats. `memory_format`: "auto"
    (measured, cached in `cache_path`), "contiguous" or "channels_last". `autocast`: the step's autocast context
    factory, so that the measurement sees the step's precision. `fold=False` keeps the BatchNorms.
    """

    def __init__(self, teacher, example, preact=False, memory_format="auto", compile=False, fold=True,
                 autocast=contextlib.nullcontext, cache_path=None):
        if memory_format not in ("auto", *FORMATS):
            raise ValueError(f"memory_format must be auto, {' or '.join(FORMATS)}, not {memory_format!r}")
        was_training = teacher.training
        teacher.eval()
        self.preact, self.device = preact, example.device
        self.notes = []
        try:
            self.network, self.folded = self._fold(teacher, example, fold)
        finally:
            teacher.train(was_training)
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.total_batchnorms = count_batchnorms(teacher)
        self.memory_format = self._choose_format(memory_format, teacher, example, autocast, cache_path)
        self.network.to(memory_format=FORMATS[self.memory_format])
        self.compiled = False
        self._forward = self.network
        if compile:
            self._compile(example, autocast)

    def _fold(self, teacher, example, fold):
        """(folded copy, pairs folded) — or an unfolded copy when folding is off or fails its check."""
        probe = example[:2]
        if not fold:
            return copy.deepcopy(teacher), 0
        kwargs = {"is_feat": True, "preact": self.preact}
        try:
            folded, pairs = fold_batchnorms(teacher, probe, **kwargs)
            with torch.no_grad(), full_fp32():  # measures the fold, not the hardware's TF32 rounding (~1e-2)
                error = _max_relative_difference(teacher(probe, **kwargs), folded(probe, **kwargs))
        except Exception as err:  # a model that reads a BatchNorm's tensors besides calling it, say
            self.notes.append(f"BatchNorm folding failed ({type(err).__name__}: {err}); teacher kept unfolded")
            return copy.deepcopy(teacher), 0
        if error > FOLD_CHECK_RTOL:
            self.notes.append(f"folded teacher differs by {error:.1e} (> {FOLD_CHECK_RTOL}); teacher kept unfolded")
            return copy.deepcopy(teacher), 0
        return folded, len(pairs)

    def _run(self, network, x):
        with torch.no_grad():
            return network(x, is_feat=True, preact=self.preact)

    def _choose_format(self, requested, teacher, example, autocast, cache_path):
        if requested != "auto":
            return requested
        if example.dim() != 4:
            return "contiguous"
        cache_path = cache_path or default_cache_path()
        key = " | ".join([device_signature(example.device), network_signature(teacher),
                          f"input {list(example.shape)} {example.dtype}",
                          f"autocast {_autocast_dtype(autocast, example)}", f"folded {self.folded}",
                          f"preact {self.preact}"])
        cached = _read_cache(cache_path).get(key)
        if isinstance(cached, dict) and cached.get("format") in FORMATS:
            self.layout_seconds, self.layout_source = cached.get("seconds", {}), "cached"
            return cached["format"]
        with autocast():  # 16 images suffice to rank the layouts; six such forwards cost ~1.5 CIFAR batches of 64
            seconds = time_memory_formats(self._run, self.network, example[:16])
        choice = min(seconds, key=lambda name: (seconds[name], name != "contiguous"))  # ties: contiguous
        self.layout_seconds, self.layout_source = seconds, "measured"
        _write_cache(cache_path, key, {"format": choice, "seconds": seconds})
        return choice

    def _compile(self, example, autocast):
        """torch.compile the copy (static shapes; on CPU with freezing) and compile it now, on `example`."""
        options = {"freezing": True} if example.device.type == "cpu" else None
        try:
            compiled = torch.compile(self.network, dynamic=False, options=options)
            with autocast():
                self._run(compiled, example.contiguous(memory_format=FORMATS[self.memory_format]))
        except Exception as err:  # no C++ compiler / triton, an unsupported op: the eager copy still serves
            self.notes.append(f"torch.compile of the teacher failed ({type(err).__name__}); running it eagerly")
            return
        self._forward, self.compiled = compiled, True

    def __call__(self, images):
        if images.device != self.device:
            raise RuntimeError(f"the inference teacher lives on {self.device} but the images are on {images.device}; "
                               "install it after moving the method to its device")
        return self._run(self._forward, images.contiguous(memory_format=FORMATS[self.memory_format]))

    def summary(self):
        """One line for the log: what was folded, which layout (and why), compiled or not."""
        layout = self.memory_format
        seconds = getattr(self, "layout_seconds", None)
        if seconds:
            ms = ", ".join(f"{name} {1000 * s:.1f} ms" for name, s in seconds.items())
            layout += f" ({self.layout_source}: {ms})"
        parts = [f"{self.folded} of {self.total_batchnorms} BatchNorms folded", layout,
                 "compiled" if self.compiled else "eager"]
        return "inference teacher: " + "; ".join(parts + self.notes)


def install_inference_teacher(method, example, **options):
    """Serve `method.teacher_forward` from an InferenceTeacher of `method.teacher` (`options` as InferenceTeacher's);
    returns the copy. Call it after the method is on its device; `method.teacher` stays the original, for checkpoints
    and validation, and the copy is in no state dict."""
    method.inference_teacher = None  # the previous copy is freed before the new one is built
    method.inference_teacher = InferenceTeacher(method.teacher, example, preact=method.teacher_preact_features(),
                                                **options)
    return method.inference_teacher


def install_for_training(method, image_shape, batch, runtime, *, compile, deterministic):
    """Install `method`'s inference teacher for the training step (a training batch of `image_shape` images); returns
    the log line saying what was installed. Every rank runs the same memory layout (see `share_layout`)."""
    # its own generator: building the copy (again on resume) must not move the run's RNG stream
    example = torch.randn(batch, *image_shape, generator=torch.Generator().manual_seed(0)).to(runtime.device)

    def install(memory_format, compile):
        return install_inference_teacher(method, example, compile=compile, autocast=runtime.autocast,
                                         memory_format=memory_format)

    return share_layout(install, runtime, compile=compile, deterministic=deterministic)


def share_layout(install, runtime, *, compile, deterministic):
    """Call `install(memory_format, compile)` so that every rank gets one layout; returns the installed copy's summary.

    --deterministic: no timing-dependent layout choice (a resume must pick the same kernels). Under DDP rank 0
    measures (or reads its cache) and every rank takes its choice: one layout, one set of kernels. Only the
    measurement precedes the broadcast; each rank compiles after it, all at the same time.
    """
    layout = "contiguous" if deterministic else "auto"
    if layout == "auto" and runtime.distributed:
        measured = install(layout, compile=False) if runtime.rank == 0 else None
        layout = broadcast_from_rank0(measured.memory_format if measured else None, runtime)
        installed = measured if measured is not None and not compile else install(layout, compile=compile)
        if runtime.rank != 0:
            installed.notes.append("layout chosen by rank 0")
    else:
        installed = install(layout, compile=compile)
    return installed.summary()


def _autocast_dtype(autocast, example):
    """The dtype `autocast()` computes in on the example's device, or "off"."""
    kind = example.device.type
    with autocast():
        return str(torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else "off"
