"""MOAT: mobile convolution (MBConv) and attention alternating inside one block.

Paper: "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models", Chenglin Yang, Siyuan Qiao,
Qihang Yu, Xiaoding Yuan, Yukun Zhu, Alan Yuille, Hartwig Adam, Liang-Chieh Chen (ICLR 2023),
https://arxiv.org/abs/2210.01820.
Official code: TensorFlow / Keras, https://github.com/google-research/deeplab2 (commit 64bc1c1a),
``model/pixel_encoder/moat.py``, ``model/layers/moat_blocks.py``, ``model/layers/moat_attention.py``; Apache-2.0.

Network: a two-conv stem (3x3/2 -> BN -> GELU -> 3x3, no norm after the last conv), two stages of pre-norm MBConv
blocks (with SE) and two stages of MOAT blocks, each a pre-norm MBConv without SE followed by
``x + Attn(LN(x))`` (no MLP), then mean pooling -> LayerNorm -> Linear. Everything is as in the official code:
TensorFlow "SAME" padding (asymmetric at stride 2), BN eps 1e-3, exact GELU, SE with SiLU, an average-pool shortcut
that excludes the padding (``backbones.layers.mbconv``), per-head relative position tables ``[heads, 2P-1, 2P-1]``
indexed by key - query and resized bilinearly to the current window on every forward (``backbones.layers.relpos``),
and the official stochastic-depth schedule ``rate * b / num_blocks``.

What differs from the official code:

* Any input size. The official model fixes its global-attention window (the feature map) when it is built; here a
  global-attention block takes the current feature map as its window and resizes the table to it in each forward
  (identical numbers at the build size). The stride-2 convs and pools give ``ceil(n / 2)`` like TF, so every input
  size works with the released (global-attention) configurations.
* Window attention (``window_sizes``, the official ``window_size``, only used by non-default configurations)
  requires feature maps that divide by the window, exactly as the official reshape does: other sizes raise a
  ``ValueError`` naming the valid input sizes instead of padding (the official code has no padding path, so padded
  numbers would match nothing).
* The position bias is computed from the table parameter at every forward, as in TF1 graph mode (where the released
  checkpoints were trained); the official TF2/Keras model freezes it at build time (see specs, pitfall 5).

Weights: the official ImageNet checkpoints are TF1 checkpoints packed as ``.tar.gz`` (each cfg's ``url``).
``timm.create_model('moat_0', pretrained=True)`` downloads one, reads it without TensorFlow
(:mod:`backbones.formats.tf_bundle`), maps the TF variables onto this model (:mod:`backbones.formats.moat_tf`, every
key and shape checked, BN moving statistics included) and caches the result as safetensors (:mod:`backbones.weights`).
A copy already on disk -- the archive, its unpacked folder or the ``.index`` -- loads the same way through
``pretrained_cfg_overlay=dict(file=...)`` or ``tools/convert.py --checkpoint``; ``checkpoint_filter_fn`` also takes
the variables as a ``{TF name: array}`` dict (e.g. from ``tf.train.load_checkpoint``).
"""
from functools import partial
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, register_notrace_function, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch.fx.node import has_side_effect

from .._checkpoint import CheckpointMismatchError, convert_state_dict, unwrap_state_dict
from .._features import StageFeatureMixin, feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..formats import to_torch
from ..formats.moat_tf import convert_tf_state_dict, is_tf_layout
from ..layers.attention import Attention
from ..layers.helpers import check_input, refuse_img_size
from ..layers.init import init_weights_
from ..layers.mbconv import MBConv
from ..layers.relpos import RelPosBias
from ..layers.stage import Stage, StageStride
from ..layers.stem import SameConvStem
from ..layers.window import window_partition, window_reverse

__all__ = ['MOAT', 'MoatBlock', 'MoatStem', 'checkpoint_filter_fn', 'convert_tf_state_dict']

FAMILY = register_family(Family(
    name='moat',
    bibtex="""
@inproceedings{yang2023moat,
  title={MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models},
  author={Yang, Chenglin and Qiao, Siyuan and Yu, Qihang and Yuan, Xiaoding and Zhu, Yukun and Yuille, Alan and
          Adam, Hartwig and Chen, Liang-Chieh},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2023}
}""",
    arxiv='2210.01820',
    repo='google-research/deeplab2',
    license='apache-2.0',
    module=__name__,
    oracle='official deeplab2 TensorFlow MOAT run in TF1 graph mode, fixtures in tests/fixtures/moat',
    weights='official TF1 checkpoints (.tar.gz), read without TensorFlow and converted on first load',
))

BN_EPS = 1e-3  # Keras BatchNormalization default, used by the official code
LN_EPS = 1e-5  # official ln_epsilon


MoatStem = SameConvStem  # the stem's class, by the name backbones.bench's unfused reference forward looks up


class MoatBlock(nn.Module):
    """``x = mbconv(x)`` (pre-norm MBConv, no SE, carries the stride), then ``x + drop_path(attn(norm(x)))``.

    Args:
        in_chs, out_chs, stride: of the MBConv part.
        head_dim: width per head (heads = ``out_chs // head_dim``).
        window: attention window ``(wh, ww)``; ``None`` = global attention over the current feature map.
        pos_embed_size: P of the ``[heads, 2P-1, 2P-1]`` relative position table; ``None`` = no position bias.
        expand_ratio, pool_size: of the MBConv part.
        drop_path: stochastic depth of both residual branches (independent masks).
        dilation, first_dilation: of the MBConv part (see :class:`~backbones.layers.MBConv`).
    """
    window: Optional[Tuple[int, int]]

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            head_dim: int = 32,
            window: Optional[Tuple[int, int]] = None,
            pos_embed_size: Optional[int] = None,
            expand_ratio: float = 4.,
            pool_size: int = 2,
            drop_path: float = 0.,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.mbconv = MBConv(
            in_chs, out_chs, stride, expand_ratio=expand_ratio, se_ratio=0., act_layer=nn.GELU, norm_eps=BN_EPS,
            pool_size=pool_size, drop_path=drop_path, dilation=dilation, first_dilation=first_dilation, **dd)
        self.window = (int(window[0]), int(window[1])) if window is not None else None
        self.norm = nn.LayerNorm(out_chs, eps=LN_EPS, **dd)
        self.attn = Attention(out_chs, head_dim=head_dim, qkv_bias=True, **dd)
        self.rel_pos = RelPosBias(self.attn.num_heads, (pos_embed_size, pos_embed_size), key_minus_query=True, **dd) \
            if pos_embed_size else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mbconv(x)
        y = self.norm(x.permute(0, 2, 3, 1))  # [B, H, W, C]
        B, H, W, C = y.shape
        window = self.window
        if window is None:  # global attention: the window is the current feature map
            bias = self.rel_pos((H, W)) if self.rel_pos is not None else None
            y = self.attn(y.reshape(B, H * W, C), bias).reshape(B, H, W, C)
        else:  # divisibility was checked on the input (MOAT._check_input)
            bias = self.rel_pos(window) if self.rel_pos is not None else None
            y = window_reverse(self.attn(window_partition(y, window), bias), window, (H, W))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


def moat_drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
    """The official schedule: block ``b`` of ``n`` (0-based, over the whole net) gets ``rate * b / n``, so the last
    block has ``rate * (n - 1) / n`` (timm's linspace would give it ``rate``)."""
    n = sum(depths)
    rates = [drop_path_rate * b / n for b in range(n)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start:start + d])
        start += d
    return out


@has_side_effect  # kept by FX dead-code elimination
@register_notrace_function
def check_moat_input(
        x: torch.Tensor,
        in_chans: int,
        windowed: List[Tuple[int, int, int, int]],
        model: str = 'MOAT',
        weight: Optional[torch.Tensor] = None,
) -> Tuple[int, int]:
    """``check_input`` (any size from 1x1: the strided convs and pools pad), then, for each window-attention stage
    ``(stage, reduction, wh, ww)``, that its feature map ``ceil(side / reduction)`` divides by the window (what the
    official window reshape needs)."""
    h, w = check_input(x, in_chans, 1, model, 1, weight)
    for stage, reduction, wh, ww in windowed:
        fh, fw = -(-h // reduction), -(-w // reduction)
        if fh % wh != 0 or fw % ww != 0:
            raise ValueError(
                f'{model}: stage {stage} uses {wh}x{ww} window attention without padding (as the official code), so '
                f'its feature map ceil(H/{reduction}) x ceil(W/{reduction}) must divide by the window; input {h}x{w} '
                f'gives {fh}x{fw}. Valid inputs include H a multiple of {reduction * wh} and W a multiple of '
                f'{reduction * ww} (nearest larger: {-(-fh // wh) * wh * reduction}x{-(-fw // ww) * ww * reduction}); '
                f'or use global attention (window_sizes=None), which takes any size.')
    return h, w


torch.fx.wrap('check_moat_input')  # a leaf for every FX tracer, not only timm's


class MOAT(StageFeatureMixin, nn.Module):
    """MOAT / tiny-MOAT.

    Args (official ``MOAT`` config names in brackets):
        depths: blocks per stage [``num_blocks``].
        embed_dims: output width of each stage [``hidden_size``].
        stem_widths: width of each stem conv [``stem_size``].
        block_types: ``'mbconv'`` or ``'moat'`` per stage [``block_type``].
        stage_strides: stride of each stage's first block [``stage_stride``].
        head_dim: width per attention head [``head_size``].
        window_sizes: per stage, ``None`` (global attention) or an attention window ``(wh, ww)`` / int
            [``window_size``; the released models use global attention].
        pos_embed_sizes: per stage, P of the relative position table (the table is resized to every window)
            [``position_embedding_size``].
        rel_pos: relative position bias on/off [``relative_position_embedding_type`` '2d_multi_head' / None].
        global_attn_at_stage_end: the last block of each MOAT stage uses global attention
            [``global_attention_at_end_of_moat_stage``].
        expand_ratio: MBConv hidden width over the output width [``expansion_rate``].
        se_ratio: SE width over the output width, MBConv stages only [``se_ratio``].
        pool_size: kernel of the shortcut average pool of downsampling blocks [``pool_size``; 2 for
            classification, the class default; ``get_model`` uses 3].
        output_stride: total stride of the last stage (32; 16 or 8 run the last stages at the stride they reach,
            their depthwise convs dilated, the attention over the larger maps).
        img_size: refused (nothing depends on the input size: global attention takes the current map as its
            window; the official model fixes it at build time).
        num_classes, in_chans, global_pool, drop_rate: timm's usual meaning (the official head has no dropout).
        drop_path_rate: stochastic depth (``1 - survival_prob``), rising as ``rate * b / num_blocks``.
    """
    stem_feature = True  # the stem's stride-2 output is level 0 (as MaxViT's; the official encoder's 'stage1')
    _windowed: List[Tuple[int, int, int, int]]  # (stage, reduction, wh, ww) of every window-attention stage

    def __init__(
            self,
            depths: Sequence[int] = (2, 3, 7, 2),
            embed_dims: Sequence[int] = (96, 192, 384, 768),
            stem_widths: Sequence[int] = (64, 64),
            block_types: Sequence[str] = ('mbconv', 'mbconv', 'moat', 'moat'),
            stage_strides: Sequence[int] = (2, 2, 2, 2),
            head_dim: int = 32,
            window_sizes: Sequence[Optional[Union[int, Tuple[int, int]]]] = (None, None, None, None),
            pos_embed_sizes: Sequence[Optional[int]] = (None, None, 14, 7),
            rel_pos: bool = True,
            global_attn_at_stage_end: bool = False,
            expand_ratio: float = 4.,
            se_ratio: float = 0.25,
            pool_size: int = 2,
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
        num_stages = len(depths)
        for arg, v in (('embed_dims', embed_dims), ('block_types', block_types), ('stage_strides', stage_strides),
                       ('window_sizes', window_sizes), ('pos_embed_sizes', pos_embed_sizes)):
            if len(v) != num_stages:
                raise ValueError(f'MOAT: {arg} has {len(v)} entries, expected one per stage ({num_stages})')
        self.init_model('MOAT', in_chans, num_classes, drop_rate)
        refuse_img_size(img_size, self._model_name, 'global attention takes the current map as its window; window '
                        'attention, where configured, needs maps that divide by the window')

        # conv0 (3x3/2) -> norm0 -> act0 -> conv1 (3x3) ...: BN + GELU between convs, TF "SAME" padding, biases
        self.stem = SameConvStem(in_chans, stem_widths, nn.GELU, BN_EPS, first_index=0, **dd)
        dprs = moat_drop_path_rates(drop_path_rate, depths)
        windowed: List[Tuple[int, int, int, int]] = []

        def make_stage(i: int, in_chs: int, dim: int, s: StageStride) -> Stage:
            window = to_2tuple(window_sizes[i]) if window_sizes[i] is not None else None
            blocks = []
            for j in range(depths[i]):
                in_chs, stride = (in_chs, s.stride) if j == 0 else (dim, 1)
                dilation = dict(dilation=s.dilation, first_dilation=s.first_dilation if j == 0 else s.dilation)
                if block_types[i] == 'mbconv':
                    blocks.append(MBConv(
                        in_chs, dim, stride, expand_ratio=expand_ratio, se_ratio=se_ratio, act_layer=nn.GELU,
                        se_act_layer=nn.SiLU, norm_eps=BN_EPS, pool_size=pool_size, drop_path=dprs[i][j], **dilation,
                        **dd))
                elif block_types[i] == 'moat':
                    last = j == depths[i] - 1
                    block_window = None if global_attn_at_stage_end and last else window
                    if block_window is not None and (i, s.reduction, *block_window) not in windowed:
                        windowed.append((i, s.reduction, *block_window))
                    blocks.append(MoatBlock(
                        in_chs, dim, stride, head_dim=head_dim, window=block_window,
                        pos_embed_size=pos_embed_sizes[i] if rel_pos else None, expand_ratio=expand_ratio,
                        pool_size=pool_size, drop_path=dprs[i][j], **dilation, **dd))
                else:
                    raise ValueError(f"MOAT: unknown block type {block_types[i]!r}, expected 'mbconv' or 'moat'")
            return Stage(blocks)

        self.build_stages(
            make_stage, embed_dims, stage_strides, output_stride, self.stem.reduction, in_chs=self.stem.out_chs)
        self._windowed = windowed
        # the official head normalises the pooled vector, not the map
        self.build_head(num_classes, global_pool, drop_rate, head_norm_layer=partial(nn.LayerNorm, eps=LN_EPS), **dd)
        self.init_weights()

    @torch.jit.ignore
    def init_weights(self):
        """The official init: normal(0, 0.02) (not truncated) for every conv / dense kernel and position table,
        zero biases, BN / LN at identity."""
        init_weights_(self, (nn.Conv2d, nn.Linear), partial(nn.init.normal_, std=0.02), rel_pos_std=0.02)

    def _check_input(self, x: torch.Tensor):
        check_moat_input(x, self.in_chans, self._windowed, self._model_name, self._input_weight())



# ----------------------------------------------------------------------------------------------------------------
# weights

def checkpoint_filter_fn(state_dict, model, use_ema: bool = False):
    """Accepts our layout (passed through) or the official TF layout (``{TF variable name: array}``, numpy arrays
    or tensors, as read with ``tf.train.load_checkpoint``, possibly inside a ``{'state_dict': ...}`` container; see
    :func:`convert_tf_state_dict`), and checks that the result fits ``model`` exactly (BN moving statistics
    included: the official loader skips them, we do not)."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatchError(f'expected a state dict (a mapping), got {type(state_dict).__name__}')
    state_dict = unwrap_state_dict(to_torch(state_dict))
    if is_tf_layout(state_dict):
        state_dict = convert_tf_state_dict(state_dict, model, use_ema=use_ema)
    return convert_state_dict(state_dict, model, [], FAMILY.name, first_conv='stem.conv0')


def _create_moat(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        MOAT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


_CKPT = 'https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint'
_OPT2 = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # (x - 127.5) / 127.5 on 0..255 images (README "option 2")


def _cfg(ckpt: str, size: int, pe: bool = True, **kwargs):
    """The official TF1 checkpoint archive (google-research/deeplab2 g3doc/projects/
    moat_imagenet_pretrained_checkpoints.md) as the download: ``custom_load`` (not a PyTorch file), read without
    TensorFlow and converted on first load by :mod:`backbones.weights`."""
    tarball = f'{_CKPT}/{ckpt}_{"w" if pe else "wo"}_position_embedding.tar.gz'
    notes = (
        'weights: the official TF1 checkpoint (google-research/deeplab2 model zoo), read without TensorFlow and '
        'converted on first load (backbones.formats)',
        'crop_pct / interpolation are not stated by the official README: '
        + ('crop_pct 1.0 (full image, as for fine-tuned high-resolution models)' if size > 256 else
           'crop_pct 0.875 (the usual ImageNet centre crop)') + ' and bicubic are assumptions',
    )
    return zoo_cfg(
        FAMILY, url=tarball, custom_load=True, first_conv='stem.conv0', classifier='head.fc', notes=notes,
        input_size=(3, size, size), pool_size=(size // 32, size // 32), interpolation='bicubic',
        crop_pct=1.0 if size > 256 else 0.875, **kwargs)


default_cfgs = generate_default_cfgs({
    'moat_0.in1k': _cfg('moat0_imagenet_1k_224', 224),
    'moat_1.in1k': _cfg('moat1_imagenet_1k_224', 224),
    'moat_2.in22k_ft_in1k': _cfg('moat2_imagenet_22k_and_1k_384', 384, **_OPT2),
    'moat_3.in22k_ft_in1k': _cfg('moat3_imagenet_22k_and_1k_512', 512, **_OPT2),
    'moat_4.in22k_ft_in1k': _cfg('moat4_imagenet_22k_and_1k_512', 512, **_OPT2),
    'tiny_moat_0.in1k': _cfg('tiny_moat0_imagenet_1k_256', 256),
    'tiny_moat_1.in1k': _cfg('tiny_moat1_imagenet_1k_256', 256),
    'tiny_moat_2.in1k': _cfg('tiny_moat2_imagenet_1k_256', 256),
    'tiny_moat_3.in1k': _cfg('tiny_moat3_imagenet_1k_256', 256),
    'moat_0_no_pe.in1k': _cfg('moat0_imagenet_1k_224', 224, pe=False),
    'moat_1_no_pe.in1k': _cfg('moat1_imagenet_1k_224', 224, pe=False),
    'moat_2_no_pe.in22k_ft_in1k': _cfg('moat2_imagenet_22k_and_1k_384', 384, pe=False, **_OPT2),
    'moat_3_no_pe.in22k_ft_in1k': _cfg('moat3_imagenet_22k_and_1k_512', 512, pe=False, **_OPT2),
    'moat_4_no_pe.in22k_ft_in1k': _cfg('moat4_imagenet_22k_and_1k_512', 512, pe=False, **_OPT2),
    'tiny_moat_0_no_pe.in1k': _cfg('tiny_moat0_imagenet_1k_256', 256, pe=False),
    'tiny_moat_1_no_pe.in1k': _cfg('tiny_moat1_imagenet_1k_256', 256, pe=False),
    'tiny_moat_2_no_pe.in1k': _cfg('tiny_moat2_imagenet_1k_256', 256, pe=False),
    'tiny_moat_3_no_pe.in1k': _cfg('tiny_moat3_imagenet_1k_256', 256, pe=False),
})

_MOAT01 = dict(stem_widths=(64, 64), embed_dims=(96, 192, 384, 768))
_MOAT2 = dict(depths=(2, 6, 14, 2), stem_widths=(128, 128), embed_dims=(128, 256, 512, 1024))
_MOAT3 = dict(depths=(2, 12, 28, 2), stem_widths=(160, 160), embed_dims=(160, 320, 640, 1280))
_MOAT4 = dict(depths=(2, 12, 28, 2), stem_widths=(256, 256), embed_dims=(256, 512, 1024, 2048))


def _tiny(w):
    return dict(depths=(2, 3, 7, 2), stem_widths=(w, w), embed_dims=(w, 2 * w, 4 * w, 8 * w))


_SRC = 'official model-zoo README (MAdds)'
_SRC_PE = 'official model-zoo README, the no-PE row (see notes)'
_PE_NOTE = (
    'The README lists {} GMACs with position embedding. Its PE minus no-PE differences (0 / 0 / 0.5 / 4.9 / 7.9 G for '
    'MOAT-0..4) track the one-hot einsums with which the official code expands the position tables, a weight-only '
    'computation (they are ~1/8 of those einsums\' TF-profiler cost, measured on the official code; our inference). '
    'This implementation gathers the table entries (no MACs), so its network MACs are those of the no-PE row.')
_SRC_TINY0 = ('official code (google-research/deeplab2@64bc1c1), TF-profiler MAdds of tiny-MOAT-0 without PE, batch 1 '
              'at 256')
_TINY0_NOTE = ('The README lists 1.1 GMACs (rounded to 0.1 G); 1.08 is the official code\'s measured MAdds without '
               'PE (with PE the profiler adds the table-expansion einsums: 1.15, see the MOAT-2/3/4 notes).')
_NO_PE = dict(rel_pos=False)


@register_zoo_model(params=27_846_892, gmacs=5.7, top1=83.3, gmacs_source=_SRC)
def moat_0(pretrained=False, **kwargs) -> MOAT:
    """MOAT-0 (ImageNet-1k, 224)."""
    model_args = dict(depths=(2, 3, 7, 2), **_MOAT01)
    return _create_moat('moat_0', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=41_598_448, gmacs=9.1, top1=84.2, gmacs_source=_SRC)
def moat_1(pretrained=False, **kwargs) -> MOAT:
    """MOAT-1 (ImageNet-1k, 224)."""
    model_args = dict(depths=(2, 6, 14, 2), **_MOAT01)
    return _create_moat('moat_1', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=73_422_408, gmacs=53.8, top1=87.5, gmacs_source=_SRC_PE, notes=_PE_NOTE.format(54.3))
def moat_2(pretrained=False, **kwargs) -> MOAT:
    """MOAT-2 (ImageNet-22k -> 1k, 384)."""
    return _create_moat('moat_2', pretrained, **dict(_MOAT2, **kwargs))


@register_zoo_model(params=189_958_040, gmacs=266.1, top1=88.4, gmacs_source=_SRC_PE, notes=_PE_NOTE.format(271.0))
def moat_3(pretrained=False, **kwargs) -> MOAT:
    """MOAT-3 (ImageNet-22k -> 1k, 512)."""
    return _create_moat('moat_3', pretrained, **dict(_MOAT3, **kwargs))


@register_zoo_model(params=483_214_184, gmacs=640.6, top1=89.1, gmacs_source=_SRC_PE, notes=_PE_NOTE.format(648.5))
def moat_4(pretrained=False, **kwargs) -> MOAT:
    """MOAT-4 (ImageNet-22k -> 1k, 512)."""
    return _create_moat('moat_4', pretrained, **dict(_MOAT4, **kwargs))


@register_zoo_model(params=3_355_348, gmacs=1.08, top1=76.6, gmacs_source=_SRC_TINY0, notes=_TINY0_NOTE)
def tiny_moat_0(pretrained=False, **kwargs) -> MOAT:
    """tiny-MOAT-0 (ImageNet-1k, 256)."""
    return _create_moat('tiny_moat_0', pretrained, **dict(_tiny(32), **kwargs))


@register_zoo_model(params=5_122_895, gmacs=1.6, top1=79.2, gmacs_source=_SRC)
def tiny_moat_1(pretrained=False, **kwargs) -> MOAT:
    """tiny-MOAT-1 (ImageNet-1k, 256)."""
    return _create_moat('tiny_moat_1', pretrained, **dict(_tiny(40), **kwargs))


@register_zoo_model(params=9_772_741, gmacs=3.0, top1=81.7, gmacs_source=_SRC)
def tiny_moat_2(pretrained=False, **kwargs) -> MOAT:
    """tiny-MOAT-2 (ImageNet-1k, 256)."""
    return _create_moat('tiny_moat_2', pretrained, **dict(_tiny(56), **kwargs))


@register_zoo_model(params=19_534_390, gmacs=6.0, top1=83.3, gmacs_source=_SRC)
def tiny_moat_3(pretrained=False, **kwargs) -> MOAT:
    """tiny-MOAT-3 (ImageNet-1k, 256)."""
    return _create_moat('tiny_moat_3', pretrained, **dict(_tiny(80), **kwargs))


@register_zoo_model(params=27_777_544, gmacs=5.7, top1=83.0, gmacs_source=_SRC)
def moat_0_no_pe(pretrained=False, **kwargs) -> MOAT:
    """MOAT-0 without relative position bias (ImageNet-1k, 224)."""
    model_args = dict(depths=(2, 3, 7, 2), **_MOAT01, **_NO_PE)
    return _create_moat('moat_0_no_pe', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=41_467_864, gmacs=9.1, top1=84.1, gmacs_source=_SRC)
def moat_1_no_pe(pretrained=False, **kwargs) -> MOAT:
    """MOAT-1 without relative position bias (ImageNet-1k, 224)."""
    model_args = dict(depths=(2, 6, 14, 2), **_MOAT01, **_NO_PE)
    return _create_moat('moat_1_no_pe', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=73_248_296, gmacs=53.8, top1=87.2, gmacs_source=_SRC)
def moat_2_no_pe(pretrained=False, **kwargs) -> MOAT:
    """MOAT-2 without relative position bias (ImageNet-22k -> 1k, 384)."""
    return _create_moat('moat_2_no_pe', pretrained, **dict(_MOAT2, **_NO_PE, **kwargs))


@register_zoo_model(params=189_536_280, gmacs=266.1, top1=88.2, gmacs_source=_SRC)
def moat_3_no_pe(pretrained=False, **kwargs) -> MOAT:
    """MOAT-3 without relative position bias (ImageNet-22k -> 1k, 512)."""
    return _create_moat('moat_3_no_pe', pretrained, **dict(_MOAT3, **_NO_PE, **kwargs))


@register_zoo_model(params=482_539_368, gmacs=640.6, top1=88.9, gmacs_source=_SRC)
def moat_4_no_pe(pretrained=False, **kwargs) -> MOAT:
    """MOAT-4 without relative position bias (ImageNet-22k -> 1k, 512)."""
    return _create_moat('moat_4_no_pe', pretrained, **dict(_MOAT4, **_NO_PE, **kwargs))


@register_zoo_model(params=3_332_232, gmacs=1.08, top1=76.0, gmacs_source=_SRC_TINY0, notes=_TINY0_NOTE)
def tiny_moat_0_no_pe(pretrained=False, **kwargs) -> MOAT:
    """tiny-MOAT-0 without relative position bias (ImageNet-1k, 256)."""
    return _create_moat('tiny_moat_0_no_pe', pretrained, **dict(_tiny(32), **_NO_PE, **kwargs))


@register_zoo_model(params=5_094_000, gmacs=1.6, top1=78.9, gmacs_source=_SRC)
def tiny_moat_1_no_pe(pretrained=False, **kwargs) -> MOAT:
    """tiny-MOAT-1 without relative position bias (ImageNet-1k, 256)."""
    return _create_moat('tiny_moat_1_no_pe', pretrained, **dict(_tiny(40), **_NO_PE, **kwargs))


@register_zoo_model(params=9_732_288, gmacs=3.0, top1=81.3, gmacs_source=_SRC)
def tiny_moat_2_no_pe(pretrained=False, **kwargs) -> MOAT:
    """tiny-MOAT-2 without relative position bias (ImageNet-1k, 256)."""
    return _create_moat('tiny_moat_2_no_pe', pretrained, **dict(_tiny(56), **_NO_PE, **kwargs))


@register_zoo_model(params=19_476_600, gmacs=6.0, top1=83.0, gmacs_source=_SRC)
def tiny_moat_3_no_pe(pretrained=False, **kwargs) -> MOAT:
    """tiny-MOAT-3 without relative position bias (ImageNet-1k, 256)."""
    return _create_moat('tiny_moat_3_no_pe', pretrained, **dict(_tiny(80), **_NO_PE, **kwargs))
