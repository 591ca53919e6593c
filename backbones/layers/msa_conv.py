"""MSA-Conv: multi-head self-attention inside a convolution window (Zhang et al., "TiC: Exploring Vision Transformer
in Convolution", arXiv 2310.04134).

Every pixel's query attends to the keys of its own ``kh x kw`` (dilated) neighbourhood, as a convolution would look
at it, and aggregates the values of that neighbourhood with the attention weights. The official code
(https://github.com/zs670980918/MSA-Conv, commit 2d96f54) ships the operator as two C++/CUDA im2col kernels,
``core/op/msa_conv_v1_1.py`` (Q.K) and ``core/op/msa_conv1_v1_1.py`` (A.V), and one block,
``core/op/Transformer_in_Convolution.py::MSA_Conv_2d``, which this file reproduces as :class:`MSAConv2d`::

    q, k, v = split(qkv_conv(x))                                          # 1x1 conv C -> 3C, with bias
    A[t, y, x] = softmax_t(scale * sum_c q[c, y, x] * k[c, y - ph + i*d, x - pw + j*d])   # t = i*kw + j
    out[c, y, x] = sum_t A[t, y, x] * v[c, y - ph + i*d, x - pw + j*d]
    return relu(mlp(out + x))                                            # mlp: dense kh x kw conv, carries the stride

with ``ph, pw = d*(kh-1)//2, d*(kw-1)//2``. Window positions outside the image read zero and are NOT masked: they
take part in the softmax with logit 0 and contribute a zero value, exactly as in the official op. The official block
is single-head with ``scale = C**-0.5``; ``num_heads=h`` splits the channels into ``h`` contiguous groups, each with
its own softmax and ``scale = (C/h)**-0.5`` (``h = 1`` is the official block; ``h = C`` a "depthwise" MSA-Conv).

Differences from the official code, none of which changes a number at its supported settings:

* the window products are computed tap by tap on views of one padded copy
  (:mod:`backbones.layers.window_taps`, shared with the involution), not through the ``C * kh * kw`` times larger
  im2col buffer; autograd works on every device (the official CPU backward raises);
* even kernels raise a ``ValueError`` (the official op silently returns wrong numbers for them);
* no ``.float()`` upcast of q/k/v (so float64 and half modules work);
* ``padding`` of the dense conv defaults to "same" (``(k - 1) // 2``) instead of the official constant ``1``
  (identical for kernel 3); :meth:`MSAConv2d.from_official` takes the official constructor arguments and defaults;
* attention dropout defaults to 0 (official ``dropout=0.1``, which ``from_official`` keeps);
* the A.V stage may use another window shape with the same number of taps (``value_kernel_size``), which the
  official ops allow (its ``validation.py`` pairs a (5, 1) Q.K window with a (1, 5) A.V window).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import to_2tuple

from .window_taps import window_dot, window_weighted_sum

__all__ = ['msa_conv_qk', 'msa_conv_av', 'MSAConvAttention', 'MSAConv2d']

IntOrPair = Union[int, Tuple[int, int]]


def _odd_pair(value: IntOrPair, what: str) -> Tuple[int, int]:
    pair = to_2tuple(value)
    pair = (int(pair[0]), int(pair[1]))
    if pair[0] % 2 != 1 or pair[1] % 2 != 1:
        raise ValueError(
            f'MSA-Conv {what} must be odd (the window is centred on its pixel; the official op returns wrong '
            f'numbers for even sizes), got {value}')
    return pair


def msa_conv_qk(q: torch.Tensor, k: torch.Tensor, kernel_size: IntOrPair, dilation: IntOrPair = 1) -> torch.Tensor:
    """The official Q.K op (``MSA_Conv2d_v1``): ``[..., C, H, W] x2 -> [..., kh*kw, H, W]``,
    ``A[t = i*kw + j, y, x] = sum_c q[c, y, x] * k[c, y - ph + i*d, x - pw + j*d]`` (zero outside the image)."""
    return window_dot(q, k, _odd_pair(kernel_size, 'kernel_size'), to_2tuple(dilation))


def msa_conv_av(attn: torch.Tensor, v: torch.Tensor, kernel_size: IntOrPair, dilation: IntOrPair = 1) -> torch.Tensor:
    """The official A.V op (``MSA_Conv2d_1_v1``): ``[..., kh*kw, H, W], [..., C, H, W] -> [..., C, H, W]``,
    ``out[c, y, x] = sum_t attn[t, y, x] * v[c, y - ph + i*d, x - pw + j*d]`` (zero outside the image)."""
    return window_weighted_sum(v, attn, _odd_pair(kernel_size, 'kernel_size'), to_2tuple(dilation))


class MSAConvAttention(nn.Module):
    """Windowed multi-head self-attention of the MSA-Conv operator: ``(q, k, v) -> out``, all ``[B, C, H, W]``.

    No parameters: the projections around it belong to the caller (:class:`MSAConv2d` or a transformer block).

    Args:
        dim: channels ``C`` of q, k and v.
        kernel_size: window ``(kh, kw)`` of the Q.K stage (odd).
        dilation: spacing of the window taps (int or pair).
        num_heads: channel groups with their own softmax (1 = the official single head).
        attn_drop: dropout on the attention weights.
        value_kernel_size: window of the A.V stage (default: ``kernel_size``); same number of taps.
        scale: logit scale (default ``(C / num_heads) ** -0.5``).
    """

    def __init__(
            self,
            dim: int,
            kernel_size: IntOrPair = 3,
            dilation: IntOrPair = 1,
            num_heads: int = 1,
            attn_drop: float = 0.,
            value_kernel_size: Optional[IntOrPair] = None,
            scale: Optional[float] = None,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f'MSA-Conv channels ({dim}) must be a multiple of num_heads ({num_heads})')
        self.dim = dim
        self.num_heads = num_heads
        self.kernel_size = _odd_pair(kernel_size, 'kernel_size')
        self.value_kernel_size = self.kernel_size if value_kernel_size is None else _odd_pair(
            value_kernel_size, 'value_kernel_size')
        if self.value_kernel_size[0] * self.value_kernel_size[1] != self.kernel_size[0] * self.kernel_size[1]:
            raise ValueError(
                f'MSA-Conv value_kernel_size {self.value_kernel_size} must have as many taps as kernel_size '
                f'{self.kernel_size}')
        self.dilation = to_2tuple(dilation)
        self.scale = (dim // num_heads) ** -0.5 if scale is None else scale
        self.attn_drop = nn.Dropout(attn_drop)

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, C, H, W = q.shape
        heads = [self.num_heads, C // self.num_heads]  # channels -> [h, C/h]: a view, whatever the batch size
        # msa_conv_qk / msa_conv_av on [B, h, C/h, H, W] (called through the primitives: sizes already checked)
        q, k, v = q.unflatten(1, heads), k.unflatten(1, heads), v.unflatten(1, heads)
        attn = window_dot(q, k, self.kernel_size, self.dilation)  # [B, h, kh*kw, H, W]
        attn = (attn * self.scale).softmax(dim=2)  # zero-padded taps keep their logit 0 (not masked), as official
        attn = self.attn_drop(attn)
        out = window_weighted_sum(v, attn, self.value_kernel_size, self.dilation)  # [B, h, C/h, H, W]
        return out.reshape(B, C, H, W)

    def forward_unfold(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The official op's im2col formulation: K and V unfolded into ``C * kh * kw``-row buffers. The same numbers
        as :meth:`forward` in a handful of ops: the FLOP counter traces it, and the benchmark runs it as the
        official reference."""
        B, C, H, W = q.shape
        h, (kh, kw), (vh, vw), d = self.num_heads, self.kernel_size, self.value_kernel_size, self.dilation
        k = F.unfold(k, (kh, kw), dilation=d, padding=(d[0] * (kh - 1) // 2, d[1] * (kw - 1) // 2))
        attn = (q.view(B, h, C // h, 1, H, W) * k.view(B, h, C // h, kh * kw, H, W)).sum(2) * self.scale
        attn = self.attn_drop(attn.softmax(dim=2))  # [B, h, T, H, W]
        v = F.unfold(v, (vh, vw), dilation=d, padding=(d[0] * (vh - 1) // 2, d[1] * (vw - 1) // 2))
        return (v.view(B, h, C // h, vh * vw, H, W) * attn.unsqueeze(2)).sum(3).view(B, C, H, W)

    def extra_repr(self) -> str:
        s = f'{self.dim}, kernel_size={self.kernel_size}, dilation={self.dilation}, num_heads={self.num_heads}'
        if self.value_kernel_size != self.kernel_size:
            s += f', value_kernel_size={self.value_kernel_size}'
        return s


class MSAConv2d(nn.Module):
    """The official MSA-Conv block (``MSA_Conv_2d``): ``relu(mlp(attn(q, k, v) + x))``, a drop-in for a k x k conv.

    Parameter names are the official ones (``qkv_conv.{weight,bias}``, ``mlp.weight``, ``mlp.bias`` if ``bias``),
    so an official state dict loads as is.

    Args:
        in_chs, out_chs: channels of the input and of the dense conv's output.
        kernel_size: the attention window AND the dense conv's kernel (odd; int or pair).
        stride: stride of the dense conv (the attention always keeps the size).
        dilation: dilation of the attention window.
        conv_dilation: dilation of the dense conv (1, as official; in a network stage that dilates instead of
            striding, the block runs at stride 1 with both dilations set).
        padding: padding of the dense conv (default "same": ``conv_dilation * (k - 1) // 2``; the official default
            is 1).
        bias: bias of the dense conv (the 1x1 qkv conv always has one, as official).
        num_heads, attn_drop, value_kernel_size: see :class:`MSAConvAttention` (official: 1, 0.1, None).

    Shapes: ``[B, in_chs, H, W] -> [B, out_chs, H', W']`` with ``H' = (H + 2 * padding - kh) // stride + 1``.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: IntOrPair = 3,
            stride: IntOrPair = 1,
            dilation: IntOrPair = 1,
            conv_dilation: int = 1,
            padding: Optional[IntOrPair] = None,
            bias: bool = False,
            num_heads: int = 1,
            attn_drop: float = 0.,
            value_kernel_size: Optional[IntOrPair] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.qkv_conv = nn.Conv2d(in_chs, 3 * in_chs, 1, bias=True, **dd)
        self.attn = MSAConvAttention(
            in_chs, kernel_size, dilation, num_heads, attn_drop=attn_drop, value_kernel_size=value_kernel_size)
        kh, kw = self.attn.kernel_size
        if padding is None:
            padding = (conv_dilation * (kh - 1) // 2, conv_dilation * (kw - 1) // 2)
        self.mlp = nn.Conv2d(
            in_chs, out_chs, (kh, kw), stride=stride, padding=padding, dilation=conv_dilation, bias=bias, **dd)
        self.act = nn.ReLU(inplace=True)

    @classmethod
    def from_official(
            cls,
            input_channel: int,
            output_channel: int,
            kernel_size: IntOrPair,
            stride: IntOrPair = 1,
            dilation: int = 1,
            dropout: float = 0.1,
            im2col_step: int = 7,
            padding: IntOrPair = 1,
            bias: bool = False,
            **kwargs,
    ) -> 'MSAConv2d':
        """The block the official ``MSA_Conv_2d(...)`` call builds (same argument names and defaults;
        ``im2col_step`` only chunked the official op's batch loop and is ignored). ``kwargs``: ``num_heads``,
        ``value_kernel_size``, ``device``, ``dtype``."""
        del im2col_step
        return cls(
            input_channel, output_channel, kernel_size, stride=stride, dilation=dilation, padding=padding,
            bias=bias, attn_drop=dropout, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_conv(x).chunk(3, dim=1)
        return self.act(self.mlp(self.attn(q, k, v) + x))
