"""Bi-level routing attention (BRA), BiFormer's sparse attention (Zhu et al., CVPR 2023, arXiv 2303.08810).

The map is cut into an ``n_win x n_win`` grid of regions (``n_win`` is a region COUNT per side, so regions grow with
the input). Each query region picks the ``topk`` key regions whose mean key is most similar to its mean query
(coarse, region-level routing), then its tokens attend to the tokens of those regions only (fine, token-level
attention, through ``F.scaled_dot_product_attention``). A depthwise conv of the value map (LePE) is added before the
output projection.

Sizes that do not divide into ``n_win`` regions are zero-padded at the bottom / right before the q/k/v projection
and cropped after the attention: the padded tokens carry the projection bias and take part (unmasked) in the region
means, the routing and the attention, exactly as the official ``auto_pad=True`` code (``ops/bra_legacy.py``) does;
at divisible sizes nothing is padded.

Two exact forms of the fine level, chosen per layer from the fraction of regions each query routes to:

* gathered (:func:`routed_attention`): the selected regions' keys / values are taken with ONE ``index_select`` over
  the flattened ``(batch * regions)`` axis (not a ``gather`` on an expanded view of every region), then attended;
* masked (:func:`masked_routed_attention`, ``topk >= n_win ** 2 / 4``: BiFormer's third stage, 16 of 49 regions):
  every query attends to the whole map through one SDPA call with an additive mask that is ``-inf`` outside its
  routed regions. Same softmax over the same keys, so the same numbers up to float rounding (the keys are summed in
  map order, not routing order); at most 4x the attention MACs but no copy of ``topk`` key / value sets per region,
  which costs more than the extra MACs on a CPU (BiFormer-T at 224: 29 -> 11 ms per third-stage block).

Either way the layer is counted (``backbones.flops``) as the gathered form, the official operator's work.
"""
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import register_notrace_function, use_fused_attn

from .attention import sdpa
from .conv import same_padding
from .tracing import contiguous_for_export, is_tracing
from .window import contiguous_reshape, crop, pad_to_multiple, window_partition, window_reverse

__all__ = ['BiLevelRoutingAttention', 'routed_attention', 'masked_routed_attention']


@register_notrace_function
def routed_attention(
        qkv: torch.Tensor,
        qk_dim: int,
        num_heads: int,
        n_win: int,
        topk: int,
        scale: float,
        fused: bool = True,
) -> torch.Tensor:
    """Region routing + token attention inside the routed regions.

    Args:
        qkv: ``[B, H, W, 2 * qk_dim + C]`` projected map (q, k, v along channels), H and W multiples of ``n_win``.
        qk_dim: query / key width; the value width ``C`` is the rest.
        num_heads: heads (contiguous, head-major channel split of q, k and v).
        n_win: regions per side.
        topk: key regions per query region (``<= n_win ** 2``).
        scale: logit scale of both the routing and the token attention.
        fused: run the token attention through ``F.scaled_dot_product_attention``.
    Returns:
        ``[B, H, W, C]`` attention output (before LePE and the projection).
    """
    B, H, W, C = qkv.shape
    rh, rw = H // n_win, W // n_win
    regions = n_win * n_win
    n = rh * rw  # tokens per region
    v_dim = C - 2 * qk_dim
    # regions row-major, tokens row-major inside; k/v partitioned on their own so that the routing gather below
    # copies whole contiguous regions (an index_select of a channel slice goes element by element, 10x slower)
    q = window_partition(qkv[..., :qk_dim], (rh, rw))  # [B * R, n, qk_dim]
    kv = window_partition(qkv[..., qk_dim:], (rh, rw))  # [B * R, n, qk_dim + v_dim]

    # coarse level: region-to-region affinity of the mean query / key (no gradient through the routing)
    q_r = q.mean(1).view(B, regions, qk_dim).detach()
    k_r = kv[..., :qk_dim].mean(1).view(B, regions, qk_dim).detach()
    route = torch.topk((q_r * scale) @ k_r.transpose(-2, -1), topk, dim=-1)[1]  # [B, R, topk], best first

    # one index_select over the flattened (batch * regions) axis: the k/v tokens of each query region's routed regions
    offset = torch.arange(B, device=route.device).view(B, 1, 1) * regions
    kv = kv.index_select(0, (route + offset).reshape(-1)).reshape(B * regions, topk * n, qk_dim + v_dim)

    # fine level: token attention of each region's queries over its topk * n routed keys, per head
    q = _split_heads(q, num_heads)
    k = _split_heads(kv[..., :qk_dim], num_heads)
    v = _split_heads(kv[..., qk_dim:], num_heads)
    out = sdpa(q, k, v, None, scale, 0., fused)  # [B * R, heads, n, v_dim / heads]
    out = contiguous_reshape(out.transpose(1, 2), [B * regions, n, v_dim])  # (n can be 1: one token per region)
    return window_reverse(out, (rh, rw), (H, W))


@register_notrace_function
def masked_routed_attention(
        qkv: torch.Tensor,
        qk_dim: int,
        num_heads: int,
        n_win: int,
        topk: int,
        scale: float,
        fused: bool = True,
) -> torch.Tensor:
    """:func:`routed_attention` as one masked attention over the whole map (same arguments and result): each query
    attends to every token, the logits of tokens outside its region's ``topk`` routed regions set to ``-inf``."""
    B, H, W, C = qkv.shape
    rh, rw = H // n_win, W // n_win
    regions = n_win * n_win
    v_dim = C - 2 * qk_dim
    q, k, v = qkv.view(B, H * W, C).split([qk_dim, qk_dim, v_dim], dim=-1)

    # coarse level, as in routed_attention: region means in map order (regions row-major); one dim at a time, as a
    # reduction over two strided dims of a channel slice at once goes 8x slower
    qk_r = qkv[..., :2 * qk_dim].view(B, n_win, rh, n_win, rw, 2 * qk_dim).mean(4).mean(2).detach()
    q_r, k_r = qk_r.view(B, regions, 2 * qk_dim).split(qk_dim, dim=-1)
    route = torch.topk((q_r * scale) @ k_r.transpose(-2, -1), topk, dim=-1)[1]  # [B, R, topk]

    # region-to-region mask (0 where routed, -inf elsewhere), spread to tokens by each token's region id
    region_bias = torch.full((B, regions, regions), float('-inf'), dtype=qkv.dtype, device=qkv.device)
    region_bias = region_bias.scatter(2, route, 0.)
    rows = torch.arange(H, device=qkv.device) // rh
    cols = torch.arange(W, device=qkv.device) // rw
    region_id = (rows.view(H, 1) * n_win + cols.view(1, W)).view(H * W)
    bias = region_bias.index_select(1, region_id).index_select(2, region_id).unsqueeze(1)  # [B, 1, HW, HW]

    out = sdpa(_split_heads(q, num_heads), _split_heads(k, num_heads), _split_heads(v, num_heads), bias, scale, 0.,
               fused)  # [B, heads, H * W, v_dim / heads]
    return contiguous_reshape(out.transpose(1, 2), [B, H, W, v_dim])


def _split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[N, L, heads * d]`` (a channel slice) -> ``[N, heads, L, d]``. A traced graph copies the slice first: a view
    of it asks whether ``L`` is 1 (one token per region at small inputs), and the graph would depend on the answer."""
    N, L, D = t.shape
    if is_tracing():
        t = t.clone(memory_format=torch.contiguous_format)
    return t.view(N, L, num_heads, D // num_heads).transpose(1, 2)


@register_notrace_function
def crop_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The top-left ``H x W`` of a ``[B, H', W', C]`` map, ``H, W`` those of ``ref`` (undoes the region padding)."""
    H, W = ref.shape[1], ref.shape[2]
    if not is_tracing() and x.shape[1] == H and x.shape[2] == W:
        return x
    return crop(x, (H, W))


# leaves for every FX tracer, not only timm's (whose autowrap list covers module forwards of timm's own tracer)
torch.fx.wrap('routed_attention')
torch.fx.wrap('masked_routed_attention')
torch.fx.wrap('crop_like')
torch.fx.wrap('pad_to_multiple')


class BiLevelRoutingAttention(nn.Module):
    """BRA over a channels-last map ``[B, H, W, C]`` -> ``[B, H, W, C]``.

    ``qkv`` Linear (q, k: ``qk_dim`` each, v: ``dim``) -> pad to ``n_win`` regions -> :func:`routed_attention`
    -> ``+ lepe(v)`` (depthwise ``side_dwconv x side_dwconv`` conv of the whole value map) -> crop -> ``proj``.

    Args:
        dim: token width ``C`` (also the value width).
        num_heads: heads.
        n_win: regions per side.
        topk: routed regions per query region.
        qk_dim: query / key width (default ``dim``).
        qk_scale: logit scale; default ``qk_dim ** -0.5`` (the official BRA scales by the FULL q/k width, not by the
            head width).
        side_dwconv: LePE kernel size (0: no LePE).
        qkv_bias: bias of the q/k/v projection.
        dilation: of the LePE conv (1; more in a stage that dilates instead of striding, where the ``n_win``
            regions, a count per side, cover the same part of the image as in the undilated network).

    ``masked`` (attribute, from ``topk >= n_win ** 2 / 4``) selects :func:`masked_routed_attention` over the gathered
    :func:`routed_attention`; both give the same numbers.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            n_win: int = 7,
            topk: int = 4,
            qk_dim: Optional[int] = None,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 5,
            qkv_bias: bool = True,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        qk_dim = qk_dim or dim
        assert qk_dim % num_heads == 0 and dim % num_heads == 0, 'widths must split evenly into heads'
        assert 0 < topk <= n_win * n_win, f'topk must be in 1..n_win**2 = {n_win * n_win}, got {topk}'
        self.dim = dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale if qk_scale is not None else qk_dim ** -0.5
        self.masked = 4 * topk >= n_win * n_win
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=qkv_bias, **dd)
        if side_dwconv > 0:
            self.lepe = nn.Conv2d(
                dim, dim, side_dwconv, padding=same_padding(side_dwconv, dilation), dilation=dilation, groups=dim, **dd)
        else:
            self.lepe = None
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, self.masked)

    def forward_gathered(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` through the gathered :func:`routed_attention` whatever ``masked`` says (the official
        operator's form, which ``backbones.flops`` counts)."""
        return self._forward(x, False)

    def _forward(self, x: torch.Tensor, masked: bool) -> torch.Tensor:
        shortcut_size = x  # only its H, W are used, to crop the padding away
        x = pad_to_multiple(x, (self.n_win, self.n_win))
        qkv = self.qkv(x)
        args = (self.qk_dim, self.num_heads, self.n_win, self.topk, self.scale, self.fused_attn)
        if masked:
            out = masked_routed_attention(qkv, *args)
        else:
            out = routed_attention(qkv, *args)
        if self.lepe is not None:
            v = contiguous_for_export(qkv[..., 2 * self.qk_dim:].permute(0, 3, 1, 2))
            out = out + self.lepe(v).permute(0, 2, 3, 1)
        out = crop_like(out, shortcut_size)
        return self.proj(out)
