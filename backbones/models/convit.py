"""ConViT: a ViT whose first blocks use gated positional self-attention (GPSA), a soft convolutional inductive bias.

Paper: "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases", Stéphane d'Ascoli, Hugo
Touvron, Matthew Leavitt, Ari Morcos, Giulio Biroli, Levent Sagun (ICML 2021), https://arxiv.org/abs/2103.10697.
Official code: https://github.com/facebookresearch/convit (commit 0a9340aa, ``convit.py``: ``GPSA``, ``MHSA``,
``Block``, ``VisionTransformer``; ``models.py``: the Ti / S / B factories; Apache-2.0 per its README). timm 1.0.31
ships the same network as ``convit_tiny/small/base`` with the official weights re-hosted.

The network (paper Fig. 1; official ``VisionTransformer``): a 16x16 patch embedding (conv, bias) plus a learned
absolute position embedding over the patches only, 12 pre-norm transformer blocks (LayerNorm eps 1e-6, exact-GELU
MLP of ratio 4, q/k/v without bias), the first ``local_up_to_layer`` = 10 with GPSA, the last 2 with ordinary
multi-head self-attention. The class token joins the patch tokens only after the last GPSA block. Head: LayerNorm ->
class token -> Linear. The ``+`` variants (paper Table 1) widen the heads from 48 to 64 channels.

GPSA (official ``GPSA.get_attention``), per head ``h`` with gate ``g_h = sigmoid(gating_param_h)``::

    A = normalise((1 - g_h) softmax(q k^T / sqrt(d)) + g_h softmax(r_qk . v_pos_h)),   out = proj(A v)

with ``r_qk = (dx, dy, dx^2 + dy^2)`` the offset of key ``k`` from query ``q`` on the patch grid and ``v_pos_h`` the
3 -> heads ``pos_proj`` (its bias cancels in the softmax). How this file computes it (same numbers as the official
code to float rounding):

- both softmaxes sum to 1 over the keys, so their convex combination does too: the official renormalisation is a
  division by 1, and ``A v = (1 - g) softmax(q k^T / sqrt(d)) v + g P v``. The content part is one
  ``F.scaled_dot_product_attention`` call;
- the positional score is a row term plus a column term (``v1 dy + v3 dy^2`` and ``v0 dx + v3 dx^2``), so its
  softmax over the ``H x W`` keys is the outer product of a softmax over key rows and one over key columns:
  ``P v`` is applied as two small matmuls (``[H, H]`` along the columns of the grid, ``[W, W]`` along its rows)
  instead of an ``N x N`` map per image, and ``P`` never depends on the batch;
- the offsets are rebuilt from the grid in every forward (the grid is the shape of the GPSA input
  ``[B, H, W, C]``), so every input size that is a multiple of 16 works, square or not, and ``torch.compile`` /
  ``torch.export`` see no cached state;
- the official formula (full ``N x N`` maps, explicit renormalisation) remains the path for training with attention
  dropout and for ``fused_attn = False``.

Input sizes: sides must be multiples of 16 (``ValueError`` otherwise). The official code and timm run 224 only
(timm: ``fixed_input_size``); at other sizes the position embedding is resampled bicubically from its 14x14 table
(timm's ``resample_abs_pos_embed``, as its ViTs do with ``dynamic_img_size``) and GPSA uses the offsets of the actual
grid. ``img_size`` / ``set_input_size`` choose the table's size.

Weights: the official ImageNet-1k Ti / S / B checkpoints (``dl.fbaipublicfiles.com/convit/convit_{tiny,small,
base}.pth``) as re-hosted by timm (``timm/convit_{tiny,small,base}.fb_in1k``); the official, timm and zoo key
layouts are the same. The ``+`` variants have no released weights.
"""
from functools import partial
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import calculate_drop_path_rates, trunc_normal_, use_fused_attn
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict, unwrap_state_dict
from .._features import feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from .._token import TokenFeatureMixin, check_global_pool, token_feature_info
from ..layers.attention import Attention
from ..layers.helpers import check_img_size
from ..layers.init import init_weights_, skip_on_meta
from ..layers.mlp import Mlp
from ..layers.patch_embed import PatchEmbed
from ..layers.pos_embed import resize_pos_embed_in_state_dict
from ..layers.stage import check_output_stride
from ..layers.tracing import is_exporting
from ..layers.transformer import TransformerBlock

__all__ = ['ConViT', 'GPSA']

FAMILY = register_family(Family(
    name='convit',
    bibtex="""
@inproceedings{dascoli2021convit,
  title={ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases},
  author={d'Ascoli, St{\\'e}phane and Touvron, Hugo and Leavitt, Matthew and Morcos, Ari and Biroli, Giulio and
          Sagun, Levent},
  booktitle={Proceedings of the 38th International Conference on Machine Learning (ICML)},
  year={2021}
}""",
    arxiv='2103.10697',
    repo='facebookresearch/convit',
    license='apache-2.0',
    module=__name__,
    oracle="timm convit_* models (random non-trivial weights through checkpoint_filter_fn, at 224 and at other "
           "sizes with timm's position embedding resampled); the official layout is timm's",
    weights='official ImageNet-1k weights as re-hosted by timm (timm/convit_{tiny,small,base}.fb_in1k)',
))

EPS = 1e-6  # every LayerNorm of the official model


class GPSA(nn.Module):
    """Gated positional self-attention on a channels-last patch grid ``[B, H, W, C]`` (see module docstring).

    Args:
        dim: width ``C``.
        num_heads: heads.
        qkv_bias: bias of the ``qk`` and ``v`` projections (the official models: none).
        attn_drop, proj_drop: dropout on the mixed attention weights / on the output.
        locality_strength: scale of the local init of ``pos_proj`` (:meth:`local_init`).

    Parameters (official names): ``qk`` (C -> 2C), ``v`` (C -> C), ``proj`` (C -> C, bias), ``pos_proj``
    (3 -> heads, bias), ``gating_param`` (one per head).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            locality_strength: float = 1.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.locality_strength = locality_strength
        self.fused_attn = use_fused_attn()
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.v = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.pos_proj = nn.Linear(3, num_heads, **dd)
        # its weights are the coefficients of a closed-form positional attention (positional_attention), never a
        # matmul on activations: torch.ao's eager quantization (quantize_dynamic) leaves it float
        self.pos_proj.qconfig = None
        self.proj_drop = nn.Dropout(proj_drop)
        self.gating_param = nn.Parameter(torch.ones(num_heads, **dd))

    @torch.no_grad()
    def local_init(self):
        """The locality init (official ``GPSA.local_init``): ``v`` = identity, and the heads, laid out on a
        sqrt(heads) x sqrt(heads) grid, each attend most to the patch at their own offset ``(dx, dy)`` from the
        centre: ``v_pos = locality_strength * (2 dx, 2 dy, -1)``."""
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0], device=self.v.weight.device))
        kernel = int(self.num_heads ** .5)
        center = (kernel - 1) / 2 if kernel % 2 == 0 else kernel // 2
        weight = self.pos_proj.weight
        for h1 in range(kernel):
            for h2 in range(kernel):
                head = h1 + kernel * h2
                weight[head, 2] = -1
                weight[head, 1] = 2 * (h1 - center)
                weight[head, 0] = 2 * (h2 - center)
        weight.mul_(self.locality_strength)

    def positional_attention(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``softmax`` over the key rows ``[heads, H, H]`` and over the key columns ``[heads, W, W]`` (indexed
        ``[query, key]``); their outer product is the positional attention ``softmax_k(r_qk . v_pos)``."""
        w = self.pos_proj.weight  # [heads, 3]: weights of (dx, dy, dx^2 + dy^2)
        rows = torch.arange(height, device=w.device, dtype=w.dtype)
        cols = torch.arange(width, device=w.device, dtype=w.dtype)
        dy = (rows[None, :] - rows[:, None])[None]  # key row - query row, [1, H, H]
        dx = (cols[None, :] - cols[:, None])[None]
        w = w[:, :, None, None]
        # the bias is constant over the keys and cancels in the softmax; it stays in the graph so that it gets its
        # (zero) gradient as in the official code (DDP expects every parameter to take part)
        attn_rows = (w[:, 1] * dy + w[:, 2] * dy * dy + self.pos_proj.bias[:, None, None]).softmax(dim=-1)
        attn_cols = (w[:, 0] * dx + w[:, 2] * dx * dx).softmax(dim=-1)
        return attn_rows, attn_cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        N = H * W
        x = x.reshape(B, N, C)
        q, k = self.qk(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, heads, N, d]
        gate = torch.sigmoid(self.gating_param).view(self.num_heads, 1, 1)
        attn_rows, attn_cols = self.positional_attention(H, W)
        if self.fused_attn and not (self.training and self.attn_drop.p > 0.):
            content = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            # P v: mix along each grid row with attn_cols, then along each column with g * attn_rows
            pos = attn_cols.unsqueeze(1) @ v.reshape(B, self.num_heads, H, W, self.head_dim)
            rows = gate * attn_rows
            if is_exporting():  # a matmul broadcast over the batch would make batch 1 a special case
                rows = rows.expand(B, -1, -1, -1).clone(memory_format=torch.contiguous_format)
            pos = rows @ pos.reshape(B, self.num_heads, H, W * self.head_dim)
            x = torch.addcmul(pos.reshape(B, self.num_heads, N, self.head_dim), content, 1. - gate)
        else:  # the official formula, N x N maps
            content = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            positional = (attn_rows[:, :, None, :, None] * attn_cols[:, None, :, None, :]).reshape(-1, N, N)
            attn = (1. - gate) * content + gate * positional
            attn = self.attn_drop(attn / attn.sum(dim=-1, keepdim=True))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, H, W, C)
        return self.proj_drop(self.proj(x))


class ConViT(TokenFeatureMixin, nn.Module):
    """ConViT-Ti/S/B (and the wider Ti+/S+/B+).

    Args:
        img_size: input size the position embedding table is sized for (other multiples of ``patch_size`` work too:
            the table is resampled on the fly).
        patch_size: patch side = the model's stride.
        in_chans, num_classes: timm's usual meaning.
        global_pool: ``'token'`` (class token, official), ``'avg'``, ``'max'``, ``'avgmax'`` or ``''``.
        embed_dim: token width (paper ``D``: 48 or 64 per head).
        depth: blocks.
        num_heads: heads of every block.
        local_up_to_layer: number of GPSA blocks; the class token joins after them.
        locality_strength: GPSA locality init strength (training from scratch only).
        mlp_ratio: MLP hidden width / ``embed_dim``.
        qkv_bias: bias of the attention input projections (official: none).
        drop_rate: dropout before the classifier.
        pos_drop_rate, proj_drop_rate, attn_drop_rate: dropout after the position embedding, on attention / MLP
            outputs, on attention weights.
        drop_path_rate: stochastic depth, rising linearly over the blocks.
        output_stride: only ``patch_size`` (a single-resolution ViT: nothing to dilate).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 4,
            local_up_to_layer: int = 10,
            locality_strength: float = 1.,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
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
            output_stride, patch_size, 'ConViT', 'a single-resolution ViT: every block runs on the patch grid, whose '
            'GPSA position scores are laid out on it, and there is no downsampling stage to dilate')
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})')
        if not 0 <= local_up_to_layer < depth:
            raise ValueError(f'local_up_to_layer ({local_up_to_layer}) must lie in [0, depth={depth}): the class '
                             f'token joins after the GPSA blocks')
        img_size = check_img_size(img_size, type(self).__name__, divisor=patch_size)  # a grid of >= 1 patch
        check_global_pool(global_pool, 1)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.img_size = img_size
        self.patch_size = self.input_divisor = patch_size  # input sides: multiples of the patch
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.local_up_to_layer = local_up_to_layer
        self._model_name = type(self).__name__  # for error messages (TorchScript cannot read self.__class__)
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        self.num_prefix_tokens = 1
        self.prefix_at = local_up_to_layer  # the class token joins before the first MHSA block
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim, **dd))
        self.pos_embed_prefix = 0  # the table covers the patches only
        self.pos_drop = nn.Dropout(pos_drop_rate)

        norm_layer = partial(nn.LayerNorm, eps=EPS)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        blocks = []
        for i in range(depth):
            if i < local_up_to_layer:
                attn = GPSA(embed_dim, num_heads, qkv_bias, attn_drop_rate, proj_drop_rate, locality_strength, **dd)
            else:
                attn = Attention(
                    embed_dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate, **dd)
            mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop_rate, **dd)
            blocks.append(TransformerBlock(embed_dim, attn, mlp, norm_layer, drop_path=dpr[i], **dd))
        self.blocks = nn.Sequential(*blocks)
        self.feature_info = token_feature_info(depth, embed_dim, patch_size)
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.init_weights()

    @skip_on_meta
    def init_weights(self):
        """The official init: truncated normal (0.02) for tokens, table and Linear weights, zero biases, then the
        GPSA locality init."""
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        init_weights_(self)
        for m in self.modules():
            if isinstance(m, GPSA):
                m.local_init()



def checkpoint_filter_fn(state_dict, model):
    """Our layout = timm's ``convit_*`` (e.g. ``timm/convit_tiny.fb_in1k``) = the official one, bare or inside
    ``{'model': ...}``. A position embedding sized for another grid (square, e.g. 14x14) is resampled to the
    model's ``img_size``."""
    sd = unwrap_state_dict(state_dict)
    sd = resize_pos_embed_in_state_dict(sd, 'pos_embed', model.grid_size, num_prefix_tokens=0)
    return convert_state_dict(sd, model, [], FAMILY.name, first_conv='patch_embed.proj')


def _create_convit(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        ConViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg(out_indices=3),  # the last 3 blocks, as timm's convit
        **kwargs,
    )


def _cfg(hf_hub_id=None, **kwargs):
    cfg = zoo_cfg(
        FAMILY, first_conv='patch_embed.proj', classifier='head', pool_size=None, interpolation='bicubic', **kwargs)
    if hf_hub_id:
        cfg['hf_hub_id'] = hf_hub_id
    return cfg


default_cfgs = generate_default_cfgs({
    'convit_ti.fb_in1k': _cfg('timm/convit_tiny.fb_in1k'),
    'convit_s.fb_in1k': _cfg('timm/convit_small.fb_in1k'),
    'convit_b.fb_in1k': _cfg('timm/convit_base.fb_in1k'),
    'convit_ti_plus.untrained': _cfg(),
    'convit_s_plus.untrained': _cfg(),
    'convit_b_plus.untrained': _cfg(),
})


def _counts(timm_count: float, paper: float, no_attn: float, top1_source: str = '') -> dict:
    """Registry GMACs: fvcore's count (attention matmuls included) of timm's ConVit class built with the same
    network. ``paper``: the paper's Table 1 figure (recalled, not re-read), which is the count without the attention
    matmuls (``no_attn``), rounded."""
    return dict(
        gmacs=timm_count,
        gmacs_source=f"fvcore count, attention matmuls included, of timm's ConVit with this configuration: "
                     f"{timm_count} (timm's benchmark tables list convit_tiny/small/base at 1.26 / 5.76 / 17.52)",
        notes=f'paper Table 1: {paper} GFLOPs (recalled) = the count without the q.k^T and attention.v matmuls '
              f'({no_attn})' + (f'; {top1_source}' if top1_source else ''),
    )


_TIMM_TOP1 = "top-1: timm's measurement of the official weights (results-imagenet.csv)"
_PLUS = 'no released weights; widths from the paper Table 1 (64 channels per head, recalled), params by construction'


@register_zoo_model(params=5_710_512, top1=73.116, **_counts(1.257, 1.0, 1.080, 'top-1: official README eval output'),
                    timm_twin='convit_tiny')
def convit_ti(pretrained=False, **kwargs) -> ConViT:
    """ConViT-Ti (official ``convit_tiny``)."""
    model_args = dict(embed_dim=192, num_heads=4)
    return _create_convit('convit_ti', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=27_777_322, top1=81.41, **_counts(5.757, 5.4, 5.358, _TIMM_TOP1), timm_twin='convit_small')
def convit_s(pretrained=False, **kwargs) -> ConViT:
    """ConViT-S (official ``convit_small``)."""
    model_args = dict(embed_dim=432, num_heads=9)
    return _create_convit('convit_s', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=86_540_040, top1=82.30, **_counts(17.524, 17.0, 16.815, _TIMM_TOP1), timm_twin='convit_base')
def convit_b(pretrained=False, **kwargs) -> ConViT:
    """ConViT-B (official ``convit_base``)."""
    model_args = dict(embed_dim=768, num_heads=16)
    return _create_convit('convit_b', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=9_972_912, **_counts(2.137, 2.0, 1.901, _PLUS))
def convit_ti_plus(pretrained=False, **kwargs) -> ConViT:
    """ConViT-Ti+ (paper Table 1; no released weights)."""
    model_args = dict(embed_dim=256, num_heads=4)
    return _create_convit('convit_ti_plus', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=48_979_882, **_counts(10.016, 10.0, 9.484, _PLUS))
def convit_s_plus(pretrained=False, **kwargs) -> ConViT:
    """ConViT-S+ (paper Table 1; no released weights)."""
    model_args = dict(embed_dim=576, num_heads=9)
    return _create_convit('convit_s_plus', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=153_134_856, **_counts(30.765, 30.0, 29.819, _PLUS))
def convit_b_plus(pretrained=False, **kwargs) -> ConViT:
    """ConViT-B+ (paper Table 1; no released weights)."""
    model_args = dict(embed_dim=1024, num_heads=16)
    return _create_convit('convit_b_plus', pretrained, **dict(model_args, **kwargs))
