"""Multi-head self-attention on ``F.scaled_dot_product_attention``, with an optional additive bias.

One ``Attention`` serves every token-mixing attention of the zoo (window, grid, global, region). A family adds its
bias (relative positions, masks) through ``forward(x, attn_bias)``; ``sdpa`` is the kernel call on its own, for
attentions whose q / k / v come from elsewhere (sub-sampled keys, routed regions).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import use_fused_attn

from .window import contiguous_reshape

__all__ = ['Attention', 'sdpa']


def sdpa(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_bias: Optional[torch.Tensor] = None,
        scale: Optional[float] = None,
        dropout_p: float = 0.,
        fused: bool = True,
) -> torch.Tensor:
    """``softmax(q k^T * scale + attn_bias) v`` over ``[..., N, d]`` tensors.

    ``fused`` runs ``F.scaled_dot_product_attention``; otherwise the same math in explicit ops, which the counter
    and TorchScript see op by op (the softmax in float32 for half-precision inputs). ``scale`` defaults to
    ``d ** -0.5``.
    """
    if fused:
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)
    if attn_bias is not None:
        attn = attn + attn_bias
    if attn.dtype == torch.float16 or attn.dtype == torch.bfloat16:
        attn = attn.float().softmax(dim=-1).to(q.dtype)
    else:
        attn = attn.softmax(dim=-1)
    if dropout_p > 0.:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


class Attention(nn.Module):
    """Multi-head self-attention over ``[B, N, C]`` tokens: ``qkv`` Linear -> SDPA (+ bias) -> ``proj`` Linear.

    Args:
        dim: token width ``C``.
        num_heads: heads (give this or ``head_dim``).
        head_dim: width per head (``num_heads = dim // head_dim``).
        qkv_bias: bias of the fused q/k/v projection.
        qk_scale: logit scale (default ``head_dim ** -0.5``).
        attn_drop, proj_drop: dropout on the attention weights / the output.
        proj_bias: bias of the output projection.

    ``forward(x, attn_bias, pre_proj)``: ``attn_bias`` is added to the logits, broadcastable to ``[B, heads, N, N]``
    (e.g. a relative position bias ``[heads, N, N]``); ``pre_proj`` (``[B, N, heads * head_dim]``) is added to the
    merged heads before ``proj`` (e.g. BiFormer's LePE positional term). ``attend(x, attn_bias)`` stops before
    ``proj`` (Twins' windowed attention crops its padding there).
    """

    def __init__(
            self,
            dim: int,
            num_heads: Optional[int] = None,
            head_dim: Optional[int] = None,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            proj_bias: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if num_heads is None:
            assert head_dim is not None, 'give num_heads or head_dim'
            num_heads = dim // head_dim
        head_dim = head_dim or dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = qk_scale if qk_scale is not None else head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        attn_dim = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * attn_dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(attn_dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Everything before ``proj``: ``[B, N, C]`` -> merged heads ``[B, N, heads * head_dim]`` (for subclasses
        that rearrange tokens between the attention and the projection, e.g. windowed attention that crops)."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if attn_bias is not None:  # as a 4-D view: on the CPU, SDPA's flash kernel takes only a mask of q's rank
            attn_bias = attn_bias.expand(B, self.num_heads, N, N)  # (a 3-D one runs the math kernel, ~2.5x slower)
        x = sdpa(q, k, v, attn_bias, self.scale, self.attn_drop.p if self.training else 0., self.fused_attn)
        return contiguous_reshape(x.transpose(1, 2), [B, N, self.num_heads * self.head_dim])  # explicit: batch 0 works

    def forward(
            self,
            x: torch.Tensor,
            attn_bias: Optional[torch.Tensor] = None,
            pre_proj: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        x = self.attend(x, attn_bias)
        if pre_proj is not None:
            x = x + pre_proj
        return self.proj_drop(self.proj(x))
