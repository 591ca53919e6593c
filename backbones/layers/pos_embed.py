"""Learned absolute position embeddings of token models, resampled to any patch grid.

A table ``[1, P + gh * gw, D]`` holds ``P`` prefix slots (a class token's position; ``P = 0`` when the table covers
the patches only, as in ConViT) followed by the row-major ``gh x gw`` patch grid it was trained on. For another grid
the patch part is resampled with timm's :func:`~timm.layers.resample_abs_pos_embed` (bicubic, antialiased, as
timm's ViTs do on load and with ``dynamic_img_size``); the prefix slots are kept. At the table's own grid nothing is
interpolated (timm's early exit; during ``torch.export`` it interpolates to the same size, an exact identity, so that
the graph does not specialise on the example size).
"""
import math
from typing import Dict, Optional, Tuple

import torch
from timm.layers import register_notrace_function, resample_abs_pos_embed

__all__ = ['pos_embed_for_grid', 'resize_pos_embed_in_state_dict']


@register_notrace_function  # an FX leaf: the size comparisons inside need concrete sizes
def pos_embed_for_grid(
        pos_embed: torch.Tensor,
        grid: Tuple[int, int],
        table_grid: Tuple[int, int],
        num_prefix_tokens: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split a ``[1, P + th * tw, D]`` table sized for ``table_grid`` into the prefix slots ``[1, P, D]`` and the
    patch part resampled to ``grid``, as a channels-last map ``[1, gh, gw, D]`` (added to a patch grid as is)."""
    gh, gw = grid
    pos_embed = resample_abs_pos_embed(
        pos_embed, new_size=[gh, gw], old_size=[table_grid[0], table_grid[1]], num_prefix_tokens=num_prefix_tokens)
    prefix = pos_embed[:, :num_prefix_tokens]
    return prefix, pos_embed[:, num_prefix_tokens:].reshape(1, gh, gw, pos_embed.shape[-1])


def resize_pos_embed_in_state_dict(
        state_dict: Dict[str, torch.Tensor],
        key: str,
        grid: Tuple[int, int],
        num_prefix_tokens: int = 0,
        table_grid: Optional[Tuple[int, int]] = None,
) -> Dict[str, torch.Tensor]:
    """Resample ``state_dict[key]`` in place to the model's ``grid`` when its token count differs.

    The checkpoint's grid is ``table_grid`` or, when not given, square (what every released ViT-style checkpoint
    uses). A table whose patch count is not a square (and no ``table_grid``) is left as is, so that the strict key /
    shape check that follows reports it.
    """
    pos = state_dict.get(key)
    if pos is None or pos.dim() != 3 or pos.shape[1] == num_prefix_tokens + grid[0] * grid[1]:
        return state_dict
    if table_grid is None:
        side = math.isqrt(pos.shape[1] - num_prefix_tokens)
        if side * side != pos.shape[1] - num_prefix_tokens:
            return state_dict
        table_grid = (side, side)
    state_dict[key] = resample_abs_pos_embed(
        pos, new_size=list(grid), old_size=list(table_grid), num_prefix_tokens=num_prefix_tokens)
    return state_dict
