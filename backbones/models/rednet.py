"""RedNet: ResNet with involutions in place of the 3x3 convolutions.

Paper: "Involution: Inverting the Inherence of Convolution for Visual Recognition", Duo Li, Jie Hu, Changhu Wang,
Xiangtai Li, Qi She, Lei Zhu, Tong Zhang, Qifeng Chen (CVPR 2021), https://arxiv.org/abs/2103.06255.
Official code: https://github.com/d-li14/involution (mmclassification 0.x, commit 21c3158f), MIT license.

Same topology as the official classification code: a stem ``conv3x3/2 -> involution 3x3 -> BN -> ReLU -> conv3x3 ->
max-pool``, then ResNet bottlenecks whose middle layer is a 7x7 involution (carrying the block stride) + BN + ReLU,
plain strided 1x1 projection shortcuts, global average pooling and a linear classifier. The involution
(``backbones.layers.Involution``) computes the official operator's sum tap by tap instead of through an unfolded
copy of the input (same numbers, ~K*K less memory).

Input sizes: the official stride-2 involutions need even feature maps, so each side must satisfy
``ceil(side / 4) % 8 == 0`` (sides ``32k-3 .. 32k``: every multiple of 32, also e.g. 221-224). Other sizes, which
the official code cannot run, raise a ``ValueError`` naming the nearest valid ones.

Weights: the official ImageNet-1k checkpoints are SharePoint links (in each ``pretrained_cfg['notes']``) that programs
cannot fetch (d-li14/involution issues #54, #62). ``pretrained=True`` loads PaddleClas's re-host instead
(``RedNet<depth>_pretrained.pdparams``, PaddlePaddle/PaddleClas ``ppcls/arch/backbone/model_zoo/rednet.py``; PaddleClas
reports top-1 within 0.05 of the official README): downloaded once, read without PaddlePaddle
(:mod:`backbones.formats.pdparams`), converted and cached as safetensors (:mod:`backbones.weights`).
``checkpoint_filter_fn`` converts both the PaddleClas layout (no ``backbone.`` prefix, BN ``_mean`` / ``_variance``,
``fc.weight`` stored ``[in, out]``) and the official mmcls one (``{'meta', 'state_dict'}``, ``backbone.`` /
``head.fc.`` prefixes), so a hand-downloaded official file loads too::

    timm.create_model('rednet50', pretrained=True, pretrained_cfg_overlay=dict(file='rednet50-....pth'))
"""
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch.fx.node import has_side_effect

from .._checkpoint import CheckpointMismatchError, convert_state_dict, unwrap_state_dict
from .._features import feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..formats import to_torch
from ..layers import Bottleneck, ConvNormAct, Involution, check_input
from ._resnet import ResNetSkeleton

__all__ = ['RedNet']

FAMILY = register_family(Family(
    name='involution',
    bibtex="""
@inproceedings{li2021involution,
  title={Involution: Inverting the Inherence of Convolution for Visual Recognition},
  author={Li, Duo and Hu, Jie and Wang, Changhu and Li, Xiangtai and She, Qi and Zhu, Lei and
          Zhang, Tong and Chen, Qifeng},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={12321--12330},
  year={2021}
}""",
    arxiv='2103.06255',
    repo='d-li14/involution',
    license='mit',
    module=__name__,
    oracle='official mmcls RedNet with the naive (unfold) involution, fixtures in tests/fixtures/involution',
    weights='PaddleClas re-host of the ImageNet-1k weights (PaddlePaddle .pdparams, converted on first load); the '
            'official mmcls checkpoints (SharePoint) load by hand',
))


class InvolutionNormAct(nn.Module):
    """``inv`` (involution, carries the stride) -> ``bn`` -> ``act``: RedNet's spatial mixer, in the stem and in
    every bottleneck."""

    def __init__(self, chs: int, kernel_size: int, stride: int = 1, group_channels: int = 16, dilation: int = 1,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.inv = Involution(chs, kernel_size, stride, group_channels=group_channels, dilation=dilation, **dd)
        self.bn = nn.BatchNorm2d(chs, **dd)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.inv(x)))


class RedNetStem(nn.Module):
    """``conv1`` (3x3/2) -> ``conv2`` (involution + BN + ReLU) -> ``conv3`` (3x3); the official stem's 3x3/2 max-pool
    follows as the first stage's downsample (:class:`~backbones.models._resnet.ResNetSkeleton`).

    Attributes:
        out_chs: ``stem_chs``.
        reduction: total stride (2).
    """

    def __init__(
            self, in_chs: int, stem_chs: int = 64, kernel_size: int = 3, group_channels: int = 16,
            device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        mid = stem_chs // 2
        self.conv1 = ConvNormAct(in_chs, mid, 3, stride=2, **dd)
        self.conv2 = InvolutionNormAct(mid, kernel_size, group_channels=group_channels, **dd)
        self.conv3 = ConvNormAct(mid, stem_chs, 3, **dd)
        self.out_chs = stem_chs
        self.reduction = 2

    def forward(self, x):
        return self.conv3(self.conv2(self.conv1(x)))


def _involution_mixer(
        in_chs, out_chs, stride, first, kernel_size, group_channels, dilation=1, device=None, dtype=None):
    assert in_chs == out_chs, 'an involution keeps the width'
    return InvolutionNormAct(
        in_chs, kernel_size, stride, group_channels=group_channels, dilation=dilation, device=device, dtype=dtype)


def _involution_bottleneck(
        in_chs, out_chs, stride, first, drop_path, kernel_size, group_channels, dilation=1, first_dilation=None,
        device=None, dtype=None):
    """Bottleneck with expansion 4 whose middle layer is the involution (stride on it, as in ``style='pytorch'``)."""
    return Bottleneck(
        in_chs, out_chs,
        mid_chs=out_chs // 4,
        mixer_fn=partial(_involution_mixer, kernel_size=kernel_size, group_channels=group_channels),
        stride=stride,
        first=first,
        dilation=dilation,
        first_dilation=first_dilation,
        drop_path=drop_path,
        device=device, dtype=dtype,
    )


@has_side_effect  # kept by FX dead-code elimination
@register_notrace_function
def check_rednet_input(
        x: torch.Tensor,
        in_chans: int,
        input_divisor: int,
        stem_stride: int,
        divisor: int,
        model: str = 'RedNet',
        weight: Optional[torch.Tensor] = None,
):
    """``check_input``, then a ``ValueError`` unless ``ceil(H / stem_stride)`` and ``ceil(W / stem_stride)`` are
    multiples of ``divisor``, the condition for the stride-2 involutions to see even feature maps (official RedNet: 4
    and 8; the smallest such side is ``stem_stride * (divisor - 1) + 1``)."""
    h, w = check_input(x, in_chans, input_divisor, model, stem_stride * (divisor - 1) + 1, weight)
    if (h + stem_stride - 1) // stem_stride % divisor != 0 or (w + stem_stride - 1) // stem_stride % divisor != 0:
        q = stem_stride * divisor
        raise ValueError(
            f'{model} needs ceil(H/{stem_stride}) and ceil(W/{stem_stride}) to be multiples of {divisor}, because its '
            f'stride-2 involutions need even feature maps (the official code fails otherwise): valid sides are '
            f'{q}k-{stem_stride - 1} .. {q}k, e.g. 224; got {h}x{w}, nearest valid: '
            f'{_nearest_valid(h, q, stem_stride)} x {_nearest_valid(w, q, stem_stride)}')


# a leaf for every FX tracer, not only timm's: timm's autowrap list only patches the globals of module ``forward``s,
# and this function is called from ``RedNet._check_input``
torch.fx.wrap('check_rednet_input')


def _nearest_valid(n: int, q: int, r: int) -> str:
    """The valid sides (``q*k - r + 1 .. q*k``) just below and above ``n``, or ``n`` when it is valid."""
    below = n // q * q
    if n == below or n > below + q - r:
        return str(n)
    above = below + q - r + 1
    return f'{below} or {above}' if below > 0 else str(above)


class RedNet(ResNetSkeleton):
    """RedNet-26/38/50/101/152.

    Args:
        depths: bottlenecks per stage.
        stem_chs: stem output width (official ``stem_channels``; the stem's involution runs at half of it).
        kernel_size: involution kernel of the bottlenecks (7).
        stem_kernel_size: involution kernel of the stem (3).
        group_channels: channels sharing one generated kernel (16).
        in_chans, zero_init_last, **kwargs: see :class:`ResNetSkeleton` (``widths`` = stage output widths,
            official ``base_channels * 4 * 2**i``). ``zero_init_last=True`` is the official init.
    """

    def __init__(
            self,
            depths=(3, 4, 6, 3),
            stem_chs: int = 64,
            kernel_size: int = 7,
            stem_kernel_size: int = 3,
            group_channels: int = 16,
            in_chans: int = 3,
            zero_init_last: bool = True,
            device=None,
            dtype=None,
            **kwargs,
    ):
        dd = dict(device=device, dtype=dtype)
        stem = RedNetStem(in_chans, stem_chs, stem_kernel_size, group_channels, **dd)
        block_fn = partial(_involution_bottleneck, kernel_size=kernel_size, group_channels=group_channels)
        super().__init__(stem, block_fn, depths, in_chans=in_chans, zero_init_last=zero_init_last, **dd, **kwargs)
        self.stem_stride = self.feature_info[1]['reduction']  # the stem and its max-pool
        # the stride-2 involutions (the stages that do not dilate instead, see output_stride)
        self.stage_stride = self.feature_info[-1]['reduction'] // self.stem_stride

    def _check_input(self, x: torch.Tensor):
        check_rednet_input(
            x, self.in_chans, self.input_divisor, self.stem_stride, self.stage_stride, self._model_name,
            self._input_weight())


# official mmcls layout -> ours
_MMCLS_RULES = [
    (r'^backbone\.', ''),
    (r'^stem\.0\.', 'stem.conv1.'),
    (r'^stem\.1\.', 'stem.conv2.inv.'),
    (r'^stem\.2\.', 'stem.conv2.bn.'),
    (r'^stem\.4\.', 'stem.conv3.'),
    (r'^layer(\d)\.(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
    (r'\.conv2\.conv([12])\.', r'.conv2.inv.conv\1.'),
    (r'\.inv\.conv2\.conv\.', '.inv.conv2.'),
    (r'\.conv([13])\.weight$', r'.conv\1.conv.weight'),
    (r'\.bn(\d)\.', r'.conv\1.bn.'),
    (r'\.downsample\.0\.', '.downsample.conv.'),
    (r'\.downsample\.1\.', '.downsample.bn.'),
]


# PaddleClas layout (PaddlePaddle/PaddleClas ppcls/arch/backbone/model_zoo/rednet.py, a paddle.vision ResNet with the
# official module tree): mmcls's names without 'backbone.', 'fc.' for the classifier, BN statistics '_mean' /
# '_variance'
_PADDLE_RULES = [
    (r'\._mean$', '.running_mean'),
    (r'\._variance$', '.running_var'),
    (r'^fc\.', 'head.fc.'),
]


def _from_paddle(sd):
    """PaddleClas -> mmcls-like names; the classifier weight from paddle's ``[in, out]`` to ``[out, in]``."""
    w = sd.get('fc.weight')
    if w is not None and (not hasattr(w, 'ndim') or w.ndim != 2):
        raise CheckpointMismatchError(f'PaddleClas checkpoint: fc.weight is not a 2-D Linear weight ({w!r:.60})')
    return {k: (v.t() if k == 'fc.weight' else v) for k, v in sd.items()}


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout, the official mmcls one (``{'meta', 'state_dict'}``, ``backbone.`` / ``head.fc.``) or
    PaddleClas's (``paddle.save``-d numpy arrays, BN ``_mean`` / ``_variance``, ``fc`` as ``[in, out]``)."""
    state_dict = unwrap_state_dict(to_torch(state_dict))
    if any(k.endswith(('._mean', '._variance')) for k in state_dict):
        state_dict = _from_paddle(state_dict)
        return convert_state_dict(state_dict, model, _PADDLE_RULES + _MMCLS_RULES, f'{FAMILY.name} (PaddleClas)',
                                  first_conv='stem.conv1.conv')
    return convert_state_dict(state_dict, model, _MMCLS_RULES, FAMILY.name, first_conv='stem.conv1.conv')


def _create_rednet(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        RedNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


_PADDLECLAS = 'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph'
_SP = 'https://hkustconnect-my.sharepoint.com/:u:/g/personal/dlibh_connect_ust_hk'


def _cfg(depth: int, official: str, **kwargs):
    """PaddleClas's re-host (a PaddlePaddle ``.pdparams``: ``custom_load``, converted on first load) as the download;
    the official SharePoint file, which programs cannot fetch, in the notes."""
    notes = (
        f'weights: PaddleClas\'s re-host RedNet{depth}_pretrained.pdparams (PaddlePaddle/PaddleClas '
        f'ppcls/arch/backbone/model_zoo/rednet.py), read without PaddlePaddle and converted on first load',
        f'official weights (mmcls layout, manual download; load with pretrained_cfg_overlay=dict(file=...)): '
        f'{_SP}/{official}',
    )
    return zoo_cfg(FAMILY, url=f'{_PADDLECLAS}/RedNet{depth}_pretrained.pdparams', custom_load=True,
                   first_conv='stem.conv1.conv', classifier='head.fc', notes=notes, **kwargs)


default_cfgs = generate_default_cfgs({
    'rednet26.in1k': _cfg(26, 'EWmTnvB1cqtIi-OI4HfxGBgBKzO0w_qc3CnErHhNfBitlg?e=XPws5X'),
    'rednet38.in1k': _cfg(38, 'ETZIquU7P3lDvru0OAPiTYIBAt-B__2LpP_NeB4sR0hJsg?e=b9Rbl0'),
    'rednet50.in1k': _cfg(50, 'EZjRG3qUMu5IuR7YH4Giyc8B6koPvu6s8rOlIG8-BuFevg?e=f4ce5G'),
    'rednet101.in1k': _cfg(101, 'EXAuVXdXz1xAg5eG-dkvwTUBkds2IOK1kglHtkMeGz5z_A?e=vHvh5y'),
    'rednet152.in1k': _cfg(152, 'ERxcS4wXUCtPl4uUnPoT9vcByzhLA0eHgDE-fw_EESfP0w?e=x0dZWB'),
})


@register_zoo_model(params=9_233_166, gmacs=1.73, top1=75.96, gmacs_source='official README (paper: 1.7)')
def rednet26(pretrained=False, **kwargs) -> RedNet:
    """RedNet-26."""
    model_args = dict(depths=(1, 2, 4, 1))
    return _create_rednet('rednet26', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=12_386_986, gmacs=2.22, top1=77.48, gmacs_source='official README (paper: 2.2)')
def rednet38(pretrained=False, **kwargs) -> RedNet:
    """RedNet-38."""
    model_args = dict(depths=(2, 3, 5, 2))
    return _create_rednet('rednet38', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=15_540_806, gmacs=2.71, top1=78.35, gmacs_source='official README (paper: 2.7)')
def rednet50(pretrained=False, **kwargs) -> RedNet:
    """RedNet-50."""
    model_args = dict(depths=(3, 4, 6, 3))
    return _create_rednet('rednet50', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=25_652_950, gmacs=4.74, top1=78.92, gmacs_source='official README (paper: 4.7)')
def rednet101(pretrained=False, **kwargs) -> RedNet:
    """RedNet-101."""
    model_args = dict(depths=(3, 4, 23, 3))
    return _create_rednet('rednet101', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=33_984_582, gmacs=6.79, top1=79.12, gmacs_source='official README (paper: 6.8)')
def rednet152(pretrained=False, **kwargs) -> RedNet:
    """RedNet-152."""
    model_args = dict(depths=(3, 8, 36, 3))
    return _create_rednet('rednet152', pretrained, **dict(model_args, **kwargs))
