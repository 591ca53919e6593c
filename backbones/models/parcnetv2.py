"""ParCNetV2: oversized depth-wise kernels (twice the feature map) with bifurcate gate units.

Paper: "ParCNetV2: Oversized Kernel with Enhanced Attention", Ruihan Xu, Haokui Zhang, Wenze Hu, Shiliang Zhang,
Xiaoyu Wang (ICCV 2023), https://arxiv.org/abs/2211.07157. Official code: https://github.com/XuRuihan/ParCNetV2
(commit b9d8524, ``models/parcnetv2.py``), on timm.

The network (official ``ParCNetV2``): a 7x7/4 conv stem (padding 2) with a post-norm, four stages (strides 4, 8,
16, 32) opened (stages 2-4) by a pre-norm 3x3/2 conv, and pre-norm residual blocks ``x = r1 * x + mixer(n1(x))``,
``x = r2 * x + mlp(n2(x))`` (``r1``, ``r2``: learned per-channel scales of the shortcut, stages 3-4 only):

- the token mixer (the paper's uniform local-global convolution with a spatial bifurcate gate): a 1x1 conv to
  ``2C``; the second half goes through GELU and then, in parallel, the oversized separable depth-wise conv
  (:class:`~backbones.layers.oversize_conv.OversizeConv2d`, kernels 111 / 55 / 27 / 13 = ``2n - 1`` for the 224-input
  maps ``n`` = 56 / 28 / 14 / 7) and a 7x7 depth-wise conv, summed; it gates the first half (product); a 1x1 conv
  back to ``C``;
- the channel MLP is a bifurcate gate unit: ``fc1`` to ``5C``, first half times GELU(second half), ``fc2`` back
  (timm's ``GluMlp``);
- every norm inside the network is the official ``LayerNormGeneral``: the channel vector minus its mean, divided by
  its L2 norm (clamped at ``eps`` = 1e-6), times a weight, no bias; the head is ``mean over H, W -> LayerNorm (eps
  1e-6) -> Linear``.

Input sizes: as in the official code every side >= 3 works (the stem gives ``floor((side - 3) / 4) + 1``, each
downsampling ``ceil(n / 2)``); smaller inputs raise a ``ValueError``. The oversized kernels keep their trained length
at every size, exactly as the official models do: on smaller maps only their central ``2n - 1`` taps touch data,
on larger maps the receptive field is no longer global. The paper's rule "kernel = 2x the feature size" is an
explicit option, off by default: ``resize_kernels=True`` with ``img_size`` builds kernels of ``2n - 1`` for that
size (an official checkpoint's kernels are then resized once on load), and ``set_input_size(img_size)`` resizes the
learned kernels of a built model once; both resize as the official (unused) ``interpolate`` mode of
``OversizeConv2d`` does per forward (linear, ``align_corners=True``).

Differences from the official code (numbers unchanged, <= 1e-5): the maps stay NCHW (channels-last in memory when
run eagerly) where the official blocks permute to NHWC, so the gated MLP's two linears are 1x1 convs (the official
``[out, in]`` weights gain two unit axes in ``checkpoint_filter_fn``); the oversized convs run as convolutions under
inference and as Toeplitz matmuls when autograd records them (several times faster on CPU; see
``backbones.layers.oversize_conv``); parameter names follow the zoo's stem / stages / head layout. The official
det/seg backbone's extra per-stage output norms are not part of the classification model.

Weights: none released (the official README lists none; an issue asking for them is open), so the cfgs carry no
download location; an official-layout checkpoint trained with the official code converts with
``checkpoint_filter_fn`` / ``tools/convert.py``.
"""
import re
from functools import partial
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, GluMlp, LayerScale2d, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import check_state_dict, rename_keys, unwrap_state_dict
from .._features import StageFeatureMixin, feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from .._timm import update_model_input_size
from ..layers.conv import PointwiseConv2d, same_padding
from ..layers.downsample import PreNormDownsample
from ..layers.helpers import check_img_size
from ..layers.init import init_weights_
from ..layers.oversize_conv import OversizeConv2d, resize_kernel_1d
from ..layers.stage import Stage, StageStride, drop_path_schedule
from ..layers.tracing import eager_channels_last

__all__ = ['ParCNetV2']

FAMILY = register_family(Family(
    name='parcnetv2',
    bibtex="""
@inproceedings{xu2023parcnetv2,
  title={ParCNetV2: Oversized Kernel with Enhanced Attention},
  author={Xu, Ruihan and Zhang, Haokui and Hu, Wenze and Zhang, Shiliang and Wang, Xiaoyu},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2023}
}""",
    arxiv='2211.07157',
    repo='XuRuihan/ParCNetV2',
    license='unknown',
    module=__name__,
    oracle='official models/parcnetv2.py (commit b9d8524) run on CPU: fixtures in tests/fixtures/parcnetv2 (kernels '
           '2n-1 and kernels longer than the map)',
    weights='none released',
))

EPS = 1e-6  # every norm of the official classification model


class LayerNormGeneral(nn.Module):
    """The official ``LayerNormGeneral`` as ParCNetV2 configures it, over the channels of an NCHW map::

        c = x - mean_C(x);   y = c / max(||c||_2, eps) * weight        (no bias)

    an L2 normalisation of the centred channel vector (a standard LayerNorm divided by sqrt(C), with ``eps``
    clamping the norm instead of being added to the variance). The official layer acts on the last axis of NHWC
    maps; these maps are NCHW views of channels-last memory, so the channel axis is contiguous all the same.

    Args:
        dim: channels ``C`` (the affine weight has shape ``[C]``).
        eps: lower bound of the norm (1e-6 everywhere in the official model).
        bias: add a learned bias (the official layer's option; False everywhere in ParCNetV2).
    """

    def __init__(self, dim: int, eps: float = EPS, bias: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **dd))
        self.bias = nn.Parameter(torch.zeros(dim, **dd)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x - x.mean(1, keepdim=True), dim=1, eps=self.eps) * self.weight[:, None, None]
        if self.bias is not None:
            x = x + self.bias[:, None, None]
        return x


class Stem(nn.Module):
    """``conv`` 7x7 stride 4 (padding 2, bias) -> ``norm`` (LayerNormGeneral). Run eagerly, the map is made
    channels-last in memory here and every later layer keeps it so (the depth-wise convs are far faster so on
    CPU)."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_chs, out_chs, 7, stride=4, padding=2, **dd)
        self.norm = LayerNormGeneral(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(eager_channels_last(self.conv(x)))


class ParCV2Mixer(nn.Module):
    """The uniform local-global token mixer with a spatial bifurcate gate (official ``ParC_V2``)::

        a, g = split(pwconv1(x))                 # 1x1 conv C -> 2C (bias), halves in channel order
        g = GELU(g);  g = dwconv1(g) + dwconv2(g)   # oversized separable dw conv + 7x7 dw conv, no biases
        out = pwconv2(a * g)                     # 1x1 conv C -> C, no bias

    Args:
        dim: channels ``C``.
        kernel_size: oversized kernel length ``K`` (or ``(K_h, K_w)``).
        local_kernel_size: the parallel depth-wise conv (7).
        dilation: of both depth-wise convs (in a stage that dilates instead of striding).
    """

    def __init__(
            self, dim: int, kernel_size: Union[int, Tuple[int, int]], local_kernel_size: int = 7, dilation: int = 1,
            device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.pwconv1 = PointwiseConv2d(dim, 2 * dim, **dd)
        self.act = nn.GELU()
        self.dwconv1 = OversizeConv2d(dim, kernel_size, dilation, **dd)
        self.dwconv2 = nn.Conv2d(
            dim, dim, local_kernel_size, padding=same_padding(local_kernel_size, dilation), dilation=dilation,
            groups=dim, bias=False, **dd)
        self.pwconv2 = PointwiseConv2d(dim, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.pwconv1(x).chunk(2, dim=1)
        g = self.act(g)
        return self.pwconv2(a * (self.dwconv1(g) + self.dwconv2(g)))


class ParCNetV2Block(nn.Module):
    """``x = res_scale1(x) + drop_path(token_mixer(norm1(x)))``; ``x = res_scale2(x) + drop_path(mlp(norm2(x)))``.

    Args:
        dim: channels.
        kernel_size: oversized kernel length of the token mixer.
        mlp_ratio: hidden width of the gated MLP / ``dim`` (5; the gate halves it). The MLP (official ``BGU``:
            ``fc2(u * GELU(v))``, ``u, v`` the halves of ``fc1(x)``) is timm's ``GluMlp`` with 1x1 convs.
        res_scale: learned per-channel scale of both shortcuts (official stages 3-4, init 1).
        drop_path: stochastic depth of both branches.
        dilation: of the token mixer's depth-wise convs.
    """

    def __init__(
            self,
            dim: int,
            kernel_size: Union[int, Tuple[int, int]],
            mlp_ratio: float = 5.,
            res_scale: bool = False,
            drop_path: float = 0.,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = LayerNormGeneral(dim, **dd)
        self.token_mixer = ParCV2Mixer(dim, kernel_size, dilation=dilation, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.res_scale1 = LayerScale2d(dim, init_values=1., **dd) if res_scale else nn.Identity()
        self.norm2 = LayerNormGeneral(dim, **dd)
        self.mlp = GluMlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU, bias=(True, False), use_conv=True, **dd)
        hidden = self.mlp.fc1.out_channels
        self.mlp.fc1 = PointwiseConv2d(dim, hidden, bias=True, **dd)  # the same 1x1 convs, as matmuls when eager
        self.mlp.fc2 = PointwiseConv2d(hidden // 2, dim, bias=False, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.res_scale2 = LayerScale2d(dim, init_values=1., **dd) if res_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.drop_path1(self.token_mixer(self.norm1(x)))
        x = self.res_scale2(x) + self.drop_path2(self.mlp(self.norm2(x)))
        return x


def feature_sizes(img_size: Union[int, Tuple[int, int]], num_stages: int = 4) -> Tuple[Tuple[int, int], ...]:
    """Stage map sizes for an input: the stem gives ``(side - 3) // 4 + 1``, each downsampling ``ceil(n / 2)``."""
    size = tuple((s - 3) // 4 + 1 for s in to_2tuple(img_size))
    sizes = [size]
    for _ in range(num_stages - 1):
        size = tuple((s + 1) // 2 for s in size)
        sizes.append(size)
    return tuple(sizes)


class ParCNetV2(StageFeatureMixin, nn.Module):
    """ParCNetV2-XT/T/S/B.

    Args:
        depths: blocks per stage.
        dims: stage widths.
        global_kernel_sizes: oversized kernel length per stage (official 111 / 55 / 27 / 13, i.e. ``2n - 1`` for
            the 224-input maps); ignored when ``resize_kernels`` is set.
        mlp_ratio: gated-MLP hidden width / stage width (5).
        res_scale_stages: stages whose blocks scale their shortcuts (official: the last two).
        img_size: nominal input size; sets the kernels only with ``resize_kernels``.
        resize_kernels: the paper's rule as an option (default off = the official models): oversized kernels of
            ``2n - 1`` per axis for the maps of ``img_size`` (default 224), instead of ``global_kernel_sizes``.
        output_stride: total stride of the last stage (32; 16 or 8 dilate the last stages instead of striding: the
            oversized kernels too, so they still span the whole map).
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning (stochastic depth rises
            linearly over all blocks, as in the official code).
    """

    def __init__(
            self,
            depths: Sequence[int] = (3, 3, 12, 3),
            dims: Sequence[int] = (64, 128, 320, 512),
            global_kernel_sizes: Sequence[int] = (111, 55, 27, 13),
            mlp_ratio: float = 5.,
            res_scale_stages: Sequence[int] = (2, 3),
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            resize_kernels: bool = False,
            output_stride: Optional[int] = None,
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
        assert len(depths) == len(dims) == len(global_kernel_sizes), \
            'depths, dims and global_kernel_sizes: one per stage'
        self.init_model('ParCNetV2', in_chans, num_classes, drop_rate)
        self.min_input_size = 3  # any side >= 3, the official code's limit (the 7x7 stride-4 stem pads by 2)
        self.img_size = check_img_size(img_size, 'ParCNetV2', self.min_input_size) if img_size is not None else None
        self.resize_kernels = resize_kernels
        if resize_kernels:
            kernel_sizes = self._kernel_sizes(self.img_size or (224, 224), len(depths))
        else:
            kernel_sizes = [(k, k) for k in global_kernel_sizes]

        self.stem = Stem(in_chans, dims[0], **dd)
        dprs = drop_path_schedule(drop_path_rate, depths)

        def make_stage(i: int, in_chs: int, dim: int, s: StageStride) -> Stage:
            blocks = [ParCNetV2Block(
                dim, kernel_sizes[i], mlp_ratio=mlp_ratio, res_scale=i in res_scale_stages, drop_path=dprs[i][j],
                dilation=s.dilation, **dd,
            ) for j in range(depths[i])]
            downsample = None
            if i > 0:  # LayerNormGeneral, then a 3x3/2 conv (padding 1, bias)
                downsample = PreNormDownsample(
                    in_chs, dim, 3, s.stride, padding=1, dilation=s.first_dilation, norm_layer=LayerNormGeneral, **dd)
            return Stage(blocks, downsample)

        # feature levels: the four stages (the stem is a 7x7/4 patch embedding)
        self.build_stages(make_stage, dims, [1] + [2] * (len(depths) - 1), output_stride, 4)
        # the final norm follows the pooling, in the head
        self.build_head(num_classes, global_pool, drop_rate, head_norm_layer=partial(nn.LayerNorm, eps=EPS), **dd)
        init_weights_(self, (nn.Conv2d, nn.Linear))  # official: trunc-normal(0.02) kernels, zero biases

    @staticmethod
    def _kernel_sizes(img_size: Tuple[int, int], num_stages: int):
        """The paper's rule: ``2n - 1`` along each axis of each stage's map."""
        return [(2 * h - 1, 2 * w - 1) for h, w in feature_sizes(img_size, num_stages)]

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None):
        """Resize the learned oversized kernels once to the paper's ``2n - 1`` for the maps of ``img_size`` (per
        axis; linear, ``align_corners=True``, as the official ``OversizeConv2d`` resize mode), and remember the
        size (``resize_kernels=True``, ``img_size``) so that a saved model rebuilds with these kernels. Every input
        size keeps working; only the kernels change."""
        if img_size is not None:  # checked before any kernel is resized (a 1-pixel map would need a -1 kernel)
            self.img_size = check_img_size(img_size, 'ParCNetV2', self.min_input_size)
        self.resize_kernels = True
        kernel_sizes = self._kernel_sizes(self.img_size or (224, 224), len(self.stages))
        for stage, k in zip(self.stages, kernel_sizes):
            for block in stage.blocks:
                block.token_mixer.dwconv1.resize_(k)
        update_model_input_size(self, self.img_size, resize_kernels=True)


# official layout -> ours
_OFFICIAL_RULES = [
    (r'^downsample_layers\.0\.conv\.', 'stem.conv.'),
    (r'^downsample_layers\.0\.post_norm\.', 'stem.norm.'),
    (r'^downsample_layers\.(\d+)\.pre_norm\.', r'stages.\1.downsample.norm.'),
    (r'^downsample_layers\.(\d+)\.conv\.', r'stages.\1.downsample.conv.'),
    (r'^stages\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
    (r'\.res_scale([12])\.scale$', r'.res_scale\1.gamma'),
    (r'^norm\.', 'head.norm.'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
]
_OFFICIAL_LINEAR = re.compile(r'\.mlp\.fc[12]\.weight$')  # official nn.Linear -> our 1x1 conv


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout or the official one (``downsample_layers`` / ``stages.<i>.<j>`` / ``norm`` / ``head``,
    possibly inside timm's ``{'state_dict': ...}`` training checkpoint). Oversized kernels of another length are
    resized (as :meth:`ParCNetV2.set_input_size` does) only into a model built with ``resize_kernels=True``;
    otherwise a length mismatch is an error."""
    sd = unwrap_state_dict(state_dict)
    ours = model.state_dict()
    sd = rename_keys(sd, _OFFICIAL_RULES, keep=ours.keys())
    sd = {k: v[:, :, None, None] if v.ndim == 2 and _OFFICIAL_LINEAR.search(k) else v for k, v in sd.items()}
    if getattr(model, 'resize_kernels', False):
        for k, v in sd.items():
            if '.dwconv1.conv_' in k and k in ours and v.ndim == 4 and v.shape != ours[k].shape:
                target = ours[k].shape
                sd[k] = resize_kernel_1d(v, target[2] if k.endswith('conv_h.weight') else target[3])
    check_state_dict(sd, model, what=f'{FAMILY.name} checkpoint', ignore_shapes=('stem.conv.',))
    return sd


def _create_parcnetv2(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        ParCNetV2, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(**kwargs):
    # the official models register no pretrained cfg, so the official evaluation used timm's defaults: ImageNet
    # mean / std, crop_pct 0.875, bicubic
    return zoo_cfg(
        FAMILY, first_conv='stem.conv', classifier='head.fc', interpolation='bicubic',
        notes=('no official weights released (XuRuihan/ParCNetV2 README lists none; issue #3 asks for them)',),
        **kwargs)


default_cfgs = generate_default_cfgs({
    'parcnetv2_xt.untrained': _cfg(),
    'parcnetv2_tiny.untrained': _cfg(),
    'parcnetv2_small.untrained': _cfg(),
    'parcnetv2_base.untrained': _cfg(),
})

_SRC = ("fvcore on the official models/parcnetv2.py at 224 (the README's Macs(G) {} rounds it); the oversized "
        "kernels count in full, K MACs per output as the official counter does, not only the taps that touch data")


@register_zoo_model(params=7_427_720, gmacs=1.553, top1=79.4, gmacs_source=_SRC.format(1.6))
def parcnetv2_xt(pretrained=False, **kwargs) -> ParCNetV2:
    """ParCNetV2-XT."""
    model_args = dict(depths=(3, 3, 9, 2), dims=(48, 96, 192, 320))
    return _create_parcnetv2('parcnetv2_xt', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=24_935_144, gmacs=4.269, top1=83.5, gmacs_source=_SRC.format(4.3))
def parcnetv2_tiny(pretrained=False, **kwargs) -> ParCNetV2:
    """ParCNetV2-T."""
    model_args = dict(depths=(3, 3, 12, 3), dims=(64, 128, 320, 512))
    return _create_parcnetv2('parcnetv2_tiny', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=39_436_520, gmacs=7.781, top1=84.3, gmacs_source=_SRC.format(7.8))
def parcnetv2_small(pretrained=False, **kwargs) -> ParCNetV2:
    """ParCNetV2-S."""
    model_args = dict(depths=(3, 9, 24, 3), dims=(64, 128, 320, 512))
    return _create_parcnetv2('parcnetv2_small', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=56_368_360, gmacs=12.492, top1=84.6, gmacs_source=_SRC.format(12.5))
def parcnetv2_base(pretrained=False, **kwargs) -> ParCNetV2:
    """ParCNetV2-B."""
    model_args = dict(depths=(3, 9, 24, 3), dims=(96, 192, 384, 576))
    return _create_parcnetv2('parcnetv2_base', pretrained, **dict(model_args, **kwargs))
