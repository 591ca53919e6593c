"""SKNet: Selective Kernel Networks.

Paper: "Selective Kernel Networks", Xiang Li, Wenhai Wang, Xiaolin Hu, Jian Yang (CVPR 2019),
https://arxiv.org/abs/1903.06586. Official release: Caffe prototxts and weights, https://github.com/implus/SKNet.

SKNet-50/101 are ResNeXt-50/101 (32x4d) whose grouped 3x3 conv is replaced by a Selective Kernel unit
(:class:`backbones.layers.SelectiveKernel`): two grouped paths (3x3, and 3x3 with dilation 2), both carrying the block
stride, fused by a per-channel softmax over the paths. The fuse width is ``d = max(C / 16, 32)`` (32, 32, 32, 64 for
the four stages), except that the official SKNet-101 prototxt uses 16 in its ``conv3_x`` stage (our ``stages.1``,
C = 256); ``sknet101`` copies that quirk (``fuse_dims=(32, 16, 32, 64)``) and so has 48,686,760 parameters, as the
prototxt.

Stem max-pool: the prototxts use Caffe's pool (3x3 stride 2, no padding, ceil rounding), but no PyTorch conversion
of the official Caffe weights exists; the only loadable SKNet-50 weights are timm's ``skresnext50_32x4d.ra_in1k``
(trained by timm, 80.17 top-1 vs the official 79.21), which were trained with PyTorch's pool (padding 1, floor).
The pool is therefore a model argument, ``stem_pool='max'`` (default: the released weights reproduce timm exactly)
or ``stem_pool='max_caffe'`` (the official topology; both give 56x56 at 224, with windows shifted by one pixel).
Other differences from the prototxts: global average pooling instead of a fixed 7x7 average pool (identical at 224,
and it accepts other sizes).
"""
from functools import partial
from typing import Optional, Sequence

from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict
from .._features import feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..layers import Bottleneck, ConvStem, SelectiveKernel, resnext_width, sk_attn_chs
from ._resnet import ResNetSkeleton

__all__ = ['SKNet']

FAMILY = register_family(Family(
    name='sknet',
    bibtex="""
@inproceedings{li2019selective,
  title={Selective Kernel Networks},
  author={Li, Xiang and Wang, Wenhai and Hu, Xiaolin and Yang, Jian},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={510--519},
  year={2019}
}""",
    arxiv='1903.06586',
    repo='implus/SKNet',
    license='apache-2.0',
    module=__name__,
    oracle='timm skresnext50_32x4d (same structure as SKNet-50; its stem pool swapped for the Caffe one)',
    weights="timm's skresnext50_32x4d.ra_in1k (HF hub, timm-trained); the official weights are Caffe only",
))


def _sk_bottleneck(in_chs, out_chs, stride, first, drop_path, groups, base_width, fuse_dims,
                   dilation=1, first_dilation=None, device=None, dtype=None):
    """SK bottleneck: ResNeXt width rule, SK unit as the mixer; ``fuse_dims`` maps the block's output width to d."""
    width = resnext_width(out_chs, base_width, groups)
    return Bottleneck(
        in_chs, out_chs,
        mid_chs=width,
        mixer_fn=partial(_sk_mixer, attn_chs=fuse_dims[out_chs], groups=groups),
        stride=stride,
        dilation=dilation,
        first_dilation=first_dilation,
        drop_path=drop_path,
        device=device, dtype=dtype,
    )


def _sk_mixer(in_chs, out_chs, stride, first, attn_chs, groups, dilation=1, device=None, dtype=None):
    return SelectiveKernel(
        in_chs, out_chs, attn_chs, stride=stride, dilation=dilation, groups=groups, device=device, dtype=dtype)


class SKNet(ResNetSkeleton):
    """SKNet-50 / SKNet-101: ResNeXt (32x4d) with Selective Kernel units.

    Args:
        depths: bottlenecks per stage.
        groups: cardinality G of the SK paths.
        base_width: ResNeXt width per group (4: SK widths 128, 256, 512, 1024).
        fuse_dims: fuse width d of the SK attention in each stage; default ``max(C / sk_reduction, sk_min_dim)``.
        sk_reduction, sk_min_dim: the paper's r (16) and L (32) for the default ``fuse_dims``.
        stem_pool: ``'max'`` (PyTorch pool, what the released timm weights were trained with) or ``'max_caffe'``
            (the official prototxt's pool).
    """

    def __init__(
            self,
            depths: Sequence[int] = (3, 4, 6, 3),
            groups: int = 32,
            base_width: int = 4,
            fuse_dims: Optional[Sequence[int]] = None,
            sk_reduction: int = 16,
            sk_min_dim: int = 32,
            stem_pool: str = 'max',
            in_chans: int = 3,
            device=None,
            dtype=None,
            **kwargs,
    ):
        dd = dict(device=device, dtype=dtype)
        widths = (256, 512, 1024, 2048)
        if fuse_dims is None:
            fuse_dims = [sk_attn_chs(resnext_width(w, base_width, groups), sk_reduction, sk_min_dim) for w in widths]
        if len(fuse_dims) != len(widths):
            raise ValueError(f'fuse_dims needs one value per stage ({len(widths)}), got {tuple(fuse_dims)}')
        stem = ConvStem(in_chans, 64, kernel_size=7, channels_last=True, **dd)
        block_fn = partial(
            _sk_bottleneck, groups=groups, base_width=base_width, fuse_dims=dict(zip(widths, fuse_dims)))
        super().__init__(
            stem, block_fn, depths, widths=widths, stem_pool=stem_pool, in_chans=in_chans, **dd, **kwargs)


# timm skresnext50_32x4d layout -> ours (inside a block timm already uses our conv1/conv2/conv3, paths, attn names)
_TIMM_RULES = [
    (r'^conv1\.', 'stem.conv1.conv.'),
    (r'^bn1\.', 'stem.conv1.bn.'),
    (r'^layer(\d)\.(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
    (r'\.downsample\.0\.', '.downsample.conv.'),
    (r'\.downsample\.1\.', '.downsample.bn.'),
    (r'^fc\.', 'head.fc.'),
]


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout or timm's ``skresnext50_32x4d`` layout."""
    return convert_state_dict(state_dict, model, _TIMM_RULES, FAMILY.name, first_conv='stem.conv1.conv')


def _create_sknet(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        SKNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


def _cfg(url='', **kwargs):
    return zoo_cfg(
        FAMILY, url=url, first_conv='stem.conv1.conv', classifier='head.fc', interpolation='bicubic', **kwargs)


default_cfgs = generate_default_cfgs({
    'sknet50.ra_in1k': _cfg(hf_hub_id='timm/skresnext50_32x4d.ra_in1k'),
    'sknet101.untrained': _cfg(),
})


@register_zoo_model(params=27_479_784, gmacs=4.47, top1=79.21, gmacs_source='SKNet paper Table 2',
                    timm_twin='skresnext50_32x4d')
def sknet50(pretrained=False, **kwargs) -> SKNet:
    """SKNet-50 (ResNeXt-50 32x4d with SK units)."""
    model_args = dict(depths=(3, 4, 6, 3), fuse_dims=(32, 32, 32, 64))
    return _create_sknet('sknet50', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=48_686_760, gmacs=8.46, top1=79.81, gmacs_source='SKNet paper Table 2')
def sknet101(pretrained=False, **kwargs) -> SKNet:
    """SKNet-101 (ResNeXt-101 32x4d with SK units; fuse width 16 in ``stages.1``, as the official prototxt)."""
    model_args = dict(depths=(3, 4, 23, 3), fuse_dims=(32, 16, 32, 64))
    return _create_sknet('sknet101', pretrained, **dict(model_args, **kwargs))
