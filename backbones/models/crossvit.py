"""CrossViT: two ViT branches at two patch sizes that exchange information through their class tokens.

Paper: "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification", Chun-Fu (Richard) Chen,
Quanfu Fan, Rameswar Panda (ICCV 2021), https://arxiv.org/abs/2103.14899.
Official code: https://github.com/IBM/CrossViT (commit 3f7ab77c, ``models/crossvit.py``: ``PatchEmbed``,
``CrossAttention``, ``CrossAttentionBlock``, ``MultiScaleBlock``, ``VisionTransformer`` and the factories;
Apache-2.0). timm 1.0.31 ships the same networks as ``crossvit_*_240`` / ``crossvit_*_408`` with the official weights
re-hosted.

The network (official ``VisionTransformer``):

- two branches: S (12x12 patches, width ``D_S``) on the image, L (16x16 patches, width ``D_L = 2 D_S``) on the image
  resized bicubically (``align_corners=False``) by ``s = 224 / 240`` (``384 / 408`` for the 384 fine-tunes): the
  official models take 240 x 240 images and feed the L branch 224 x 224. Patch embedding: one conv, or for the
  dagger models a three-conv stem (:class:`backbones.layers.PatchEmbed` ``multi_conv``). Each branch has its own
  class token and learned position embedding;
- K = 3 multi-scale blocks (:class:`MultiScaleBlock`): the S branch runs 1 ViT block, the L branch N (4 for Ti/S/B,
  3/5/6 for 9/15/18): pre-norm, LayerNorm eps 1e-6, MHSA with q/k/v bias, exact-GELU MLP of ratio 4 (Ti/S/B) or 3.
  Then the fusion: each branch's class token is projected to the other branch's width (LN -> GELU -> Linear),
  attends as the only query over itself and the other branch's patch tokens (one pre-norm
  :class:`backbones.layers.CrossAttention` layer, residual on the class token, no MLP), is projected back
  (LN -> GELU -> Linear) and rejoins its own patch tokens;
- per branch a LayerNorm, the class token and a Linear head; the logits are the mean of the two heads.

Input sizes. The official code and timm resample every input to 240 x 240 for S and 224 x 224 for L (a non-square
image is distorted; the position tables never change). Here the S branch takes the image as it is, so its sides
must be multiples of 12 (``ValueError`` otherwise), and the L branch takes it resized by ``s`` to the nearest
multiple of 16: ``side_L = 16 * round(side * s / 16)``; each branch's position table is resampled to its own grid
(timm's ``resample_abs_pos_embed``, as its ViTs do). At the official sizes this is the official computation exactly
(240: S 20x20, L 224 -> 14x14; 408: S 34x34, L 384 -> 24x24); at other sizes both branches see the image at the
pixel scale they were trained at, aspect ratio kept. A 224 x 224 image is refused: resize it to 240 as the official
evaluation does (resize 274, centre crop 240), or take a multiple of 12.

Features (``forward_intermediates``, ``features_only``): the patch tokens (class token removed) of each branch after
each multi-scale block, as NCHW maps, indexed branch-major as in timm: ``0 .. K-1`` the S branch (stride 12),
``K .. 2K-1`` the L branch (stride ``16 / s``: 240 / 14, about 17.1 input pixels; ``feature_info`` says 17, as
timm). ``features_only`` returns by default the last block of each branch (indices ``K-1`` and
``2K-1``: the maps the two heads read), as timm does.

Differences from the official code: none in the numbers at the official sizes; the cross attention is computed
in inference with its key and value projections folded into the query and the output (same result to float rounding,
see :mod:`backbones.layers.cross_attention`); the official T2T patch embedding and timm's ``crop_scale`` option (no
released weights use them) are not offered.

Weights: the official ImageNet-1k checkpoints (``github.com/IBM/CrossViT/releases/download/weights-0.1/``) as
re-hosted by timm (``timm/crossvit_*.in1k``). Key layout: ours is the official one (``pos_embed.0``,
``cls_token.0``); timm's (``pos_embed_0``, ``cls_token_0``) converts.
"""
import math
from fractions import Fraction
from functools import partial
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict, unwrap_state_dict
from .._features import feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from .._token import BRANCH_POOL_TYPES, MultiBranchTokenMixin, branch_feature_info, check_global_pool, join_prefix
from ..layers.activation import InplaceGELU
from ..layers.attention import Attention
from ..layers.cross_attention import CrossAttention
from ..layers.helpers import check_img_size
from ..layers.init import init_weights_, skip_on_meta
from ..layers.mlp import Mlp
from ..layers.patch_embed import PatchEmbed
from ..layers.pos_embed import pos_embed_for_grid, resize_pos_embed_in_state_dict
from ..layers.stage import check_output_stride
from ..layers.transformer import TransformerBlock

__all__ = ['CrossViT', 'MultiScaleBlock']

FAMILY = register_family(Family(
    name='crossvit',
    bibtex="""
@inproceedings{chen2021crossvit,
  title={CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification},
  author={Chen, Chun-Fu (Richard) and Fan, Quanfu and Panda, Rameswar},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2021}
}""",
    arxiv='2103.14899',
    repo='IBM/CrossViT',
    license='apache-2.0',
    module=__name__,
    oracle="timm crossvit_*_240 / _408 models (random non-trivial weights through checkpoint_filter_fn): at the "
           "official sizes, and at other sizes with timm's branch sizes and position tables set to the zoo's size "
           "rule; the official layout converts",
    weights='official ImageNet-1k weights as re-hosted by timm (timm/crossvit_*.in1k)',
))

EPS = 1e-6  # every LayerNorm of the official models

# an FX leaf here too: torch.fx wraps registered functions only in the modules whose code it is tracing, and
# ``CrossViT._embed`` runs before any module of this file is called
torch.fx.wrap('pos_embed_for_grid')


def resize_image(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    """The official resize of the image for a branch of another scale: bicubic, ``align_corners=False``, no
    antialiasing. An FX leaf: int8 tensors have no bicubic kernel, and ``torch.ao``'s ``prepare_fx`` would otherwise
    quantize the image before the resize (it takes ``F.interpolate`` for a shape op that keeps its input's
    quantization); as an unknown call it gets the float image."""
    return F.interpolate(x, size=size, mode='bicubic', align_corners=False)


torch.fx.wrap('resize_image')


def _projection(in_dim: int, out_dim: int, dd: dict) -> nn.Sequential:
    """A class token from one branch's width to the other's: LN -> GELU -> Linear (official ``projs`` /
    ``revert_projs``; keys ``0`` and ``2``)."""
    return nn.Sequential(nn.LayerNorm(in_dim, eps=EPS, **dd), nn.GELU(), nn.Linear(in_dim, out_dim, **dd))


class MultiScaleBlock(nn.Module):
    """One multi-scale transformer encoder (official ``MultiScaleBlock``): the branches' ViT blocks, then the
    cross-attention fusion through the class tokens.

    Args:
        dims: width of every branch.
        depths: ViT blocks of every branch.
        num_heads: heads of every branch (a fusion into a branch uses that branch's heads).
        mlp_ratios: MLP ratio of every branch.
        qkv_bias: q/k/v biases (self- and cross-attention).
        proj_drop, attn_drop: dropout on attention / MLP outputs, on attention weights.
        drop_path: stochastic depth of the ``i``-th block of every branch (``drop_path[i]``); the fusion takes the
            last rate (official schedule).

    ``forward(xs)``: the branches' tokens ``[B, 1 + N_b, D_b]`` (class token first) -> the same shapes.
    """

    def __init__(
            self,
            dims: Sequence[int],
            depths: Sequence[int],
            num_heads: Sequence[int],
            mlp_ratios: Sequence[float],
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: Sequence[float] = (0.,),
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        nb = len(dims)
        self.num_branches = nb
        norm_layer = partial(nn.LayerNorm, eps=EPS)

        def vit_block(d: int, heads: int, mlp_ratio: float, dpr: float) -> TransformerBlock:
            attn = Attention(d, heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
            mlp = Mlp(d, int(d * mlp_ratio), act_layer=InplaceGELU, drop=proj_drop, **dd)
            return TransformerBlock(d, attn, mlp, norm_layer, drop_path=dpr, **dd)

        self.blocks = nn.ModuleList([
            nn.Sequential(*[vit_block(dims[b], num_heads[b], mlp_ratios[b], drop_path[i]) for i in range(depths[b])])
            for b in range(nb)])
        # fusion b: branch b's class token queries branch o = b + 1's patch tokens, at o's width and heads
        others = [(b + 1) % nb for b in range(nb)]
        self.projs = nn.ModuleList([_projection(dims[b], dims[o], dd) for b, o in enumerate(others)])
        self.fusion = nn.ModuleList([
            TransformerBlock(
                dims[o],
                CrossAttention(dims[o], num_heads[o], qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                               **dd),
                None, norm_layer, drop_path=drop_path[-1], num_query_tokens=1, **dd)
            for o in others])
        self.revert_projs = nn.ModuleList([_projection(dims[o], dims[b], dd) for b, o in enumerate(others)])

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        ys: List[torch.Tensor] = []
        for b, blocks in enumerate(self.blocks):
            ys.append(blocks(xs[b]))
        out: List[torch.Tensor] = []
        for b, (proj, fusion, revert_proj) in enumerate(zip(self.projs, self.fusion, self.revert_projs)):
            other = ys[(b + 1) % self.num_branches]
            cls = fusion(torch.cat((proj(ys[b][:, :1]), other[:, 1:]), dim=1))  # [B, 1, D_o]
            out.append(torch.cat((revert_proj(cls), ys[b][:, 1:]), dim=1))
        return out


def _scaled_side(side: int, scale: Tuple[int, int], patch: int) -> int:
    """``side * num / den`` rounded (half up) to a multiple of ``patch`` (integer arithmetic: exact, and symbolic
    under ``torch.export``)."""
    num, den = scale
    return patch * ((2 * side * num + den * patch) // (2 * den * patch))


class CrossViT(MultiBranchTokenMixin, nn.Module):
    """CrossViT-Ti/S/B, -9/15/18 and the dagger (three-conv patch embedding) models.

    Args:
        img_size: input size the position tables are sized for (other sizes work too, see the module docstring).
        img_scale: per branch, the scale of its input relative to the image (official: 1 and 224/240, or 384/408);
            a branch of scale 1 takes the image as it is.
        patch_size: patch side of every branch.
        in_chans, num_classes: timm's usual meaning.
        global_pool: ``'token'`` (class tokens, official), ``'avg'``, ``'max'`` or ``'avgmax'`` over each branch's
            patch tokens.
        embed_dim: width of every branch.
        depth: per multi-scale block, the number of ViT blocks of every branch (official ``depth`` without its
            last, fusion, entry, which is 0 in every released model: one fusion layer).
        num_heads: heads of every branch.
        mlp_ratio: MLP ratio of every branch.
        multi_conv: the dagger models' three-conv patch embedding.
        qkv_bias: q/k/v biases.
        drop_rate: dropout before the classifiers.
        pos_drop_rate, proj_drop_rate, attn_drop_rate: dropout after the position embedding, on attention / MLP
            outputs, on attention weights.
        drop_path_rate: stochastic depth, rising linearly over the blocks (official schedule).
        output_stride: refused (two single-resolution ViT branches: nothing to dilate).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 240,
            img_scale: Sequence[float] = (1.0, 224 / 240),
            patch_size: Sequence[int] = (12, 16),
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: Sequence[int] = (192, 384),
            depth: Sequence[Sequence[int]] = ((1, 4), (1, 4), (1, 4)),
            num_heads: Sequence[int] = (6, 6),
            mlp_ratio: Sequence[float] = (4., 4.),
            multi_conv: bool = False,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            output_stride: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        check_output_stride(
            output_stride, None, 'CrossViT', 'two single-resolution ViT branches, each on its own patch grid from '
            'the input on: there is no downsampling stage to dilate')
        nb = len(patch_size)
        for what, value in dict(img_scale=img_scale, embed_dim=embed_dim, num_heads=num_heads,
                                mlp_ratio=mlp_ratio).items():
            if len(value) != nb:
                raise ValueError(f'{what} needs one value per branch ({nb}, as patch_size), got {tuple(value)}')
        if any(len(d) != nb for d in depth):
            raise ValueError(f'depth needs, per multi-scale block, one depth per branch ({nb}), got {depth}')
        # a scale as an exact fraction, so that sizes are integer arithmetic (224 / 240 -> 14 / 15)
        scales = [Fraction(s).limit_denominator(1000) for s in img_scale]
        if 1 not in scales:
            raise ValueError(f'img_scale {tuple(img_scale)}: one branch must take the image as it is (scale 1)')
        check_global_pool(global_pool, 1, BRANCH_POOL_TYPES)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_branches = nb
        self.patch_size = tuple(patch_size)
        self.embed_dim = tuple(embed_dim)
        self.img_scale = tuple(float(s) for s in img_scale)
        self.scales: List[Tuple[int, int]] = [(s.numerator, s.denominator) for s in scales]
        # the branches of scale 1 see the image itself: its sides must be multiples of their patches
        self.input_divisor = math.lcm(*[p for p, s in zip(patch_size, scales) if s == 1])
        self.img_size = check_img_size(img_size, type(self).__name__, divisor=self.input_divisor)
        self.grid_size: List[Tuple[int, int]] = self.branch_grid_sizes(self.img_size)
        self.num_features = self.head_hidden_size = sum(embed_dim)
        self._model_name = type(self).__name__  # for error messages (TorchScript cannot read self.__class__)
        self.grad_checkpointing = False

        self.patch_embed = nn.ModuleList([
            PatchEmbed(in_chans, d, p, multi_conv=multi_conv, **dd) for d, p in zip(embed_dim, patch_size)])
        self.cls_token = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, d, **dd)) for d in embed_dim])
        self.pos_embed = nn.ParameterList([
            nn.Parameter(torch.zeros(1, 1 + gh * gw, d, **dd)) for d, (gh, gw) in zip(embed_dim, self.grid_size)])
        self.pos_drop = nn.Dropout(pos_drop_rate)

        # official schedule: one rate per position in the longest branch of each multi-scale block
        dpr = calculate_drop_path_rates(drop_path_rate, sum(max(d) for d in depth))
        blocks, start = [], 0
        for block_depth in depth:
            blocks.append(MultiScaleBlock(
                embed_dim, block_depth, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[start:start + max(block_depth)], **dd))
            start += max(block_depth)
        self.blocks = nn.ModuleList(blocks)
        self.num_feature_blocks = len(depth)
        self.feature_info = branch_feature_info(
            len(depth), embed_dim, [round(p / s) for p, s in zip(patch_size, scales)])
        self.norm = nn.ModuleList([nn.LayerNorm(d, eps=EPS, **dd) for d in embed_dim])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.ModuleList([
            nn.Linear(d, num_classes, **dd) if num_classes > 0 else nn.Identity() for d in embed_dim])

        self.init_weights()

    @skip_on_meta
    def init_weights(self):
        """The official init: truncated normal (0.02) for the tokens, tables and Linear weights, zero biases."""
        for b in range(self.num_branches):
            trunc_normal_(self.pos_embed[b], std=.02)
            trunc_normal_(self.cls_token[b], std=.02)
        init_weights_(self)

    def branch_grid_sizes(self, img_size: Tuple[int, int]) -> List[Tuple[int, int]]:
        """The patch grid of every branch for an ``(H, W)`` input whose sides are multiples of ``input_divisor``."""
        return [(_scaled_side(img_size[0], s, p) // p, _scaled_side(img_size[1], s, p) // p)
                for s, p in zip(self.scales, self.patch_size)]

    def _embed(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[Tuple[int, int]]]:
        """Image -> per branch: tokens ``[B, 1 + gh * gw, D_b]`` with the position embedding, and the grid."""
        self._check_input(x)
        B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
        xs: List[torch.Tensor] = []
        grids: List[Tuple[int, int]] = []
        for b, (patch_embed, cls_token, pos_embed) in enumerate(zip(self.patch_embed, self.cls_token, self.pos_embed)):
            scale, p = self.scales[b], self.patch_size[b]
            if scale[0] == scale[1]:
                x_b = patch_embed(x)
            else:
                x_b = patch_embed(resize_image(x, [_scaled_side(H, scale, p), _scaled_side(W, scale, p)]))
            grid = (x_b.shape[1], x_b.shape[2])
            prefix_pos, pos = pos_embed_for_grid(pos_embed, grid, self.grid_size[b], 1)
            xs.append(self.pos_drop(join_prefix(x_b + pos, cls_token.expand(B, -1, -1) + prefix_pos)))
            grids.append(grid)
        return xs, grids


def checkpoint_filter_fn(state_dict, model):
    """Our layout = the official one (``pos_embed.0`` / ``cls_token.0``, bare or inside ``{'model': ...}``);
    timm's ``crossvit_*`` (e.g. ``timm/crossvit_9_240.in1k``) names them ``pos_embed_0`` / ``cls_token_0``. Position
    tables sized for another (square) grid are resampled to the model's ``img_size``."""
    sd = unwrap_state_dict(state_dict)
    sd = {k.replace('pos_embed_', 'pos_embed.').replace('cls_token_', 'cls_token.')
          if k.startswith(('pos_embed_', 'cls_token_')) else k: v for k, v in sd.items()}
    for b, grid in enumerate(model.grid_size):
        sd = resize_pos_embed_in_state_dict(sd, f'pos_embed.{b}', grid, num_prefix_tokens=1)
    return convert_state_dict(sd, model, [], FAMILY.name)


def _create_crossvit(variant, pretrained=False, **kwargs):
    num_blocks = len(kwargs.get('depth', ((),) * 3))
    out_indices = kwargs.pop('out_indices', (num_blocks - 1, 2 * num_blocks - 1))  # the maps the heads read
    return build_model_with_cfg(
        CrossViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=out_indices),
        **kwargs,
    )


def _cfg(hf_hub_id, dagger=False, **kwargs):
    conv = '.proj.0' if dagger else '.proj'
    cfg = dict(
        hf_hub_id=hf_hub_id, input_size=(3, 240, 240), pool_size=None, min_input_size=(3, 12, 12), crop_pct=0.875,
        interpolation='bicubic', first_conv=(f'patch_embed.0{conv}', f'patch_embed.1{conv}'),
        classifier=('head.0', 'head.1'))
    return zoo_cfg(FAMILY, **dict(cfg, **kwargs))


default_cfgs = generate_default_cfgs({
    'crossvit_tiny.in1k': _cfg('timm/crossvit_tiny_240.in1k'),
    'crossvit_small.in1k': _cfg('timm/crossvit_small_240.in1k'),
    'crossvit_base.in1k': _cfg('timm/crossvit_base_240.in1k'),
    'crossvit_9.in1k': _cfg('timm/crossvit_9_240.in1k'),
    'crossvit_15.in1k': _cfg('timm/crossvit_15_240.in1k'),
    'crossvit_18.in1k': _cfg('timm/crossvit_18_240.in1k'),
    'crossvit_9_dagger.in1k': _cfg('timm/crossvit_9_dagger_240.in1k', dagger=True),
    'crossvit_15_dagger.in1k': _cfg('timm/crossvit_15_dagger_240.in1k', dagger=True),
    'crossvit_18_dagger.in1k': _cfg('timm/crossvit_18_dagger_240.in1k', dagger=True),
    'crossvit_15_dagger_384.in1k': _cfg(
        'timm/crossvit_15_dagger_408.in1k', dagger=True, input_size=(3, 408, 408), crop_pct=1.0),
    'crossvit_18_dagger_384.in1k': _cfg(
        'timm/crossvit_18_dagger_408.in1k', dagger=True, input_size=(3, 408, 408), crop_pct=1.0),
})


def _counts(timm_name: str, fvcore: float, top1: float) -> dict:
    """Registry figures of the variant whose timm twin is ``timm_name``: the README has no table and the paper's
    table was not re-read here, so GMACs are fvcore's count (attention matmuls included, the bicubic resize counted as
    zero) of the twin, and top-1 is timm's measurement of the official weights."""
    return dict(
        timm_twin=timm_name, gmacs=fvcore, top1=top1,
        gmacs_source=f"fvcore count, attention matmuls included, of timm's {timm_name} (the same network): {fvcore}",
        notes=f"top-1: timm's measurement of the official weights (results-imagenet.csv, {timm_name}.in1k)",
    )


_TI_S_B = dict(depth=((1, 4),) * 3, mlp_ratio=(4., 4.))  # CrossViT-Ti/S/B: 4 L-branch blocks, MLP ratio 4


def _numbered(n: int) -> dict:
    """CrossViT-9/15/18 (and dagger): ``n`` counts the L-branch blocks of the three multi-scale blocks; MLP ratio 3."""
    return dict(depth=((1, n // 3),) * 3, mlp_ratio=(3., 3.))


@register_zoo_model(params=7_014_800, **_counts('crossvit_tiny_240', 1.570, 73.35))
def crossvit_tiny(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-Ti (official ``crossvit_tiny_224``)."""
    model_args = dict(embed_dim=(96, 192), num_heads=(3, 3), **_TI_S_B)
    return _create_crossvit('crossvit_tiny', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=26_856_272, **_counts('crossvit_small_240', 5.630, 81.04))
def crossvit_small(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-S (official ``crossvit_small_224``)."""
    model_args = dict(embed_dim=(192, 384), num_heads=(6, 6), **_TI_S_B)
    return _create_crossvit('crossvit_small', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=105_025_232, **_counts('crossvit_base_240', 21.220, 82.21))
def crossvit_base(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-B (official ``crossvit_base_224``)."""
    model_args = dict(embed_dim=(384, 768), num_heads=(12, 12), **_TI_S_B)
    return _create_crossvit('crossvit_base', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=8_553_296, **_counts('crossvit_9_240', 1.849, 73.99))
def crossvit_9(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-9 (official ``crossvit_9_224``)."""
    model_args = dict(embed_dim=(128, 256), num_heads=(4, 4), **_numbered(9))
    return _create_crossvit('crossvit_9', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=27_528_464, **_counts('crossvit_15_240', 5.807, 81.52))
def crossvit_15(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-15 (official ``crossvit_15_224``)."""
    model_args = dict(embed_dim=(192, 384), num_heads=(6, 6), **_numbered(15))
    return _create_crossvit('crossvit_15', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=43_271_408, **_counts('crossvit_18_240', 9.053, 82.39))
def crossvit_18(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-18 (official ``crossvit_18_224``)."""
    model_args = dict(embed_dim=(224, 448), num_heads=(7, 7), **_numbered(18))
    return _create_crossvit('crossvit_18', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=8_776_592, **_counts('crossvit_9_dagger_240', 1.987, 76.99))
def crossvit_9_dagger(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-9 dagger: three-conv patch embedding (official ``crossvit_9_dagger_224``)."""
    model_args = dict(embed_dim=(128, 256), num_heads=(4, 4), multi_conv=True, **_numbered(9))
    return _create_crossvit('crossvit_9_dagger', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=28_209_008, **_counts('crossvit_15_dagger_240', 6.129, 82.30))
def crossvit_15_dagger(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-15 dagger (official ``crossvit_15_dagger_224``)."""
    model_args = dict(embed_dim=(192, 384), num_heads=(6, 6), multi_conv=True, **_numbered(15))
    return _create_crossvit('crossvit_15_dagger', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=44_266_976, **_counts('crossvit_18_dagger_240', 9.495, 82.49))
def crossvit_18_dagger(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-18 dagger (official ``crossvit_18_dagger_224``)."""
    model_args = dict(embed_dim=(224, 448), num_heads=(7, 7), multi_conv=True, **_numbered(18))
    return _create_crossvit('crossvit_18_dagger', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=28_500_080, **_counts('crossvit_15_dagger_408', 21.447, 83.84))
def crossvit_15_dagger_384(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-15 dagger fine-tuned at 384 (official ``crossvit_15_dagger_384``): 408 x 408 images, L branch 384."""
    model_args = dict(
        img_size=408, img_scale=(1.0, 384 / 408), embed_dim=(192, 384), num_heads=(6, 6), multi_conv=True,
        **_numbered(15))
    return _create_crossvit('crossvit_15_dagger_384', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=44_606_560, **_counts('crossvit_18_dagger_408', 32.474, 84.20))
def crossvit_18_dagger_384(pretrained=False, **kwargs) -> CrossViT:
    """CrossViT-18 dagger fine-tuned at 384 (official ``crossvit_18_dagger_384``): 408 x 408 images, L branch 384."""
    model_args = dict(
        img_size=408, img_scale=(1.0, 384 / 408), embed_dim=(224, 448), num_heads=(7, 7), multi_conv=True,
        **_numbered(18))
    return _create_crossvit('crossvit_18_dagger_384', pretrained, **dict(model_args, **kwargs))
