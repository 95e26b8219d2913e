"""Memory-layout helpers for layers that mix convolutions (often channels-last) with ops that
read whole (H*W) planes (which want the contiguous layout)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["is_channels_last", "pointwise_conv_contiguous", "conv2d_of_concat"]


def is_channels_last(x: Tensor) -> bool:
    """Whether a 4-d ``x`` is laid out channels-last (and not also contiguous, as 1x1 maps are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def pointwise_conv_contiguous(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 convolution written straight into the contiguous layout, whatever ``x``'s layout.

    One batched matrix product that reads a channels-last ``x`` in place. A convolution of a
    channels-last input gives a channels-last output, and turning a wide one (hundreds of
    channels, a power-of-two plane) contiguous was the slowest op of GKNet in float32.

    Shape:
        x: (B, C_in, H, W); weight: (C_out, C_in, 1, 1); bias: (C_out,) -> (B, C_out, H, W), contiguous
    """
    b, c, h, w = x.shape
    if is_channels_last(x):
        cols = x.permute(0, 2, 3, 1).reshape(b, h * w, c).transpose(1, 2)  # (B, C_in, HW), a view
    else:
        cols = x.reshape(b, c, h * w)
    wm = weight.reshape(weight.shape[0], c)
    if bias is not None and bias.requires_grad and torch.is_grad_enabled():
        # The bias as one more input channel of ones: baddbmm's backward sums its output's
        # gradient for the bias after casting all of it to float32 (under bfloat16 autocast,
        # 25 ms of a GKNet training step at 1/4 scale); the product sums it in passing.
        cols = torch.cat([cols, cols.new_ones(b, 1, h * w)], dim=1)
        return torch.bmm(torch.cat([wm, bias[:, None]], dim=1).expand(b, -1, -1), cols).view(b, -1, h, w)
    if bias is None:
        return torch.bmm(wm.expand(b, -1, -1), cols).view(b, -1, h, w)
    return torch.baddbmm(bias[None, :, None], wm.expand(b, -1, -1), cols).view(b, -1, h, w)


def conv2d_of_concat(inputs: list[Tensor], conv: nn.Conv2d) -> Tensor:
    """``conv(torch.cat(inputs, dim=1))`` as one convolution per input, summed.

    The same sum without the concatenation, whose backward hands each input a channel slice
    of the gradient: in the channels-last layout such a slice is strided, and ops like
    bilinear upsampling then take their slow path (GKNet's training step spent a sixth of its
    time there). An odd channel count (a feature plus a mask) also puts oneDNN on a slow path.

    Shape:
        inputs: (B, C_i, H, W) each, sum of C_i = conv.in_channels -> (B, conv.out_channels, H', W')
    """
    total = sum(x.shape[1] for x in inputs)
    if total != conv.in_channels:
        raise ValueError(f"inputs have {total} channels, the convolution takes {conv.in_channels}")
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return conv(torch.cat(inputs, dim=1))
    out, start = None, 0
    for i, x in enumerate(inputs):
        weight = conv.weight[:, start : start + x.shape[1]]
        start += x.shape[1]
        y = F.conv2d(x, weight, conv.bias if i == 0 else None, conv.stride, conv.padding, conv.dilation)
        out = y if out is None else out + y
    return out
