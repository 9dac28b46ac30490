"""Any image classifier as a teacher or NORM student, its features taken by forward hooks on named modules.

The zoo's models return RepDistiller's feature lists from their own `forward`. A user's torchvision/timm model
does not, and need not be edited: `HookedModel` wraps it, records the outputs of the modules named in
`feature_modules` and the input of the `classifier` (the pooled vector), and gives the zoo's interface:

    student = HookedModel(torchvision.models.resnet18(num_classes=100), ["layer3", "layer4"], "fc", image_size=32)
    feats, logits = student(x, is_feat=True)    # feats = [layer3 out, layer4 out, fc input]

NORM's feature transform runs on the last named module's output: a forward hook hands the transformed map on
to the rest of the model's own forward and puts the expanded map in the feature list (entry -2, the map NORM
matches). The wrapped model's state-dict keys carry the prefix `model.`. A recorded map is the tensor the module
returned, not a copy: an in-place operation after it (densenet's ReLU) shows in it. Hooks belong to the modules
named at wrapping time, so replace none of them afterwards (e.g. by SyncBatchNorm conversion). With
`classifier_input_map=True` and the classifier named as the last feature module, the map NORM matches is the
classifier's input as a [batch, features, 1, 1] map (a ViT's class token), transformed in the classifier's pre-hook.
"""
from functools import partial

import torch
from torch import nn


class HookedModel(nn.Module):
    """Wraps `model` (logits from `model(x)`) with `forward(x, is_feat=False, preact=False)` and the FT contract."""

    def __init__(self, model, feature_modules, classifier, image_size=224, in_channels=3, classifier_input_map=False):
        super().__init__()
        if not feature_modules:
            raise ValueError("HookedModel needs at least one feature module (the last one is the map NORM matches)")
        self.model = model
        self.feature_transform = None
        self.classifier_name = "model." + classifier
        self._captured = None
        self._probe_transform = None  # the stand-in transform of the probe forward
        self.matched_module_name = feature_modules[-1]
        # `classifier_input_map` with the classifier named as the last feature module: the map NORM matches is the
        # classifier's input as a [batch, features, 1, 1] map (a ViT, whose last maps are token sequences),
        # transformed in the classifier's pre-hook.
        self._map_at_classifier = classifier_input_map and feature_modules[-1] == classifier
        if classifier_input_map and not self._map_at_classifier:
            raise ValueError("classifier_input_map needs the classifier named as the last feature module")
        hooked_names = feature_modules[:-1] if self._map_at_classifier else feature_modules
        modules = [_named_submodule(model, name) for name in hooked_names]
        head = _named_submodule(model, classifier)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"classifier {classifier!r} is a {type(head).__name__}; name the nn.Linear that "
                             "takes the pooled feature vector")
        # Hooks are bound methods (through partial), so a deep copy of the wrapper records into the copy.
        self._slots = len(feature_modules) + 1
        for slot, module in enumerate(modules):
            module.register_forward_hook(partial(self._on_feature, slot))
        head.register_forward_pre_hook(self._on_classifier_input)
        feature_map, pooled = self._probe(image_size, in_channels)
        if feature_map.dim() != 4:
            raise ValueError(f"{feature_modules[-1]!r} outputs a {feature_map.dim()}-d tensor; NORM needs a "
                             "[batch, channels, height, width] map")
        self.transform_in_channels = feature_map.shape[1]
        self.transform_init = "kaiming"
        # Foldable when the classifier reads exactly the global average of what the transform hands on: the probe
        # ran a sign-flipping stand-in transform, so a ReLU (in place or not) after the map shows up here.
        self.transform_foldable = pooled.shape == feature_map.shape[:2] and torch.allclose(
            pooled, _stand_in_transform(feature_map)[0].mean((2, 3)), rtol=1e-4, atol=1e-5)

    def _on_feature(self, slot, module, inputs, output):
        if self._captured is not None and self._captured[slot] is not None:
            raise ValueError(f"feature module {slot} ran twice in one forward pass; name a module that runs once "
                             "(e.g. a whole block, not a ReLU the block reuses)")
        matched = output
        transform = self.feature_transform if self.feature_transform is not None else self._probe_transform
        if slot == self._slots - 2 and transform is not None:
            output, matched = transform(output)  # the returned map replaces the module's output
        if self._captured is not None:
            self._captured[slot] = matched
        return output

    def _on_classifier_input(self, module, inputs):
        if not self._map_at_classifier:
            if self._captured is not None:
                self._captured[self._slots - 1] = inputs[0]
            return None
        pooled = inputs[0]
        if pooled.dim() != 2:
            raise ValueError(f"the classifier's input is a {pooled.dim()}-d tensor; name a feature module whose "
                             "output is a [batch, channels, height, width] map")
        matched = pooled[:, :, None, None]
        transform = self.feature_transform if self.feature_transform is not None else self._probe_transform
        if transform is not None:
            pooled, matched = transform(matched)
            pooled = pooled.flatten(1)
        if self._captured is not None:
            self._captured[self._slots - 2] = matched
            self._captured[self._slots - 1] = pooled
        return (pooled,) + tuple(inputs[1:])

    def forward(self, x, is_feat=False, preact=False):
        # `preact` is accepted for RepDistiller's call signature; hooks see each module's output only.
        self._captured = [None] * self._slots
        try:
            logits = self.model(x)
            features = self._captured
        finally:
            self._captured = None
        missing = [i for i, f in enumerate(features) if f is None]
        if missing:
            raise RuntimeError(f"feature slots {missing} were not reached by the forward pass: check the module names, "
                               "and do not replace the named modules after wrapping (e.g. SyncBatchNorm conversion "
                               "of a named BatchNorm)")
        return (features, logits) if is_feat else logits

    def get_feat_modules(self):
        """The wrapped model's top-level modules except the one holding the classifier: what the two-stage methods
        (FSP, AB) pre-train, as RepDistiller's zoo models return from their own get_feat_modules."""
        head = self.classifier_name[len("model."):].split(".")[0]
        return nn.ModuleList([m for name, m in self.model.named_children() if name != head])

    @torch.no_grad()
    def _probe(self, image_size, in_channels):
        """(last feature map, pooled vector) on a throw-away input, in eval mode (BN statistics untouched)."""
        was_training = self.training
        param = next(self.model.parameters())
        self.eval()
        self._probe_transform = _stand_in_transform
        try:
            features, _ = self(torch.randn(2, in_channels, image_size, image_size, device=param.device,
                                           dtype=param.dtype), is_feat=True)
        finally:
            self._probe_transform = None
            self.train(was_training)
        return features[-2], features[-1]


def _stand_in_transform(x):
    """A per-pixel affine map standing in for the FT on the probe: (1 - x, x), a copy that flips every sign."""
    return 1 - x, x


def _named_submodule(model, name):
    """`model.get_submodule(name)` with an error that lists the names to choose from."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ValueError(f"{type(model).__name__} has no submodule {name!r}; its top-level modules are "
                         f"{', '.join(names)}") from None
