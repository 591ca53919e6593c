"""MaxViT: multi-axis attention (MBConv, then window attention, then grid attention, in every block).

Paper: "MaxViT: Multi-Axis Vision Transformer", Zhengzhong Tu, Hossein Talebi, Han Zhang, Feng Yang, Peyman Milanfar,
Alan Bovik, Yinxiao Li (ECCV 2022), https://arxiv.org/abs/2204.01697.
Official code: https://github.com/google-research/maxvit (TensorFlow 2, commit 70a4707), Apache-2.0.

The official TensorFlow model, rebuilt on the zoo's shared layers: a two-conv stem (3x3/2 + BN + GELU, 3x3), four
stages of MaxViT blocks, each ``MBConv`` (``backbones.layers.mbconv``: pre-norm, BN eps 1e-3, SE, TF "SAME" padding)
-> block attention over non-overlapping P x P windows -> grid attention over a P x P grid spread across the map, both
pre-norm transformer units (LN eps 1e-5, 32-wide heads, a learned 2-D relative position bias, 4x GELU MLP), and the
head ``avg pool -> LayerNorm -> Linear(C) -> tanh -> Linear(classes)``. GELU is the tanh approximation everywhere,
as in the official code. The oracle is timm's ``maxvit_*_tf_*`` (the official checkpoints, converted): timm weights
go through ``checkpoint_filter_fn`` and give the same logits.

What differs from the official code:

- Input sizes. The official model (and timm) needs every stage map to be a multiple of the partition size P (input a
  multiple of 32 * P: 224 for P = 7). Here every input size works. The stride-2 convs and pools use TF "SAME"
  padding, which already defines them on odd maps (output ``ceil(side / 2)``, as the official layers compute), and
  when a stage map does not divide by P the attention units zero-pad the (normalized) map at the bottom / right to
  the next multiple of P, partition it, mask the padded tokens out as keys (``-inf`` bias: real tokens attend to real
  tokens only) and crop the result. For block attention the last row / column of windows is then partly empty; for
  grid attention the grid is laid over the padded map, so a group gathers the existing tokens ``(i * ceil(H / P) + a,
  j * ceil(W / P) + b)`` (dilation ``ceil(H / P)`` instead of ``H / P``). A map smaller than P (e.g. 2x2 at input
  64) is one group whose relative positions come from the centre of the table. At the official sizes nothing is
  padded and the numbers are the official ones.
- Relative position tables are stored at the run window (13x13 for P = 7, 23x23 for 12, 31x31 for 16), as timm
  does. The official 384 / 512 checkpoints keep the 13x13 table of the 224 model and resize it bilinearly at run
  time (``tf.image.resize``); ``checkpoint_filter_fn`` does that resize once when such a table is loaded.
- ``set_input_size`` (as timm's) changes the partition size after construction and resizes the tables the same way.
"""
from functools import partial
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    LayerNorm2d,
    to_2tuple,
)
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import check_state_dict, rename_keys, unwrap_state_dict
from .._features import StageFeatureMixin, feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from .._timm import update_model_input_size
from ..layers.activation import InplaceGELU
from ..layers.head import NormMlpHead
from ..layers.helpers import check_img_size
from ..layers.init import init_weights_
from ..layers.mbconv import MBConv
from ..layers.partition_attention import PartitionAttention
from ..layers.relpos import resize_rel_pos_table
from ..layers.stage import Stage, drop_path_schedule
from ..layers.stem import SameConvStem

__all__ = ['MaxViT']

FAMILY = register_family(Family(
    name='maxvit',
    bibtex="""
@inproceedings{tu2022maxvit,
  title={MaxViT: Multi-Axis Vision Transformer},
  author={Tu, Zhengzhong and Talebi, Hossein and Zhang, Han and Yang, Feng and Milanfar, Peyman and Bovik, Alan and
          Li, Yinxiao},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2022}
}""",
    arxiv='2204.01697',
    repo='google-research/maxvit',
    license='apache-2.0',
    module=__name__,
    oracle="timm's maxvit_*_tf_* (the official TF model): random non-trivial weights through checkpoint_filter_fn",
    weights="timm's hub weights timm/maxvit_*_tf_* (the official TF checkpoints, converted by timm), loaded through "
            "checkpoint_filter_fn",
))

# The official activation, GELU with the tanh approximation, computed in place in inference (the shared
# InplaceGELU): every use here activates a fresh buffer nothing else reads (a Linear's or a BatchNorm's output), and a
# fresh buffer of MBConv's hidden width costs page faults on the CPU on every forward. Same numbers bit for bit.
GELUTanh = partial(InplaceGELU, approximate='tanh')



class MaxViTBlock(nn.Module):
    """``conv`` (MBConv, carries the stride) -> ``attn_block`` (windows) -> ``attn_grid`` (grid), NCHW in and out."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            first: bool = False,
            drop_path: float = 0.,
            window_size: Tuple[int, int] = (7, 7),
            grid_size: Tuple[int, int] = (7, 7),
            head_dim: int = 32,
            mlp_ratio: float = 4.,
            expand_ratio: float = 4.,
            se_ratio: float = 0.25,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = MBConv(
            in_chs, out_chs, stride, expand_ratio=expand_ratio, se_ratio=se_ratio, act_layer=GELUTanh,
            norm_eps=1e-3, drop_path=drop_path, dilation=dilation, first_dilation=first_dilation, **dd)
        attn_args = dict(head_dim=head_dim, mlp_ratio=mlp_ratio, act_layer=GELUTanh, attn_drop=attn_drop,
                         proj_drop=proj_drop, drop_path=drop_path, **dd)
        self.attn_block = PartitionAttention(out_chs, window_size, grid=False, **attn_args)
        self.attn_grid = PartitionAttention(out_chs, grid_size, grid=True, **attn_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)  # channels-last for the attention units
        x = self.attn_grid(self.attn_block(x))
        return x.permute(0, 3, 1, 2)


class MaxViT(StageFeatureMixin, nn.Module):
    """MaxViT-T/S/B/L/XL.

    Args:
        depths: MaxViT blocks per stage (each stage's first block halves the map).
        widths: stage widths.
        stem_widths: widths of the two stem convs.
        window_size: block-attention window ``P`` (7 at 224, 12 at 384, 16 at 512).
        grid_size: grid-attention grid (default: ``window_size``).
        head_dim: width per attention head (32).
        mlp_ratio, expand_ratio, se_ratio: MLP hidden / MBConv hidden / SE width ratios (4, 4, 0.25).
        head_hidden_size: width of the head's Linear + tanh before the classifier (default: ``widths[-1]``;
            0 = none).
        img_size: nominal input size, recorded only (every size runs; see ``set_input_size``).
        output_stride: total stride of the last stage (32; 16 or 8 run the last stages at the stride they reach,
            their depthwise convs dilated, the window and grid attention partitioning the larger maps as usual).
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning.
        attn_drop_rate, proj_drop_rate: dropout on attention weights / after attention and MLP projections.
    """
    stem_feature = True  # the stem's stride-2 output is level 0, as in timm's MaxViT (the paper's stage S0)

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 5, 2),
            widths: Sequence[int] = (64, 128, 256, 512),
            stem_widths: Sequence[int] = (64, 64),
            window_size: Union[int, Tuple[int, int]] = 7,
            grid_size: Optional[Union[int, Tuple[int, int]]] = None,
            head_dim: int = 32,
            mlp_ratio: float = 4.,
            expand_ratio: float = 4.,
            se_ratio: float = 0.25,
            head_hidden_size: Optional[int] = None,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            output_stride: Optional[int] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            attn_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.init_model('MaxViT', in_chans, num_classes, drop_rate)  # any size: TF-SAME strides, padded partitions
        self.partition_ratio = 32
        self.img_size = check_img_size(img_size, 'MaxViT') if img_size is not None else None
        self.window_size = to_2tuple(window_size)
        self.grid_size = to_2tuple(grid_size) if grid_size is not None else self.window_size

        # conv1 (3x3/2, "SAME", bias) -> norm1 (BN eps 1e-3) -> act1 (GELU-tanh) -> conv2 (3x3, bias)
        self.stem = SameConvStem(in_chans, tuple(stem_widths), GELUTanh, 1e-3, first_index=1, **dd)
        dprs = drop_path_schedule(drop_path_rate, depths)
        block_fn = partial(
            MaxViTBlock, window_size=self.window_size, grid_size=self.grid_size, head_dim=head_dim,
            mlp_ratio=mlp_ratio, expand_ratio=expand_ratio, se_ratio=se_ratio, attn_drop=attn_drop_rate,
            proj_drop=proj_drop_rate)
        self.build_stages(
            lambda i, in_chs, width, s: Stage.from_blocks(
                block_fn, depths[i], in_chs, width, s.stride, dprs[i], dilation=s.dilation,
                first_dilation=s.first_dilation, **dd),
            widths, [2] * len(depths), output_stride, self.stem.reduction, in_chs=self.stem.out_chs)
        # the final norm is the head's (it follows the pool)
        head_hidden_size = self.num_features if head_hidden_size is None else head_hidden_size
        self.build_head(head=NormMlpHead(
            self.num_features, num_classes, hidden_size=head_hidden_size or None, pool_type=global_pool,
            drop_rate=drop_rate, norm_layer=partial(LayerNorm2d, eps=1e-5), act_layer='tanh', **dd))
        self.init_weights()

    @torch.jit.ignore
    def init_weights(self):
        """The official init: kernels normal(0, 0.02) (truncated here), biases 0; relative tables normal(0,
        0.02)."""
        init_weights_(self, (nn.Conv2d, nn.Linear), rel_pos_std=.02)

    @torch.jit.ignore
    def set_input_size(
            self,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            window_size: Optional[Union[int, Tuple[int, int]]] = None,
            grid_size: Optional[Union[int, Tuple[int, int]]] = None,
            partition_ratio: Optional[int] = None,
    ):
        """Change the window / grid partition sizes (as timm's MaxViT): each one not given is ``img_size //
        partition_ratio`` (32), e.g. 12 for 384; the relative position tables are resized bilinearly. Every size is
        checked first: a derived partition must hold at least one position."""
        if partition_ratio is not None:
            self.partition_ratio = check_img_size(partition_ratio, 'MaxViT', name='partition_ratio')[0]
        if img_size is not None:
            derived = window_size is None or grid_size is None
            self.img_size = check_img_size(img_size, 'MaxViT', min_size=self.partition_ratio if derived else 1)
        window_size = check_img_size(window_size, 'MaxViT', name='window_size') if window_size is not None else None
        grid_size = check_img_size(grid_size, 'MaxViT', name='grid_size') if grid_size is not None else None
        if window_size is None or grid_size is None:
            size = self.img_size or tuple(getattr(self, 'pretrained_cfg', {}).get('input_size', (3, 224, 224))[-2:])
            derived = (size[0] // self.partition_ratio, size[1] // self.partition_ratio)
            window_size = derived if window_size is None else window_size
            grid_size = derived if grid_size is None else grid_size
        self.window_size, self.grid_size = to_2tuple(window_size), to_2tuple(grid_size)
        for stage in self.stages:
            for block in stage.blocks:
                block.attn_block.set_partition_size(self.window_size)
                block.attn_grid.set_partition_size(self.grid_size)
        update_model_input_size(self, self.img_size, window_size=self.window_size, grid_size=self.grid_size)

# timm's maxvit_*_tf_* layout (the converted official checkpoints) -> ours
_TIMM_RULES = [
    (r'\.conv\.conv1_1x1\.', '.conv.conv1.'),
    (r'\.conv\.conv2_kxk\.', '.conv.conv2.'),
    (r'\.conv\.conv3_1x1\.', '.conv.conv3.'),
    (r'\.conv\.shortcut\.expand\.', '.conv.shortcut.conv.'),
    (r'\.attn\.rel_pos\.relative_position_bias_table$', '.rel_pos.relative_position_bias_table'),
]


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout or timm's ``maxvit_*_tf_*`` one. A relative position table of another window (e.g. the
    13x13 table of the official 224 / 384 / 512 checkpoints, which the official code resizes at run time) is resized
    once, bilinearly like ``tf.image.resize``, to the model's window."""
    sd = unwrap_state_dict(state_dict)
    ours = model.state_dict()
    sd = rename_keys(sd, _TIMM_RULES, keep=ours.keys())
    for k, v in sd.items():
        if k.endswith('relative_position_bias_table') and k in ours:
            target = ours[k].shape
            if v.ndim == 3 and v.shape[0] == target[0] and v.shape != target:
                sd[k] = resize_rel_pos_table(v.double(), (target[1], target[2])).to(v.dtype)
    check_state_dict(sd, model, what=f'{FAMILY.name} checkpoint', ignore_shapes=('stem.conv1.',))
    return sd


def _create_maxvit(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        MaxViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


def _cfg(timm_name: str, res: int = 224, **kwargs):
    """One timm hub weight (``timm/<timm_name>``): ImageNet mean/std and crop 0.95 for the 224 in1k weights, 0.5 /
    0.5 otherwise; the 384 / 512 weights are evaluated uncropped (squash)."""
    cfg = dict(
        hf_hub_id=f'timm/{timm_name}',
        input_size=(3, res, res),
        pool_size=(res // 32, res // 32),
        crop_pct=0.95,
        interpolation='bicubic',
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        first_conv='stem.conv1',
        classifier='head.fc',
    )
    if res != 224:
        cfg.update(crop_pct=1.0, crop_mode='squash')
    cfg.update(kwargs)
    return zoo_cfg(FAMILY, **cfg)


_IN1K_224 = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
_IN21K = dict(num_classes=21843)

default_cfgs = generate_default_cfgs({
    'maxvit_tiny.in1k': _cfg('maxvit_tiny_tf_224.in1k', **_IN1K_224),
    'maxvit_tiny_384.in1k': _cfg('maxvit_tiny_tf_384.in1k', 384),
    'maxvit_tiny_512.in1k': _cfg('maxvit_tiny_tf_512.in1k', 512),
    'maxvit_small.in1k': _cfg('maxvit_small_tf_224.in1k', **_IN1K_224),
    'maxvit_small_384.in1k': _cfg('maxvit_small_tf_384.in1k', 384),
    'maxvit_small_512.in1k': _cfg('maxvit_small_tf_512.in1k', 512),
    'maxvit_base.in1k': _cfg('maxvit_base_tf_224.in1k', **_IN1K_224),
    'maxvit_base.in21k': _cfg('maxvit_base_tf_224.in21k', **_IN21K),
    'maxvit_base_384.in1k': _cfg('maxvit_base_tf_384.in1k', 384),
    'maxvit_base_384.in21k_ft_in1k': _cfg('maxvit_base_tf_384.in21k_ft_in1k', 384),
    'maxvit_base_512.in1k': _cfg('maxvit_base_tf_512.in1k', 512),
    'maxvit_base_512.in21k_ft_in1k': _cfg('maxvit_base_tf_512.in21k_ft_in1k', 512),
    'maxvit_large.in1k': _cfg('maxvit_large_tf_224.in1k', **_IN1K_224),
    'maxvit_large.in21k': _cfg('maxvit_large_tf_224.in21k', **_IN21K),
    'maxvit_large_384.in1k': _cfg('maxvit_large_tf_384.in1k', 384),
    'maxvit_large_384.in21k_ft_in1k': _cfg('maxvit_large_tf_384.in21k_ft_in1k', 384),
    'maxvit_large_512.in1k': _cfg('maxvit_large_tf_512.in1k', 512),
    'maxvit_large_512.in21k_ft_in1k': _cfg('maxvit_large_tf_512.in21k_ft_in1k', 512),
    'maxvit_xlarge.in21k': _cfg('maxvit_xlarge_tf_224.in21k', **_IN21K),
    'maxvit_xlarge_384.in21k_ft_in1k': _cfg('maxvit_xlarge_tf_384.in21k_ft_in1k', 384),
    'maxvit_xlarge_512.in21k_ft_in1k': _cfg('maxvit_xlarge_tf_512.in21k_ft_in1k', 512),
})

_T = dict(depths=(2, 2, 5, 2), widths=(64, 128, 256, 512), stem_widths=(64, 64))
_S = dict(depths=(2, 2, 5, 2), widths=(96, 192, 384, 768), stem_widths=(64, 64))
_B = dict(depths=(2, 6, 14, 2), widths=(96, 192, 384, 768), stem_widths=(64, 64))
_L = dict(depths=(2, 6, 14, 2), widths=(128, 256, 512, 1024), stem_widths=(128, 128))
_XL = dict(depths=(2, 6, 14, 2), widths=(192, 384, 768, 1536), stem_widths=(192, 192))
_README = 'official README (FLOPs = MACs)'
_NOTE_384 = 'window 12; 23x23 relative tables (the official 13x13 ones resized)'
_NOTE_512 = 'window 16; 31x31 relative tables (the official 13x13 ones resized)'


@register_zoo_model(params=30_916_528, gmacs=5.6, top1=83.62, gmacs_source=_README, timm_twin='maxvit_tiny_tf_224')
def maxvit_tiny(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-T, 224."""
    model_args = dict(_T, window_size=7)
    return _create_maxvit('maxvit_tiny', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=30_977_008, gmacs=17.7, top1=85.24, gmacs_source=_README, notes=_NOTE_384,
                    timm_twin='maxvit_tiny_tf_384')
def maxvit_tiny_384(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-T, 384."""
    model_args = dict(_T, window_size=12)
    return _create_maxvit('maxvit_tiny_384', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=31_049_584, gmacs=33.7, top1=85.72, gmacs_source=_README, notes=_NOTE_512,
                    timm_twin='maxvit_tiny_tf_512')
def maxvit_tiny_512(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-T, 512."""
    model_args = dict(_T, window_size=16)
    return _create_maxvit('maxvit_tiny_512', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=68_927_956, gmacs=11.7, top1=84.45, gmacs_source=_README, timm_twin='maxvit_small_tf_224')
def maxvit_small(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-S, 224."""
    model_args = dict(_S, window_size=7)
    return _create_maxvit('maxvit_small', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=69_018_676, gmacs=36.1, top1=85.74, gmacs_source=_README, notes=_NOTE_384,
                    timm_twin='maxvit_small_tf_384')
def maxvit_small_384(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-S, 384."""
    model_args = dict(_S, window_size=12)
    return _create_maxvit('maxvit_small_384', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=69_127_540, gmacs=67.6, top1=86.19, gmacs_source=_README, notes=_NOTE_512,
                    timm_twin='maxvit_small_tf_512')
def maxvit_small_512(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-S, 512."""
    model_args = dict(_S, window_size=16)
    return _create_maxvit('maxvit_small_512', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=119_467_708, gmacs=24.2, top1=84.95, gmacs_source=_README, timm_twin='maxvit_base_tf_224')
def maxvit_base(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-B, 224."""
    model_args = dict(_B, window_size=7)
    return _create_maxvit('maxvit_base', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=119_653_468, gmacs=74.2, top1=86.34, gmacs_source=_README, notes=_NOTE_384,
                    timm_twin='maxvit_base_tf_384')
def maxvit_base_384(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-B, 384."""
    model_args = dict(_B, window_size=12)
    return _create_maxvit('maxvit_base_384', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=119_876_380, gmacs=138.5, top1=86.66, gmacs_source=_README, notes=_NOTE_512,
                    timm_twin='maxvit_base_tf_512')
def maxvit_base_512(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-B, 512."""
    model_args = dict(_B, window_size=16)
    return _create_maxvit('maxvit_base_512', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=211_785_560, gmacs=43.9, top1=85.17, gmacs_source=_README, timm_twin='maxvit_large_tf_224')
def maxvit_large(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-L, 224."""
    model_args = dict(_L, window_size=7)
    return _create_maxvit('maxvit_large', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=212_033_240, gmacs=133.1, top1=86.40, gmacs_source=_README, notes=_NOTE_384,
                    timm_twin='maxvit_large_tf_384')
def maxvit_large_384(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-L, 384."""
    model_args = dict(_L, window_size=12)
    return _create_maxvit('maxvit_large_384', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=212_330_456, gmacs=245.4, top1=86.70, gmacs_source=_README, notes=_NOTE_512,
                    timm_twin='maxvit_large_tf_512')
def maxvit_large_512(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-L, 512."""
    model_args = dict(_L, window_size=16)
    return _create_maxvit('maxvit_large_512', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(
    params=506_987_643, gmacs=97.8, gmacs_source=_README,
    notes='only IN-21k weights exist, so the default head has 21843 classes (474,951,952 params with 1000)',
    timm_twin='maxvit_xlarge_tf_224')
def maxvit_xlarge(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-XL, 224 (ImageNet-21k pretraining)."""
    model_args = dict(_XL, window_size=7)
    return _create_maxvit('maxvit_xlarge', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=475_323_472, gmacs=293.7, gmacs_source=_README, notes=_NOTE_384,
                    timm_twin='maxvit_xlarge_tf_384')
def maxvit_xlarge_384(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-XL, 384."""
    model_args = dict(_XL, window_size=12)
    return _create_maxvit('maxvit_xlarge_384', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=475_769_296, gmacs=535.2, gmacs_source=_README, notes=_NOTE_512,
                    timm_twin='maxvit_xlarge_tf_512')
def maxvit_xlarge_512(pretrained=False, **kwargs) -> MaxViT:
    """MaxViT-XL, 512."""
    model_args = dict(_XL, window_size=16)
    return _create_maxvit('maxvit_xlarge_512', pretrained, **dict(model_args, **kwargs))
