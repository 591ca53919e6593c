"""Small shared helpers: input validation with clear errors."""
from typing import Tuple

import torch
from timm.layers import register_notrace_function

__all__ = ['check_input']


@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int, divisor: int = 1, model: str = 'model') -> Tuple[int, int]:
    """Raise a ``ValueError`` naming what was expected when ``x`` is not an image batch this model can take.

    Args:
        x: input batch, expected ``[B, in_chans, H, W]``.
        in_chans: number of input channels the model was built for.
        divisor: ``H`` and ``W`` must be multiples of it (the model's size rule; 1 = any size).
        model: name used in the message.
    Returns:
        ``(H, W)``.
    """
    if x.dim() != 4:
        raise ValueError(f'{model} expects a 4-D image batch [B, {in_chans}, H, W], got shape {list(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'{model} expects {in_chans} input channels (in_chans={in_chans}), got {x.shape[1]} '
            f'(input shape {list(x.shape)})')
    h, w = x.shape[-2], x.shape[-1]
    if h % divisor != 0 or w % divisor != 0:
        raise ValueError(
            f'{model} takes input sides that are multiples of {divisor}, got {h}x{w}')
    return h, w
