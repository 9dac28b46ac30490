"""What a deployed model costs: parameters, FLOPs, and the markdown table comparing teacher and students."""
import torch


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
