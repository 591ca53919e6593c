"""TiC: a hierarchical vision transformer whose attention is MSA-Conv (self-attention inside a convolution window).

Paper: "TiC: Exploring Vision Transformer in Convolution", Song Zhang, Qingzhong Wang, Jiang Bian, Haoyi Xiong
(arXiv 2310.04134, v2 2024), https://arxiv.org/abs/2310.04134. Official code: https://github.com/zs670980918/MSA-Conv
(commit 2d96f54), which releases ONLY the MSA-Conv operator and its single block ``MSA_Conv_2d``
(``core/op/Transformer_in_Convolution.py``); it contains no network, no configs, no weights and no licence file.

**This network is a reconstruction, not a reproduction.** Only the paper's abstract could be read. It says that
TiC is a proof-of-concept classifier built from MSA-Conv (self-attention within standard, dilated and depthwise
convolutions, for any input resolution), with two capacity-enhancing strategies: a *Multi-Directional Cyclic
Shifted Mechanism* ("establishing long-distance connections between tokens") and an *Inter-Pooling Mechanism*
("enlarging the effective receptive field"). Everything below that is not the operator is OUR design, sized to
sit beside Swin-T/S/B in parameters and MACs; the paper's stages, depths, widths, heads and figures are unknown:

* the operator, exact: :class:`~backbones.layers.msa_conv.MSAConv2d` / ``MSAConvAttention`` reproduce the
  official block and op (parity-tested against the official code; see that module);
* ours: a conv stem (3x3/2 conv-BN-GELU, 3x3/2 conv-BN), four stages at strides 4/8/16/32, each opened (stages
  2-4) by LayerNorm + the official MSA-Conv block with stride 2 (window 3, dense 3x3/2 conv to the new width, ReLU);
  pre-norm transformer blocks ``x + attn(LN(x))``, ``x + MLP(LN(x))`` (1x1-conv MLP, ratio 4, GELU), stochastic
  depth; a final LayerNorm, average pooling and a linear classifier; Swin-T/S/B's widths and 32-channel heads, and
  Swin's depths less one stage-3 block (2-2-5-2, 2-2-17-2), which pays for the conv stem and the MSA-Conv
  downsamplers: params and MACs land 1.5-3.7 % above Swin's (the paper's own sizes are unknown);
* ours, the attention of a block (:class:`TiCAttention`): 1x1 qkv -> MSA-Conv attention over a 3x3 window -> 1x1
  projection, with the two mechanisms read from their names and purposes:
  - **Inter-Pooling**: half of the heads ("pooled heads") attend to keys and values average-pooled over
    ``p x p`` cells (stride 1, ``p = 3``) through a window dilated by ``p``, so their 3x3 taps tile a 9x9
    neighbourhood without holes: a three times larger receptive field for the same number of taps;
  - **Multi-Directional Cyclic Shift**: in every second block of a stage the heads are split into four groups
    whose keys and values are cyclically rolled (``torch.roll``) by a quarter of the map up, down, left and
    right, so each group's window sits a quarter of the image away (wrapping around the borders) and tokens far
    apart are connected; parameter-free and MAC-free. ``inter_pool=False`` / ``cyclic_shift=False`` ablate them.

Input sizes: any. Every stride-2 layer pads (3x3, padding 1: a side ``n`` becomes ``ceil(n / 2)``) and MSA-Conv
keeps the size, zero-padding windows as the official op does, so every ``H x W`` works and stage ``i`` is
``ceil(H / 2**(i + 2))`` high. Nothing is rejected except a wrong channel count.

Counting: ``backbones.count`` adds the windowed attention through the flops module handle of
``MSAConvAttention`` (Q.K and A.V, ``C * kh*kw * H * W`` MACs each, over all heads); the qkv, projection, MLP,
stem and dense downsampling convs are counted by fvcore as convs. At a 3x3 window the attention is under 1 % of
the MACs.

Weights: none exist (the paper released none; we have not trained this reconstruction on ImageNet); the cfgs carry
the tag ``untrained``. Registry params are our design's counts; GMACs are not registered because no official figure
exists (tests/test_tic.py holds params and GMACs within 5 % of Swin-T/S/B instead).
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from timm.layers import GELU, DropPath, LayerNorm2d, Mlp
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict
from .._features import StageFeatureMixin, feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..layers.helpers import refuse_img_size
from ..layers.init import init_weights_
from ..layers.msa_conv import MSAConv2d, MSAConvAttention
from ..layers.stage import Stage, StageStride, drop_path_schedule
from ..layers.stem import ConvStem
from ..layers.tracing import contiguous_for_export
from ..layers.window_taps import window_taps

__all__ = ['TiC']

FAMILY = register_family(Family(
    name='tic',
    bibtex="""
@article{zhang2023tic,
  title={TiC: Exploring Vision Transformer in Convolution},
  author={Zhang, Song and Wang, Qingzhong and Bian, Jiang and Xiong, Haoyi},
  journal={arXiv preprint arXiv:2310.04134},
  year={2023}
}""",
    reconstruction=("Only the MSA-Conv operator and its block are official (and reproduce the official code); the "
                    "TiC network is OUR reconstruction from the paper's abstract, sized beside Swin-T/S/B: the paper's "
                    "architecture tables could not be read, and no weights exist."),
    arxiv='2310.04134',
    repo='zs670980918/MSA-Conv',
    license='apache-2.0',
    module=__name__,
    oracle='the official MSA-Conv block (C++ op built for CPU), fixtures in tests/fixtures/tic; the network is our '
           'reconstruction from the abstract (no official network exists)',
    weights='none: the paper released no weights and no network; the architecture is reconstructed',
))


def cyclic_shift(x: torch.Tensor, group_chs: List[int]) -> torch.Tensor:
    """Roll consecutive channel groups of ``x`` ([B, C, H, W], groups of ``group_chs`` channels) cyclically by a
    quarter of the map: ``out_g[y, x] = x_g[(y + dy_g * (H // 4)) % H, (x + dx_g * (W // 4)) % W]`` with
    ``(dy, dx)`` = (1, 0), (-1, 0), (0, 1), (0, -1) for groups 0-3. Applied to keys and values, the window of the
    query at ``(y, x)`` in group 0 is centred a quarter of the map below it, in group 1 above, in group 2 to the
    right, in group 3 to the left (wrapping around the borders)."""
    H, W = x.shape[-2], x.shape[-1]
    sy, sx = H // 4, W // 4
    # torch.roll(x, -s) along rows starts at row s, torch.roll(x, s) at row H - s; groups 2, 3 roll the columns
    dims, starts = [2, 2, 3, 3], [sy, H - sy, sx, W - sx]
    out: List[torch.Tensor] = []
    start = 0
    for g in range(len(group_chs)):  # static: one roll per direction group (no iteration over a traced tensor)
        out.append(_roll_to(x[:, start:start + group_chs[g]], starts[g], dims[g]))
        start += group_chs[g]
    return torch.cat(out, dim=1)


def _roll_to(x: torch.Tensor, start: int, dim: int) -> torch.Tensor:
    """``x`` rolled along ``dim`` so that index ``start`` (0 <= start <= size) comes first: ``torch.roll`` as two
    slices, because ONNX's TorchScript exporter takes only constant shifts in ``torch.roll`` (here they are sizes)."""
    return torch.cat([x.narrow(dim, start, x.shape[dim] - start), x.narrow(dim, 0, start)], dim=dim)


class DilatedAvgPool2d(nn.Module):
    """``AvgPool2d(k, stride=1, padding=k // 2, count_include_pad=False)`` whose ``k x k`` taps are ``dilation``
    apart (an Inter-Pooling cell in a stage that dilates instead of striding): the mean of the taps inside the
    map."""

    def __init__(self, kernel_size: int, dilation: int):
        super().__init__()
        self.kernel_size = (kernel_size, kernel_size)
        self.dilation = (dilation, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.stack(window_taps(x, self.kernel_size, self.dilation)).sum(0)
        count = torch.stack(window_taps(torch.ones_like(x[:1, :1]), self.kernel_size, self.dilation)).sum(0)
        return total / count


class TiCAttention(nn.Module):
    """A block's attention: ``qkv`` (1x1) -> [cyclic shift of k, v] -> MSA-Conv attention -> ``proj`` (1x1).

    The first ``num_heads - pooled_heads`` heads attend over a plain ``kernel_size`` window (``local_attn``), the
    last ``pooled_heads`` over the same number of taps of ``pool_size x pool_size``-average-pooled keys / values,
    dilated by ``pool_size`` (``pooled_attn``; Inter-Pooling). With ``shift``, the heads are dealt into four groups
    (near-equal consecutive groups) whose k and v are rolled in four directions first (:func:`cyclic_shift`).

    Args:
        dim: channels (``num_heads`` heads of ``dim / num_heads``).
        num_heads: attention heads.
        kernel_size: MSA-Conv window (odd).
        pool_size: Inter-Pooling cell (odd) = dilation of the pooled heads' window.
        pooled_heads: heads on pooled keys / values (0 = none).
        shift: apply the multi-directional cyclic shift.
        qkv_bias: bias of the qkv conv.
        attn_drop, proj_drop: dropout on the attention weights / after the projection.
        dilation: spacing of every window's taps and pooling cells' pixels (in a stage that dilates instead of
            striding; the cyclic shift, a quarter of the map, needs none).
    """
    shift_chs: List[int]  # channels of each direction group (empty: no shift); annotated for TorchScript

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 3,
            pool_size: int = 3,
            pooled_heads: int = 0,
            shift: bool = False,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads != 0:
            raise ValueError(f'TiC attention width ({dim}) must be a multiple of num_heads ({num_heads})')
        if not 0 <= pooled_heads <= num_heads:
            raise ValueError(f'pooled_heads must be in [0, num_heads={num_heads}], got {pooled_heads}')
        head_dim = dim // num_heads
        local_heads = num_heads - pooled_heads
        self.local_dim = local_heads * head_dim
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias, **dd)
        self.local_attn = MSAConvAttention(
            self.local_dim, kernel_size, dilation, local_heads, attn_drop) if local_heads else None
        self.pool: Optional[nn.Module] = None
        if pooled_heads:
            self.pool = nn.AvgPool2d(pool_size, 1, pool_size // 2, count_include_pad=False) if dilation == 1 \
                else DilatedAvgPool2d(pool_size, dilation)
        self.pooled_attn = MSAConvAttention(
            dim - self.local_dim, kernel_size, pool_size * dilation, pooled_heads, attn_drop) if pooled_heads else None
        # heads per direction: 4 near-equal consecutive groups (the first ones get the remainder)
        per_dir = [num_heads // 4 + (1 if g < num_heads % 4 else 0) for g in range(4)]
        self.shift_chs = [n * head_dim for n in per_dir if n > 0] if shift else []
        self.proj = nn.Conv2d(dim, dim, 1, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        if len(self.shift_chs) > 0:
            k = cyclic_shift(k, self.shift_chs)
            v = cyclic_shift(v, self.shift_chs)
        c = self.local_dim
        outs: List[torch.Tensor] = []
        if self.local_attn is not None:
            outs.append(self.local_attn(q[:, :c], k[:, :c], v[:, :c]))
        if self.pooled_attn is not None and self.pool is not None:
            outs.append(self.pooled_attn(q[:, c:], self.pool(k[:, c:]), self.pool(v[:, c:])))
        x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return self.proj_drop(self.proj(x))


class TiCBlock(nn.Module):
    """Pre-norm transformer block on NCHW maps: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``. Not a
    :class:`~backbones.layers.TransformerBlock`: each norm's channels-last output is made contiguous for exporters.

    Args:
        dim, num_heads, kernel_size, pool_size, pooled_heads, shift, qkv_bias, attn_drop: see :class:`TiCAttention`.
        mlp_ratio: hidden width of the 1x1-conv MLP / ``dim``.
        drop_path: stochastic depth of both residual branches.
        dilation: see :class:`TiCAttention`.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 3,
            pool_size: int = 3,
            pooled_heads: int = 0,
            shift: bool = False,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = LayerNorm2d(dim, **dd)
        self.attn = TiCAttention(
            dim, num_heads, kernel_size, pool_size, pooled_heads, shift, qkv_bias, attn_drop=attn_drop,
            dilation=dilation, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = LayerNorm2d(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, use_conv=True, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm2d returns a channels-last map, which the exporter's 1x1 convs would guard on (batch 1)
        x = x + self.drop_path1(self.attn(contiguous_for_export(self.norm1(x))))
        x = x + self.drop_path2(self.mlp(contiguous_for_export(self.norm2(x))))
        return x


class Downsample(nn.Module):
    """``norm`` (LayerNorm) -> ``msa``: the official MSA-Conv block with stride 2 (attention over a ``kernel_size``
    window at the input resolution, then the dense ``kernel_size`` conv, stride 2, to the new width, and ReLU); in a
    stage that dilates instead, stride 1 with the window and the conv dilated by ``dilation``."""

    def __init__(self, in_chs: int, out_chs: int, num_heads: int, kernel_size: int = 3, stride: int = 2,
                 dilation: int = 1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = LayerNorm2d(in_chs, **dd)
        self.msa = MSAConv2d(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, conv_dilation=dilation,
                             num_heads=num_heads, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.msa(contiguous_for_export(self.norm(x)))  # (as in TiCBlock)


class TiC(StageFeatureMixin, nn.Module):
    """TiC (our reconstruction; see the module docstring).

    Args:
        depths: blocks per stage.
        dims: stage widths.
        num_heads: attention heads per stage.
        kernel_size: MSA-Conv window of every block and downsampler.
        pool_size: Inter-Pooling cell (= dilation of the pooled heads' window).
        mlp_ratio: MLP hidden width / stage width.
        qkv_bias: bias of the blocks' qkv convs.
        inter_pool: half of each block's heads (rounded down) attend to pooled keys / values.
        cyclic_shift: every second block of a stage (the 2nd, 4th, ...) shifts keys / values in four directions.
        output_stride: total stride of the last stage (32; 16 or 8 keep the last stages at the stride they reach,
            their windows and pooling cells dilated).
        img_size: refused (nothing depends on the input size).
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning.
        attn_drop_rate: dropout on the attention weights.
    """

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 6, 2),
            dims: Sequence[int] = (96, 192, 384, 768),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            kernel_size: int = 3,
            pool_size: int = 3,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            inter_pool: bool = True,
            cyclic_shift: bool = True,
            output_stride: Optional[int] = None,
            img_size=None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            attn_drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if not len(depths) == len(dims) == len(num_heads):
            raise ValueError('depths, dims and num_heads need one entry per stage')
        self.init_model(type(self).__name__, in_chans, num_classes, drop_rate)  # any size: strided layers pad
        refuse_img_size(img_size, self._model_name, 'every size runs: strided layers and windows pad')

        # conv1 3x3/2 conv-BN-GELU to dims[0] / 2, conv2 3x3/2 conv-BN to dims[0] (side n -> ceil(n / 4))
        self.stem = ConvStem(in_chans, (dims[0] // 2, dims[0]), 3, stride=(2, 2), act_layer=GELU, last_act=False, **dd)
        dprs = drop_path_schedule(drop_path_rate, depths)

        def make_stage(i: int, in_chs: int, dim: int, s: StageStride) -> Stage:
            heads = num_heads[i]
            blocks = [TiCBlock(
                dim, heads, kernel_size, pool_size,
                pooled_heads=heads // 2 if inter_pool else 0,
                shift=cyclic_shift and j % 2 == 1,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop_rate, drop_path=dprs[i][j],
                dilation=s.dilation, **dd,
            ) for j in range(depths[i])]
            downsample = None
            if i > 0:
                downsample = Downsample(in_chs, dim, num_heads[i - 1], kernel_size, s.stride, s.first_dilation, **dd)
            return Stage(blocks, downsample)

        # feature levels: the four stages (the stem is a two-conv stride-4 patch embedding)
        self.build_stages(make_stage, dims, [1] + [2] * (len(depths) - 1), output_stride, 4)
        self.build_head(num_classes, global_pool, drop_rate, norm=LayerNorm2d(self.num_features, **dd), **dd)
        init_weights_(self, (nn.Conv2d, nn.Linear))


def checkpoint_filter_fn(state_dict, model):
    """Our layout only: no other TiC network exists (the official repository releases the operator alone, whose
    block keys ``qkv_conv`` / ``mlp`` our :class:`~backbones.layers.msa_conv.MSAConv2d` keeps)."""
    return convert_state_dict(state_dict, model, [], FAMILY.name, first_conv='stem.conv1.conv')


def _create_tic(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        TiC, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


_NOTES = (
    'no weights exist: the paper (arXiv 2310.04134) released none, and its official repository holds only the '
    'MSA-Conv operator and block',
    'architecture reconstructed from the abstract and the operator code: stem, stages, widths, depths, heads, norms, '
    'MLP and the readings of the Multi-Directional Cyclic Shifted and Inter-Pooling mechanisms are our choices, '
    'sized beside Swin-T/S/B; the MSA-Conv operator equals the official one',
)


def _cfg(**kwargs):
    return zoo_cfg(
        FAMILY, first_conv='stem.conv1.conv', classifier='head.fc', crop_pct=0.9, interpolation='bicubic',
        notes=_NOTES, **kwargs)


default_cfgs = generate_default_cfgs({
    'tic_tiny.untrained': _cfg(),
    'tic_small.untrained': _cfg(),
    'tic_base.untrained': _cfg(),
})

_COUNT_NOTE = ('params: our reconstruction\'s own count (the paper\'s tables could not be read); no GMACs registered '
               'because no official figure exists (the test skip in test_counts is for that reason only); '
               'tests/test_tic.py holds params and GMACs within 5 % of {swin}')


@register_zoo_model(params=29_042_680, notes=_COUNT_NOTE.format(swin='Swin-T (28.3M, 4.5G)'))
def tic_tiny(pretrained=False, **kwargs) -> TiC:
    """TiC-Tiny (our reconstruction, Swin-T-sized)."""
    model_args = dict(depths=(2, 2, 5, 2), dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_tic('tic_tiny', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=50_336_248, notes=_COUNT_NOTE.format(swin='Swin-S (49.6M, 8.7G)'))
def tic_small(pretrained=False, **kwargs) -> TiC:
    """TiC-Small (our reconstruction, Swin-S-sized)."""
    model_args = dict(depths=(2, 2, 17, 2), dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_tic('tic_small', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=89_091_752, notes=_COUNT_NOTE.format(swin='Swin-B (87.8M, 15.4G)'))
def tic_base(pretrained=False, **kwargs) -> TiC:
    """TiC-Base (our reconstruction, Swin-B-sized)."""
    model_args = dict(depths=(2, 2, 17, 2), dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32))
    return _create_tic('tic_base', pretrained, **dict(model_args, **kwargs))
