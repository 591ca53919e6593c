"""Classifier heads on one protocol (``reset``, ``prune``, ``hidden_size``): pool -> [norm] -> dropout -> fc; timm's
NormMlpClassifierHead; a pooled conv embedding with an optional distillation classifier. The pooling types a head
takes."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import GELU, NormMlpClassifierHead, SelectAdaptivePool2d

from .conv import LayerType
from .fuse import fuse_conv_bn
from .tracing import contiguous_for_export

__all__ = ['Head', 'NormMlpHead', 'DistilledConvHead', 'POOL_TYPES', 'check_pool_type']

# timm's SelectAdaptivePool2d types (case-insensitive); '' keeps the feature map
POOL_TYPES = ('avg', 'max', 'avgmax', 'catavgmax', 'fast', 'fastavg', 'fastmax', 'fastavgmax', 'fastcatavgmax', '')


def check_pool_type(pool_type: str, width_preserving: bool = False) -> str:
    """Return ``pool_type`` if a head takes it, else raise one clear error listing the valid types.

    ``width_preserving``: the head norms the pooled vector, so the concatenating pools (which double its width)
    are refused too.
    """
    valid: Tuple[str, ...] = tuple(p for p in POOL_TYPES if not (width_preserving and p.endswith('catavgmax')))
    if not isinstance(pool_type, str):
        raise TypeError(f"global_pool must be a string, one of {_quoted(valid)} ('' = no pooling); got {pool_type!r}")
    if pool_type.lower() not in valid:
        why = '; this head norms the pooled vector, so no pool that doubles its width' if width_preserving else ''
        raise ValueError(
            f"unknown global_pool {pool_type!r}: valid are {_quoted(valid)} ('' = no pooling){why}")
    return pool_type


def _quoted(names) -> str:
    return ', '.join(repr(n) for n in names)


class Head(nn.Module):
    """Global pooling, optional norm on the pooled vector, dropout and the linear classifier.

    ``forward(x, pre_logits=True)`` stops before ``fc`` and returns ``[B, hidden_size]``.
    ``pool_type=''`` keeps the spatial map (then ``fc`` must be disabled with ``num_classes=0``); a head norm is then
    applied over the channels at every position.
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            pool_type: str = 'avg',
            drop_rate: float = 0.,
            norm_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_features = in_features
        self.drop_rate = drop_rate
        self._norm_layer = norm_layer
        check_pool_type(pool_type, width_preserving=norm_layer is not None)
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.unpooled = not pool_type
        self.hidden_size = in_features * self.global_pool.feat_mult()
        self.norm = norm_layer(self.hidden_size, **dd) if norm_layer is not None else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None, device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        if pool_type is not None:
            check_pool_type(pool_type, width_preserving=self._norm_layer is not None)
            self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
            self.unpooled = not pool_type
            self.hidden_size = self.in_features * self.global_pool.feat_mult()
        self.fc = nn.Linear(self.hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def prune(self, in_features: int):
        """What ``prune_intermediate_layers`` leaves: no pooling, norm or classifier, for ``in_features`` channels
        (the deepest stage kept)."""
        self.in_features = in_features
        self.reset(0, '')
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(contiguous_for_export(x))  # (a channels-last map would make batch 1 a special case)
        if self.unpooled:  # pool_type='': the norm acts on the channels at every position of the map
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            x = self.norm(x)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class NormMlpHead(NormMlpClassifierHead):
    """timm's ``NormMlpClassifierHead`` (pool -> norm -> [Linear + act] -> dropout -> fc; same layers and names) on
    the zoo's head protocol: a pooling type is checked with one clear error before timm's assertion, and
    :meth:`prune` leaves pooling off and no norm, pre-logits layer or classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden_size: Optional[int] = None, pool_type: str = 'avg',
                 **kwargs):
        check_pool_type(pool_type, width_preserving=True)  # the norm acts on the pooled vector
        super().__init__(in_features, num_classes, hidden_size, pool_type, **kwargs)

    def reset(self, num_classes: int, pool_type: Optional[str] = None, reset_other: bool = False,
              in_features: Optional[int] = None, device=None, dtype=None):
        if pool_type is not None:
            check_pool_type(pool_type, width_preserving=True)  # the norm acts on the pooled vector
        super().reset(num_classes, pool_type, reset_other=reset_other, in_features=in_features, device=device,
                      dtype=dtype)

    def prune(self, in_features: int):
        self.reset(0, '', reset_other=True, in_features=in_features)


class DistilledConvHead(nn.Module):
    """Pool -> 1x1 ``conv`` + ``norm`` (BN) + ``act`` (GELU) = the pre-logits embedding -> dropout -> ``fc``, and
    with ``distilled`` a second classifier ``fc_dist`` on the same embedding (MobileViG-style heads; RapidNet's
    official ``prediction`` + ``head`` + ``dist_head``).

    The output is ``fc``'s logits, or for a distilled head the average of both classifiers; in training mode with
    ``distilled_training`` set it is the tuple ``(fc, fc_dist)`` instead (timm's DeiT convention).
    ``pool_type=''`` keeps the map: the embedding is then computed at every position (use ``num_classes=0``).

    Args:
        in_features: channels of the final feature map.
        hidden_size: embedding width (official ``emb_dims``).
        num_classes: classes of each classifier (0: none).
        pool_type: global pooling (any timm type that keeps the width).
        drop_rate: dropout before the classifiers.
        distilled: build the distillation classifier.
    """

    def __init__(
            self,
            in_features: int,
            hidden_size: int,
            num_classes: int,
            pool_type: str = 'avg',
            drop_rate: float = 0.,
            distilled: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_features = in_features
        self.hidden_size = hidden_size
        self.distilled = distilled
        self.distilled_training = False
        self._set_pool(pool_type)
        self.conv = nn.Conv2d(in_features, hidden_size, 1, **dd)
        self.norm = nn.BatchNorm2d(hidden_size, **dd)
        self.act = GELU()
        self.drop = nn.Dropout(drop_rate)
        self._set_classifiers(num_classes, **dd)

    def _set_pool(self, pool_type: str):
        # the pooled width must stay C: the head's 1x1 conv takes it (so no 'catavgmax')
        check_pool_type(pool_type, width_preserving=True)
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type)  # keeps [B, C, 1, 1] for the 1x1 conv
        self.flatten = nn.Flatten(1) if pool_type else nn.Identity()

    def _set_classifiers(self, num_classes: int, device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        self.fc = nn.Linear(self.hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        # without distillation a parameter-free placeholder (TorchScript compiles both branches of forward)
        self.fc_dist = nn.Linear(self.hidden_size, num_classes, **dd) \
            if self.distilled and num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None, device=None, dtype=None):
        if pool_type is not None:
            self._set_pool(pool_type)
        self._set_classifiers(num_classes, device=device, dtype=dtype)

    def prune(self, in_features: int):
        """No pooling, embedding or classifier: the embedding conv is sized for the last stage and comes after the
        pool, so a pruned model returns raw stage features."""
        self.in_features = self.hidden_size = in_features
        self.reset(0, '')
        self.conv = nn.Identity()
        self.norm = nn.Identity()
        self.act = nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.act(self.norm(self.conv(x)))
        x = self.drop(self.flatten(x))
        if pre_logits:
            return x
        if not self.distilled:
            return self.fc(x)
        x, x_dist = self.fc(x), self.fc_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist  # separate logits for a distillation loss
        return (x + x_dist) / 2

    @torch.no_grad()
    def reparameterize(self):
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.norm)
            self.norm = nn.Identity()
