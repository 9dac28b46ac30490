"""The deployed SimKD student (Chen et al., CVPR 2022): backbone, projector and the teacher's frozen classifier.

SimKD trains no classifier of its own: the student's last map (`feat[-2]` of the is_feat list) is projected onto
the teacher's channels and classified by the teacher's classifier. `SimKDStudent` holds the three parts, so that
`student(images)` is SimKD's prediction wherever a student is evaluated (training's validation, checkpoints,
evaluate_student.py, the exports). Its state dict is the checkpoint format:

    backbone.*     the student architecture (its own classifier stays, trained only by a -r/-a weight > 0)
    projector.*    conv1x1-BN-ReLU, conv3x3-BN-ReLU, conv1x1-BN-ReLU (indices 0..8, as SimKD's `transfer`)
    classifier.*   a frozen copy of the teacher's linear classifier
    pool_to        0, or the teacher map's height when the student map is larger (average-pooled to it first)

`simkd_student_from_state` rebuilds the model from such a state dict alone (the shapes give every width).
"""
import torch
import torch.nn.functional as F
from torch import nn

PROJECTOR_PREFIX = "projector."


def projector(in_channels, out_channels, factor=2):
    """SimKD's `transfer`: bias-free conv1x1 (C_s -> C_t/f), conv3x3 (C_t/f -> C_t/f) and conv1x1 (C_t/f -> C_t),
    each followed by BatchNorm and ReLU; PyTorch's default initialisation, as the reference."""
    mid = out_channels // factor
    if mid < 1:
        raise ValueError(f"the SimKD factor {factor} leaves no channel of the teacher's {out_channels}")
    return projector_layers(in_channels, mid, out_channels)


def projector_layers(in_channels, mid, out_channels):
    """The projector with an explicit bottleneck width `mid` (= C_t // factor)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def frozen_copy(linear):
    """An independent copy of a teacher's nn.Linear with its parameters frozen (never trained, never decayed)."""
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    copy.load_state_dict(linear.state_dict())
    copy.requires_grad_(False)
    return copy


class SimKDStudent(nn.Module):
    """`backbone` -> its `feat[-2]` -> [average pool to `pool_to`] -> `projector` -> global average pool ->
    the teacher's `classifier`; called with `is_feat=True` it returns (backbone features, SimKD logits)."""

    feature_transform = None  # no NORM transform: the deploy code treats this model as complete
    classifier_name = "classifier"
    deploys_as_is = True  # helper.deploy exports the model itself (nothing folds away)

    def __init__(self, backbone, projector_module, classifier, pool_to=0):
        super().__init__()
        self.backbone = backbone
        self.projector = projector_module
        self.classifier = classifier
        # a buffer, so the checkpoint alone says how to rebuild the model; 0: the student map is not pooled
        self.register_buffer("pool_to", torch.tensor(int(pool_to), dtype=torch.long))
        # ...and a Python copy for the forward: reading the buffer there would wait for the device on every step
        self.pool_size = int(pool_to)
        self.register_load_state_dict_post_hook(_read_pool_size)

    def project(self, feature):
        """The projected map of the student's `feat[-2]` (pooled first to the teacher's size when larger)."""
        size = self.pool_size
        if size:
            # the reference pools to (t_H, t_H): square maps only, as every CIFAR model's
            feature = F.adaptive_avg_pool2d(feature, (size, size))
        return self.projector(feature)

    def classify(self, projected):
        """SimKD's prediction: the teacher classifier on the globally average-pooled projected map."""
        return self.classifier(F.adaptive_avg_pool2d(projected, 1).flatten(1))

    def forward_parts(self, images):
        """(backbone features, the backbone's own logits, projected map, SimKD logits) in one pass."""
        feats, own_logits = self.backbone(images, is_feat=True)
        projected = self.project(feats[-2])
        return feats, own_logits, projected, self.classify(projected)

    def forward(self, images, is_feat=False, preact=False):
        """SimKD logits, or (backbone features, SimKD logits) with `is_feat` (`preact` is passed to the backbone)."""
        feats, _ = self.backbone(images, is_feat=True, preact=preact)
        logits = self.classify(self.project(feats[-2]))
        return (feats, logits) if is_feat else logits


def _read_pool_size(module, incompatible_keys):
    """After a state dict is loaded into a SimKDStudent: its Python pool size from the loaded buffer (read once)."""
    module.pool_size = int(module.pool_to)


def is_simkd_state(state):
    """Whether a model state dict is a SimKDStudent's (backbone, projector and classifier keys)."""
    return any(k.startswith(PROJECTOR_PREFIX) for k in state) and any(k.startswith("backbone.") for k in state)


def simkd_student_from_state(build_backbone, state):
    """A SimKDStudent shaped after `state` (not loaded); `build_backbone(num_classes)` makes the architecture."""
    try:
        first, middle, last = (state[f"{PROJECTOR_PREFIX}{i}.weight"] for i in (0, 3, 6))
        weight = state["classifier.weight"]
    except KeyError as err:
        raise ValueError(f"a SimKD student state lacks {err.args[0]}") from None
    mid, c_s = first.shape[:2]
    c_t = last.shape[0]
    module = projector_layers(c_s, mid, c_t)
    if module[3].weight.shape != middle.shape or module[6].weight.shape != last.shape:
        raise ValueError(f"a SimKD projector of {c_s}->{mid}->{c_t} channels does not fit the stored shapes")
    classifier = nn.Linear(weight.shape[1], weight.shape[0], bias="classifier.bias" in state)
    classifier.requires_grad_(False)
    backbone_classes = _backbone_classes(state)
    pool_to = int(state["pool_to"]) if "pool_to" in state else 0
    return SimKDStudent(build_backbone(backbone_classes or weight.shape[0]), module, classifier, pool_to)


def _backbone_classes(state):
    """The rows of the backbone's last 2-d weight (its own classifier), or None."""
    rows = [v.shape[0] for k, v in state.items() if k.startswith("backbone.") and k.endswith("weight") and v.dim() == 2]
    return int(rows[-1]) if rows else None
