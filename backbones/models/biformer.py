"""BiFormer: vision transformer with bi-level routing attention.

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Lei Zhu, Xinjiang Wang, Zhanghan Ke,
Wayne Zhang, Rynson W.H. Lau (CVPR 2023), https://arxiv.org/abs/2303.08810.
Official code: https://github.com/rayleizhu/BiFormer (commit 1697bbbe), MIT license.

BiFormer-T/S/B: a two-conv stem (3x3/2 -> BN -> GELU -> 3x3/2 -> BN), 3x3/2 conv + BN downsampling, and blocks
``x + dwconv3x3(x)`` -> pre-norm attention -> pre-norm MLP (ratio 3). Stages 0-2 use bi-level routing attention
(:class:`backbones.layers.routing_attention.BiLevelRoutingAttention`: 7x7 regions, top-k 1 / 4 / 16, heads of width
32, logits scaled by the full q/k width); stage 3 uses global attention with 8 heads and no q/k/v bias whose LePE
(5x5 depthwise conv) sees the attention INPUT, not the values. A final BatchNorm, average pooling and a linear head.
BiFormer-STL is the paper's Swin-T-layout ablation: a 4x4/4 patch stem, BN -> 2x2/2 conv downsampling, no 3x3
position conv, MLP ratio 4.

Differences from the official code (none changes a number at the official sizes):

- Any input size (T/S/B). The official classification models need every BRA stage map to divide into 7x7 regions
  (inputs that are multiples of 112); here the BRA always zero-pads to whole regions and crops back, which is the
  official ``auto_pad=True`` behaviour (its detection / segmentation setting; tested on the official
  ``biformer_autopad`` fixture at 100x164) and adds nothing at divisible sizes. The strided 3x3 convs take any side
  (``ceil(L / 2)``), so T/S/B accept every ``H, W >= 1``. BiFormer-STL's 4x4/4 and 2x2/2 convs would silently drop
  the last rows / columns of a side that is not a multiple of 32, so STL takes multiples of 32 and raises a
  ``ValueError`` otherwise.
- The routed keys / values are taken with one ``index_select`` on the flattened (batch * region) axis, and the
  token attention runs on ``F.scaled_dot_product_attention`` (:func:`backbones.layers.attention.sdpa`). The third
  stage (16 of 49 regions routed) instead attends over the whole map with the unrouted regions masked out: the same
  softmax over the same keys, without copying 16 regions' keys / values per region.
- ``reset_classifier`` works (the official one raises), ``drop_rate`` is the classifier dropout (official: unused).
- The refactored ``biformer_stl_nchw`` (``ops/bra_nchw.py``) is not provided: it pads and routes differently from the
  legacy BRA for sizes that do not divide into regions, in ways the spec does not pin down, and no fixture checks it.

Weights: the official ImageNet-1k checkpoints are OneDrive links (in each ``pretrained_cfg['notes']``) that timm
cannot fetch, so the cfgs carry no download location. Download one by hand; the official layout
(``{'model': state_dict, ...}``) is converted by ``checkpoint_filter_fn``::

    python tools/convert.py --model biformer_tiny --checkpoint biformer_tiny_best.pth --out weights/biformer_tiny
    timm.create_model('local-dir:weights/biformer_tiny', pretrained=True)
    # or directly:
    timm.create_model('biformer_tiny', pretrained=True, pretrained_cfg_overlay=dict(file='biformer_tiny_best.pth'))

The official evaluation reads ``checkpoint['model']``; ``checkpoint_filter_fn`` (used by tools/convert.py) does the
same, whereas timm's own ``file=`` loading would prefer a ``model_ema`` entry if the file had one.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
from timm.layers import GELU, DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict
from .._features import StageFeatureMixin, feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..layers.attention import Attention
from ..layers.conv import ConvNormAct, same_padding
from ..layers.downsample import PreNormDownsample
from ..layers.helpers import refuse_img_size
from ..layers.init import init_weights_
from ..layers.mlp import Mlp
from ..layers.pos_conv import residual_dwconv
from ..layers.routing_attention import BiLevelRoutingAttention
from ..layers.stage import Stage, StageStride, drop_path_schedule
from ..layers.stem import ConvStem
from ..layers.tracing import contiguous_for_export, is_tracing

__all__ = ['BiFormer']

FAMILY = register_family(Family(
    name='biformer',
    bibtex="""
@inproceedings{zhu2023biformer,
  title={BiFormer: Vision Transformer with Bi-Level Routing Attention},
  author={Zhu, Lei and Wang, Xinjiang and Ke, Zhanghan and Zhang, Wayne and Lau, Rynson W.H.},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2023}
}""",
    arxiv='2303.08810',
    repo='rayleizhu/BiFormer',
    license='mit',
    module=__name__,
    oracle='official models.biformer.BiFormer, fixtures in tests/fixtures/biformer (incl. auto_pad at 100x164)',
    weights='official ImageNet-1k checkpoints (OneDrive, manual download; converted by checkpoint_filter_fn)',
    checkpoint_key='model',  # beside 'model_ema': what the official evaluation reads
))

LN_EPS = 1e-6


class GlobalAttentionLePE(nn.Module):
    """Stage-3 attention of BiFormer: multi-head self-attention over all tokens of a ``[B, H, W, C]`` map, plus
    LePE (a depthwise conv) of the attention INPUT added before the output projection.

    Args:
        dim: token width.
        num_heads: heads (8 in every released model, whatever the BRA head width).
        side_dwconv: LePE kernel.
        qkv_bias: bias of the q/k/v projection (False in the official models).
        dilation: of the LePE conv.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            side_dwconv: int = 5,
            qkv_bias: bool = False,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.mhsa = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, **dd)
        self.lepe = nn.Conv2d(
            dim, dim, side_dwconv, padding=same_padding(side_dwconv, dilation), dilation=dilation, groups=dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lepe = self.lepe(contiguous_for_export(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        out = self.mhsa(x.flatten(1, 2), pre_proj=lepe.flatten(1, 2))  # [B, H*W, C]
        return out.reshape(x.shape)


class BiFormerBlock(nn.Module):
    """``x + pos_embed(x)`` (depthwise 3x3; none in STL) -> ``x + attn(norm1(x))`` -> ``x + mlp(norm2(x))``.

    NCHW in and out; the attention and the MLP run channels-last. Not a :class:`~backbones.layers.TransformerBlock`
    subclass: the position conv is its first parameter (official order, which saved optimizer states follow).

    Args:
        dim: width.
        attn: the token mixer (``[B, H, W, C]`` -> same).
        mlp_ratio: MLP hidden width / ``dim``.
        pos_embed_kernel: kernel of the depthwise position conv (0: none).
        drop_path: stochastic-depth rate of both residual branches.
        dilation: of the position conv.
    """

    def __init__(
            self,
            dim: int,
            attn: nn.Module,
            mlp_ratio: float = 3.,
            pos_embed_kernel: int = 3,
            drop_path: float = 0.,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if pos_embed_kernel > 0:
            self.pos_embed = nn.Conv2d(
                dim, dim, pos_embed_kernel, padding=same_padding(pos_embed_kernel, dilation), dilation=dilation,
                groups=dim, **dd)
        else:
            self.pos_embed = None
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS, **dd)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS, **dd)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:  # (a bare conv: its keys are the official ``pos_embed.weight`` / ``.bias``)
            if is_tracing():
                x = x + self.pos_embed(contiguous_for_export(x))
            else:
                p = self.pos_embed
                x = residual_dwconv(x, p.weight, p.bias, p.padding, p.dilation)
        x = x.permute(0, 2, 3, 1)  # NHWC
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


def _conv_bn(in_chs, out_chs, kernel_size, stride, padding, act_layer=None, dilation=1, device=None, dtype=None):
    """Conv (with bias) -> BN [-> act]."""
    return ConvNormAct(
        in_chs, out_chs, kernel_size, stride=stride, padding=padding * dilation, dilation=dilation, bias=True,
        act_layer=act_layer, device=device, dtype=dtype)


class BiFormer(StageFeatureMixin, nn.Module):
    """BiFormer-T/S/B and BiFormer-STL.

    Args:
        depths: blocks per stage.
        embed_dims: width per stage.
        head_dim: width of a BRA head (heads = width / head_dim).
        topks: routed regions per query region, per stage; ``-1`` = global attention (stage 3).
        n_win: regions per side in every BRA stage.
        mlp_ratio: MLP hidden width / width.
        global_heads: heads of the global-attention stages.
        side_dwconv: LePE kernel.
        qk_dims: q/k width per stage (default: ``embed_dims``).
        layout: ``'biformer'`` (two-conv stem, 3x3/2 conv + BN downsampling, 3x3 position conv) or ``'stl'``
            (4x4/4 patch stem, BN + 2x2/2 conv downsampling, no position conv).
        output_stride: total stride of the last stage (32; 16 or 8 keep the last stages at the stride they reach,
            their convs dilated, the routing regions of the larger maps still ``n_win`` per side).
        img_size: refused (nothing depends on the input size: the ``n_win`` regions grow with the map).
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning.
    """

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 8, 2),
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            head_dim: int = 32,
            topks: Sequence[int] = (1, 4, 16, -1),
            n_win: int = 7,
            mlp_ratio: float = 3.,
            global_heads: int = 8,
            side_dwconv: int = 5,
            qk_dims: Optional[Sequence[int]] = None,
            layout: str = 'biformer',
            output_stride: Optional[int] = None,
            img_size=None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if layout not in ('biformer', 'stl'):
            raise ValueError(f"layout must be 'biformer' or 'stl', got {layout!r}")
        embed_dims = list(embed_dims)
        qk_dims = list(qk_dims) if qk_dims is not None else embed_dims
        self.init_model('BiFormer-STL' if layout == 'stl' else 'BiFormer', in_chans, num_classes, drop_rate)
        self.layout = layout
        refuse_img_size(img_size, self._model_name, 'the n_win x n_win regions grow with the map; T/S/B take every '
                        'size, STL multiples of 32')

        if layout == 'stl':
            self.stem = _conv_bn(in_chans, embed_dims[0], 4, 4, 0, **dd)
        else:
            self.stem = ConvStem(
                in_chans, (embed_dims[0] // 2, embed_dims[0]), 3, stride=(2, 2), act_layer=GELU, last_act=False,
                bias=True, **dd)
        dprs = drop_path_schedule(drop_path_rate, depths)

        def make_stage(i: int, in_chs: int, dim: int, s: StageStride) -> Stage:
            downsample = None
            if i > 0:
                if layout == 'stl':
                    downsample = PreNormDownsample(  # BN, then a 2x2/2 conv with bias
                        in_chs, dim, 2, s.stride, dilation=s.first_dilation, norm_layer=nn.BatchNorm2d, **dd)
                else:
                    downsample = _conv_bn(in_chs, dim, 3, s.stride, 1, dilation=s.first_dilation, **dd)
            blocks = []
            for j in range(depths[i]):
                if topks[i] > 0:
                    attn = BiLevelRoutingAttention(
                        dim, qk_dims[i] // head_dim, n_win=n_win, topk=topks[i], qk_dim=qk_dims[i],
                        side_dwconv=side_dwconv, dilation=s.dilation, **dd)
                else:
                    attn = GlobalAttentionLePE(dim, global_heads, side_dwconv, dilation=s.dilation, **dd)
                blocks.append(BiFormerBlock(
                    dim, attn, mlp_ratio, pos_embed_kernel=0 if layout == 'stl' else 3, drop_path=dprs[i][j],
                    dilation=s.dilation, **dd))
            return Stage(blocks, downsample)

        # feature levels: the four stages; the stem (two stride-2 convs, or STL's 4x4/4 conv) is one stride-4 patch
        # embedding, as in timm's RepViT / FastViT, so no stem level
        strides = self.build_stages(make_stage, embed_dims, [1] + [2] * (len(depths) - 1), output_stride, 4)
        # T/S/B: any size (strided 3x3 convs round up, BRA pads regions); STL: its patchify convs need multiples of
        # the total stride (32)
        self.input_divisor = strides[-1].reduction if layout == 'stl' else 1
        self.build_head(num_classes, global_pool, drop_rate, norm=nn.BatchNorm2d(self.num_features, **dd), **dd)
        init_weights_(self)  # official: Linear trunc-normal(0.02), zero bias; convs, BNs and LNs keep torch's



# official layout -> ours. T/S/B: ``downsample_layers.0`` = stem (conv 0, BN 1, GELU 2, conv 3, BN 4),
# ``downsample_layers.i`` = conv 0 + BN 1, blocks ``stages.i.j``; STL: ``downsample_layers.0`` = conv 0 + BN 1,
# ``downsample_layers.i`` = BN 0 + conv 1, blocks ``stages.i.blocks.j``.
_COMMON_RULES = [
    # stage-3 global attention first: its keys end in ``.attn.qkv.weight`` / ``.attn.proj.*``, BRA keys do not yet
    (r'\.attn\.(qkv|proj)\.(weight|bias)$', r'.attn.mhsa.\1.\2'),
    (r'\.attn\.qkv\.qkv\.', '.attn.qkv.'),  # BRA
    (r'\.attn\.wo\.', '.attn.proj.'),  # BRA
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
]
_OFFICIAL_RULES = [
    (r'^downsample_layers\.0\.0\.', 'stem.conv1.conv.'),
    (r'^downsample_layers\.0\.1\.', 'stem.conv1.bn.'),
    (r'^downsample_layers\.0\.3\.', 'stem.conv2.conv.'),
    (r'^downsample_layers\.0\.4\.', 'stem.conv2.bn.'),
    (r'^downsample_layers\.(\d)\.0\.', r'stages.\1.downsample.conv.'),
    (r'^downsample_layers\.(\d)\.1\.', r'stages.\1.downsample.bn.'),
    (r'^stages\.(\d)\.(\d+)\.', r'stages.\1.blocks.\2.'),
    (r'\.mlp\.0\.', '.mlp.fc1.'),
    (r'\.mlp\.3\.', '.mlp.fc2.'),
] + _COMMON_RULES
_OFFICIAL_STL_RULES = [
    (r'^downsample_layers\.0\.0\.', 'stem.conv.'),
    (r'^downsample_layers\.0\.1\.', 'stem.bn.'),
    (r'^downsample_layers\.(\d)\.0\.', r'stages.\1.downsample.norm.'),
    (r'^downsample_layers\.(\d)\.1\.', r'stages.\1.downsample.conv.'),
    (r'\.mlp\.0\.', '.mlp.fc1.'),
    (r'\.mlp\.2\.', '.mlp.fc2.'),
] + _COMMON_RULES


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout or the official one (``{'model': state_dict, ...}`` or a bare state dict).

    An official training checkpoint also holds ``model_ema``; like the official evaluation, ``model`` is used.
    """
    stl = getattr(model, 'layout', 'biformer') == 'stl'
    rules = _OFFICIAL_STL_RULES if stl else _OFFICIAL_RULES
    first_conv = 'stem.conv' if stl else 'stem.conv1.conv'
    return convert_state_dict(state_dict, model, rules, FAMILY.name, first_conv=first_conv)


def _create_biformer(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        BiFormer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(weights: str = '', first_conv: str = 'stem.conv1.conv', **kwargs):
    notes = (f'official weights (manual download, {{"model": state_dict}} layout; convert with tools/convert.py or '
             f'load with pretrained_cfg_overlay=dict(file=...)): {weights}',)
    return zoo_cfg(
        FAMILY, first_conv=first_conv, classifier='head.fc', interpolation='bicubic', crop_pct=0.875, notes=notes,
        **kwargs)


_OD = 'https://api.onedrive.com/v1.0/shares'

default_cfgs = generate_default_cfgs({
    'biformer_tiny.in1k': _cfg(f'{_OD}/s!AkBbczdRlZvChHEOoGkgwgQzEDlM/root/content'),
    'biformer_small.in1k': _cfg(f'{_OD}/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content'),
    'biformer_base.in1k': _cfg(f'{_OD}/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content'),
    'biformer_stl.in1k': _cfg(f'{_OD}/s!AkBbczdRlZvChSf-m7ujkvx9lIQ1/root/content', first_conv='stem.conv'),
})

_FVCORE = 'official README (fvcore MACs, attention matmuls included; measured from the official code: {})'


@register_zoo_model(params=13_142_760, gmacs=2.2, top1=81.4, gmacs_source=_FVCORE.format(2.228))
def biformer_tiny(pretrained=False, **kwargs) -> BiFormer:
    """BiFormer-T."""
    model_args = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_tiny', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=25_536_232, gmacs=4.5, top1=83.8, gmacs_source=_FVCORE.format(4.487))
def biformer_small(pretrained=False, **kwargs) -> BiFormer:
    """BiFormer-S."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_small', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=56_804_968, gmacs=9.8, top1=84.3, gmacs_source=_FVCORE.format(9.795))
def biformer_base(pretrained=False, **kwargs) -> BiFormer:
    """BiFormer-B."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768))
    return _create_biformer('biformer_base', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(
    params=28_372_552, gmacs=4.6, top1=82.7, gmacs_source=_FVCORE.format(4.590),
    notes='ablation model of the paper (Swin-T layout); inputs must be multiples of 32')
def biformer_stl(pretrained=False, **kwargs) -> BiFormer:
    """BiFormer-STL (Swin-T layout)."""
    model_args = dict(depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768), mlp_ratio=4., layout='stl')
    return _create_biformer('biformer_stl', pretrained, **dict(model_args, **kwargs))
