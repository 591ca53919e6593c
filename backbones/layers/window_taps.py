"""Sliding-window products computed tap by tap ("shift and accumulate"), never through an unfolded copy.

Several operators weight a ``kh x kw`` neighbourhood of every pixel with per-pixel weights: the involution (weights
generated from the input), MSA-Conv's attention (``softmax(q . k)`` over the window). The textbook formulation
gathers the window with ``F.unfold`` into a ``C * kh * kw`` times larger buffer; here the input is zero-padded once
and each of the ``kh * kw`` taps is a strided *view* of it, so the work is ``kh * kw`` element-wise passes over a
map of the input's size and the extra memory is one padded copy (autograd saves views too).

Conventions, for a tap ``t = i * kw + j`` (row-major: ``i`` the row offset, ``j`` the column offset) with dilation
``d`` and zero padding ``(d * (kh - 1) // 2, d * (kw - 1) // 2)`` (odd kernels: "same" output at stride 1)::

    tap(x, t)[..., y, x'] = x_padded[..., s * y + i * d, s * x' + j * d]        # [..., ceil(H/s), ceil(W/s)]
    window_weighted_sum(x, w)[..., c, y, x'] = sum_t w[..., t, y, x'] * tap(x, t)[..., c, y, x']
    window_dot(q, k)[..., t, y, x']          = sum_c q[..., c, y, x'] * tap(k, t)[..., c, y, x']

Both are what the unfold formulation gives (``F.unfold(x, (kh, kw), dilation=d, padding=..., stride=s)`` viewed as
``[B, C, kh*kw, L]``), term for term; positions outside the image read zero. Loops run over the (static) taps only,
so ``torch.compile``, ``torch.export`` and TorchScript see a fixed sequence of ops for any input size.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['window_taps', 'window_weighted_sum', 'window_dot', 'window_padding']


def window_padding(kernel_size: Tuple[int, int], dilation: Tuple[int, int]) -> Tuple[int, int]:
    """The zero padding ``(ph, pw)`` that keeps the size at stride 1 for an odd ``kernel_size``."""
    return dilation[0] * (kernel_size[0] - 1) // 2, dilation[1] * (kernel_size[1] - 1) // 2


def window_taps(
        x: torch.Tensor,
        kernel_size: Tuple[int, int],
        dilation: Tuple[int, int] = (1, 1),
        stride: int = 1,
) -> List[torch.Tensor]:
    """The ``kh * kw`` views of the zero-padded ``x`` (``[..., H, W]``) seen by each window tap, row-major.

    Each view is ``[..., ceil(H / stride), ceil(W / stride)]``; they share the storage of one padded copy.
    """
    (kh, kw), (dh, dw) = kernel_size, dilation
    ph, pw = window_padding(kernel_size, dilation)
    xp = F.pad(x, (pw, pw, ph, ph))
    taps: List[torch.Tensor] = []
    for i in range(kh):
        rows = xp[..., i * dh:_stop(i * dh, ph):stride, :]
        for j in range(kw):
            taps.append(rows[..., j * dw:_stop(j * dw, pw):stride])
    return taps


def window_weighted_sum(
        x: torch.Tensor,
        weight: torch.Tensor,
        kernel_size: Tuple[int, int],
        dilation: Tuple[int, int] = (1, 1),
        stride: int = 1,
) -> torch.Tensor:
    """``sum_t weight[..., t:t+1, :, :] * tap(x, t)``: each pixel's window weighted by its own ``kh * kw`` weights.

    Args:
        x: ``[..., C, H, W]`` (e.g. ``[B, groups, C_per_group, H, W]``).
        weight: ``[..., kh * kw, H_out, W_out]``, broadcast over ``x``'s channel dim (one weight per tap, shared by
            the channels of a group).
    Returns:
        ``[..., C, H_out, W_out]`` with ``H_out = ceil(H / stride)``.
    """
    taps = window_taps(x, kernel_size, dilation, stride)
    out = taps[0] * weight[..., 0:1, :, :]
    for t in range(1, len(taps)):
        # out of place: FX graph passes (dead-code elimination) drop in-place ops whose result is unused
        out = torch.addcmul(out, taps[t], weight[..., t:t + 1, :, :])
    return out


def window_dot(
        q: torch.Tensor,
        k: torch.Tensor,
        kernel_size: Tuple[int, int],
        dilation: Tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """The dot product over channels of each pixel of ``q`` with every tap of its window in ``k`` (stride 1).

    Args:
        q, k: ``[..., C, H, W]``.
    Returns:
        ``[..., kh * kw, H, W]`` (channel dim replaced by the taps, row-major).
    """
    return torch.stack([(q * tap).sum(-3) for tap in window_taps(k, kernel_size, dilation)], dim=-3)


def _stop(offset: int, padding: int) -> Optional[int]:
    """End of the slice starting at ``offset`` in a map padded by ``padding`` on both sides: ``2 * padding`` rows
    short of the padded end (``None`` when that is the end), so every tap spans the unpadded extent."""
    stop = offset - 2 * padding
    return stop if stop < 0 else None
