"""2-D relative position bias for window attention, with the table resized to other windows (MaxViT, MOAT).

The table holds one learned value per head and per 2-D offset: ``[heads, 2*th - 1, 2*tw - 1]`` for a ``th x tw``
window. For a ``wh x ww`` window of another size the table is first resized bilinearly (half-pixel centres, no
antialiasing: ``tf.image.resize``'s default, which ``F.interpolate(align_corners=False)`` reproduces) to
``[heads, 2*wh - 1, 2*ww - 1]``; the bias of query ``q`` and key ``k`` is then the entry at their offset.

``key_minus_query`` picks the sign of the offset: MOAT and MaxViT's TensorFlow code index by ``key - query``,
Swin-style code by ``query - key``. The index is rebuilt from the window size in ``forward`` (a few hundred integer
ops, no buffer), so the layer works unchanged after meta-device construction, ``to_empty`` and any input size.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .tracing import is_tracing

__all__ = ['RelPosBias', 'rel_pos_index', 'resize_rel_pos_table']


def rel_pos_index(window: Tuple[int, int], key_minus_query: bool = True,
                  device: Optional[torch.device] = None) -> torch.Tensor:
    """``[N, N]`` (N = wh * ww, tokens row-major) indices into a flattened ``(2wh-1) x (2ww-1)`` offset table."""
    wh, ww = window
    token = torch.arange(wh * ww, device=device)
    ys = token // ww  # row-major (y, x) of each token, in ops the exporters take with a dynamic window
    xs = token - ys * ww
    dy = ys[None, :] - ys[:, None]  # [query, key] = key - query
    dx = xs[None, :] - xs[:, None]
    if not key_minus_query:
        dy, dx = -dy, -dx
    return (dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1)


def resize_rel_pos_table(table: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``[heads, h, w]`` table to ``[heads, size[0], size[1]]`` (``tf.image.resize`` default)."""
    if not is_tracing() and table.shape[-2] == size[0] and table.shape[-1] == size[1]:
        return table  # (a traced graph always resizes: to the same size, bilinear is the identity, exactly)
    return F.interpolate(table.unsqueeze(0), size=size, mode='bilinear', align_corners=False).squeeze(0)


# an FX leaf (timm's tracer): forward compares the table's shape with the window, which under tracing are proxies
# (the window is the traced feature-map size for global attention)
@register_notrace_module
class RelPosBias(nn.Module):
    """Learned ``[heads, 2*th-1, 2*tw-1]`` table; ``forward(window)`` -> bias ``[heads, N, N]`` for that window.

    Args:
        num_heads: heads.
        table_window: the window ``(th, tw)`` the table is sized for.
        key_minus_query: offset sign (see module docstring).
    """

    def __init__(
            self,
            num_heads: int,
            table_window: Tuple[int, int],
            key_minus_query: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.table_window = (int(table_window[0]), int(table_window[1]))
        self.key_minus_query = key_minus_query
        th, tw = self.table_window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(num_heads, 2 * th - 1, 2 * tw - 1, device=device, dtype=dtype))

    def forward(self, window: Tuple[int, int]) -> torch.Tensor:
        wh, ww = window
        table = resize_rel_pos_table(self.relative_position_bias_table, (2 * wh - 1, 2 * ww - 1))
        index = rel_pos_index((wh, ww), self.key_minus_query, device=table.device)
        n = wh * ww
        return table.flatten(1).index_select(1, index.flatten()).view(self.num_heads, n, n)
