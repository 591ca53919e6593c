"""Channel (group) attention: channels attend to channels, each channel described by all N tokens (DaViT).

The tokens' channels are split into ``num_heads`` groups of ``d = C / num_heads``. Within a group, the ``d x d`` map
``A = softmax((k * d**-0.5)^T v)`` (rows: channels of k, over the channels of v) mixes the channels of q:
``out^T = A q^T``. That is ordinary attention with the roles transposed, queries = ``k^T``, keys = ``v^T``,
values = ``q^T`` (``d`` "tokens" of width ``N``), so it runs through the shared ``sdpa`` kernel with an explicit scale.
Cost: ``2 * N * d * C`` MACs, linear in the number of tokens.
"""
import torch
import torch.nn as nn
from timm.layers import use_fused_attn

from .attention import sdpa
from .window import contiguous_reshape

__all__ = ['ChannelAttention']


class ChannelAttention(nn.Module):
    """Group channel attention over ``[B, N, C]`` tokens: ``qkv`` Linear -> per-group ``d x d`` attention -> ``proj``.

    Args:
        dim: token width ``C``.
        num_heads: channel groups (``C`` must be a multiple of it).
        qkv_bias: bias of the fused q/k/v projection.
        proj_bias: bias of the output projection.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f'ChannelAttention: dim {dim} is not a multiple of num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # [B, N, 3C] -> 3 x [B, heads, d, N]: one "token" per channel of the group, described by its N values
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        x = sdpa(k, v, q, scale=self.scale, fused=self.fused_attn)  # softmax(k^T v * scale) q^T: [B, heads, d, N]
        x = contiguous_reshape(x.permute(0, 3, 1, 2), [B, N, C])
        return self.proj(x)
