"""Weight init shared by the families: the one-pass init of the families whose official code initialises every dense
kernel the same way, and the rule that a model built on the meta device is not initialised at all."""
import functools
from functools import partial
from typing import Callable, Optional, Tuple, Type

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from .relpos import RelPosBias

__all__ = ['init_weights_', 'is_meta', 'skip_on_meta']


def is_meta(model: nn.Module) -> bool:
    """Whether ``model`` was built on the meta device (its first parameter, or buffer, is a meta tensor)."""
    t = next(model.parameters(), None)
    if t is None:
        t = next(model.buffers(), None)
    return t is not None and t.is_meta


def skip_on_meta(init: Callable) -> Callable:
    """For a model's ``init_weights``: a model on the meta device has nothing to fill, and torch's init functions
    run there as slow Python decompositions (most of the time of a meta build), so the init is skipped."""
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        if is_meta(self):
            return None
        return init(self, *args, **kwargs)
    return wrapper


def init_weights_(
        model: nn.Module,
        types: Tuple[Type[nn.Module], ...] = (nn.Linear,),
        weight_init: Callable[[torch.Tensor], object] = partial(trunc_normal_, std=.02),
        rel_pos_std: Optional[float] = None,
) -> None:
    """``weight_init`` on the weight of every module of ``types`` in ``model`` (default: truncated normal, std 0.02,
    the ViT-era official inits) with its bias zeroed, and with ``rel_pos_std`` a normal init of every
    :class:`~backbones.layers.RelPosBias` table, in module order (one pass: the random draws fall as in the
    official per-module loops); norms keep torch's ones / zeros. A model on the meta device is left as it is
    (:func:`skip_on_meta`)."""
    if is_meta(model):
        return
    for m in model.modules():
        if isinstance(m, types):
            weight_init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif rel_pos_std is not None and isinstance(m, RelPosBias):
            nn.init.normal_(m.relative_position_bias_table, std=rel_pos_std)
