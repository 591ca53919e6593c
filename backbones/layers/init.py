"""Weight init shared by the families whose official code initialises every dense kernel the same way."""
from functools import partial
from typing import Callable, Optional, Tuple, Type

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from .relpos import RelPosBias

__all__ = ['init_weights_']


def init_weights_(
        model: nn.Module,
        types: Tuple[Type[nn.Module], ...] = (nn.Linear,),
        weight_init: Callable[[torch.Tensor], object] = partial(trunc_normal_, std=.02),
        rel_pos_std: Optional[float] = None,
) -> None:
    """``weight_init`` on the weight of every module of ``types`` in ``model`` (default: truncated normal, std 0.02,
    the ViT-era official inits) with its bias zeroed, and with ``rel_pos_std`` a normal init of every
    :class:`~backbones.layers.RelPosBias` table, in module order (one pass: the random draws fall as in the
    official per-module loops). Modules on the meta device are skipped (nothing to fill; ``trunc_normal_`` is slow
    there); norms keep torch's ones / zeros."""
    for m in model.modules():
        if isinstance(m, types):
            if m.weight.is_meta:
                continue
            weight_init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif rel_pos_std is not None and isinstance(m, RelPosBias):
            nn.init.normal_(m.relative_position_bias_table, std=rel_pos_std)
