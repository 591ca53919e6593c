"""The ResNet-shaped skeleton that SENet, SKNet, Res2Net and RedNet are built on.

stem (total stride 4) -> four stages of residual blocks (strides 1, 2, 2, 2; widths 256..2048) -> Head.
A family supplies its stem and its block factory; everything else (drop-path schedule, grad checkpointing,
features, classifier handling, init) lives here once.
"""
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .._features import StageFeatureMixin, stage_feature_info
from ..layers import Bottleneck, Head, Stage, drop_path_schedule

__all__ = ['ResNetSkeleton']


class ResNetSkeleton(StageFeatureMixin, nn.Module):
    """stem -> stages -> head.

    Args:
        stem: module with ``out_chs`` and ``reduction`` attributes (and ``min_input_size``, the smallest input side
            it takes, when that is not 1).
        block_fn: ``block_fn(in_chs, out_chs, stride=, first=, drop_path=, device=, dtype=)``.
        depths: blocks per stage.
        widths: output channels per stage.
        strides: stride of each stage's first block.
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning.
        zero_init_last: zero the last BN of every residual branch at init.
        input_divisor: input sides must be multiples of this (1 = any size).
    """

    def __init__(
            self,
            stem: nn.Module,
            block_fn: Callable[..., nn.Module],
            depths: Sequence[int],
            widths: Sequence[int] = (256, 512, 1024, 2048),
            strides: Sequence[int] = (1, 2, 2, 2),
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = False,
            input_divisor: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.input_divisor = input_divisor
        self._model_name = type(self).__name__  # for error messages (TorchScript cannot read self.__class__)
        self.min_input_size = getattr(stem, 'min_input_size', 1)  # the stages pad: the stem sets the minimum
        self.grad_checkpointing = False

        self.stem = stem
        prev_chs, reduction = stem.out_chs, stem.reduction
        dprs = drop_path_schedule(drop_path_rate, depths)
        stages, reductions = [], []
        for i, (depth, width, stride) in enumerate(zip(depths, widths, strides)):
            stages.append(Stage.from_blocks(block_fn, depth, prev_chs, width, stride, dprs[i], **dd))
            prev_chs = width
            reduction *= stride
            reductions.append(reduction)
        self.stages = nn.Sequential(*stages)
        self.feature_info = stage_feature_info(list(widths), reductions)
        self.num_features = prev_chs
        self.norm = nn.Identity()
        self.head = Head(prev_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.hidden_size

        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    m.zero_init_last()


