"""DaViT: dual attention vision transformers (spatial window attention + channel group attention).

Paper: "DaViT: Dual Attention Vision Transformers", Mingyu Ding, Bin Xiao, Noel Codella, Ping Luo, Jingdong Wang,
Lu Yuan (ECCV 2022), https://arxiv.org/abs/2204.03645. Official code: https://github.com/dingmyu/davit (commit
fc79470d; the classification model sits in its vendored copy of an early timm; MIT per the copyright header that
timm keeps). timm 1.0.31 ships the same network as ``davit_*`` and re-hosts the official ImageNet-1k weights.

The network: a 7x7/4 conv stem with a post-norm, four stages (strides 4, 8, 16, 32) that open with a pre-norm
2x2/2 conv (stages 2-4), and ``depth`` *dual* blocks per stage, each a spatial block followed by a channel block.
Both blocks are pre-norm transformer blocks with a conditional position encoding (a residual depthwise 3x3 conv)
before the attention and another before the MLP; the spatial block runs multi-head self-attention inside
non-overlapping ``window x window`` windows (no relative position bias), the channel block runs
:class:`~backbones.layers.channel_attention.ChannelAttention` (channels attend to channels over all tokens).
Head: global average pool -> LayerNorm -> Linear.

Same numbers as the official code / timm at every input size: the stem and the downsampling convs zero-pad the
right / bottom to a multiple of their stride, the window attention pads the map to a multiple of the window and
crops after, so any input size is accepted (the official code's behaviour; no size is rejected). Differences from
the official code: attention goes through ``F.scaled_dot_product_attention`` (including the channel attention,
whose transposed roles are ordinary attention with ``k^T`` as queries), and parameter names follow timm's layout
(the official layout is converted by ``checkpoint_filter_fn``). Stochastic depth rises linearly over all 2 x
sum(depths) blocks as in the official code (timm gives both blocks of a pair the same rate; training only).

Weights: the official ImageNet-1k T/S/B checkpoints as re-hosted by timm (``timm/davit_{tiny,small,base}.msft_in1k``,
timm layout = ours, licence apache-2.0 as timm's cfgs state); an official-layout checkpoint converts as well.

Variants: ``davit_t/s/b`` (224, window 7, official weights), ``davit_l`` (the official DaViT-L config: window 12 at
384; no public weights), ``davit_h`` / ``davit_g`` (timm's untrained DaViT-H / -G configs at 224, window 7: the
paper's H / G tables could not be checked, so these are not verified against official numbers).
"""
from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict
from .._features import StageFeatureMixin, feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..layers.activation import InplaceGELU
from ..layers.attention import Attention
from ..layers.channel_attention import ChannelAttention
from ..layers.downsample import PreNormDownsample, pad_nchw
from ..layers.helpers import refuse_img_size
from ..layers.init import init_weights_
from ..layers.mlp import Mlp
from ..layers.pos_conv import PosConv
from ..layers.stage import Stage, StageStride, drop_path_schedule
from ..layers.window import crop, pad_to_multiple, window_partition, window_reverse

__all__ = ['DaViT']

FAMILY = register_family(Family(
    name='davit',
    bibtex="""
@inproceedings{ding2022davit,
  title={DaViT: Dual Attention Vision Transformers},
  author={Ding, Mingyu and Xiao, Bin and Codella, Noel and Luo, Ping and Wang, Jingdong and Yuan, Lu},
  booktitle={Proceedings of the European Conference on Computer Vision (ECCV)},
  year={2022}
}""",
    arxiv='2204.03645',
    repo='dingmyu/davit',
    license='apache-2.0',
    module=__name__,
    oracle="timm davit_* models (random non-trivial weights through checkpoint_filter_fn); the official layout "
           "through timm's documented key mapping",
    weights='official Microsoft ImageNet-1k weights as re-hosted by timm (timm/davit_{tiny,small,base}.msft_in1k)',
))

EPS = 1e-5  # every LayerNorm of the official code (torch default)


class Stem(nn.Module):
    """``conv`` 7x7 stride 4 (pad 3, input first zero-padded to a multiple of 4) -> ``norm`` (LayerNorm over C)."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_chs, out_chs, 7, stride=4, padding=3, **dd)
        self.norm = LayerNorm2d(out_chs, eps=EPS, **dd)
        self.out_chs = out_chs
        self.reduction = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(pad_nchw(x, 4)))


class DualBlockHalf(nn.Module):
    """One half of a dual block, on NCHW maps (the attention is the subclass's :meth:`attend`)::

        x = cpe1(x);  x = x + attend(norm1(x))     (tokens [B, N, C])
        x = cpe2(x);  x = x + mlp(norm2(x))

    Args:
        dim: width ``C``.
        mlp_ratio: MLP hidden width / ``C``.
        drop_path: stochastic depth of both residual branches.
        dilation: of the position encodings' convs.
    """

    def __init__(
            self, dim: int, mlp_ratio: float = 4., drop_path: float = 0., dilation: int = 1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cpe1 = PosConv(dim, 3, dilation, **dd)  # conditional position encodings: x + dwconv3x3(x)
        self.norm1 = nn.LayerNorm(dim, eps=EPS, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.cpe2 = PosConv(dim, 3, dilation, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=EPS, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=InplaceGELU, **dd)  # exact GELU, in place in inference
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def attend(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = self.cpe1(x).flatten(2).transpose(1, 2)  # [B, N, C]
        x = x + self.drop_path1(self.attend(self.norm1(x), H, W))
        x = self.cpe2(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.transpose(1, 2).reshape(B, C, H, W)


class SpatialBlock(DualBlockHalf):
    """Window attention half: the map is zero-padded to a multiple of the window, cut into ``window x window``
    windows, each attended by :class:`~backbones.layers.attention.Attention` (no position bias), then merged back
    and cropped."""

    def __init__(
            self, dim: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4., qkv_bias: bool = True,
            drop_path: float = 0., dilation: int = 1, device=None, dtype=None):
        super().__init__(dim, mlp_ratio, drop_path, dilation, device=device, dtype=dtype)
        self.window_size = (window_size, window_size)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, device=device, dtype=dtype)

    def attend(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = pad_to_multiple(x.reshape(B, H, W, C), self.window_size)
        size = (x.shape[1], x.shape[2])
        x = self.attn(window_partition(x, self.window_size))  # [B * windows, window * window, C]
        x = crop(window_reverse(x, self.window_size, size), (H, W))
        return x.reshape(B, N, C)


class ChannelBlock(DualBlockHalf):
    """Channel attention half: :class:`~backbones.layers.channel_attention.ChannelAttention` over all tokens."""

    def __init__(
            self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = True, drop_path: float = 0.,
            dilation: int = 1, device=None, dtype=None):
        super().__init__(dim, mlp_ratio, drop_path, dilation, device=device, dtype=dtype)
        self.attn = ChannelAttention(dim, num_heads, qkv_bias=qkv_bias, device=device, dtype=dtype)

    def attend(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.attn(x)


class DaViT(StageFeatureMixin, nn.Module):
    """DaViT-T/S/B/L/H/G.

    Args:
        depths: dual blocks (spatial + channel) per stage.
        embed_dims: stage widths.
        num_heads: heads of the window attention = channel groups of the channel attention, per stage.
        window_size: side of the attention windows (7; 12 for the 384 DaViT-L).
        mlp_ratio: MLP hidden width / stage width.
        qkv_bias: bias of the q/k/v projections.
        output_stride: total stride of the last stage (32; 16 or 8 keep the last stages at the stride they reach:
            patch merging at stride 1 and position convs dilated, windows of ``window_size`` tokens over the
            larger maps).
        img_size: refused (nothing depends on the input size), as by timm's DaViT.
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning (stochastic depth rises
            linearly over all ``2 * sum(depths)`` blocks).
    """

    def __init__(
            self,
            depths: Tuple[int, ...] = (1, 1, 3, 1),
            embed_dims: Tuple[int, ...] = (96, 192, 384, 768),
            num_heads: Tuple[int, ...] = (3, 6, 12, 24),
            window_size: int = 7,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
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
        assert len(depths) == len(embed_dims) == len(num_heads), 'depths, embed_dims and num_heads: one per stage'
        self.init_model(type(self).__name__, in_chans, num_classes, drop_rate)  # any size: strides and windows pad
        self.window_size = window_size
        refuse_img_size(img_size, self._model_name, 'every size runs: strides and windows pad')

        self.stem = Stem(in_chans, embed_dims[0], **dd)
        dprs = drop_path_schedule(drop_path_rate, [2 * d for d in depths])  # one rate per half block

        def make_stage(i: int, in_chs: int, dim: int, s: StageStride) -> Stage:
            d = dict(dilation=s.dilation, **dd)
            heads = num_heads[i]
            blocks = [nn.Sequential(
                SpatialBlock(dim, heads, window_size, mlp_ratio, qkv_bias, drop_path=dprs[i][2 * j], **d),
                ChannelBlock(dim, heads, mlp_ratio, qkv_bias, drop_path=dprs[i][2 * j + 1], **d),
            ) for j in range(depths[i])]
            downsample = None
            if i > 0:  # pre-norm patch merging: LayerNorm, zero-pad to even, 2x2/2 conv
                downsample = PreNormDownsample(
                    in_chs, dim, 2, s.stride, dilation=s.first_dilation, norm_layer=partial(LayerNorm2d, eps=EPS),
                    pad_to_stride=True, **dd)
            return Stage(blocks, downsample)

        # feature levels: the four stages, as timm's DaViT (the stem is a 7x7/4 patch embedding)
        self.build_stages(make_stage, embed_dims, [1] + [2] * (len(depths) - 1), output_stride, self.stem.reduction)
        # the final norm comes after pooling, in the head
        self.build_head(num_classes, global_pool, drop_rate, head_norm_layer=partial(nn.LayerNorm, eps=EPS), **dd)
        init_weights_(self)


# official layout (timm's davit.py documents it in its checkpoint_filter_fn) -> ours; timm's layout is ours
_OFFICIAL_RULES = [
    (r'^patch_embeds\.0\.proj\.', 'stem.conv.'),
    (r'^patch_embeds\.0\.norm\.', 'stem.norm.'),
    (r'^patch_embeds\.(\d+)\.proj\.', r'stages.\1.downsample.conv.'),
    (r'^patch_embeds\.(\d+)\.norm\.', r'stages.\1.downsample.norm.'),
    (r'^main_blocks\.(\d+)\.(\d+)\.([01])\.', r'stages.\1.blocks.\2.\3.'),
    (r'\.cpe\.0\.', '.cpe1.'),
    (r'\.cpe\.1\.', '.cpe2.'),
    (r'^norms\.', 'head.norm.'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
]


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout (= timm's ``davit_*``, e.g. ``timm/davit_tiny.msft_in1k``) or the official one
    (``patch_embeds`` / ``main_blocks`` / ``norms`` / ``head``, possibly inside ``{'state_dict': ...}``)."""
    return convert_state_dict(state_dict, model, _OFFICIAL_RULES, FAMILY.name, first_conv='stem.conv')


def _create_davit(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        DaViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(hf_hub_id=None, **kwargs):
    cfg = zoo_cfg(
        FAMILY, first_conv='stem.conv', classifier='head.fc', crop_pct=0.95, interpolation='bicubic', **kwargs)
    if hf_hub_id:
        cfg['hf_hub_id'] = hf_hub_id
    return cfg


default_cfgs = generate_default_cfgs({
    'davit_t.msft_in1k': _cfg(hf_hub_id='timm/davit_tiny.msft_in1k'),
    'davit_s.msft_in1k': _cfg(hf_hub_id='timm/davit_small.msft_in1k'),
    'davit_b.msft_in1k': _cfg(hf_hub_id='timm/davit_base.msft_in1k'),
    'davit_l.untrained': _cfg(input_size=(3, 384, 384), pool_size=(12, 12)),
    'davit_h.untrained': _cfg(),
    'davit_g.untrained': _cfg(),
})

_SRC = 'official davit.py factory comment (fvcore, attention included)'


@register_zoo_model(params=28_360_168, gmacs=4.540, top1=82.8, gmacs_source=f'{_SRC}: 4,540,244,736',
                    timm_twin='davit_tiny')
def davit_t(pretrained=False, **kwargs) -> DaViT:
    """DaViT-Tiny."""
    model_args = dict(depths=(1, 1, 3, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_davit('davit_t', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=49_745_896, gmacs=8.800, top1=84.2, gmacs_source=f'{_SRC}: 8,800,488,192',
                    timm_twin='davit_small')
def davit_s(pretrained=False, **kwargs) -> DaViT:
    """DaViT-Small."""
    model_args = dict(depths=(1, 1, 9, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_davit('davit_s', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=87_954_408, gmacs=15.510, top1=84.6, gmacs_source=f'{_SRC}: 15,510,430,720',
                    timm_twin='davit_base')
def davit_b(pretrained=False, **kwargs) -> DaViT:
    """DaViT-Base."""
    model_args = dict(depths=(1, 1, 9, 1), embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32))
    return _create_davit('davit_b', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(
    params=196_811_752, gmacs=102.967, gmacs_source=f'{_SRC} (DaViT_large_window12_384): 102,966,676,992',
    notes='ImageNet-22k pre-trained at 384 with window 12 (official config); no public weights',
    timm_twin='davit_large', timm_twin_kwargs=dict(window_size=12))
def davit_l(pretrained=False, **kwargs) -> DaViT:
    """DaViT-Large, window 12 at 384."""
    model_args = dict(
        depths=(1, 1, 9, 1), embed_dims=(192, 384, 768, 1536), num_heads=(6, 12, 24, 48), window_size=12)
    return _create_davit('davit_l', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(
    params=348_922_856,
    notes="timm's davit_huge config (untrained; the paper's DaViT-H row could not be checked): params are timm's "
          "count, no official GMACs",
    timm_twin='davit_huge')
def davit_h(pretrained=False, **kwargs) -> DaViT:
    """DaViT-Huge (timm's config)."""
    model_args = dict(depths=(1, 1, 9, 1), embed_dims=(256, 512, 1024, 2048), num_heads=(8, 16, 32, 64))
    return _create_davit('davit_h', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(
    params=1_406_470_120,
    notes="timm's davit_giant config (untrained; the paper's DaViT-G row could not be checked): params are timm's "
          "count, no official GMACs",
    timm_twin='davit_giant')
def davit_g(pretrained=False, **kwargs) -> DaViT:
    """DaViT-Giant (timm's config)."""
    model_args = dict(depths=(1, 1, 12, 3), embed_dims=(384, 768, 1536, 3072), num_heads=(12, 24, 48, 96))
    return _create_davit('davit_g', pretrained, **dict(model_args, **kwargs))
