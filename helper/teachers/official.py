"""Key conversion of the officially released NORM student checkpoints to this project's layout."""
import re

from helper.runs.checkpoint import unwrapped_keys
from helper.errors import UsageError

# The official students name their FT `layer31/layer32` (or `layer41/layer42`): x1 expands, x2 contracts.
_OFFICIAL_FT_KEY = re.compile(r"^layer([34])([12])\.(.*)$")
_UNUSED = re.compile(r"^(alpha$|layer2[12]\.|dropout\.)")


def convert_official_student(state, ft_bypassed=False):
    """Official student state dict -> ours: `module.` (and `_orig_mod.`) stripped, unused keys dropped, FT keys renamed.

    `ft_bypassed` (official CIFAR runs with N == 1) drops the FT, which the official forward skipped.
    """
    state = unwrapped_keys(state)
    stages = {m.group(1) for k in state if (m := _OFFICIAL_FT_KEY.match(k))}
    if len(stages) > 1:
        raise UsageError("the checkpoint has two feature transforms (layer31/32 and layer41/42, the official "
                         "--use_layer3); only the last-stage transform is supported")
    out = {}
    for key, value in state.items():
        if _UNUSED.match(key):
            continue
        match = _OFFICIAL_FT_KEY.match(key)
        if match:
            if ft_bypassed:
                continue
            part = "expand" if match.group(2) == "1" else "contract"
            key = f"feature_transform.{part}.{match.group(3)}"
        out[key] = value
    return out


def transform_width(state):
    """N*C_t of the feature transform stored in a (converted) state dict, or None when it has none."""
    weight = state.get("feature_transform.expand.0.weight")
    return None if weight is None else weight.shape[0]
