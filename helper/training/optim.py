"""The run's optimizers: SGD for the main stage and, for two-stage methods, the init stage; gradient scalers."""
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Optimizers:
    """The main stage's SGD and scaler; the init stage's own (None without an init stage)."""

    main: torch.optim.Optimizer
    scaler: Optional[object]
    init: Optional[torch.optim.Optimizer] = None
    init_scaler: Optional[object] = None


def build_optimizers(method, settings, runtime, two_stage):
    """SGD over the method's trainable parameters (student and the method's parts; never the teacher), with the
    settings' learning rate, momentum and weight decay; with `two_stage`, the init stage's SGD over its parameters."""
    params = [p for p in method.parameters() if p.requires_grad]
    main = torch.optim.SGD(params, lr=settings.learning_rate, momentum=settings.momentum,
                           weight_decay=settings.weight_decay, **_sgd_speed_options(runtime, settings.fused_sgd))
    optimizers = Optimizers(main, runtime.grad_scaler())
    if two_stage:
        optimizers.init = torch.optim.SGD(method.init_stage_parameters(), lr=method.init_learning_rate(settings),
                                          momentum=settings.momentum, weight_decay=settings.weight_decay,
                                          **_sgd_speed_options(runtime, settings.fused_sgd))
        optimizers.init_scaler = runtime.grad_scaler()  # its own: the init stage's loss has another scale
    return optimizers


def match_parameter_layouts(optimizer):
    """Give every per-parameter state tensor (momentum) its parameter's memory layout, in place.

    A resume may switch --channels_last; the loaded buffers keep the saved strides, which fused SGD refuses.
    """
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param).copy_(value)


def _sgd_speed_options(runtime, fused):
    """Fused SGD on CUDA when asked for (--fused_sgd) and always under fp16 there; foreach is PyTorch's default
    elsewhere. Under fp16 the unfused step makes GradScaler read found_inf on the host every step (a sync); the fused
    kernel takes the scale and found_inf as device tensors and skips an overflowed step itself."""
    fp16 = runtime.amp_dtype is torch.float16
    if (fused or fp16) and runtime.device.type == "cuda":
        return {"fused": True}
    return {}


# Param-group options that choose how the step runs, not what it computes: they come from the command line (and the
# device), never from the checkpoint. Optimizer.load_state_dict copies every saved option; a run saved without fused
# SGD and resumed with --fused_sgd --amp fp16 would otherwise step unfused while the scaler hands it grad_scale.
OPERATIONAL_GROUP_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def load_keeping_kernels(part, state):
    """`part.load_state_dict(state)`; for an optimizer, each param group keeps this command's operational options."""
    if not isinstance(part, torch.optim.Optimizer):
        part.load_state_dict(state)
        return
    chosen = [{key: group[key] for key in OPERATIONAL_GROUP_OPTIONS if key in group} for group in part.param_groups]
    part.load_state_dict(state)
    for group, options in zip(part.param_groups, chosen):
        group.update(options)
