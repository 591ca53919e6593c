"""Twins: Twins-PCPVT and Twins-SVT.

Paper: "Twins: Revisiting the Design of Spatial Attention in Vision Transformers", Xiangxiang Chu, Zhi Tian,
Yuqing Wang, Bo Zhang, Haibing Ren, Xiaolin Wei, Huaxia Xia, Chunhua Shen (NeurIPS 2021),
https://arxiv.org/abs/2104.13840. Official code: https://github.com/Meituan-AutoML/Twins (``gvt.py``: ``CPVTV2`` =
PCPVT, ``ALTGVT`` = SVT), Apache-2.0.

Four stages (strides 4-8-16-32). Each stage: a patch embedding (conv ``k = s`` = 4, then 2; LayerNorm eps 1e-5),
then pre-norm transformer blocks (LayerNorm eps 1e-6, exact-GELU MLP); the first block of every stage is followed
by the PEG, ``x + DWConv3x3(x)`` (conditional position encoding; no absolute position embedding, no class token).
Head: LayerNorm (1e-6) -> global average -> Linear.

- Twins-PCPVT: every block uses global sub-sampled attention (GSA, sub-sampling 8-4-2-1).
- Twins-SVT: blocks alternate locally-grouped attention (LSA, 7x7 windows; even index) and GSA (odd index).

Both attentions live in ``backbones/layers/subsampled_attention.py``. What differs from the official code:

- the blocks run on channels-last maps ``[B, H, W, C]`` (the official ones on tokens + a size), and stage outputs
  are NCHW maps, so ``forward_features`` returns ``[B, C, H/32, W/32]`` (timm's Twins returns tokens); same numbers;
- the official LSA needs every stage map to divide by 7 (inputs 224, 448, ...); here, as in timm's Twins, a map
  that does not divide is zero-padded on the bottom / right before the ``qkv`` projection and cropped after the
  attention. Identical to the official code wherever that runs;
- input sides must be multiples of 32 (the total stride; 16 or 8 with ``output_stride``; a ``ValueError`` otherwise).
  timm's model also runs at other sizes, where its strided convs silently drop the last rows / columns;
- grad checkpointing is supported (timm's Twins refuses it).

Weights: the official in1k checkpoints (Google Drive; a state dict, possibly inside ``{'model': ...}``) and timm's
hub copies of them (``timm/twins_*.in1k``, the default here) share one key layout, converted by
``checkpoint_filter_fn``.
"""
from functools import partial
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict
from .._features import StageFeatureMixin, feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..layers.activation import InplaceGELU
from ..layers.helpers import check_img_size
from ..layers.init import skip_on_meta
from ..layers.mlp import Mlp
from ..layers.patch_embed import PatchEmbed
from ..layers.pos_conv import PosConv
from ..layers.stage import Stage, StageStride, drop_path_schedule
from ..layers.subsampled_attention import GlobalSubsampledAttention, LocallyGroupedAttention
from ..layers.transformer import TransformerBlock

__all__ = ['Twins']

FAMILY = register_family(Family(
    name='twins',
    bibtex="""
@inproceedings{chu2021twins,
  title={Twins: Revisiting the Design of Spatial Attention in Vision Transformers},
  author={Chu, Xiangxiang and Tian, Zhi and Wang, Yuqing and Zhang, Bo and Ren, Haibing and Wei, Xiaolin and
          Xia, Huaxia and Shen, Chunhua},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2021}
}""",
    arxiv='2104.13840',
    repo='Meituan-AutoML/Twins',
    license='apache-2.0',
    module=__name__,
    oracle="timm twins_* models (the official key layout; random non-trivial weights through checkpoint_filter_fn)",
    weights="official in1k weights, from timm's hub copies (timm/twins_*.in1k)",
))


class TwinsBlock(TransformerBlock):
    """Pre-norm transformer block on ``[B, H, W, C]`` (:class:`~backbones.layers.TransformerBlock`: ``x +
    attn(norm1(x))``, ``x + mlp(norm2(x))``), then the PEG when ``pos_conv`` (first block of a stage).

    ``window_size`` set: LSA with that window; ``None``: GSA with ``sr_ratio``. ``dilation``: of the PEG's conv.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            sr_ratio: int = 1,
            window_size: Optional[int] = None,
            pos_conv: bool = False,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        dd = dict(device=device, dtype=dtype)
        if window_size is not None:
            attn = LocallyGroupedAttention(dim, num_heads, window_size, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        else:
            attn = GlobalSubsampledAttention(dim, num_heads, sr_ratio, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=InplaceGELU, drop=proj_drop, **dd)
        super().__init__(dim, attn, mlp, partial(nn.LayerNorm, eps=1e-6), drop_path=drop_path, **dd)
        # PEG (position encoding generator, CPVT): x + dwconv3x3(x)
        self.peg = PosConv(dim, 3, dilation, channels_last=True, fold=False, **dd) if pos_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.peg(self.residuals(x))


class Twins(StageFeatureMixin, nn.Module):
    """Twins-PCPVT (``window_sizes=None``) and Twins-SVT.

    Args:
        depths: blocks per stage.
        embed_dims: stage widths.
        num_heads: attention heads per stage.
        mlp_ratios: MLP expansion per stage.
        sr_ratios: GSA sub-sampling per stage.
        window_sizes: LSA window per stage (SVT: blocks alternate LSA / GSA, LSA first); ``None``: GSA only (PCPVT).
        patch_size: first patch embedding's stride (later ones are 2).
        output_stride: total stride of the last stage (32; 16 or 8 keep the last stages at the stride they reach:
            patch merging at every pixel, PEG convs dilated, LSA windows and GSA sub-sampling over the larger maps).
        img_size: nominal input size (sides: multiples of the total stride), recorded only, as timm's Twins.
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning.
        pos_drop_rate, proj_drop_rate, attn_drop_rate: dropout after the patch embeddings / on the attention and
            MLP outputs / on the attention weights (official ``drop_rate`` / ``attn_drop_rate``).
    """

    def __init__(
            self,
            depths: Sequence[int] = (3, 4, 6, 3),
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            num_heads: Sequence[int] = (1, 2, 5, 8),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            sr_ratios: Sequence[int] = (8, 4, 2, 1),
            window_sizes: Optional[Sequence[int]] = None,
            patch_size: int = 4,
            output_stride: Optional[int] = None,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.init_model(type(self).__name__, in_chans, num_classes, drop_rate)
        self.stem = nn.Identity()  # stage 0's patch embedding is the stem (group_matcher names it so)
        dprs = drop_path_schedule(drop_path_rate, depths)

        def make_stage(i: int, in_chs: int, dim: int, s: StageStride) -> Stage:
            blocks = [TwinsBlock(
                dim,
                num_heads[i],
                mlp_ratio=mlp_ratios[i],
                sr_ratio=sr_ratios[i],
                window_size=window_sizes[i] if window_sizes is not None and j % 2 == 0 else None,
                pos_conv=j == 0,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dprs[i][j],
                dilation=s.dilation,
                **dd,
            ) for j in range(depths[i])]
            # conv k = s = patch (with bias) -> channels-last -> LayerNorm (torch's eps 1e-5, as the official code) ->
            # dropout (official ``pos_drop``)
            embed = PatchEmbed(
                in_chs, dim, patch_size if i == 0 else 2, norm_layer=partial(nn.LayerNorm, eps=1e-5),
                drop=pos_drop_rate, stride=s.stride, dilation=s.first_dilation, **dd)
            return Stage(blocks, embed, channels_last=True, downsample_channels_last=True)

        # feature levels: the four stages, as timm's Twins (the first patch embedding is the stem)
        layout = self.build_stages(
            make_stage, embed_dims, [patch_size] + [2] * (len(depths) - 1), output_stride, in_chs=in_chans)
        self.input_divisor = layout[-1].reduction  # every patch embedding that strides tiles its input exactly
        self.img_size = check_img_size(img_size, self._model_name, divisor=self.input_divisor)
        self.build_head(num_classes, global_pool, drop_rate, norm=LayerNorm2d(self.num_features, eps=1e-6, **dd), **dd)
        self.init_weights()

    @torch.jit.ignore
    @skip_on_meta
    def init_weights(self):
        """The official init: Linear trunc-normal(0.02), conv normal(0, sqrt(2 / fan_out)), zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0., (2. / fan_out) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {n for n, _ in self.named_parameters() if '.peg.' in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        matcher = super().group_matcher(coarse)
        matcher['stem'] = r'^stages\.0\.downsample'  # the first patch embedding (matched before 'blocks')
        return matcher



# official / timm layout (identical) -> ours
_OFFICIAL_RULES = [
    (r'^patch_embeds\.(\d+)\.', r'stages.\1.downsample.'),
    (r'^blocks\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
    (r'^pos_block\.(\d+)\.proj\.0\.', r'stages.\1.blocks.0.peg.proj.'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
]


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout, the official one (``{'model': ...}`` from ``gvt.py``) and timm's (the same keys)."""
    return convert_state_dict(state_dict, model, _OFFICIAL_RULES, FAMILY.name, first_conv='stages.0.downsample.proj')


def _create_twins(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        Twins, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(hf_hub_id, **kwargs):
    return zoo_cfg(
        FAMILY, hf_hub_id=hf_hub_id, crop_pct=0.9, interpolation='bicubic',
        first_conv='stages.0.downsample.proj', classifier='head.fc', **kwargs)


default_cfgs = generate_default_cfgs({
    'twins_pcpvt_s.in1k': _cfg('timm/twins_pcpvt_small.in1k'),
    'twins_pcpvt_b.in1k': _cfg('timm/twins_pcpvt_base.in1k'),
    'twins_pcpvt_l.in1k': _cfg('timm/twins_pcpvt_large.in1k'),
    'twins_svt_s.in1k': _cfg('timm/twins_svt_small.in1k'),
    'twins_svt_b.in1k': _cfg('timm/twins_svt_base.in1k'),
    'twins_svt_l.in1k': _cfg('timm/twins_svt_large.in1k'),
})

_PCPVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1))
_SVT = dict(mlp_ratios=(4, 4, 4, 4), sr_ratios=(8, 4, 2, 1), window_sizes=(7, 7, 7, 7))


def _counts(timm_name: str, gmacs: float, readme: float, readme_like: float) -> Dict:
    """Registry figures of the variant whose timm twin (the same network and layout) is ``timm_name``. ``gmacs``:
    fvcore 0.1.5's count of timm 1.0.31's twin at 224 WITH the attention matmuls, the zoo's convention; ``readme``:
    the official README figure, which matches the count without them (``readme_like``) and is more than 2 % below
    ``gmacs``."""
    return dict(
        timm_twin=timm_name, gmacs=gmacs,
        gmacs_source=f'fvcore count with attention matmuls of timm 1.0.31 {timm_name}; '
                     f'official README: {readme}',
        notes=f'official README {readme} GFLOPs (MACs) = the count without the q.k^T and attn.v matmuls '
              f'({readme_like}); with them {gmacs} (+{100 * (gmacs - readme) / readme:.1f} %)',
    )


@register_zoo_model(params=24_106_216, top1=81.2, **_counts('twins_pcpvt_small', 3.827, 3.7, 3.684))
def twins_pcpvt_s(pretrained=False, **kwargs) -> Twins:
    """Twins-PCPVT-S (official ``pcpvt_small_v0``)."""
    model_args = dict(depths=(3, 4, 6, 3), **_PCPVT)
    return _create_twins('twins_pcpvt_s', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=43_828_456, top1=82.7, **_counts('twins_pcpvt_base', 6.679, 6.4, 6.462))
def twins_pcpvt_b(pretrained=False, **kwargs) -> Twins:
    """Twins-PCPVT-B (official ``pcpvt_base_v0``)."""
    model_args = dict(depths=(3, 4, 18, 3), **_PCPVT)
    return _create_twins('twins_pcpvt_b', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=60_989_672, top1=83.1, **_counts('twins_pcpvt_large', 9.844, 9.5, 9.533))
def twins_pcpvt_l(pretrained=False, **kwargs) -> Twins:
    """Twins-PCPVT-L (official ``pcpvt_large_v0``)."""
    model_args = dict(depths=(3, 8, 27, 3), **_PCPVT)
    return _create_twins('twins_pcpvt_l', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=24_060_776, top1=81.7, **_counts('twins_svt_small', 2.942, 2.8, 2.824))
def twins_svt_s(pretrained=False, **kwargs) -> Twins:
    """Twins-SVT-S (official ``alt_gvt_small``)."""
    model_args = dict(depths=(2, 2, 10, 4), embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), **_SVT)
    return _create_twins('twins_svt_s', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=56_070_952, top1=83.2, **_counts('twins_svt_base', 8.590, 8.3, 8.361))
def twins_svt_b(pretrained=False, **kwargs) -> Twins:
    """Twins-SVT-B (official ``alt_gvt_base``)."""
    model_args = dict(depths=(2, 2, 18, 2), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), **_SVT)
    return _create_twins('twins_svt_b', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=99_271_400, top1=83.7, **_counts('twins_svt_large', 15.148, 14.8, 14.843))
def twins_svt_l(pretrained=False, **kwargs) -> Twins:
    """Twins-SVT-L (official ``alt_gvt_large``)."""
    model_args = dict(depths=(2, 2, 18, 2), embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), **_SVT)
    return _create_twins('twins_svt_l', pretrained, **dict(model_args, **kwargs))
