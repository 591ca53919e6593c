"""Pre-norm MBConv with TensorFlow "SAME" padding: the convolution block MaxViT and MOAT share.

Both official implementations (TensorFlow) use the same block; they differ only in arguments:

- MaxViT: tanh-approximated GELU (``act_layer=partial(nn.GELU, approximate='tanh')``), SE on every block,
  shortcut pool 2x2.
- MOAT: exact GELU, SE only in its MBConv stages (``se_ratio=0`` inside MOAT blocks), shortcut pool 2 (or 3).

Both: BatchNorm eps 1e-3, expansion and SE width computed from the block's OUTPUT width, SE with SiLU, a biased
1x1 projection at the end and no norm after it, "SAME" padding (asymmetric on even maps at stride 2), and an
average-pool shortcut that excludes the padding from the average, as ``tf.nn.avg_pool`` does.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_function

from .activation import gelu_maybe_inplace
from .conv import Conv2dSame, LayerType, create_conv2d_same, fill_border_, pad_same, pointwise_matmul, same_pads
from .fuse import bn_scale_shift, fuse_bn_conv_, fuse_conv_bn_
from .se import SqueezeExcite
from .stage import downsamples
from .tracing import is_tracing

__all__ = ['MBConv', 'MBConvShortcut', 'avg_pool_same']


@register_notrace_function
def avg_pool_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """``tf.nn.avg_pool(padding='SAME')``: pad bottom/right-heavy as TF does, average over real pixels only.

    A traced graph always divides by the count of real pixels (1 everywhere when nothing is padded), so it holds
    at every input size."""
    k: Tuple[int, int] = (kernel_size, kernel_size)
    s: Tuple[int, int] = (stride, stride)
    padded = pad_same(x, kernel_size, stride)
    if not is_tracing() and padded.shape[-2:] == x.shape[-2:]:
        return F.avg_pool2d(x, k, s)
    count = F.avg_pool2d(pad_same(torch.ones_like(x[:1, :1]), kernel_size, stride), k, s)
    return F.avg_pool2d(padded, k, s) / count


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`pointwise_matmul` on a channels-last copy of an NCHW-contiguous input (else the matmul would run as
    one small product per row of the map); channels-last out."""
    return pointwise_matmul(x.contiguous(memory_format=torch.channels_last), weight, bias)


def _act_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for a GELU when no gradient is recorded (``x`` must be a fresh buffer)."""
    if isinstance(act, nn.GELU):
        return gelu_maybe_inplace(x, act.approximate)
    return act(x)


class MBConvShortcut(nn.Module):
    """Identity, or ``avg_pool_same(pool_size, stride)`` when ``pooled`` (default: ``stride > 1``; also at stride 1
    in a block that dilates instead of downsampling), then a biased 1x1 conv when the width changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, pool_size: int = 2, pooled: Optional[bool] = None,
                 device=None, dtype=None):
        super().__init__()
        self.stride = stride
        self.pool_size = pool_size
        self.pooled = stride > 1 if pooled is None else pooled
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=True, device=device, dtype=dtype) \
            if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooled:
            x = avg_pool_same(x, self.pool_size, self.stride)
        return self.conv(x)


class MBConv(nn.Module):
    """``shortcut(x) + drop_path(conv3(se(act(bn2(dw(act(bn1(conv1(pre_norm(x))))))))))``.

    Args:
        in_chs, out_chs: widths; the hidden width is ``out_chs * expand_ratio``.
        stride: of the depthwise 3x3 (and the shortcut pool).
        expand_ratio: hidden width over the OUTPUT width (4).
        se_ratio: SE width over the OUTPUT width (0.25; 0 = no SE).
        act_layer: activation after the expansion and the depthwise conv.
        se_act_layer: activation inside SE (SiLU in both official codes).
        norm_eps: BatchNorm eps (1e-3, TF's default).
        pool_size: kernel of the shortcut average pool.
        drop_path: stochastic depth rate of the residual branch.
        dilation, first_dilation: of the block's stage and of its depthwise conv (timm's names; they differ in the
            first block of a stage that dilates instead of striding, whose shortcut then pools at stride 1, see
            :func:`backbones.layers.stage_strides`).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            expand_ratio: float = 4.,
            se_ratio: float = 0.25,
            act_layer: LayerType = nn.GELU,
            se_act_layer: LayerType = nn.SiLU,
            norm_eps: float = 1e-3,
            pool_size: int = 2,
            drop_path: float = 0.,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        mid_chs = int(out_chs * expand_ratio)
        self.shortcut = MBConvShortcut(
            in_chs, out_chs, stride, pool_size, pooled=downsamples(stride, dilation, first_dilation), **dd)
        self.pre_norm = nn.BatchNorm2d(in_chs, eps=norm_eps, **dd)
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False, **dd)
        self.norm1 = nn.BatchNorm2d(mid_chs, eps=norm_eps, **dd)
        self.act1 = act_layer()
        self.conv2 = create_conv2d_same(
            mid_chs, mid_chs, 3, stride=stride, groups=mid_chs, dilation=first_dilation or dilation, **dd)
        self.norm2 = nn.BatchNorm2d(mid_chs, eps=norm_eps, **dd)
        self.act2 = act_layer()
        self.se = SqueezeExcite(mid_chs, rd_chs=max(1, int(se_ratio * out_chs)), act_layer=se_act_layer, **dd) \
            if se_ratio > 0 else nn.Identity()
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=True, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or self.training or not isinstance(x, torch.Tensor) or is_tracing() \
                or not self._eval_foldable():  # (not a tensor: an FX proxy; FX graphs hold the op-by-op block)
            return self.forward_unfused(x)
        return self._forward_eval(x)

    def forward_unfused(self, x: torch.Tensor) -> torch.Tensor:
        """The block op by op, as the official code writes it (training, tracing, scripting)."""
        shortcut = self.shortcut(x)
        x = self.act1(self.norm1(self.conv1(self.pre_norm(x))))
        x = self.act2(self.norm2(self.conv2(x)))
        x = self.conv3(self.se(x))
        return shortcut + self.drop_path(x)

    @torch.jit.unused
    def _eval_foldable(self) -> bool:
        return all(isinstance(n, nn.Identity) or self._foldable(n) for n in (self.pre_norm, self.norm1, self.norm2)) \
            and type(self.conv1) is nn.Conv2d and type(self.conv3) is nn.Conv2d

    @torch.jit.unused
    def _forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The eval-mode function, computed faster (eager; same numbers up to float rounding):

        - the three BatchNorms folded into the convolutions on the fly (what :meth:`fuse` does once), so no pass over
          the map normalises it;
        - channels-last maps, the 1x1 convolutions as one matmul over the channels (PyTorch runs 1x1 convs of small
          batches on one CPU thread outside oneDNN, on a copy) and the depth-wise 3x3 on oneDNN's channels-last
          kernel; the output is channels-last, which the attention that follows in MaxViT / MOAT reads as tokens
          without a copy;
        - the activations in place (their inputs are fresh buffers of the hidden width).
        """
        shortcut = x
        if self.shortcut.pooled:
            shortcut = avg_pool_same(shortcut, self.shortcut.pool_size, self.shortcut.stride)
        if isinstance(self.shortcut.conv, nn.Conv2d):
            shortcut = _pointwise(shortcut, self.shortcut.conv.weight.flatten(1), self.shortcut.conv.bias)

        w1, b1 = self.conv1.weight.flatten(1), self.conv1.bias  # conv1(pre_norm(x)) = (W s) x + (W t + b)
        if isinstance(self.pre_norm, nn.BatchNorm2d):
            s, t = bn_scale_shift(self.pre_norm)
            b1 = w1 @ t if b1 is None else b1 + w1 @ t
            w1 = w1 * s
        if isinstance(self.norm1, nn.BatchNorm2d):
            s, t = bn_scale_shift(self.norm1)
            w1, b1 = w1 * s[:, None], t if b1 is None else b1 * s + t
        conv = self.conv2
        padding = conv.padding
        if isinstance(conv, Conv2dSame):  # pad the narrow input, not the wide hidden map: conv1 runs on the
            k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]  # border too, which is then reset to 0
            pads = same_pads(x, k, s, d)
            x = _act_(self.act1, _pointwise(pad_same(x, k, s, dilation=d), w1, b1))
            x, padding = fill_border_(x, pads), 0
        else:
            x = _act_(self.act1, _pointwise(x, w1, b1))
        w2, b2 = conv.weight, conv.bias
        if isinstance(self.norm2, nn.BatchNorm2d):
            s, t = bn_scale_shift(self.norm2)
            w2, b2 = w2 * s[:, None, None, None], t if b2 is None else b2 * s + t
        x = _act_(self.act2, F.conv2d(x, w2, b2, conv.stride, padding, conv.dilation, conv.groups))
        x = _pointwise(self.se(x), self.conv3.weight.flatten(1), self.conv3.bias)
        return x + shortcut  # (drop_path: identity in eval) x first: the sum keeps its channels-last layout

    def fuse(self) -> 'MBConv':
        """Fold the three BatchNorms (running statistics: the eval-mode function) into the convolutions, in place;
        returns ``self``. All exact: ``pre_norm`` into the 1x1 ``conv1`` after it (no padding, so no border sees its
        shift), ``norm1`` into ``conv1``, ``norm2`` into the depthwise ``conv2`` (which keeps its "SAME" padding).
        timm's ``reparameterize_model`` and :func:`backbones.optimize_for_inference` call it."""
        if self._foldable(self.pre_norm):
            fuse_bn_conv_(self.pre_norm, self.conv1)
            self.pre_norm = nn.Identity()
        for conv, norm in (('conv1', 'norm1'), ('conv2', 'norm2')):
            if self._foldable(getattr(self, norm)):
                fuse_conv_bn_(getattr(self, conv), getattr(self, norm))
                setattr(self, norm, nn.Identity())
        return self

    @staticmethod
    def _foldable(norm: nn.Module) -> bool:
        return type(norm) is nn.BatchNorm2d and norm.track_running_stats
