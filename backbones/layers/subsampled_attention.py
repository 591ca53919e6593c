"""Twins' two spatial attentions, on channels-last maps ``[B, H, W, C]`` (in and out).

- :class:`LocallyGroupedAttention` (LSA): self-attention inside non-overlapping ``ws x ws`` windows. A map whose
  sides do not divide by the window is zero-padded on the bottom / right before the ``qkv`` projection and cropped
  after the attention (the padded positions take part as keys / values, as in timm's Twins and the official
  zero-padding variant); at sizes that divide, nothing is padded.
- :class:`GlobalSubsampledAttention` (GSA, PVT's spatial-reduction attention): every token queries a sub-sampled
  copy of the map; keys and values come from a ``sr x sr`` stride-``sr`` conv + LayerNorm of the map (``sr = 1``:
  from the tokens themselves, i.e. global attention with separate ``q`` and ``kv`` projections).

Both run the attention through :func:`backbones.layers.attention.sdpa` (``F.scaled_dot_product_attention``).
Parameter names (``qkv``/``proj``; ``q``/``kv``/``sr``/``norm``/``proj``) are the official / timm ones.
"""
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import to_2tuple, use_fused_attn

from .attention import Attention, sdpa
from .conv import LayerType
from .tracing import contiguous_for_export
from .window import contiguous_reshape, crop, pad_to_multiple, window_partition, window_reverse

__all__ = ['LocallyGroupedAttention', 'GlobalSubsampledAttention']


class LocallyGroupedAttention(Attention):
    """LSA: multi-head attention within non-overlapping windows of a ``[B, H, W, C]`` map.

    Args:
        dim: channels ``C``.
        num_heads: attention heads.
        window_size: window side ``ws`` (int or ``(wh, ww)``).
        qkv_bias, attn_drop, proj_drop: as in :class:`~backbones.layers.attention.Attention`.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size=7,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        if dim % num_heads:
            raise ValueError(f'LocallyGroupedAttention: dim {dim} is not a multiple of num_heads {num_heads}')
        super().__init__(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, device=device, dtype=dtype)
        self.window_size = to_2tuple(window_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1], x.shape[2]
        x = pad_to_multiple(x, self.window_size)
        Hp, Wp = x.shape[1], x.shape[2]
        x = self.attend(window_partition(x, self.window_size))  # [B * windows, wh * ww, C]
        x = crop(window_reverse(x, self.window_size, (Hp, Wp)), (H, W))
        return self.proj_drop(self.proj(x))


class GlobalSubsampledAttention(nn.Module):
    """GSA: queries from every position of a ``[B, H, W, C]`` map, keys / values from the map sub-sampled by
    ``sr_ratio`` (conv ``k = s = sr_ratio`` with bias, then ``norm_layer``).

    Args:
        dim: channels ``C``.
        num_heads: attention heads.
        sr_ratio: sub-sampling factor (1 = keys / values from all tokens, no conv, no norm).
        qkv_bias: bias of the ``q`` and ``kv`` projections.
        attn_drop, proj_drop: dropout on the attention weights / the output.
        norm_layer: norm after the sub-sampling conv (default ``nn.LayerNorm`` with eps 1e-5, the official one).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            sr_ratio: int = 1,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            norm_layer: LayerType = partial(nn.LayerNorm, eps=1e-5),
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f'GlobalSubsampledAttention: dim {dim} is not a multiple of num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        self.sr: Optional[nn.Module] = None
        self.norm: Optional[nn.Module] = None
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, **dd)
            self.norm = norm_layer(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        q = self.q(x).reshape(B, H * W, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr is not None and self.norm is not None:
            x_nchw = contiguous_for_export(x.permute(0, 3, 1, 2))
            kv = self.norm(self.sr(x_nchw).flatten(2).transpose(1, 2))  # [B, HW / sr^2, C]
        else:
            kv = x.reshape(B, H * W, C)
        kv = self.kv(kv).reshape(B, kv.shape[1], 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        x = sdpa(q, k, v, None, self.scale, self.attn_drop.p if self.training else 0., self.fused_attn)
        x = contiguous_reshape(x.transpose(1, 2), [B, H, W, C])
        return self.proj_drop(self.proj(x))
