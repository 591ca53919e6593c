"""RapidNet: a mobile backbone built on multi-level dilated convolutions.

Paper: "RapidNet: Multi-Level Dilated Convolution Based Mobile Backbone", Mustafa Munir, Md Mostafijur Rahman,
Radu Marculescu (WACV 2025, pp. 8291-8301), https://arxiv.org/abs/2412.10995.
Official code: https://github.com/mmunir127/RapidNet-Official (commit 74c70715, ``models/rapidnet.py``).

The network (official ``RapidNet``): a stem of two 3x3/2 conv + BN + GELU layers (stride 4), then four stages (strides
4, 8, 16, 32); stages 2-4 open with a 3x3/2 conv + BN (no activation). Each stage holds ``depths[i][0]`` inverted
residual blocks (1x1 expand x4 + BN + GELU, 3x3 depth-wise + BN + GELU, 1x1 project + BN, layer scale) followed by
``depths[i][1]`` MLDC blocks. An MLDC block is ``x + ls1 * MLDC(x)`` then ``x + ls2 * FFN(x)``:

- MLDC: RepCPE (``x + dwconv7x7(x)``) -> 1x1 conv + BN -> the multi-level dilated convolution (two parallel dense
  3x3 convs with dilation 2 and 3, each followed by its own BN and GELU, summed) -> 1x1 conv + BN;
- FFN: 7x7 depth-wise conv (no bias) + BN -> 1x1 expand x4 + BN + GELU -> 1x1 project + BN.

Every conv except the FFN's depth-wise one has a bias, every norm is a BatchNorm (eps 1e-5) and every GELU is the
exact (erf) form. The head (MobileViG style) pools first: global average pool -> 1x1 conv to ``head_hidden_size`` +
BN + GELU -> dropout -> the classifier, plus a distillation classifier on the same embedding (DeiT-style hard
distillation from a RegNetY-16GF teacher in the official recipe).

Distillation head (``distilled=True``, as every official model is built): in eval mode the output is the average of
both classifiers, as in the official code. In training mode the output is what timm's distilled models
(``timm.models.deit.VisionTransformerDistilled``) return: the average too, unless ``set_distilled_training(True)``,
after which it is the tuple ``(logits, dist_logits)`` (the official code always returns the tuple in training).
``forward_head(x, pre_logits=True)`` returns the shared ``head_hidden_size`` embedding; ``get_classifier()`` returns
both classifiers and ``reset_classifier`` / ``num_classes`` resize both. ``distilled=False`` builds one classifier.

Re-parameterisation for deployment: :meth:`RapidNet.reparameterize` (also reached by timm's
``reparameterize_model``, which calls each block's ``reparameterize``) folds the RepCPE identity into its 7x7 kernel
(the official ``reparameterize_model``), every BatchNorm into the conv before it and every layer scale into the last
conv of its branch: the same logits within float rounding and a faster model (nothing but convs, GELUs and adds).

Differences from the official code (none changes a number):

- parameter names follow this package's layout (``stages.i.blocks.j``, ``head.fc`` / ``head.fc_dist`` as
  ``nn.Linear``, layer scales as vectors); ``checkpoint_filter_fn`` converts the official training layout and the
  official re-parameterised one (``cpe.reparam_conv``), and folds or duplicates the distillation classifier when a
  checkpoint and the model differ in it (both exact in eval);
- the constructors honour their arguments (the official ``RapidNet_Ti/S/M/B`` ignore every kwarg: 1000 classes,
  distillation on, drop path 0.1). ``drop_path_rate`` defaults to 0 as in timm (the recipes in ``configs/rapidnet``
  set the official 0.1) and follows the official schedule: ``linspace(0, rate, all blocks)`` indexed by a counter
  that only MLDC blocks advance (so the deepest block gets about 0.02 at rate 0.1);
- the full BN / layer-scale folding goes beyond the official re-parameterisation, which only folds the RepCPE.

Input sizes: every ``H, W >= 1`` (as in the official code: each stride-2 3x3 conv maps a side ``n`` to
``ceil(n / 2)``, every other layer keeps it, and nothing depends on the input size).

Weights: the official ImageNet-1k checkpoints are on the Hugging Face Hub (``SLDGroup/RapidNet``,
``RapidNet_{Ti,S,M,B}.pth``; by their sizes and the Hub's pickle scan ``{'state_dict', 'state_dict_ema'}`` in the
official layout, tensors only); ``pretrained=True`` downloads them through timm's hub loading
(``torch.load(weights_only=True)``) and ``checkpoint_filter_fn`` converts them, reading ``state_dict`` as the
official evaluation does (timm's ``file=`` loading picks ``state_dict_ema`` before the filter sees it). The license
of the official code and weights could not be determined (``license='unknown'``).
"""
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import GELU, DropPath, LayerScale2d
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import CheckpointMismatchError, convert_state_dict, unwrap_state_dict
from .._features import StageFeatureMixin, feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..layers.conv import ConvNormAct
from ..layers.fuse import scale_conv_
from ..layers.head import DistilledConvHead
from ..layers.helpers import refuse_img_size
from ..layers.init import init_weights_
from ..layers.pos_conv import RepCPE
from ..layers.stage import Stage, StageStride
from ..optimize import mark_deploy_form
from ._rapidnet_layout import to_model_layout

__all__ = ['RapidNet']

FAMILY = register_family(Family(
    name='rapidnet',
    bibtex="""
@inproceedings{munir2025rapidnet,
  title={RapidNet: Multi-Level Dilated Convolution Based Mobile Backbone},
  author={Munir, Mustafa and Rahman, Md Mostafijur and Marculescu, Radu},
  booktitle={Proceedings of the IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  pages={8291--8301},
  year={2025}
}""",
    arxiv='2412.10995',
    repo='mmunir127/RapidNet-Official',
    license='unknown',
    module=__name__,
    checkpoint_key='state_dict',  # beside 'state_dict_ema': what the official evaluation reads
    oracle='official models/rapidnet.py RapidNet (with and without the distillation head, odd input sizes), '
           'fixtures in tests/fixtures/rapidnet',
    weights='official ImageNet-1k weights (distilled from RegNetY-16GF) on the Hugging Face Hub, SLDGroup/RapidNet '
            '(official layout, converted on load by checkpoint_filter_fn)',
))


def conv_bn(
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        act: bool = False,
        device=None,
        dtype=None,
) -> ConvNormAct:
    """``conv`` (with bias by default: every official conv has one but the FFN's depth-wise one) -> ``bn`` (BatchNorm)
    -> optional GELU ("same" padding at stride 1, 1 for the stride-2 3x3 convs); its ``fuse`` folds the BN for
    deployment."""
    return ConvNormAct(
        in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, groups=groups, bias=bias,
        norm_layer=nn.BatchNorm2d, act_layer=GELU if act else None, device=device, dtype=dtype)


def _fold_layer_scale(conv_bn: ConvNormAct, layer_scale: nn.Module) -> nn.Module:
    """Fold ``layer_scale`` (applied right after ``conv_bn``, whose BN must be folded) into its conv; returns what
    replaces the layer scale (``Identity``)."""
    if isinstance(layer_scale, LayerScale2d):
        scale_conv_(conv_bn.conv, layer_scale.gamma)
    return nn.Identity()


class InvertedResidual(nn.Module):
    """``x + drop_path(ls1(conv_pwl(conv_dw(conv_pw(x)))))``: 1x1 expand + BN + GELU, 3x3 depth-wise + BN + GELU,
    1x1 project + BN (official ``InvertedResidual``; the depth-wise kernel is fixed at 3 by its padding of 1).

    Args:
        dim: width.
        mlp_ratio: expansion of the hidden width.
        ls_init_value: initial layer scale.
        drop_path: stochastic-depth rate.
        dilation: of the depth-wise conv (1; more in a stage that dilates instead of striding).
    """

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            ls_init_value: float = 1e-5,
            drop_path: float = 0.,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(dim * mlp_ratio)
        self.conv_pw = conv_bn(dim, hidden, 1, act=True, **dd)
        self.conv_dw = conv_bn(hidden, hidden, 3, dilation=dilation, groups=hidden, act=True, **dd)
        self.conv_pwl = conv_bn(hidden, dim, 1, **dd)
        self.ls1 = LayerScale2d(dim, ls_init_value, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path1(self.ls1(self.conv_pwl(self.conv_dw(self.conv_pw(x)))))

    @torch.no_grad()
    def reparameterize(self):
        for m in (self.conv_pw, self.conv_dw, self.conv_pwl):
            m.fuse()
        self.ls1 = _fold_layer_scale(self.conv_pwl, self.ls1)


class MultiLevelDilatedConv(nn.Module):
    """The paper's multi-level dilated convolution: parallel dense 3x3 conv + BN + GELU branches, one per dilation,
    applied to the same input and summed (official ``DilatedConv``: dilations 2 and 3).

    Args:
        dim: width (in = out).
        dilations: one branch per entry.
    """

    def __init__(self, dim: int, dilations: Sequence[int] = (2, 3), device=None, dtype=None):
        super().__init__()
        self.branches = nn.ModuleList([
            conv_bn(dim, dim, 3, dilation=d, act=True, device=device, dtype=dtype) for d in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, branch in enumerate(self.branches):
            y = branch(x)
            out = y if i == 0 else out + y
        return out


class MLDC(nn.Module):
    """Token mixer of an MLDC block: ``fc2(dilated(fc1(cpe(x))))`` (official ``MLDC``).

    Args:
        dim: width.
        dilations: of the multi-level dilated convolution's branches.
        cpe_kernel: RepCPE kernel.
        dilation: multiplies every spatial conv's dilation (in a stage that dilates instead of striding).
    """

    def __init__(
            self, dim: int, dilations: Sequence[int] = (2, 3), cpe_kernel: int = 7, dilation: int = 1, device=None,
            dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cpe = RepCPE(dim, cpe_kernel, dilation, **dd)
        self.fc1 = conv_bn(dim, dim, 1, **dd)
        self.dilated = MultiLevelDilatedConv(dim, [d * dilation for d in dilations], **dd)
        self.fc2 = conv_bn(dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dilated(self.fc1(self.cpe(x))))


class ConvFFN(nn.Module):
    """Large-kernel FFN: 7x7 depth-wise conv (no bias) + BN, 1x1 expand + BN + GELU, 1x1 project + BN (official
    ``ConvFFN``; no activation between the depth-wise conv and the expansion).

    Args:
        dim: width.
        mlp_ratio: expansion of the hidden width.
        kernel_size: of the depth-wise conv.
        dilation: of the depth-wise conv.
    """

    def __init__(
            self, dim: int, mlp_ratio: float = 4., kernel_size: int = 7, dilation: int = 1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(dim * mlp_ratio)
        self.conv_dw = conv_bn(dim, dim, kernel_size, dilation=dilation, groups=dim, bias=False, **dd)
        self.fc1 = conv_bn(dim, hidden, 1, act=True, **dd)
        self.fc2 = conv_bn(hidden, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(self.conv_dw(x)))


class MLDCBlock(nn.Module):
    """``x + drop_path(ls1(mixer(x)))`` then ``x + drop_path(ls2(ffn(x)))`` (official ``MLDC_LKFFN``).

    Args:
        dim: width.
        mlp_ratio: FFN expansion.
        dilations: of the multi-level dilated convolution.
        ls_init_value: initial layer scales.
        drop_path: stochastic-depth rate of both branches.
        dilation: multiplies every spatial conv's dilation (in a stage that dilates instead of striding).
    """

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            dilations: Sequence[int] = (2, 3),
            ls_init_value: float = 1e-5,
            drop_path: float = 0.,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.mixer = MLDC(dim, dilations, dilation=dilation, **dd)
        self.ls1 = LayerScale2d(dim, ls_init_value, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.ffn = ConvFFN(dim, mlp_ratio, dilation=dilation, **dd)
        self.ls2 = LayerScale2d(dim, ls_init_value, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.mixer(x)))
        x = x + self.drop_path2(self.ls2(self.ffn(x)))
        return x

    @torch.no_grad()
    def reparameterize(self):
        self.mixer.cpe.reparameterize()
        for m in self.modules():
            if isinstance(m, ConvNormAct):
                m.fuse()
        self.ls1 = _fold_layer_scale(self.mixer.fc2, self.ls1)
        self.ls2 = _fold_layer_scale(self.ffn.fc2, self.ls2)


def official_drop_path_rates(drop_path_rate: float, depths: Sequence[Tuple[int, int]]) -> List[List[float]]:
    """Per-stage stochastic-depth rates of the official code: ``linspace(0, rate, all blocks)``, read at a counter
    that advances after every MLDC block only (every inverted residual block takes the current value)."""
    total = sum(n_ir + n_mldc for n_ir, n_mldc in depths)
    dpr = [drop_path_rate * i / (total - 1) for i in range(total)] if total > 1 else [0.] * total
    rates, k = [], 0
    for n_ir, n_mldc in depths:
        stage = [dpr[k]] * n_ir if n_ir else []
        for _ in range(n_mldc):
            stage.append(dpr[k])
            k += 1
        rates.append(stage)
    return rates


class RapidNet(StageFeatureMixin, nn.Module):
    """RapidNet-Ti/S/M/B.

    Args:
        depths: per stage, ``(inverted residual blocks, MLDC blocks)`` (official ``blocks``).
        widths: width per stage (official ``channels``).
        head_hidden_size: width of the head's embedding (official ``emb_dims``).
        mlp_ratio: expansion of the inverted residual blocks and of the FFNs.
        dilations: of the multi-level dilated convolutions.
        ls_init_value: initial layer scales.
        distilled: build the distillation classifier (official ``distillation``; every released model has it).
        output_stride: total stride of the last stage (32; 16 or 8 dilate the last stages instead of striding).
        img_size: refused (nothing depends on the input size).
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning.
    """

    def __init__(
            self,
            depths: Sequence[Tuple[int, int]] = ((2, 0), (2, 0), (6, 2), (2, 2)),
            widths: Sequence[int] = (32, 64, 112, 224),
            head_hidden_size: int = 512,
            mlp_ratio: float = 4.,
            dilations: Sequence[int] = (2, 3),
            ls_init_value: float = 1e-5,
            distilled: bool = True,
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
        depths = [tuple(d) for d in depths]
        widths = list(widths)
        if len(depths) != len(widths):
            raise ValueError(f'depths ({len(depths)} stages) and widths ({len(widths)}) must have the same length')
        self.init_model('RapidNet', in_chans, num_classes, drop_rate)  # any H, W >= 1 (stride-2 convs round up)
        refuse_img_size(img_size, self._model_name, 'every H, W >= 1 runs')

        self.stem = nn.Sequential(OrderedDict(
            conv1=conv_bn(in_chans, widths[0] // 2, 3, stride=2, act=True, **dd),
            conv2=conv_bn(widths[0] // 2, widths[0], 3, stride=2, act=True, **dd),
        ))
        dprs = official_drop_path_rates(drop_path_rate, depths)

        def make_stage(i: int, in_chs: int, dim: int, s: StageStride) -> Stage:
            n_ir, n_mldc = depths[i]
            downsample = conv_bn(in_chs, dim, 3, stride=s.stride, dilation=s.first_dilation, **dd) if i > 0 else None
            blocks = [InvertedResidual(dim, mlp_ratio, ls_init_value, dprs[i][j], s.dilation, **dd)
                      for j in range(n_ir)]
            blocks += [MLDCBlock(dim, mlp_ratio, dilations, ls_init_value, dprs[i][n_ir + j], s.dilation, **dd)
                       for j in range(n_mldc)]
            return Stage(blocks, downsample)

        # feature levels: the four stages; the stem's two stride-2 convs act as one stride-4 patch embedding (as in
        # timm's RepViT / FastViT, whose stems are alike), so no stem level
        self.build_stages(make_stage, widths, [1] + [2] * (len(widths) - 1), output_stride, 4)
        self.build_head(head=DistilledConvHead(
            self.num_features, head_hidden_size, num_classes, pool_type=global_pool, drop_rate=drop_rate,
            distilled=distilled, **dd))
        # official init: every conv (and here the linear classifiers, official 1x1 convs) Kaiming-normal (fan-in,
        # gain sqrt(2)) with zero bias; BN and layer scales keep their defaults
        init_weights_(self, (nn.Conv2d, nn.Linear), nn.init.kaiming_normal_)

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        return (self.head.fc, self.head.fc_dist) if self.head.distilled else self.head.fc

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True):
        """In training mode, return ``(logits, dist_logits)`` instead of their average (timm's DeiT API)."""
        self.head.distilled_training = enable

    @torch.no_grad()
    def reparameterize(self):
        """Fold for inference, in place: each RepCPE identity into its kernel, each BatchNorm into the conv before
        it and each layer scale into the last conv of its branch. Same logits within float rounding; the state
        dict layout changes (no ``bn`` / ``ls`` entries, ``cpe.reparam_conv``). Load weights before calling it;
        the result is a deploy form (:func:`~backbones.optimize.mark_deploy_form`): ``.train()`` warns (training it
        would train without BatchNorm) and ``backbones.hub.save_for_hf`` refuses it (save before folding)."""
        for m in list(self.modules()):  # parents before children; every fold is a no-op once done
            if isinstance(m, ConvNormAct):
                m.fuse()
            elif m is not self and hasattr(m, 'reparameterize'):
                m.reparameterize()
        return mark_deploy_form(self, 'RapidNet.reparameterize')  # .train() warns; save_for_hf refuses it


# ---------------------------------------------------------------------------------------------- checkpoints

def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout or the official one: training (``cpe.pe``) or re-parameterised (``cpe.reparam_conv``),
    a bare state dict or the released ``{'state_dict', 'state_dict_ema'}`` (``state_dict`` is used, as the official
    evaluation does), with or without the distillation classifier.

    A model that has been through :meth:`RapidNet.reparameterize` takes only its own (folded) layout: load the
    weights first, then re-parameterise.
    """
    sd = to_model_layout(unwrap_state_dict(state_dict, prefer=FAMILY.checkpoint_key), model)
    try:
        return convert_state_dict(sd, model, [], FAMILY.name, first_conv='stem.conv1.conv')
    except CheckpointMismatchError as e:
        if isinstance(getattr(model.stem.conv1, 'bn', None), nn.Identity):
            raise CheckpointMismatchError(
                f'{e}\n  (this model was re-parameterised, which folds its BatchNorms and layer scales: load the '
                f'weights into a fresh model, then call reparameterize())') from None
        raise


def _create_rapidnet(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        RapidNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(filename: str, **kwargs):
    return zoo_cfg(
        FAMILY,
        hf_hub_id='SLDGroup/RapidNet',
        hf_hub_filename=filename,
        first_conv='stem.conv1.conv',
        classifier=('head.fc', 'head.fc_dist'),
        crop_pct=0.9,
        interpolation='bicubic',
        notes=('official weights: the model with the distillation head (eval output = the average of both '
               'classifiers); the license of the official code and weights could not be determined', ),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    'rapidnet_ti.dist_in1k': _cfg('RapidNet_Ti.pth'),
    'rapidnet_s.dist_in1k': _cfg('RapidNet_S.pth'),
    'rapidnet_m.dist_in1k': _cfg('RapidNet_M.pth'),
    'rapidnet_b.dist_in1k': _cfg('RapidNet_B.pth'),
})

_GMACS = ('official models/rapidnet.py measured with fvcore at 224 (convolutions incl. both classifiers; the '
          'paper table could not be read); our count adds BatchNorm ({})')


@register_zoo_model(params=6_627_840, gmacs=0.618, top1=76.3, gmacs_source=_GMACS.format('+0.010'))
def rapidnet_ti(pretrained=False, **kwargs) -> RapidNet:
    """RapidNet-Ti."""
    model_args = dict(depths=((2, 0), (2, 0), (6, 2), (2, 2)), widths=(32, 64, 112, 224), head_hidden_size=512)
    return _create_rapidnet('rapidnet_ti', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=9_213_088, gmacs=0.897, gmacs_source=_GMACS.format('+0.015'))
def rapidnet_s(pretrained=False, **kwargs) -> RapidNet:
    """RapidNet-S."""
    model_args = dict(depths=((3, 0), (3, 0), (9, 3), (3, 3)), widths=(32, 64, 112, 224), head_hidden_size=512)
    return _create_rapidnet('rapidnet_s', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=17_304_496, gmacs=1.597, gmacs_source=_GMACS.format('+0.018'))
def rapidnet_m(pretrained=False, **kwargs) -> RapidNet:
    """RapidNet-M."""
    model_args = dict(depths=((3, 0), (3, 0), (9, 3), (3, 3)), widths=(32, 64, 160, 320), head_hidden_size=512)
    return _create_rapidnet('rapidnet_m', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=30_556_496, gmacs=3.354, gmacs_source=_GMACS.format('+0.030'))
def rapidnet_b(pretrained=False, **kwargs) -> RapidNet:
    """RapidNet-B."""
    model_args = dict(depths=((3, 0), (3, 0), (9, 3), (3, 3)), widths=(64, 128, 224, 416), head_hidden_size=768)
    return _create_rapidnet('rapidnet_b', pretrained, **dict(model_args, **kwargs))
