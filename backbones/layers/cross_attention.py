"""Attention of a few query tokens over all tokens: CrossViT's cross-attention fusion (the class token of one branch
queries the patch tokens of the other); CaiT's class attention (arXiv 2103.17239) has the same form.

CrossViT ("CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification", arXiv 2103.14899;
official ``IBM/CrossViT@3f7ab77:models/crossvit.py`` ``CrossAttention``), per head of width ``d``::

    q = W_q x_0,   k_j = W_k x_j,   v_j = W_v x_j,   out = proj(sum_j softmax_j(q . k_j / sqrt(d)) v_j)

with ``x_0`` the query token(s) and ``j`` running over every token, the query token included. ``W_q``, ``W_k``,
``W_v`` are separate Linear layers (the official ``wq``, ``wk``, ``wv``).

How :class:`CrossAttention` computes it in inference (``eval()``): with one query, the key and value projections of
all ``N`` tokens (``2 N C^2`` MACs) are almost all of the work, and they are not needed. For head ``h`` with the rows
``W_k,h`` / ``W_v,h`` (``[d, C]``) and biases ``b_k,h`` / ``b_v,h``::

    q_h . (W_k,h x_j + b_k,h) = (W_k,h^T q_h) . x_j + q_h . b_k,h    (the last term is the same for every j and
                                                                     cancels in the softmax)
    sum_j a_j (W_v,h x_j + b_v,h) = W_v,h (sum_j a_j x_j) + b_v,h     (the attention weights a_j sum to one)

so the attention runs on the tokens themselves, with one ``C``-wide query per head (``W_k,h^T q_h``, all heads
as the query rows of one attention call), and ``W_v,h`` is applied to the mixed token afterwards:
``2 heads N C`` MACs instead of ``2 N C^2 + 2 N C``. The numbers are the official ones to float rounding. Training
(``train()``) and ``fused_attn = False`` use the formula above as written: with attention dropout the weights no
longer sum to one, and every parameter (``b_k`` included, whose gradient is zero) takes part as in the official
code. The counter (:mod:`backbones.flops`) counts the layer as the paper defines it, i.e. the formula above. So
does a model whose ``wk`` / ``wv`` ``torch.ao`` replaced by quantized Linear layers (``quantize_dynamic``), which keep
their weights packed: the folding needs them as float matrices, and the int8 layers run as they are.
"""
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import use_fused_attn

from .attention import sdpa
from .tracing import is_exporting
from .window import contiguous_reshape

__all__ = ['CrossAttention']



def _per_head_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``[B, n, h, k] x [h, k, m] -> [B, n, h, m]`` (``x[b, i, j] @ w[j]``, einsum ``'bnhk,hkm->bnhm'``) as one
    ``bmm`` over the heads, with sizes written out and an explicit copy: what the exporters take for any batch."""
    B, n, h, k = x.shape
    y = torch.bmm(contiguous_reshape(x.permute(2, 0, 1, 3), [h, B * n, k]), w)  # [h, B * n, m]
    return contiguous_reshape(y.view(h, B, n, w.shape[-1]).permute(1, 2, 0, 3), [B, n, h, w.shape[-1]])

class CrossAttention(nn.Module):
    """Multi-head attention of the first ``num_query_tokens`` tokens over all tokens (see module docstring).

    Args:
        dim: token width ``C``.
        num_heads: heads (``C`` must be a multiple).
        qkv_bias: biases of ``wq`` / ``wk`` / ``wv``.
        qk_scale: logit scale (default ``head_dim ** -0.5``).
        attn_drop, proj_drop: dropout on the attention weights / on the output.
        num_query_tokens: the leading tokens that query (CrossViT: 1, the class token).

    ``forward(x)``: ``[B, N, C]`` -> ``[B, num_query_tokens, C]``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            num_query_tokens: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be a multiple of num_heads ({num_heads})')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim ** -0.5
        self.num_query_tokens = num_query_tokens
        self.fused_attn = use_fused_attn()
        self.wq = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The formula as written: ``[B, N, C]`` -> merged heads of the queries ``[B, n, C]`` (before ``proj``)."""
        B, N, C = x.shape
        n, h, d = self.num_query_tokens, self.num_heads, self.head_dim
        q = self.wq(x[:, :n]).reshape(B, n, h, d).transpose(1, 2)  # [B, h, n, d]
        k = self.wk(x).reshape(B, N, h, d).transpose(1, 2)
        v = self.wv(x).reshape(B, N, h, d).transpose(1, 2)
        x = sdpa(q, k, v, None, self.scale, self.attn_drop.p if self.training else 0., self.fused_attn)
        return x.transpose(1, 2).reshape(B, n, C)

    def attend_folded(self, x: torch.Tensor) -> torch.Tensor:
        """The same in inference, with ``W_k`` folded into the queries and ``W_v`` applied after the mix."""
        B, N, C = x.shape
        n, h, d = self.num_query_tokens, self.num_heads, self.head_dim
        q = self.wq(x[:, :n]).reshape(B, n, h, d) * self.scale
        wk, wv = self.wk.weight.reshape(h, d, C), self.wv.weight.reshape(h, d, C)
        if is_exporting():  # einsum's internal reshapes would make batch 1 a special case of the program
            q = _per_head_matmul(q, wk)
        else:
            q = torch.einsum('bnhd,hdc->bnhc', q, wk)  # W_k,h^T q_h
        # every (query, head) pair is one query row of a single C-wide attention over the tokens
        mixed = sdpa(q.reshape(B, 1, n * h, C), x.unsqueeze(1), x.unsqueeze(1), None, 1., 0., self.fused_attn)
        if is_exporting():
            out = _per_head_matmul(mixed.reshape(B, n, h, C), wv.transpose(1, 2))
        else:
            out = torch.einsum('bnhc,hdc->bnhd', mixed.reshape(B, n, h, C), wv)
        out = out.reshape(B, n, C)
        return out if self.wv.bias is None else out + self.wv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (a quantized Linear is not an nn.Linear; TorchScript resolves the isinstance when it compiles)
        if self.fused_attn and not self.training and isinstance(self.wk, nn.Linear) and isinstance(self.wv, nn.Linear):
            x = self.attend_folded(x)
        else:
            x = self.attend(x)
        return self.proj_drop(self.proj(x))
