"""Res2Net: A New Multi-scale Backbone Architecture.

Paper: "Res2Net: A New Multi-scale Backbone Architecture", Shang-Hua Gao, Ming-Ming Cheng, Kai Zhao, Xin-Yu Zhang,
Ming-Hsuan Yang, Philip Torr (TPAMI 2021), https://arxiv.org/abs/1904.01169. Official code and weights (PyTorch):
https://github.com/Res2Net/Res2Net-PretrainedModels.

A ResNet-50/101 (PyTorch style: 7x7 stem, max-pool, stride on the 3x3) whose 3x3 conv is replaced by the
hierarchical split of :class:`backbones.layers.Res2Split` (width ``w`` per chunk, ``s`` chunks); Res2NeXt groups the
3x3s; the v1b nets add the deep 32-32-64 stem and average-pool shortcuts (timm's ``res2net50d`` / ``res2net101d``).
Same topology and numerics as the official code; the official weights (re-hosted by timm) load through
``checkpoint_filter_fn``. The DLA-60 based variants of the official repo are not included.
"""
from functools import partial

from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict
from .._features import feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..layers import Bottleneck, ConvStem, Res2Split, resnext_width
from ._resnet import ResNetSkeleton

__all__ = ['Res2Net']

FAMILY = register_family(Family(
    name='res2net',
    bibtex="""
@article{gao2021res2net,
  title={Res2Net: A New Multi-scale Backbone Architecture},
  author={Gao, Shang-Hua and Cheng, Ming-Ming and Zhao, Kai and Zhang, Xin-Yu and Yang, Ming-Hsuan and Torr, Philip},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume={43},
  number={2},
  pages={652--662},
  year={2021}
}""",
    arxiv='1904.01169',
    repo='Res2Net/Res2Net-PretrainedModels',
    license='cc-by-nc-sa-4.0',
    module=__name__,
    oracle='timm res2net50_26w_4s ... res2net101d (same topology and weights as the official code)',
    weights='official weights (non-commercial, CC BY-NC-SA 4.0), re-hosted by timm on the HF hub',
))


def _res2_bottleneck(in_chs, out_chs, stride, first, drop_path, base_width, scale, cardinality, avg_down,
                     dilation=1, first_dilation=None, device=None, dtype=None):
    """Res2Net bottleneck: ``scale`` chunks of ``floor(planes * base_width / 64) * cardinality`` channels."""
    width = resnext_width(out_chs, base_width, cardinality)
    return Bottleneck(
        in_chs, out_chs,
        mid_chs=width * scale,
        mixer_fn=partial(Res2Split, scale=scale, groups=cardinality),
        stride=stride,
        first=first,
        dilation=dilation,
        first_dilation=first_dilation,
        avg_down=avg_down,
        drop_path=drop_path,
        device=device, dtype=dtype,
    )


class Res2Net(ResNetSkeleton):
    """Res2Net / Res2NeXt / Res2Net-v1b.

    Args:
        depths: bottlenecks per stage.
        base_width: chunk width ``w`` of the first stage (per group; scaled with the stage width).
        scale: chunks per block ``s``.
        cardinality: groups of each 3x3 (1 = Res2Net, 8 = Res2NeXt).
        deep_stem: three 3x3 convs (32, 32, 64) instead of one 7x7 (v1b).
        avg_down: average-pool then 1x1 projection shortcuts (v1b).
    """

    def __init__(
            self,
            depths=(3, 4, 6, 3),
            base_width: int = 26,
            scale: int = 4,
            cardinality: int = 1,
            deep_stem: bool = False,
            avg_down: bool = False,
            in_chans: int = 3,
            device=None,
            dtype=None,
            **kwargs,
    ):
        dd = dict(device=device, dtype=dtype)
        if deep_stem:
            stem = ConvStem(in_chans, (32, 32, 64), kernel_size=3, channels_last=True, **dd)
        else:
            stem = ConvStem(in_chans, 64, kernel_size=7, channels_last=True, **dd)
        block_fn = partial(
            _res2_bottleneck, base_width=base_width, scale=scale, cardinality=cardinality, avg_down=avg_down)
        super().__init__(stem, block_fn, depths, in_chans=in_chans, **dd, **kwargs)
        self.deep_stem = deep_stem
        self.avg_down = avg_down


# official / timm layout (identical names) -> ours. The stem and the shortcut differ between v1 and v1b.
_STEM_RULES = [
    (r'^conv1\.weight$', 'stem.conv1.conv.weight'),
    (r'^bn1\.', 'stem.conv1.bn.'),
]
_DEEP_STEM_RULES = [
    (r'^conv1\.(\d)\.', lambda m: {
        '0': 'stem.conv1.conv.', '1': 'stem.conv1.bn.', '3': 'stem.conv2.conv.', '4': 'stem.conv2.bn.',
        '6': 'stem.conv3.conv.'}.get(m[1], m[0])),
    (r'^bn1\.', 'stem.conv3.bn.'),
]
_BLOCK_RULES = [
    (r'^layer(\d)\.(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
    (r'\.conv([13])\.weight$', r'.conv\1.conv.weight'),
    (r'\.bn([13])\.', r'.conv\1.bn.'),
    (r'\.convs\.(\d+)\.weight$', r'.conv2.convs.\1.conv.weight'),
    (r'\.bns\.(\d+)\.', r'.conv2.convs.\1.bn.'),
    (r'^fc\.', 'head.fc.'),
]
_SHORTCUT_RULES = [
    (r'\.downsample\.0\.', '.downsample.conv.'),
    (r'\.downsample\.1\.', '.downsample.bn.'),
]
_AVG_SHORTCUT_RULES = [  # downsample.0 is the (parameter-free) pool
    (r'\.downsample\.1\.', '.downsample.conv.'),
    (r'\.downsample\.2\.', '.downsample.bn.'),
]


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout, or the official / timm layout (the same key names) of the matching v1 or v1b net."""
    rules = (
        (_DEEP_STEM_RULES if model.deep_stem else _STEM_RULES)
        + _BLOCK_RULES
        + (_AVG_SHORTCUT_RULES if model.avg_down else _SHORTCUT_RULES)
    )
    return convert_state_dict(state_dict, model, rules, FAMILY.name, first_conv='stem.conv1.conv')


def _create_res2net(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        Res2Net, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


def _cfg(hf_hub_id='', **kwargs):
    return zoo_cfg(FAMILY, hf_hub_id=hf_hub_id, first_conv='stem.conv1.conv', classifier='head.fc', **kwargs)


default_cfgs = generate_default_cfgs({
    'res2net50.in1k': _cfg(hf_hub_id='timm/res2net50_26w_4s.in1k'),
    'res2net50_w48s2.in1k': _cfg(hf_hub_id='timm/res2net50_48w_2s.in1k'),
    'res2net50_w14s8.in1k': _cfg(hf_hub_id='timm/res2net50_14w_8s.in1k'),
    'res2net50_w26s6.in1k': _cfg(hf_hub_id='timm/res2net50_26w_6s.in1k'),
    'res2net50_w26s8.in1k': _cfg(hf_hub_id='timm/res2net50_26w_8s.in1k'),
    'res2net101.in1k': _cfg(hf_hub_id='timm/res2net101_26w_4s.in1k'),
    'res2next50_4s.in1k': _cfg(hf_hub_id='timm/res2next50.in1k'),
    'res2net50_v1b.in1k': _cfg(hf_hub_id='timm/res2net50d.in1k'),
    'res2net101_v1b.in1k': _cfg(hf_hub_id='timm/res2net101d.in1k'),
})

_README = 'official README "MACCs"'


@register_zoo_model(params=25_699_120, gmacs=4.2, top1=77.99, gmacs_source=_README,
                    notes='fvcore counts 4.28 GMACs; the README writes 4.2', timm_twin='res2net50_26w_4s')
def res2net50(pretrained=False, **kwargs) -> Res2Net:
    """Res2Net-50 (26w-4s)."""
    model_args = dict(depths=(3, 4, 6, 3), base_width=26, scale=4)
    return _create_res2net('res2net50', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=25_287_304, gmacs=4.2, top1=77.32, gmacs_source=_README, timm_twin='res2net50_48w_2s')
def res2net50_w48s2(pretrained=False, **kwargs) -> Res2Net:
    """Res2Net-50-48w-2s."""
    model_args = dict(depths=(3, 4, 6, 3), base_width=48, scale=2)
    return _create_res2net('res2net50_w48s2', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=25_059_816, gmacs=4.2, top1=78.14, gmacs_source=_README, timm_twin='res2net50_14w_8s')
def res2net50_w14s8(pretrained=False, **kwargs) -> Res2Net:
    """Res2Net-50-14w-8s."""
    model_args = dict(depths=(3, 4, 6, 3), base_width=14, scale=8)
    return _create_res2net('res2net50_w14s8', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=37_051_448, gmacs=6.3, top1=78.58, gmacs_source=_README, timm_twin='res2net50_26w_6s')
def res2net50_w26s6(pretrained=False, **kwargs) -> Res2Net:
    """Res2Net-50-26w-6s."""
    model_args = dict(depths=(3, 4, 6, 3), base_width=26, scale=6)
    return _create_res2net('res2net50_w26s6', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=48_403_776, gmacs=8.3, top1=79.20, gmacs_source=_README, timm_twin='res2net50_26w_8s')
def res2net50_w26s8(pretrained=False, **kwargs) -> Res2Net:
    """Res2Net-50-26w-8s."""
    model_args = dict(depths=(3, 4, 6, 3), base_width=26, scale=8)
    return _create_res2net('res2net50_w26s8', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=45_206_688, gmacs=8.1, top1=79.19, gmacs_source=_README, timm_twin='res2net101_26w_4s')
def res2net101(pretrained=False, **kwargs) -> Res2Net:
    """Res2Net-101 (26w-4s)."""
    model_args = dict(depths=(3, 4, 23, 3), base_width=26, scale=4)
    return _create_res2net('res2net101', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=24_671_464, gmacs=4.2, top1=78.24, gmacs_source=_README, timm_twin='res2next50')
def res2next50_4s(pretrained=False, **kwargs) -> Res2Net:
    """Res2NeXt-50: base width 4, cardinality 8, scale 4."""
    model_args = dict(depths=(3, 4, 6, 3), base_width=4, scale=4, cardinality=8)
    return _create_res2net('res2next50_4s', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=25_718_352, gmacs=4.5, top1=80.27, gmacs_source=_README, timm_twin='res2net50d')
def res2net50_v1b(pretrained=False, **kwargs) -> Res2Net:
    """Res2Net-v1b-50 (26w-4s): deep stem and average-pool shortcuts."""
    model_args = dict(depths=(3, 4, 6, 3), base_width=26, scale=4, deep_stem=True, avg_down=True)
    return _create_res2net('res2net50_v1b', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=45_225_920, gmacs=8.3, top1=81.23, gmacs_source=_README, timm_twin='res2net101d')
def res2net101_v1b(pretrained=False, **kwargs) -> Res2Net:
    """Res2Net-v1b-101 (26w-4s): deep stem and average-pool shortcuts."""
    model_args = dict(depths=(3, 4, 23, 3), base_width=26, scale=4, deep_stem=True, avg_down=True)
    return _create_res2net('res2net101_v1b', pretrained, **dict(model_args, **kwargs))
