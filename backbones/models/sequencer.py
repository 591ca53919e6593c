"""Sequencer2D: bidirectional LSTMs over the rows and columns of the feature map in place of self-attention.

Paper: "Sequencer: Deep LSTM for Image Classification", Yuki Tatsunami, Masato Taki (NeurIPS 2022),
https://arxiv.org/abs/2205.01972. Official code: https://github.com/okojoalg/sequencer (commit 408520e7,
``models/two_dim_sequencer.py``, ``models/layers.py``; built on timm 0.5.4), Apache-2.0. timm ships the same network
as ``sequencer2d_{s,m,l}`` and re-hosts the official ImageNet-1k weights.

The network: a 7x7 stride-7 conv patch embedding (224 -> 32x32, width 192), then four stages of Sequencer2D blocks
(depths S 4-3-8-3, M 4-3-14-3, L 8-8-16-4; widths 192-384-384-384), stages 2-4 opening with a conv whose kernel =
stride = the stage's patch size (2, 1, 1: the last two are 1x1 convs that keep the 16x16 resolution). Block (pre-norm,
LayerNorm eps 1e-6, channels-last ``[B, H, W, C]``)::

    x = x + BiLSTM2D(norm1(x));  x = x + MLP(norm2(x))        (MLP: C -> 3C -> C, exact GELU)

BiLSTM2D (hidden size ``h = C / 4``): one bidirectional LSTM runs down every column (sequences of length H), another
along every row (length W); the outputs ``[vertical fwd | bwd | horizontal fwd | bwd]`` (4h channels) are mixed by a
Linear 4h -> C. Head: LayerNorm -> global average -> Linear.

The LSTMs (:class:`BiLSTM`) are ``nn.LSTM`` in all but name: the same base class, hence the same parameters and
state dict as timm's and the official code (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0`` and
their ``_reverse``), and the same fused kernel (oneDNN on CPU, cuDNN on GPU), fed time-major sequences (no
batch-first transposes around the kernel). Unlike ``nn.LSTM``, TorchDynamo traces them: ``torch.compile(fullgraph=
True)`` captures the whole network as one graph, each LSTM one ``aten.lstm`` node running the eager kernel, so
compiled outputs equal eager ones exactly; no global Dynamo flag (``allow_rnn``) is involved. ``torch.export`` keeps
the batch dynamic; height and width are fixed by the example input, because tracing ``aten.lstm`` (as any LSTM in
PyTorch 2.x) unrolls its time steps.

Input sizes: sides must be multiples of 14 (the stem's stride 7, then the stride-2 conv); other sizes raise a
``ValueError``. At multiples of 14 the numbers are timm's; timm also runs other sizes, where its strided convs
silently drop the last rows / columns, and the official model takes 224 only (its patch embedding asserts the size).

Other differences from timm (none changes inference): stage outputs and ``forward_features`` are NCHW maps (timm:
NHWC); grad checkpointing works (timm refuses it); stochastic depth rises linearly over the blocks as in the official
code (``get_stage``: ``rate * block_index / (num_blocks - 1)``, read in its timm 0.6.13 port, the one that loaded the
official release files as they are), where timm 1.0.31 gives every block the full rate.

Weights: the official ImageNet-1k checkpoints as re-hosted by timm (``timm/sequencer2d_{s,m,l}.in1k``, timm's layout
= ours). The official release files
(``https://github.com/okojoalg/sequencer/releases/download/weights/sequencer2d_{s,m,l}.pth``, layout ``blocks.<stage>
.<block>`` with each stage's downsample appended as its last element, ``head``) are converted by
``checkpoint_filter_fn``.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d, lecun_normal_, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._checkpoint import convert_state_dict
from .._features import StageFeatureMixin, feature_cfg
from .._registry import Family, register_family, register_zoo_model, zoo_cfg
from ..layers.activation import InplaceGELU
from ..layers.helpers import check_img_size
from ..layers.init import skip_on_meta
from ..layers.mlp import Mlp
from ..layers.stage import Stage, StageStride, check_output_stride, drop_path_schedule
from ..layers.tracing import contiguous_for_export, is_symbolic_tracing
from ..layers.window import contiguous_reshape

__all__ = ['Sequencer2d', 'BiLSTM2d', 'BiLSTM']

FAMILY = register_family(Family(
    name='sequencer',
    bibtex="""
@inproceedings{tatsunami2022sequencer,
  title={Sequencer: Deep LSTM for Image Classification},
  author={Tatsunami, Yuki and Taki, Masato},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2022}
}""",
    arxiv='2205.01972',
    repo='okojoalg/sequencer',
    license='apache-2.0',
    module=__name__,
    oracle="timm sequencer2d_* models (random non-trivial weights through checkpoint_filter_fn); the official layout "
           "through timm's key mapping",
    weights='official ImageNet-1k weights as re-hosted by timm (timm/sequencer2d_{s,m,l}.in1k)',
))

EPS = 1e-6  # every LayerNorm of the official code


def _lines(x: torch.Tensor, vertical: bool) -> torch.Tensor:
    """``[B, H, W, D]`` -> time-major sequences: the columns top to bottom ``[H, B*W, D]`` (vertical) or the rows
    left to right ``[W, B*H, D]``."""
    B, H, W, D = x.shape
    if vertical:
        return contiguous_reshape(x.permute(1, 0, 2, 3), [H, B * W, D])
    return contiguous_reshape(x.permute(2, 0, 1, 3), [W, B * H, D])


def _unlines(y: torch.Tensor, B: int, H: int, W: int, vertical: bool) -> torch.Tensor:
    """Inverse of :func:`_lines`: ``[T, N, D]`` -> ``[B, H, W, D]``."""
    D = y.shape[-1]
    if vertical:
        return y.reshape(H, B, W, D).permute(1, 0, 2, 3)
    return y.reshape(W, B, H, D).permute(1, 2, 0, 3)


@register_notrace_module  # a leaf for timm's FX feature extraction (its forward branches on the device)
class BiLSTM(nn.RNNBase):
    """One-layer bidirectional LSTM on time-major sequences: ``[T, N, C] -> [T, N, 2h]`` (forward | backward
    hidden states; zero initial state).

    This is ``nn.LSTM(C, h, bidirectional=True)``: the same base class and therefore the same parameters
    (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0`` and ``_reverse``), initialisation, cuDNN
    weight flattening, and the same fused kernel (``torch.lstm``, the op ``nn.LSTM.forward`` calls). The only
    difference is that TorchDynamo can trace it: Dynamo refuses to wrap ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` modules
    (a graph break per call; an error under ``fullgraph=True``) but traces the op itself, which lands in the graph as
    one ``aten.lstm`` node. Compiled and exported models therefore run the eager kernel, with identical numbers.

    On the meta device only the output shape is produced (``aten.lstm`` has no meta kernel: its fallback steps
    through every time step in Python, seconds per call).
    """

    def __init__(self, input_size: int, hidden_size: int, device=None, dtype=None):
        super().__init__('LSTM', input_size, hidden_size, bidirectional=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_symbolic_tracing() and x.is_meta:
            return x.new_empty(x.shape[0], x.shape[1], 2 * self.hidden_size)
        h0 = x.new_zeros(2, x.shape[1], self.hidden_size)
        weights = [  # the parameters themselves, not nn.LSTM's _flat_weights list (export lifts the list as constants)
            self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0,
            self.weight_ih_l0_reverse, self.weight_hh_l0_reverse, self.bias_ih_l0_reverse, self.bias_hh_l0_reverse,
        ]
        return torch.lstm(x, (h0, h0), weights, True, 1, 0., self.training, True, False)[0]


class BiLSTM2d(nn.Module):
    """BiLSTM2D token mixer on ``[B, H, W, C]``: ``fc([BiLSTM down the columns | BiLSTM along the rows])``.

    Args:
        dim: channels ``C`` in and out.
        hidden_size: hidden size ``h`` of each LSTM direction (the concatenation is ``4h`` wide).
    """

    def __init__(self, dim: int, hidden_size: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.rnn_v = BiLSTM(dim, hidden_size, **dd)
        self.rnn_h = BiLSTM(dim, hidden_size, **dd)
        self.fc = nn.Linear(4 * hidden_size, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        v = _unlines(self.rnn_v(_lines(x, vertical=True)), B, H, W, vertical=True)
        h = _unlines(self.rnn_h(_lines(x, vertical=False)), B, H, W, vertical=False)
        return self.fc(torch.cat([v, h], dim=-1))


class SequencerBlock(nn.Module):
    """Sequencer2D block on ``[B, H, W, C]``: ``x + rnn_tokens(norm1(x))``, then ``x + mlp_channels(norm2(x))``.

    Args:
        dim: width ``C``.
        hidden_size: LSTM hidden size per direction.
        mlp_ratio: MLP hidden width / ``C``.
        proj_drop: dropout inside the MLP.
        drop_path: stochastic depth of both residual branches.
    """

    def __init__(
            self, dim: int, hidden_size: int, mlp_ratio: float = 3., proj_drop: float = 0., drop_path: float = 0.,
            device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=EPS, **dd)
        self.rnn_tokens = BiLSTM2d(dim, hidden_size, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=EPS, **dd)
        self.mlp_channels = Mlp(dim, int(dim * mlp_ratio), act_layer=InplaceGELU, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.rnn_tokens(self.norm1(x)))
        x = x + self.drop_path2(self.mlp_channels(self.norm2(x)))
        return x


class PatchEmbed(nn.Module):
    """The stem: ``proj``, a non-overlapping ``patch_size`` conv with bias (NCHW in and out)."""

    def __init__(self, in_chs: int, out_chs: int, patch_size: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, patch_size, stride=patch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """A stage's opening conv ``down``: kernel = stride = ``patch_size``, with bias (NCHW in and out). A 1x1 conv
    (``patch_size=1``) only changes the width."""

    def __init__(self, in_chs: int, out_chs: int, patch_size: int, device=None, dtype=None):
        super().__init__()
        self.down = nn.Conv2d(in_chs, out_chs, patch_size, stride=patch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(contiguous_for_export(x))  # the blocks' output is a permuted channels-last map


class Sequencer2d(StageFeatureMixin, nn.Module):
    """Sequencer2D-S/M/L.

    Args:
        depths: blocks per stage.
        patch_sizes: stride of the stem (stage 1) and of each later stage's opening conv.
        embed_dims: stage widths.
        hidden_sizes: LSTM hidden size per direction, per stage.
        mlp_ratio: MLP hidden width / stage width.
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning (stochastic depth rises
            linearly over all blocks).
        proj_drop_rate: dropout inside the MLPs.
        nlhb: initialise the classifier bias to ``-log(num_classes)`` (official option; training from scratch only).
        img_size: nominal input size (sides: multiples of the total stride), recorded only, as timm's Sequencer2D.
        output_stride: only 14, the total stride (its BiLSTMs read whole rows and columns: no stage can dilate).
    """

    def __init__(
            self,
            depths: Sequence[int] = (4, 3, 8, 3),
            patch_sizes: Sequence[int] = (7, 2, 1, 1),
            embed_dims: Sequence[int] = (192, 384, 384, 384),
            hidden_sizes: Sequence[int] = (48, 96, 96, 96),
            mlp_ratio: float = 3.,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            nlhb: bool = False,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            output_stride: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        assert len(depths) == len(patch_sizes) == len(embed_dims) == len(hidden_sizes), \
            'depths, patch_sizes, embed_dims and hidden_sizes: one per stage'
        # every patch conv must tile its input exactly
        self.init_model(type(self).__name__, in_chans, num_classes, drop_rate, input_divisor=math.prod(patch_sizes))
        self.img_size = check_img_size(img_size, self._model_name, divisor=self.input_divisor)
        check_output_stride(
            output_stride, self.input_divisor, self._model_name, 'its stride is set by a 7x7 patch embedding and one '
            '2x2 merge, 14 in all, so 16 and 8 do not exist; and its BiLSTMs read whole rows and columns, which '
            'dilation cannot keep equivalent')

        self.stem = PatchEmbed(in_chans, embed_dims[0], patch_sizes[0], **dd)
        dprs = drop_path_schedule(drop_path_rate, depths)

        def make_stage(i: int, in_chs: int, dim: int, s: StageStride) -> Stage:
            # the downsample runs on the NCHW input; the blocks on channels-last maps (views: the memory stays
            # channels-last from stage to stage)
            downsample = Downsample(in_chs, dim, patch_sizes[i], **dd) if i > 0 else None
            blocks = [SequencerBlock(dim, hidden_sizes[i], mlp_ratio, proj_drop_rate, dprs[i][j], **dd)
                      for j in range(depths[i])]
            return Stage(blocks, downsample, channels_last=True)

        self.build_stages(make_stage, list(embed_dims), [1] + list(patch_sizes[1:]), stem_reduction=patch_sizes[0])
        self.build_head(num_classes, global_pool, drop_rate, norm=LayerNorm2d(self.num_features, eps=EPS, **dd), **dd)

        self.init_weights(nlhb=nlhb)

    @torch.jit.ignore
    @skip_on_meta
    def init_weights(self, nlhb: bool = False):
        """The official (MLP-Mixer style) init: xavier-uniform Linear weights with zero biases (MLP biases
        N(0, 1e-6)), lecun-normal convs, LSTM parameters U(±1/sqrt(h)), zero classifier weight (bias 0, or
        ``-log(num_classes)`` with ``nlhb``)."""
        head_bias = -math.log(self.num_classes) if nlhb and self.num_classes > 0 else 0.
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.startswith('head'):
                    nn.init.zeros_(m.weight)
                    nn.init.constant_(m.bias, head_bias)
                    continue
                nn.init.xavier_uniform_(m.weight)
                if '.mlp_channels.' in name:
                    nn.init.normal_(m.bias, std=1e-6)
                else:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                lecun_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, BiLSTM):
                m.reset_parameters()  # nn.LSTM's: U(±1/sqrt(h))

# official layout -> ours (= timm's): each stage's downsample is the last element of the previous stage's Sequential
def _official_downsample(m) -> str:
    return f'stages.{int(m.group(1)) + 1}.downsample.down.'


_OFFICIAL_RULES = [
    (r'^blocks\.(\d+)\.\d+\.down\.', _official_downsample),
    (r'^blocks\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
]


def checkpoint_filter_fn(state_dict, model):
    """Accepts our layout (= timm's ``sequencer2d_*``, e.g. ``timm/sequencer2d_s.in1k``) or the official one
    (``blocks.<stage>.<block>``, ``blocks.<stage>.<depth>.down``, ``head``; possibly inside ``{'model': ...}``)."""
    return convert_state_dict(state_dict, model, _OFFICIAL_RULES, FAMILY.name, first_conv='stem.proj')


def _create_sequencer(variant, pretrained=False, **kwargs):
    return build_model_with_cfg(
        Sequencer2d, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        # timm's sequencer2d_* default (the first three of the four levels), so that configs written for it run
        # unchanged; out_indices=(0, 1, 2, 3) gives all four
        feature_cfg=feature_cfg(out_indices=(0, 1, 2)),
        **kwargs,
    )


def _cfg(hf_hub_id, **kwargs):
    return zoo_cfg(
        FAMILY, hf_hub_id=hf_hub_id, pool_size=(16, 16), min_input_size=(3, 14, 14), crop_pct=0.875,
        interpolation='bicubic', first_conv='stem.proj', classifier='head.fc', **kwargs)


default_cfgs = generate_default_cfgs({
    'sequencer2d_small.in1k': _cfg('timm/sequencer2d_s.in1k'),
    'sequencer2d_medium.in1k': _cfg('timm/sequencer2d_m.in1k'),
    'sequencer2d_large.in1k': _cfg('timm/sequencer2d_l.in1k'),
})

_COMMON = dict(patch_sizes=(7, 2, 1, 1), embed_dims=(192, 384, 384, 384), hidden_sizes=(48, 96, 96, 96))


def _counts(readme: float) -> dict:
    return dict(
        gmacs=readme,
        gmacs_source=f'official README: {readme}G FLOPs (MACs, LSTMs included); counted here as conv / linear MACs '
                     f'plus 4h(C + h) per LSTM direction, time step and sequence (the gate matmuls; biases and gate '
                     f'non-linearities not counted)',
    )


@register_zoo_model(params=27_651_688, top1=82.3, **_counts(8.4), timm_twin='sequencer2d_s')
def sequencer2d_small(pretrained=False, **kwargs) -> Sequencer2d:
    """Sequencer2D-S."""
    model_args = dict(depths=(4, 3, 8, 3), **_COMMON)
    return _create_sequencer('sequencer2d_small', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=38_307_688, top1=82.8, **_counts(11.1), timm_twin='sequencer2d_m')
def sequencer2d_medium(pretrained=False, **kwargs) -> Sequencer2d:
    """Sequencer2D-M."""
    model_args = dict(depths=(4, 3, 14, 3), **_COMMON)
    return _create_sequencer('sequencer2d_medium', pretrained, **dict(model_args, **kwargs))


@register_zoo_model(params=54_298_216, top1=83.4, **_counts(16.6), timm_twin='sequencer2d_l')
def sequencer2d_large(pretrained=False, **kwargs) -> Sequencer2d:
    """Sequencer2D-L."""
    model_args = dict(depths=(8, 8, 16, 4), **_COMMON)
    return _create_sequencer('sequencer2d_large', pretrained, **dict(model_args, **kwargs))
