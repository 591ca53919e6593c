"""Window and grid partitions of channels-last maps ``[B, H, W, C]``, with padding for sizes that do not divide.

``window_partition`` cuts non-overlapping ``wh x ww`` windows (tokens row-major inside a window);
``grid_partition`` gathers a ``gh x gw`` grid of tokens spread over the whole map (token ``(i, j)`` of a group is
position ``(i * H / gh + a, j * W / gw + b)``), MaxViT's dilated "grid" attention. Both return
``[B * groups, tokens, C]`` and have an exact inverse. ``pad_to_multiple`` zero-pads right/bottom so the map divides,
``crop`` undoes it.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ['window_partition', 'window_reverse', 'grid_partition', 'grid_reverse', 'pad_to_multiple', 'crop']


def window_partition(x: torch.Tensor, window: Tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * H/wh * W/ww, wh * ww, C]``; H, W must be multiples of the window."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)


def window_reverse(windows: torch.Tensor, window: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition` for a map of ``size = (H, W)``."""
    wh, ww = window
    H, W = size
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def grid_partition(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * H/gh * W/gw, gh * gw, C]``: each group is a ``gh x gw`` grid strided over the map."""
    B, H, W, C = x.shape
    gh, gw = grid
    x = x.view(B, gh, H // gh, gw, W // gw, C)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, gh * gw, C)


def grid_reverse(groups: torch.Tensor, grid: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`grid_partition` for a map of ``size = (H, W)``."""
    gh, gw = grid
    H, W = size
    C = groups.shape[-1]
    x = groups.view(-1, H // gh, W // gw, gh, gw, C)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(-1, H, W, C)


@register_notrace_function
def pad_to_multiple(x: torch.Tensor, multiple: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad a ``[B, H, W, C]`` map on the bottom / right so H and W are multiples of ``multiple``."""
    H, W = x.shape[1], x.shape[2]
    pad_h = (multiple[0] - H % multiple[0]) % multiple[0]
    pad_w = (multiple[1] - W % multiple[1]) % multiple[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def crop(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Keep the top-left ``size = (H, W)`` of a ``[B, H', W', C]`` map (undoes :func:`pad_to_multiple`)."""
    return x[:, :size[0], :size[1], :].contiguous()
