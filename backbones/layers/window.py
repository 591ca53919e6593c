"""Window and grid partitions of channels-last maps ``[B, H, W, C]``, with padding for sizes that do not divide.

``window_partition`` cuts non-overlapping ``wh x ww`` windows (tokens row-major inside a window);
``grid_partition`` gathers a ``gh x gw`` grid of tokens spread over the whole map (token ``(i, j)`` of a group is
position ``(i * H / gh + a, j * W / gw + b)``), MaxViT's dilated "grid" attention. Both return
``[B * groups, tokens, C]`` and have an exact inverse. ``pad_to_multiple`` zero-pads right/bottom so the map divides,
``crop`` undoes it.

Export notes. Every size is written out from the map's own sizes (no ``-1``), so an empty batch stays empty and shapes
stay symbolic under ``torch.export``; padded sizes are ``ceil(H / m) * m`` rather than ``H + (m - H % m) % m`` (the
same number, but a far simpler expression for the exporter's shape solver). While tracing, permuted windows are
copied out with an explicit contiguous ``clone`` (:func:`contiguous_reshape`) instead of ``reshape``: ``reshape`` asks
whether the permuted view happens to be contiguous (it is when there is one window per side), and a traced graph would
then only hold for inputs with the same answer.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .tracing import is_tracing

__all__ = [
    'window_partition', 'window_reverse', 'grid_partition', 'grid_reverse', 'pad_to_multiple', 'crop', 'round_up',
    'contiguous_reshape']


def contiguous_reshape(x: torch.Tensor, shape: List[int]) -> torch.Tensor:
    """``x.reshape(shape)`` of a permuted ``x``; a traced graph always copies (``clone`` + ``view``), so that it does
    not depend on whether the permuted view happened to be contiguous (see the module docstring, export notes)."""
    if is_tracing():
        return x.clone(memory_format=torch.contiguous_format).view(shape)
    return x.reshape(shape)


def window_partition(x: torch.Tensor, window: Tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * H/wh * W/ww, wh * ww, C]``; H, W must be multiples of the window."""
    B, H, W, C = x.shape
    wh, ww = window
    nh, nw = H // wh, W // ww
    x = x.view(B, nh, wh, nw, ww, C).permute(0, 1, 3, 2, 4, 5)
    return contiguous_reshape(x, [B * nh * nw, wh * ww, C])


def window_reverse(windows: torch.Tensor, window: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition` for a map of ``size = (H, W)``."""
    wh, ww = window
    H, W = size
    nh, nw = H // wh, W // ww
    B, C = windows.shape[0] // (nh * nw), windows.shape[-1]
    x = windows.view(B, nh, nw, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return contiguous_reshape(x, [B, H, W, C])


def grid_partition(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * H/gh * W/gw, gh * gw, C]``: each group is a ``gh x gw`` grid strided over the map."""
    B, H, W, C = x.shape
    gh, gw = grid
    sh, sw = H // gh, W // gw
    x = x.view(B, gh, sh, gw, sw, C).permute(0, 2, 4, 1, 3, 5)
    return contiguous_reshape(x, [B * sh * sw, gh * gw, C])


def grid_reverse(groups: torch.Tensor, grid: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`grid_partition` for a map of ``size = (H, W)``."""
    gh, gw = grid
    H, W = size
    sh, sw = H // gh, W // gw
    B, C = groups.shape[0] // (sh * sw), groups.shape[-1]
    x = groups.view(B, sh, sw, gh, gw, C).permute(0, 3, 1, 4, 2, 5)
    return contiguous_reshape(x, [B, H, W, C])


def round_up(size: int, multiple: int) -> int:
    """``ceil(size / multiple) * multiple``, in integer ops that also hold for symbolic (traced) sizes."""
    return (size + multiple - 1) // multiple * multiple


@register_notrace_function
def pad_to_multiple(x: torch.Tensor, multiple: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad a ``[B, H, W, C]`` map on the bottom / right so H and W are multiples of ``multiple``.

    Eager mode skips the pad when there is nothing to pad; a traced graph always pads (by zero rows where the size
    divides), so it holds at every input size."""
    H, W = x.shape[1], x.shape[2]
    pad_h = round_up(H, multiple[0]) - H
    pad_w = round_up(W, multiple[1]) - W
    if is_tracing() or pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def crop(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Keep the top-left ``size = (H, W)`` of a ``[B, H', W', C]`` map (undoes :func:`pad_to_multiple`).

    A traced graph always copies (``contiguous()`` would ask whether anything was cropped)."""
    x = x[:, :size[0], :size[1], :]
    if is_tracing():
        return x.clone(memory_format=torch.contiguous_format)
    return x.contiguous()
