"""Stacked layers: S networks of one architecture as one module on seed-folded activations (seed s's
channels ``s*C .. (s+1)*C - 1``), each layer with parameters replaced by its stacked form."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from backbone.heads import FixedHead
from utils.errors import UserError


class SeedLinear(torch.autograd.Function):
    """S linear maps at once: x (S, N, in), weight (S, out, in), bias (S, out) or None -> (S, N, out).

    The forward is ``addmm(bias, x, weight.t())`` per seed and the gradients are those autograd takes
    for ``F.linear`` (weight: grad^T @ x, in the weight's own layout; bias: grad summed over N), so on
    the CPU each seed's numbers are bitwise its single run's.  (Autograd's own derivative of ``bmm``
    would give the weight gradient transposed, and copying it back costs as much as the matmul.)
    The weight's gradient is accumulated in place, ``grad += grad_out^T @ x`` in one ``baddbmm``
    (bitwise the ``grad + new`` autograd computes), not through a weight-sized temporary: the stacked
    first layer of the MLP is the largest tensor a step touches, and methods with several passes
    (ER, DER++) accumulate into it.  ``weight`` must be a leaf parameter.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x)
        ctx.weight = weight  # the parameter itself, whose .grad the backward accumulates into
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        (x,), weight = ctx.saved_tensors, ctx.weight
        grad = grad.contiguous()  # arrives seed-folded (a transposed view); single runs reduce a contiguous one
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            if weight.grad is None:
                weight.grad = torch.bmm(grad.transpose(1, 2), x)
            else:
                weight.grad.baddbmm_(grad.transpose(1, 2), x)
        grad_bias = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias


def seed_linear(x, weight, bias):
    if torch.is_autocast_enabled(x.device.type):  # autocast casts inside bmm: let autograd follow the casts
        out = torch.bmm(x, weight.transpose(1, 2))
        return out if bias is None else out + bias.unsqueeze(1).to(out.dtype)
    return SeedLinear.apply(x, weight, bias)


class ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: a gradient that arrives seed-folded (a
    transposed view) would be reduced in another order than a single run reduces it."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _stack(tensors, how=torch.stack):
    """Stacked copies of tensors (parameters or buffers) as a new leaf that keeps their requires_grad."""
    stacked = how([t.detach() for t in tensors])
    return nn.Parameter(stacked, requires_grad=tensors[0].requires_grad) if isinstance(tensors[0], nn.Parameter) \
        else stacked


class StackedLinear(nn.Module):
    """S ``nn.Linear`` layers on seed-folded features: (N, S*in) -> (N, S*out)."""

    def __init__(self, layers: list):
        super().__init__()
        self.weight = _stack([layer.weight for layer in layers])
        self.bias = None if layers[0].bias is None else _stack([layer.bias for layer in layers])

    def forward(self, x):
        n, seeds = x.shape[0], self.weight.shape[0]
        out = seed_linear(x.view(n, seeds, -1).transpose(0, 1), self.weight, self.bias)
        return out.transpose(0, 1).reshape(n, -1)

    def unstack(self, layers: list) -> None:
        for s, layer in enumerate(layers):
            layer.weight.copy_(self.weight[s])
            if layer.bias is not None:
                layer.bias.copy_(self.bias[s])


class StackedConv2d(nn.Module):
    """S ``nn.Conv2d`` layers as one grouped convolution on seed-folded channels."""

    def __init__(self, convs: list):
        super().__init__()
        conv = convs[0]
        if conv.padding_mode != "zeros":
            raise UserError(f"--seeds: convolutions with padding_mode {conv.padding_mode!r} do not stack yet")
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups * len(convs)
        self.weight = _stack([c.weight for c in convs], torch.cat)
        self.bias = None if conv.bias is None else _stack([c.bias for c in convs], torch.cat)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def unstack(self, convs: list) -> None:
        for conv, weight in zip(convs, self.weight.chunk(len(convs))):
            conv.weight.copy_(weight)
        if self.bias is not None:
            for conv, bias in zip(convs, self.bias.chunk(len(convs))):
                conv.bias.copy_(bias)


class StackedBatchNorm(nn.Module):
    """S batch norms as one over S*C channels: statistics are per channel, so per seed."""

    def __init__(self, norms: list):
        super().__init__()
        norm = norms[0]
        counts = {int(n.num_batches_tracked) for n in norms if n.num_batches_tracked is not None}
        if len(counts) > 1:
            raise ValueError(f"batch norms to stack have seen different numbers of batches: {sorted(counts)}")
        device = next(iter(list(norm.parameters()) + list(norm.buffers()))).device
        self.norm = type(norm)(norm.num_features * len(norms), eps=norm.eps, momentum=norm.momentum,
                               affine=norm.affine, track_running_stats=norm.track_running_stats, device=device)
        with torch.no_grad():
            for name, tensor in list(self.norm.named_parameters()) + list(self.norm.named_buffers()):
                if name != "num_batches_tracked":
                    tensor.copy_(torch.cat([getattr(n, name) for n in norms]))
                else:
                    tensor.copy_(norm.num_batches_tracked)

    def forward(self, x):
        return self.norm(x)

    def unstack(self, norms: list) -> None:
        for name, tensor in list(self.norm.named_parameters()) + list(self.norm.named_buffers()):
            for norm, part in zip(norms, [tensor] * len(norms) if name == "num_batches_tracked"
                                  else tensor.chunk(len(norms))):
                getattr(norm, name).copy_(part)


class StackedFixedHead(nn.Module):
    """S fixed heads (``FixedHead``: logits = s * W h), each seed with its own matrix W and scale s."""

    def __init__(self, heads: list):
        super().__init__()
        self.register_buffer("weight", torch.stack([h.weight for h in heads]))  # (S, K, D)
        scale = _stack([h.scale for h in heads])
        if isinstance(scale, nn.Parameter):
            self.scale = scale
        else:
            self.register_buffer("scale", scale)

    def forward(self, h):
        n, seeds = h.shape[0], self.weight.shape[0]
        logits = torch.bmm(h.view(n, seeds, -1).transpose(0, 1), self.weight.transpose(1, 2))  # (S, N, K)
        return ContiguousGrad.apply(self.scale.view(seeds, 1, 1) * logits).transpose(0, 1).reshape(n, -1)

    def unstack(self, heads: list) -> None:
        for s, head in enumerate(heads):
            head.weight.copy_(self.weight[s])
            head.scale.copy_(self.scale[s])


STACKED_LAYERS = ((nn.Linear, StackedLinear), (nn.Conv2d, StackedConv2d), (_BatchNorm, StackedBatchNorm),
                  (FixedHead, StackedFixedHead))
STACKED_TYPES = tuple(stacked for _, stacked in STACKED_LAYERS)


def stack_network(nets: list) -> nn.Module:
    """One module computing every net of ``nets`` (same architecture) on seed-folded inputs.

    A copy of the first net whose layers with parameters are replaced by their
    stacked forms; the layers without parameters keep their own code."""
    stacked = copy.deepcopy(nets[0])
    for name, module in list(stacked.named_modules()):
        kind = next((new for old, new in STACKED_LAYERS if isinstance(module, old)), None)
        if kind is not None:
            stacked.set_submodule(name, kind([net.get_submodule(name) for net in nets]))
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise UserError(f"--seeds: layer {name} ({type(module).__name__}) has no stacked form yet; "
                            f"run one process per seed")
    return stacked


@torch.no_grad()
def unstack_network(stacked: nn.Module, nets: list) -> None:
    """Copy every seed's slice of ``stacked`` back into its own net."""
    for name, module in stacked.named_modules():
        if isinstance(module, STACKED_TYPES):
            module.unstack([net.get_submodule(name) for net in nets])


class SeedStack(nn.Module):
    """S networks as one: inputs (N, S, ...) -> logits (N, S, K), seeds folded into channels inside."""

    def __init__(self, nets: list):
        super().__init__()
        self.net = stack_network(nets)

    def forward(self, x):
        n, seeds = x.shape[:2]
        return self.net(x.reshape(n, seeds * x.shape[2], *x.shape[3:])).view(n, seeds, -1)
