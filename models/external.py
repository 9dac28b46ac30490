"""torchvision and timm classifiers by name (`torchvision:resnet50`, `timm:resnet18`) as NORM teachers and students.

A name resolves to the library's own model, unedited, wrapped in `models.hooked.HookedModel`. Which module NORM
matches and which `nn.Linear` is the classifier is read from the model itself, by one probe forward that records
every module's output in the order the modules finish:

- the classifier is the `nn.Linear` whose output is the model's output (the logits);
- the matched map is the output of the last module with a [batch, channels, height, width] output larger than 1x1
  after which only the head runs (modules with weights after it see pooled vectors only: no spatial map or token
  sequence). Containers finish after their children, so the outermost module returning that map is named
  (`layer4`, `features`). The probe runs at 64 pixels or more so that a stride-32 network's last map is 2x2.
- a model with no such map (a ViT: its last maps are token sequences) has its NORM map at the classifier's input,
  the pooled token as a [batch, features, 1, 1] map.

`--feature_module_s/_t` and `--classifier_s/_t` name them when the guess is wrong.
"""
import difflib
import os

import torch
from torch import nn

from .hooked import HookedModel

PREFIXES = ("torchvision:", "timm:")
PROBE_MIN_SIZE = 64  # a stride-32 backbone's last map is 2x2 here, so a map is told apart from a pooled vector
TIMM_HINT = "pip install timm"


class ExternalModelError(ValueError):
    """A torchvision/timm name, module choice or weight file that cannot be used; the message says what to do."""


def is_external(name):
    """Whether `name` is a `torchvision:NAME` or `timm:NAME` architecture."""
    return isinstance(name, str) and name.startswith(PREFIXES)


def split_name(name):
    """('torchvision' | 'timm', architecture) of an external name."""
    source, _, arch = name.partition(":")
    if source not in ("torchvision", "timm") or not arch:
        raise ExternalModelError(f"{name!r} is not torchvision:NAME or timm:NAME")
    return source, arch


def _timm():
    try:
        import timm
    except ImportError:
        raise ExternalModelError(f"timm: architectures need the optional package timm, which is not installed: "
                                 f"{TIMM_HINT}") from None
    return timm


def torchvision_classifiers():
    """The names of torchvision's image classification models."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _unknown(source, arch, names):
    close = difflib.get_close_matches(arch, names, n=3)
    listing = ("torchvision.models.list_models(module=torchvision.models)" if source == "torchvision"
               else "timm.list_models()")
    hint = f"did you mean {', '.join(source + ':' + c for c in close)}?" if close else f"see {listing}"
    return ExternalModelError(f"unknown {source} classifier {arch!r}; {hint}")


def check_name(name):
    """Refuse an unknown torchvision/timm name (or timm not installed) without building anything."""
    source, arch = split_name(name)
    if source == "timm":
        timm = _timm()
        if not timm.is_model(arch):
            raise _unknown(source, arch, timm.list_models())
    elif arch not in torchvision_classifiers():
        raise _unknown(source, arch, torchvision_classifiers())
    return name


def build_plain(name, num_classes, image_size=224):
    """The library's model `name` with `num_classes` outputs and random weights (ViTs built for `image_size`)."""
    source, arch = split_name(check_name(name))
    if source == "timm":
        return _timm().create_model(arch, pretrained=False, num_classes=num_classes)
    import torchvision

    kwargs = {"num_classes": num_classes}
    if arch.startswith("vit_"):  # position embeddings are sized for one input size
        kwargs["image_size"] = image_size
    if arch in ("googlenet", "inception_v3"):  # auxiliary heads return a tuple in training mode
        kwargs.update(aux_logits=False, init_weights=True)
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _is_map(t):
    return isinstance(t, torch.Tensor) and t.dim() == 4


def _is_pooled(t):
    """A per-sample vector: [B, D] or a [B, D, 1, 1] map (no spatial or token extent left)."""
    return isinstance(t, torch.Tensor) and (t.dim() == 2 or (t.dim() == 4 and t.shape[2:] == (1, 1)))


def _has_weights(module):
    return any(True for _ in module.parameters(recurse=False))


@torch.no_grad()
def _record(model, image_size):
    """[(name, module, output, input)] of every submodule in the order they finish, and the model's output."""
    records, handles = [], []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(
                lambda m, inputs, output, name=name: records.append((name, m, output, inputs))))
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    try:
        out = model(torch.randn(2, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return records, out


def locate_modules(model, image_size=224, feature_module=None, classifier=None):
    """(feature module name, classifier name) of `model` (an unwrapped classifier), found from one probe forward.

    A feature module equal to the classifier name means the NORM map is the classifier's input as a 1x1 map.
    """
    records, logits = _record(model, image_size)
    if classifier is None:
        producers = [(name, m) for name, m, out, _ in records if out is logits or (
            isinstance(out, torch.Tensor) and out.shape == logits.shape and torch.equal(out, logits))]
        linears = [name for name, m in producers if isinstance(m, nn.Linear)]
        if not linears:
            last = producers[0] if producers else None
            what = f"its logits come from {last[0]!r} ({type(last[1]).__name__})" if last else \
                "no module returns its logits"
            raise ExternalModelError(f"{type(model).__name__} has no nn.Linear classifier ({what}); NORM needs a "
                                     "Linear on a pooled feature: name one with --classifier_s/--classifier_t")
        classifier = linears[0]  # the innermost producer finishes first: the Linear itself, not its container
    if feature_module is not None:
        return feature_module, classifier
    done = [i for i, (name, *_rest) in enumerate(records) if name == classifier]
    if not done:
        raise ExternalModelError(f"{classifier!r} did not run in the probe forward; name the classifier with "
                                 "--classifier_s/--classifier_t")
    in_features = records[done[0]][1].in_features if isinstance(records[done[0]][1], nn.Linear) else None
    head_is_pooled = True
    for name, module, out, _ in reversed(records[:done[0]]):
        if _is_map(out) and out.shape[2] * out.shape[3] > 1 and "pool" not in type(module).__name__.lower():
            channels_last = out.shape[-1] == in_features and out.shape[1] != in_features
            if head_is_pooled and not channels_last:
                return name, classifier
        if _has_weights(module) and not _is_pooled(out):
            head_is_pooled = False  # a token sequence or map is still being processed: nothing earlier qualifies
    return classifier, classifier


def wrap(model, image_size=224, feature_modules=None, feature_module=None, classifier=None):
    """HookedModel around the unwrapped `model`: `feature_modules` (stage list, may be empty) + the matched map."""
    probe = max(image_size, PROBE_MIN_SIZE) if not _fixed_size(model) else image_size
    matched, head = locate_modules(model, probe, feature_module, classifier)
    stages = [m for m in (feature_modules or []) if m != matched]
    try:
        return HookedModel(model, stages + [matched], head, image_size=image_size,
                           classifier_input_map=matched == head)
    except ValueError as err:
        raise ExternalModelError(str(err)) from None


def _fixed_size(model):
    """A model that accepts one input size only (torchvision ViT)."""
    return hasattr(model, "image_size") and hasattr(model, "patch_size")


def build(name, num_classes, image_size=224, feature_modules=None, feature_module=None, classifier=None):
    """`name` built with random weights and wrapped: a teacher or NORM student with the zoo's interface."""
    model = build_plain(name, num_classes, image_size)
    hooked = wrap(model, image_size, feature_modules, feature_module, classifier)
    hooked.external_name = name
    return hooked


def describe(hooked, image_size):
    """One line: the module NORM matches, its map's shape at `image_size`, the classifier, and foldability."""
    from .norm import probe_features

    feats = probe_features(hooked, image_size)
    matched = hooked.matched_module_name
    where = f"the input of {matched} as a 1x1 map" if matched == hooked.classifier_name[len("model."):] else matched
    # the module's own output: after attach_feature_transform, feats[-2] is the N*C_t-wide expanded map
    shape = "x".join(str(d) for d in (hooked.transform_in_channels, *feats[-2].shape[2:]))
    linear = hooked.model.get_submodule(hooked.classifier_name[len("model."):])
    fold = "foldable into the classifier" if hooked.transform_foldable else "not foldable (kept as a 1x1 conv)"
    return (f"matches {where} ({shape} at {image_size} px); classifier {hooked.classifier_name[len('model.'):]} "
            f"(Linear {linear.in_features}->{linear.out_features}); FT {fold}")


# --- weights -------------------------------------------------------------------------------------------------


def torchvision_weights_file(arch):
    """(url, path in torch's cache) of torchvision's default published weights for `arch`."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        raise ExternalModelError(f"torchvision publishes no weights for {arch!r}") from None
    url = weights.url
    return url, os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)), len(
        weights.meta.get("categories") or [])


def published_state(name, flag="--pretrained_t"):
    """The published weights of `name` from torch's cache (torchvision); never downloads: says where to put them."""
    source, arch = split_name(name)
    if source == "timm":
        timm = _timm()
        try:
            return timm.create_model(arch, pretrained=True).state_dict()
        except Exception as err:  # noqa: BLE001 - timm raises hub/network errors of many classes
            raise ExternalModelError(f"{flag}: timm could not load the published {arch} weights "
                                     f"({_first_line(err)}); put them in timm's cache or pass a file "
                                     "with --path_t") from None
    url, path, _ = torchvision_weights_file(arch)
    if not os.path.isfile(path):
        raise ExternalModelError(f"{flag}: torchvision's {arch} weights are not in torch's cache and are not "
                                 f"downloaded here; put {url} at {path}")
    # read here, not by helper's checkpoint reader (models/ imports nothing of helper/): torchvision publishes plain
    # state dicts, and weights_only=True never runs pickled code from the cache
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same: not the published file
        raise ExternalModelError(f"{flag}: cannot read {path} ({_first_line(err)}); replace it with {url}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExternalModelError(f"{flag}: {path} holds no state dict; replace it with {url}")
    return state


def _first_line(err):
    """An exception's message cut to one short line (the libraries' own run over several lines)."""
    return (str(err).strip() or type(err).__name__).splitlines()[0][:150]


def strip_prefix(state):
    """A state dict without a HookedModel's 'model.' or DDP's 'module.' prefix (a NORM transform is refused)."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state if not k.startswith("feature_transform.")):
            state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    return state


def load_weights(model, state, *, name, path, num_classes, flag="--path_t"):
    """Load `state` strictly into the unwrapped `model` (architecture `name`); one line on a mismatch."""
    state = strip_prefix(state)
    if any(k.startswith("feature_transform.") for k in state):
        raise ExternalModelError(f"{path} is a NORM student with its feature transform, not a plain {name} for "
                                 f"{flag}; fold it with scripts/export_student.py --path {path} --out <plain.pth>")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if not missing and not unexpected:
        wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        classifier_rows = {tuple(state[k].shape)[:1] for k in wrong if state[k].dim() >= 1}
        if wrong and all(own[k].shape[:1] != state[k].shape[:1] and own[k].shape[1:] == state[k].shape[1:]
                         and own[k].shape[0] == num_classes for k in wrong):
            rows = sorted(classifier_rows)[0][0]
            raise ExternalModelError(f"{path} is a {name} with {rows} classes, but the data has {num_classes}; "
                                     "fine-tune a teacher on these classes (scripts/train_teacher.py)")
        if wrong:
            raise ExternalModelError(f"{path} does not fit {flag} {name}: {len(wrong)} tensors have other shapes "
                                     f"(e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} vs "
                                     f"{tuple(own[wrong[0]].shape)}); is it another architecture?")
        model.load_state_dict(state, strict=True)
        return model
    detail = ", ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in ((missing, "missing"),
                                                                              (unexpected, "unexpected")) if keys)
    raise ExternalModelError(f"{path} is not a {name} state dict ({detail}); pass the file of that architecture "
                             f"or the --model_t it was trained as")


class ExternalZoo:
    """A mapping {name: builder(num_classes=K)} for external names, for code written against the zoo dicts.

    The wrapping (image size, module choices) is fixed per zoo, from a run's saved options.
    """

    def __init__(self, image_size=224, feature_module=None, classifier=None, feature_modules=None):
        self.options = {"image_size": image_size, "feature_module": feature_module, "classifier": classifier,
                        "feature_modules": feature_modules}

    def __contains__(self, name):
        return is_external(name)

    def __iter__(self):
        return iter(())

    def __getitem__(self, name):
        if not is_external(name):
            raise KeyError(name)
        return lambda num_classes: build(name, num_classes, **self.options)
