"""SENet: Squeeze-and-Excitation Networks.

Paper: "Squeeze-and-Excitation Networks", Jie Hu, Li Shen, Samuel Albanie, Gang Sun, Enhua Wu (CVPR 2018),
https://arxiv.org/abs/1709.01507. Official release: Caffe prototxts and weights, https://github.com/hujie-frank/SENet.

This is the official (Caffe) topology, which timm keeps as its ``legacy_*`` models: the SE-ResNets put the block
stride on the first 1x1 conv, the stem max-pool is Caffe's (no padding, ceil rounding), and SENet-154 has a three-conv
stem and 3x3 stride-2 projection shortcuts. The official Caffe weights, converted to PyTorch and hosted by timm,
load through ``checkpoint_filter_fn``. Differences from the prototxts: global average pooling instead of a fixed 7x7
average pool (identical at 224, and it accepts other sizes).
"""
from functools import partial

from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict
from .._features import feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..layers import Bottleneck, ConvNormAct, ConvStem, SqueezeExcite, resnext_width
from ._resnet import ResNetSkeleton

__all__ = ['SENet']

FAMILY = register_family(Family(
    name='senet',
    bibtex="""
@inproceedings{hu2018squeeze,
  title={Squeeze-and-Excitation Networks},
  author={Hu, Jie and Shen, Li and Sun, Gang},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={7132--7141},
  year={2018}
}""",
    arxiv='1709.01507',
    repo='hujie-frank/SENet',
    license='apache-2.0',
    module=__name__,
    oracle="timm legacy_* models (official Caffe topology and converted official weights)",
    weights='official Caffe weights converted (timm legacy_* release URLs)',
))


def _grouped_conv3x3(in_chs, out_chs, stride, first, groups=1, dilation=1, device=None, dtype=None):
    return ConvNormAct(in_chs, out_chs, 3, stride=stride, dilation=dilation, groups=groups, device=device, dtype=dtype)


def _se_bottleneck(in_chs, out_chs, stride, first, drop_path, groups, base_width, stride_in_1x1,
                   reduce_first, shortcut_kernel_size, dilation=1, first_dilation=None, device=None, dtype=None):
    """SE bottleneck: width per the ResNeXt rule (``floor(planes * base_width / 64) * groups``)."""
    width = resnext_width(out_chs, base_width, groups)
    return Bottleneck(
        in_chs, out_chs,
        mid_chs=width // reduce_first,
        mixer_fn=partial(_grouped_conv3x3, groups=groups),
        mixer_chs=width,
        stride=stride,
        stride_in_1x1=stride_in_1x1,
        dilation=dilation,
        first_dilation=first_dilation,
        attn_layer=SqueezeExcite,
        shortcut_kernel_size=shortcut_kernel_size,
        drop_path=drop_path,
        device=device, dtype=dtype,
    )


class SENet(ResNetSkeleton):
    """SE-ResNet / SE-ResNeXt / SENet-154.

    Args:
        depths: bottlenecks per stage.
        groups: cardinality of the 3x3 conv (1 = SE-ResNet).
        base_width: ResNeXt width per group (64 for SE-ResNet, 4 for the 32x4d / 64x4d nets).
        stride_in_1x1: Caffe ResNet v1 stride placement (SE-ResNet) instead of on the 3x3.
        reduce_first: the first 1x1 maps to ``width / reduce_first`` (SENet-154: 2).
        deep_stem: three 3x3 convs (64, 64, 128) instead of one 7x7.
        shortcut_kernel_size: 3 for SENet-154's 3x3 stride-2 projections.
    """

    def __init__(
            self,
            depths=(3, 4, 6, 3),
            groups: int = 1,
            base_width: int = 64,
            stride_in_1x1: bool = False,
            reduce_first: int = 1,
            deep_stem: bool = False,
            shortcut_kernel_size: int = 1,
            in_chans: int = 3,
            device=None,
            dtype=None,
            **kwargs,
    ):
        dd = dict(device=device, dtype=dtype)
        if deep_stem:
            stem = ConvStem(in_chans, (64, 64, 128), kernel_size=3, channels_last=True, **dd)
        else:
            stem = ConvStem(in_chans, 64, kernel_size=7, channels_last=True, **dd)
        block_fn = partial(
            _se_bottleneck, groups=groups, base_width=base_width, stride_in_1x1=stride_in_1x1,
            reduce_first=reduce_first, shortcut_kernel_size=shortcut_kernel_size)
        super().__init__(stem, block_fn, depths, stem_pool='max_caffe', in_chans=in_chans, **dd, **kwargs)


# timm legacy (= converted official Caffe) layout -> ours
_TIMM_LEGACY_RULES = [
    (r'^layer0\.conv(\d)\.', r'stem.conv\1.conv.'),
    (r'^layer0\.bn(\d)\.', r'stem.conv\1.bn.'),
    (r'^layer(\d)\.(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
    (r'\.conv(\d)\.weight$', r'.conv\1.conv.weight'),
    (r'\.bn(\d)\.', r'.conv\1.bn.'),
    (r'\.se_module\.', '.attn.'),
    (r'\.downsample\.0\.', '.downsample.conv.'),
    (r'\.downsample\.1\.', '.downsample.bn.'),
    (r'^last_linear\.', 'head.fc.'),
]


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout or timm's ``legacy_*`` layout (the converted official Caffe weights)."""
    return convert_state_dict(state_dict, model, _TIMM_LEGACY_RULES, FAMILY.name, first_conv='stem.conv1.conv')


def _create_senet(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        SENet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


def _cfg(url='', **kwargs):
    return zoo_cfg(FAMILY, url=url, first_conv='stem.conv1.conv', classifier='head.fc', **kwargs)


_TIMM_RELEASE = 'https://github.com/rwightman/pytorch-image-models/releases/download'

default_cfgs = generate_default_cfgs({
    'se_resnet50.caffe_in1k': _cfg(url=f'{_TIMM_RELEASE}/v0.1-cadene/se_resnet50-ce0d4300.pth'),
    'se_resnet101.caffe_in1k': _cfg(url=f'{_TIMM_RELEASE}/v0.1-cadene/se_resnet101-7e38fcc6.pth'),
    'se_resnet152.caffe_in1k': _cfg(url=f'{_TIMM_RELEASE}/v0.1-cadene/se_resnet152-d17c99b7.pth'),
    'se_resnext50_32x4d.caffe_in1k': _cfg(
        url=f'{_TIMM_RELEASE}/v0.1-weights/legacy_se_resnext50_32x4d-f3651bad.pth'),
    'se_resnext101_32x4d.caffe_in1k': _cfg(
        url=f'{_TIMM_RELEASE}/v0.1-weights/legacy_se_resnext101_32x4d-37725eac.pth'),
    'senet_154.caffe_in1k': _cfg(url=f'{_TIMM_RELEASE}/v0.1-weights/legacy_senet154-e9eb9fe6.pth'),
})


@register_zoo_model(params=28_088_024, gmacs=3.88, top1=77.63, gmacs_source='official prototxt (fvcore)',
                    timm_twin='legacy_seresnet50')
def se_resnet50(pretrained=False, **kwargs) -> SENet:
    """SE-ResNet-50."""
    model_args = dict(depths=(3, 4, 6, 3), stride_in_1x1=True)
    return _create_senet('se_resnet50', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=49_326_872, gmacs=7.61, top1=78.25, gmacs_source='official prototxt (fvcore)',
                    timm_twin='legacy_seresnet101')
def se_resnet101(pretrained=False, **kwargs) -> SENet:
    """SE-ResNet-101."""
    model_args = dict(depths=(3, 4, 23, 3), stride_in_1x1=True)
    return _create_senet('se_resnet101', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=66_821_848, gmacs=11.33, top1=78.66, gmacs_source='official prototxt (fvcore)',
                    timm_twin='legacy_seresnet152')
def se_resnet152(pretrained=False, **kwargs) -> SENet:
    """SE-ResNet-152."""
    model_args = dict(depths=(3, 8, 36, 3), stride_in_1x1=True)
    return _create_senet('se_resnet152', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=27_559_896, gmacs=4.25, top1=79.03, gmacs_source='SKNet paper Table 2 ("SENet-50")',
                    timm_twin='legacy_seresnext50_32x4d')
def se_resnext50_32x4d(pretrained=False, **kwargs) -> SENet:
    """SE-ResNeXt-50 (32x4d)."""
    model_args = dict(depths=(3, 4, 6, 3), groups=32, base_width=4)
    return _create_senet('se_resnext50_32x4d', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=48_955_416, gmacs=8.00, top1=80.19, gmacs_source='SKNet paper Table 2 ("SENet-101")',
                    timm_twin='legacy_seresnext101_32x4d')
def se_resnext101_32x4d(pretrained=False, **kwargs) -> SENet:
    """SE-ResNeXt-101 (32x4d)."""
    model_args = dict(depths=(3, 4, 23, 3), groups=32, base_width=4)
    return _create_senet('se_resnext101_32x4d', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=115_088_984, gmacs=20.77, top1=81.32, gmacs_source='official prototxt (fvcore)',
                    timm_twin='legacy_senet154')
def senet_154(pretrained=False, **kwargs) -> SENet:
    """SENet-154: SE-ResNeXt-152 (64x4d) with a deep stem, 3x3 projection shortcuts and dropout 0.2."""
    model_args = dict(
        depths=(3, 8, 36, 3), groups=64, base_width=4, reduce_first=2, deep_stem=True, shortcut_kernel_size=3,
        drop_rate=0.2)
    return _create_senet('senet_154', pretrained, **dict(model_args, **kwargs))
