"""A stage: optional downsample, then a sequence of blocks, with its own grad-checkpointing flag; and the one place
that turns timm's ``output_stride`` into per-stage strides and dilations."""
import numbers
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
from timm.layers import calculate_drop_path_rates
from timm.models import checkpoint_seq

__all__ = ['Stage', 'StageStride', 'drop_path_schedule', 'stage_strides', 'check_output_stride', 'downsamples']


def drop_path_schedule(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Stochastic-depth rates rising linearly from 0 over all blocks, split per stage."""
    return calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)


class StageStride(NamedTuple):
    """How one stage downsamples once ``output_stride`` is applied (:func:`stage_strides`).

    ``stride``: the stride its strided layer applies (1 where the stage is dilated instead); ``first_dilation``: the
    dilation of that strided layer (the previous stage's ``dilation``: timm's ``first_dilation``); ``dilation``: the
    dilation of every spatial layer after it; ``reduction``: the total stride of the stage's output.
    """
    stride: int
    first_dilation: int
    dilation: int
    reduction: int


def stage_strides(
        strides: Sequence[int],
        output_stride: Optional[int] = None,
        stem_reduction: int = 1,
        model: str = 'model',
) -> List[StageStride]:
    """Per-stage strides and dilations giving a network of total stride ``output_stride`` (timm's semantics).

    Stages downsample as built until the running stride reaches ``output_stride``; every later stage keeps its
    resolution and dilates instead (the "atrous" / DeepLab trick): its strided layer runs at stride 1 with the
    previous dilation, and its other spatial layers with the previous dilation times the stride it gave up, so each
    sees the same neighbourhood as in the undilated network. timm's ResNets (``resnet.make_blocks``) do the same.

    Args:
        strides: stride of each stage.
        output_stride: wanted total stride (None: the network's own, ``stem_reduction * prod(strides)``). Valid: the
            network's own, or a stride some stage reaches that is at least 8 (8 and 16 for the usual 32-stride nets).
        stem_reduction: total stride of what comes before the first stage.
        model: name for the error message.
    """
    reductions, r = [], stem_reduction
    for s in strides:
        r *= s
        reductions.append(r)
    valid = sorted({x for x in reductions if x >= 8} | {reductions[-1]})
    if output_stride is None:
        output_stride = reductions[-1]
    if isinstance(output_stride, bool) or not isinstance(output_stride, numbers.Integral) \
            or output_stride not in valid:
        raise ValueError(
            f'{model}: output_stride must be one of {", ".join(map(str, valid))} (the strides its stages reach; '
            f'stages past it keep their resolution and dilate instead), got {output_stride!r}')
    out, reduction, dilation = [], stem_reduction, 1
    for s in strides:
        first_dilation = dilation
        if reduction >= output_stride:
            dilation *= s
            s = 1
        else:
            reduction *= s
        out.append(StageStride(s, first_dilation, dilation, reduction))
    return out


def downsamples(stride: int, dilation: int = 1, first_dilation: Optional[int] = None) -> bool:
    """Whether a block downsamples in the undilated network: it strides, or it is the first block of a stage that
    dilates instead (its ``first_dilation`` is the previous stage's, smaller than its stage's ``dilation``). Such a
    block keeps its downsampling shortcut's form (pool, projection kernel), at stride 1."""
    return stride > 1 or (first_dilation is not None and first_dilation != dilation)


def check_output_stride(output_stride: Optional[int], native: Optional[int], model: str, why: str) -> None:
    """For a network that cannot dilate: accept ``output_stride`` None or ``native`` (its own total stride; None: the
    network has no single one), else one ``ValueError`` naming the network and ``why`` it cannot keep a
    resolution."""
    if output_stride is None or output_stride == native:
        return
    own = f'only output_stride={native}, its own total stride' if native is not None else 'no output_stride'
    raise ValueError(f'{model} takes {own} ({why}); got {output_stride!r}')


class Stage(nn.Module):
    """``downsample`` (Identity when the blocks downsample themselves) followed by ``blocks``; NCHW in and out.

    Build it from a block factory with :meth:`Stage.from_blocks`, which gives the stride and the input width to
    the first block only, and each block its drop-path rate and dilations.

    Args:
        blocks: the stage's blocks, run in order (through ``checkpoint_seq`` when ``grad_checkpointing``).
        downsample: what opens the stage (None: nothing).
        channels_last: the blocks take and return ``[B, H, W, C]`` maps (token-wise norms and linears, LSTMs over
            rows): the stage permutes the downsample's NCHW output (into contiguous memory) and its own output back
            to an NCHW view.
        downsample_channels_last: with ``channels_last``, the downsample already returns ``[B, H, W, C]`` (a patch
            embedding that norms over the last axis), so only the output is permuted.
    """

    def __init__(
            self,
            blocks: Sequence[nn.Module],
            downsample: Optional[nn.Module] = None,
            channels_last: bool = False,
            downsample_channels_last: bool = False,
    ):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False
        self.permute_in = channels_last and not downsample_channels_last
        self.permute_out = channels_last

    @classmethod
    def from_blocks(
            cls,
            block_fn: Callable[..., nn.Module],
            depth: int,
            in_chs: int,
            out_chs: int,
            stride: int,
            drop_path_rates: Sequence[float],
            downsample: Optional[nn.Module] = None,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            **block_kwargs,
    ) -> 'Stage':
        """``block_fn(in_chs, out_chs, stride=, first=, drop_path=, dilation=, first_dilation=, **block_kwargs)`` for
        each of ``depth`` blocks: the first block gets ``stride`` and ``first_dilation`` (default ``dilation``) for its
        strided layer, the others stride 1 and ``dilation`` throughout (see :class:`StageStride`)."""
        first_dilation = dilation if first_dilation is None else first_dilation
        blocks = []
        for i in range(depth):
            blocks.append(block_fn(
                in_chs if i == 0 else out_chs,
                out_chs,
                stride=stride if i == 0 else 1,
                first=i == 0,
                drop_path=drop_path_rates[i],
                dilation=dilation,
                first_dilation=first_dilation if i == 0 else dilation,
                **block_kwargs,
            ))
        return cls(blocks, downsample=downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.permute_in:
            x = x.permute(0, 2, 3, 1).contiguous()
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        if self.permute_out:
            x = x.permute(0, 3, 1, 2)
        return x
