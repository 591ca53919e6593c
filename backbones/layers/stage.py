"""A stage: optional downsample, then a sequence of blocks, with its own grad-checkpointing flag."""
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn
from timm.layers import calculate_drop_path_rates
from timm.models import checkpoint_seq

__all__ = ['Stage', 'drop_path_schedule']


def drop_path_schedule(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Stochastic-depth rates rising linearly from 0 over all blocks, split per stage."""
    return calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)


class Stage(nn.Module):
    """``downsample`` (Identity when the blocks downsample themselves) followed by ``blocks``.

    Build it from a block factory with :meth:`Stage.from_blocks`, which gives the stride and the input width to
    the first block only, and each block its drop-path rate.
    """

    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module] = None):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

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
            **block_kwargs,
    ) -> 'Stage':
        """``block_fn(in_chs, out_chs, stride=, first=, drop_path=, **block_kwargs)`` for each of ``depth`` blocks."""
        blocks = []
        for i in range(depth):
            blocks.append(block_fn(
                in_chs if i == 0 else out_chs,
                out_chs,
                stride=stride if i == 0 else 1,
                first=i == 0,
                drop_path=drop_path_rates[i],
                **block_kwargs,
            ))
        return cls(blocks, downsample=downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x
