"""BatchNorm folded into the convolution that feeds it, on a copy of an eval-mode model (for inference only).

A BatchNorm in eval mode is a per-channel affine map, so `bn(conv(x))` equals one convolution with rescaled weights
and a bias. The fold is valid only where the convolution's output is used by that BatchNorm and nothing else (not
by a shortcut, a feature list, an in-place op or a second call). Which pairs qualify is read from the data flow of
one probe forward, not from module order, so the same code serves every family:

    folded, pairs = fold_batchnorms(teacher, example, is_feat=True, preact=False)

- resnet, resnetv2 (ResNet50), vgg, MobileNetV2, ShuffleV1/V2, the ImageNet ResNets and MobileNet: every BatchNorm
  follows its convolution directly and folds (pre-activation features are BN outputs, so they are kept).
- wrn: pre-activation blocks, so only each block's `bn2` (after `conv1`) folds. A block's `bn1` reads the block
  input (a residual sum, or the stem's output, itself a feature) and the network's final `bn1` reads block3's
  output (a feature too): no convolution feeds them alone.
- Never folded: a BatchNorm run twice in one pass (wrn's `preact` features rerun the next block's `bn1`), one whose
  convolution output is also used elsewhere, a SyncBatchNorm, and any conv or BN with hooks (HookedModel's features).
"""
import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}  # by the convolution's spatial dims
# Tensor methods and attributes that read metadata only: no use of the tensor's values (`.T`, `.data` are uses).
_METADATA_METHODS = {"size", "dim", "stride", "numel", "is_contiguous", "element_size", "is_floating_point"}
_METADATA_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_leaf", "is_cuda"}


def _reads_metadata_only(func):
    name = getattr(func, "__name__", "")
    if name == "__get__":  # an attribute: its descriptor carries the attribute's name
        return getattr(getattr(func, "__self__", None), "__name__", "") in _METADATA_ATTRIBUTES
    return name in _METADATA_METHODS


def _tensors(tree):
    """Every tensor inside nested lists, tuples and dicts."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


class _DataFlow(TorchFunctionMode):
    """Counts, for each convolution output of one forward pass, every use outside the conv/BN modules' insides."""

    def __init__(self, model):
        super().__init__()
        self.depth = 0  # > 0 inside a conv or BN module: its own F.conv2d/F.batch_norm are not uses
        self.outputs = {}  # id -> (conv output tensor, conv name); the tensor is held so no id is reused
        self.uses = {}  # id of a conv output -> list of users ("bn:<name>", "conv:<name>" or "op")
        self.calls = {}  # module name -> how many times it ran
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, _CONVS + (_BatchNorm,)):
                self.handles.append(module.register_forward_pre_hook(self._pre(name, module)))
                self.handles.append(module.register_forward_hook(self._post(name, module)))

    def _use(self, tensor, user):
        entry = self.outputs.get(id(tensor))
        if entry is not None and entry[0] is tensor:
            self.uses[id(tensor)].append(user)

    def _pre(self, name, module):
        kind = "bn" if isinstance(module, _BatchNorm) else "conv"

        def hook(mod, inputs):
            if self.depth == 0:
                for tensor in _tensors(inputs):
                    self._use(tensor, f"{kind}:{name}")
            self.calls[name] = self.calls.get(name, 0) + 1
            self.depth += 1
        return hook

    def _post(self, name, module):
        def hook(mod, inputs, output):
            self.depth -= 1
            if self.depth == 0 and isinstance(mod, _CONVS) and isinstance(output, torch.Tensor):
                self.outputs[id(output)] = (output, name)
                self.uses[id(output)] = []
        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth == 0 and not _reads_metadata_only(func):
            for tensor in _tensors((args, kwargs)):
                self._use(tensor, "op")
        return func(*args, **kwargs)

    def remove(self):
        for handle in self.handles:
            handle.remove()


def foldable_pairs(model, example, **forward_kwargs):
    """[(conv name, BN name)] of `model` whose conv output feeds only that BN, read from one forward on `example`."""
    flow = _DataFlow(model)
    try:
        with torch.no_grad(), flow:
            result = model(example, **forward_kwargs)
    finally:
        flow.remove()
    returned = {id(t) for t in _tensors(result)}
    modules = dict(model.named_modules())
    pairs = []
    for key, (tensor, conv_name) in flow.outputs.items():
        users = flow.uses[key]
        if len(users) != 1 or not users[0].startswith("bn:") or key in returned:
            continue
        bn_name = users[0][3:]
        conv, bn = modules[conv_name], modules[bn_name]
        if flow.calls[conv_name] != 1 or flow.calls[bn_name] != 1:
            continue  # a module run twice cannot change meaning for one of its calls only
        if bn.running_mean is None or not bn.track_running_stats:
            continue  # batch statistics even in eval mode: no fixed affine map
        if bn.num_features != conv.out_channels or not isinstance(bn, _BATCHNORMS[conv.weight.dim() - 2]):
            continue  # Conv2d feeds BatchNorm2d, and so on (SyncBatchNorm is left alone)
        if any(m._forward_hooks or m._forward_pre_hooks for m in (conv, bn)):
            continue  # a hook reads the module's own output (e.g. HookedModel's features): keep it as it is
        pairs.append((conv_name, bn_name))
    return pairs


def _set_submodule(model, name, module):
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def fold_batchnorms(model, example, **forward_kwargs):
    """A deep copy of eval-mode `model` with every foldable BatchNorm folded into its conv; returns (copy, pairs).

    `example` is a small input on the model's device and `forward_kwargs` the call to serve (e.g. is_feat=True,
    preact=False): which pairs fold can depend on it. The original model is not modified.
    """
    if model.training:
        raise ValueError("fold_batchnorms needs an eval-mode model (BatchNorm uses its running statistics)")
    pairs = foldable_pairs(model, example, **forward_kwargs)
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        dtype = conv.weight.dtype
        # folded in float64 and rounded once, so the copy is as close to the unfolded arithmetic as fp32 allows
        fused = fuse_conv_bn_eval(copy.deepcopy(conv).double(), copy.deepcopy(bn).double()).to(dtype)
        for p in fused.parameters():
            p.requires_grad_(False)
        _set_submodule(folded, conv_name, fused)
        _set_submodule(folded, bn_name, nn.Identity())
    return folded, pairs


def count_batchnorms(model):
    """How many BatchNorm modules `model` has (to report how many were folded)."""
    return sum(1 for m in model.modules() if isinstance(m, _BatchNorm))

