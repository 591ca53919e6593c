"""Pre-norm attention over the windows or the dilated grid of a map of any size (MaxViT's block and grid attention,
arXiv 2204.01697, Sec. 3.2), with a relative position bias: a map that does not divide by the partition is zero-padded
at the bottom / right, its padded tokens masked out as keys (``-inf`` bias) and the result cropped."""
from typing import Callable, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, register_notrace_function, to_2tuple

from .attention import Attention
from .mlp import Mlp
from .relpos import RelPosBias, resize_rel_pos_table
from .tracing import is_tracing
from .window import crop, grid_partition, grid_reverse, pad_to_multiple, window_partition, window_reverse

__all__ = ['PartitionAttention', 'padded_attn_bias', 'set_table_window']


@register_notrace_function
def padded_attn_bias(
        bias: torch.Tensor,
        size: Tuple[int, int],
        padded: Tuple[int, int],
        partition: Tuple[int, int],
        grid: bool,
        batch: int,
) -> torch.Tensor:
    """The attention bias for a ``size`` map padded to ``padded``: ``bias`` (``[heads, N, N]``) itself when nothing
    is padded, else ``[batch * groups, heads, N, N]`` with ``-inf`` on the keys that are padding (group order of
    :func:`window_partition` / :func:`grid_partition`)."""
    if not is_tracing() and size[0] == padded[0] and size[1] == padded[1]:
        return bias  # (a traced graph always masks, nothing where nothing is padded: it holds at every size)
    rows = torch.arange(padded[0], device=bias.device) < size[0]
    cols = torch.arange(padded[1], device=bias.device) < size[1]
    valid = (rows[:, None] & cols[None, :]).view(1, padded[0], padded[1], 1)
    groups = grid_partition(valid, partition) if grid else window_partition(valid, partition)  # [G, N, 1]
    num_groups, n = groups.shape[0], groups.shape[1]
    key_bias = bias.new_zeros((num_groups, 1, 1, n))  # (a method: FX records it with traced sizes, torch.zeros not)
    key_bias = key_bias.masked_fill(~groups.view(num_groups, 1, 1, n), float('-inf'))
    return (bias.unsqueeze(0) + key_bias).repeat(batch, 1, 1, 1)


# a leaf for every FX tracer, not only timm's: torch.ao's prepare_fx then leaves the bias float (int8 has no -inf)
torch.fx.wrap('padded_attn_bias')


class PartitionAttention(nn.Module):
    """Pre-norm transformer unit over windows (``grid=False``) or a dilated grid (``grid=True``) of a ``[B, H, W, C]``
    map: ``x + attn(partition(norm1(x)))``, then ``x + mlp(norm2(x))``.

    Args:
        dim: channels.
        partition_size: window / grid size ``P`` (the relative position table is ``(2P-1) x (2P-1)``).
        grid: grid instead of block (window) partition.
        head_dim: width per head (heads = ``dim // head_dim``).
        mlp_ratio: MLP hidden width over ``dim``.
        act_layer: the MLP's activation (MaxViT: GELU with the tanh approximation).
        norm_eps: LayerNorm eps.
        attn_drop, proj_drop: dropout on the attention weights / after the projections.
        drop_path: stochastic depth of both residual branches.
    """

    def __init__(
            self,
            dim: int,
            partition_size: Tuple[int, int],
            grid: bool = False,
            head_dim: int = 32,
            mlp_ratio: float = 4.,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_eps: float = 1e-5,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grid = grid
        self.partition_size: Tuple[int, int] = to_2tuple(partition_size)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.attn = Attention(dim, head_dim=head_dim, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.rel_pos = RelPosBias(self.attn.num_heads, self.partition_size, key_minus_query=True, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def set_partition_size(self, partition_size: Union[int, Tuple[int, int]]):
        """Change ``P``; the relative position table is resized bilinearly (``tf.image.resize``), trainability kept."""
        self.partition_size = to_2tuple(partition_size)
        set_table_window(self.rel_pos, self.partition_size)

    def _partition_attn(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W = x.shape[0], x.shape[1], x.shape[2]
        x = pad_to_multiple(x, self.partition_size)
        Hp, Wp = x.shape[1], x.shape[2]
        if self.grid:
            parts = grid_partition(x, self.partition_size)
        else:
            parts = window_partition(x, self.partition_size)
        bias = padded_attn_bias(self.rel_pos(self.partition_size), (H, W), (Hp, Wp), self.partition_size, self.grid, B)
        parts = self.attn(parts, bias)
        if self.grid:
            x = grid_reverse(parts, self.partition_size, (Hp, Wp))
        else:
            x = window_reverse(parts, self.partition_size, (Hp, Wp))
        return crop(x, (H, W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self._partition_attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


@torch.no_grad()
def set_table_window(rel_pos: RelPosBias, window: Tuple[int, int]):
    """Resize ``rel_pos``'s table to ``window`` in place (a new Parameter with the old one's ``requires_grad``)."""
    old = rel_pos.relative_position_bias_table
    new = resize_rel_pos_table(old, (2 * window[0] - 1, 2 * window[1] - 1))
    rel_pos.relative_position_bias_table = nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)
    rel_pos.table_window = (int(window[0]), int(window[1]))
