"""Small shared helpers: validation of inputs, build arguments and feature indices, each failing with one clear
message that names what was expected."""
import numbers
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import register_notrace_function
from torch.fx.node import has_side_effect

from .._timm import feature_take_indices
from .tracing import is_symbolic_tracing

__all__ = ['check_input', 'input_dtype_ref', 'check_model_kwargs', 'check_num_classes', 'check_img_size',
           'refuse_img_size', 'check_feature_indices']


@has_side_effect  # FX dead-code elimination (timm / torchvision feature extraction) must keep the unused call
@register_notrace_function
def check_input(
        x: torch.Tensor,
        in_chans: int,
        divisor: int = 1,
        model: str = 'model',
        min_size: int = 1,
        weight: Optional[torch.Tensor] = None,
        img_size: Optional[Tuple[int, int]] = None,
) -> Tuple[int, int]:
    """Raise one clear error naming what was expected when ``x`` is not an image batch this model can take.

    Every zoo model calls it first in ``forward_features`` / ``forward_intermediates`` (stage models through
    ``StageFeatureMixin._check_input``; a family with another size rule calls it, then checks its rule). In order:

    1. ``x`` is a 4-D batch ``[B, in_chans, H, W]`` with ``in_chans`` channels (``ValueError``);
    2. ``x`` has the dtype of ``weight``, a parameter of the model's input layer (``TypeError``, naming both
       dtypes). Integer input is always refused (images must be converted to float and normalised). Under
       ``torch.autocast`` on ``x``'s device any floating input is accepted: autocast casts it, which is how AMP
       runs (a float32 batch into a float32 model, or a bf16 batch). Skipped when ``weight`` is None and in
       TorchScript, which cannot read the CPU autocast state (torch's own error applies there);
    3. ``H`` and ``W`` are at least ``max(min_size, divisor)`` (``ValueError`` naming the minimum): ``min_size``
       is the smallest side the family's strides, pooling and windows can take;
    4. ``H`` and ``W`` are multiples of ``divisor`` (``ValueError``; 1 = any size);
    5. ``(H, W) == img_size`` when it is given (``ValueError``): for a fixed token grid, e.g. absolute position
       embeddings that are not resized.

    An empty batch (B = 0) passes. Only shapes and dtypes are compared (no ``.item()``, no data access): free at
    run time, constant conditions for ``torch.compile(fullgraph=True)`` and ``torch.export``, and scriptable.

    For FX it is a leaf: one ``call_function`` node that runs these checks, messages included, on every input the
    traced graph gets (whatever its size), marked side-effecting so that dead-code elimination (feature extraction)
    keeps it. timm's tracer knows it from ``register_notrace_function``; plain ``torch.fx.symbolic_trace`` and the
    tracers built on it (torchvision's ``create_feature_extractor``, ``torch.ao``'s ``prepare_fx``) from
    ``torch.fx.wrap('check_input')``, which each module calling it in a forward declares (``torch.fx.wrap`` patches
    the caller's globals). Checks written as ``torch._assert`` ops on the traced sizes would be recorded too, but
    with fixed messages (a traced graph cannot format the size it gets) and without the dtype check.

    Example, a token model with a fixed grid::

        check_input(x, self.in_chans, self.patch_size, 'CrossViT', weight=self.patch_embed.proj.weight,
                    img_size=self.img_size)

    Args:
        x: the input batch.
        in_chans: channels the model was built for.
        divisor: ``H`` and ``W`` must be multiples of it (the model's size rule; 1 = any size).
        model: model name used in the messages.
        min_size: smallest ``H`` / ``W`` the model can take.
        weight: a parameter of the input layer, whose dtype the input must have (None: dtype not checked); in a
            traced graph the module holding it (see :func:`input_dtype_ref`).
        img_size: the only ``(H, W)`` the model takes, if it has one.
    Returns:
        ``(H, W)``.
    """
    if x.dim() != 4:
        raise ValueError(f'{model} expects a 4-D image batch [B, {in_chans}, H, W], got shape {list(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'{model} expects {in_chans} input channels (in_chans={in_chans}), got {x.shape[1]} '
            f'(input shape {list(x.shape)})')
    if not torch.jit.is_scripting():
        if weight is not None:
            _check_dtype(x, weight, model)
    h, w = x.shape[-2], x.shape[-1]
    smallest = max(min_size, divisor)
    if h < smallest or w < smallest:
        rule = f' that are multiples of {divisor}' if divisor > 1 else ''
        raise ValueError(
            f'{model} needs input sides of at least {smallest}{rule} (its strides, pooling and windows take no '
            f'less), got {h}x{w}')
    if h % divisor != 0 or w % divisor != 0:
        raise ValueError(f'{model} takes input sides that are multiples of {divisor}, got {h}x{w}')
    if img_size is not None:
        if h != img_size[0] or w != img_size[1]:
            raise ValueError(f'{model} takes {img_size[0]}x{img_size[1]} inputs only, got {h}x{w}')
    return h, w


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


def input_dtype_ref(module: nn.Module) -> Optional[Union[torch.Tensor, nn.Module]]:
    """What ``check_input`` compares the input's dtype with: the first parameter of ``module`` (a model or its input
    layer: that layer's weight), or None when it has none.

    While FX traces symbolically it is the submodule holding that parameter instead, which the graph records as a
    ``get_attr`` of the module, read at run time: the check follows ``.half()`` after tracing and survives what
    ``torch.ao``'s ``prepare_fx`` / ``convert_fx`` do to the input layer (a convolution fused with its BatchNorm and
    ReLU, then swapped for an int8 one, at the same path; a ``get_attr`` of the weight itself would no longer
    resolve). A quantized module has no floating parameter: its float input is not checked for dtype. Not called in
    TorchScript (no dtype check there)."""
    if is_symbolic_tracing():
        name = next((n for n, _ in module.named_parameters()), None)
        return None if name is None else module.get_submodule(name.rpartition('.')[0])
    return next(module.parameters(), None)


def _check_dtype(x: torch.Tensor, weight: Union[torch.Tensor, nn.Module], model: str):
    if isinstance(weight, nn.Module):  # a traced graph's input layer (input_dtype_ref)
        weight = next((p for p in weight.parameters() if p.is_floating_point()), None)
        if weight is None:  # quantized
            return
    if x.dtype == weight.dtype:
        return
    expected, got = _dtype_name(weight.dtype), _dtype_name(x.dtype)
    if not x.is_floating_point():
        raise TypeError(
            f'{model}: expected {expected} input for a {expected} model, got {got}: convert images to floating point '
            f'and normalise them (timm.data.resolve_data_config + create_transform do both)')
    device = x.device.type
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        raise TypeError(
            f'{model}: expected {expected} input for a {expected} model, got {got} (cast the input with '
            f'x.to(torch.{expected}), or the model with model.to(torch.{got}), or run under torch.autocast)')


def check_num_classes(model: str, num_classes: Any) -> None:
    """``num_classes`` must be a whole number >= 0 (0: no classifier). ``TypeError`` / ``ValueError`` naming the
    model: a negative count would otherwise build a headless model in some families and fail at the first forward in
    others."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f'{model}: num_classes must be a whole number >= 0 (0: no classifier), got {num_classes!r}')
    if num_classes < 0:
        raise ValueError(f'{model}: num_classes must be >= 0 (0: no classifier), got {num_classes}')


def check_img_size(img_size: Any, model: str = 'model', min_size: int = 1, divisor: int = 1,
                   name: str = 'img_size') -> Optional[Tuple[int, int]]:
    """``img_size`` (a side, or ``(H, W)``; None passes through as None) as an ``(H, W)`` pair, after checking that
    both sides are whole numbers of at least ``max(min_size, divisor)`` (the smallest input the model's strides and
    windows take) and multiples of ``divisor``: ``TypeError`` / ``ValueError`` naming the model and ``name``, before
    anything is resized or resampled with it (torch's own error would come from deep inside an interpolation). The
    one place every zoo model that takes ``img_size`` (at construction or in ``set_input_size``) reads it."""
    if img_size is None:
        return None
    sides = (img_size, img_size) if isinstance(img_size, numbers.Integral) else img_size
    try:
        sides = tuple(sides)
    except TypeError:
        sides = ()
    if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in sides):
        raise TypeError(f'{model}: {name} must be a whole number or a (height, width) pair of them, got {img_size!r}')
    smallest = max(min_size, divisor)
    if min(sides) < smallest or any(s % divisor for s in sides):
        rule = f' and multiples of {divisor}' if divisor > 1 else ''
        raise ValueError(f'{model}: {name} sides must be at least {smallest}{rule}, got {img_size!r}')
    return int(sides[0]), int(sides[1])


def check_model_kwargs(model: str, kwargs: Dict[str, Any]) -> None:
    """Check timm's generic model arguments before anything is built (``register_zoo_model`` calls it for every zoo
    entrypoint): ``in_chans`` an int >= 1, ``num_classes`` an int >= 0 (:func:`check_num_classes`) and
    ``drop_path_rate`` a number in [0, 1). ``TypeError`` for a wrong type, ``ValueError`` for a wrong value;
    arguments not given are not checked. (``global_pool`` is checked by the head, which knows its pooling types;
    ``drop_rate`` by ``nn.Dropout``.)"""
    if kwargs.get('num_classes') is not None:
        check_num_classes(model, kwargs['num_classes'])
    in_chans = kwargs.get('in_chans')
    if in_chans is not None:
        if isinstance(in_chans, bool) or not isinstance(in_chans, numbers.Integral):
            raise TypeError(f'{model}: in_chans must be an int >= 1 (input image channels), got {in_chans!r}')
        if in_chans < 1:
            raise ValueError(f'{model}: in_chans must be >= 1 (input image channels), got {in_chans}')
    rate = kwargs.get('drop_path_rate')
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
            raise TypeError(f'{model}: drop_path_rate must be a number in [0, 1), got {rate!r}')
        if not 0 <= rate < 1:
            raise ValueError(
                f'{model}: drop_path_rate must be in [0, 1) (the probability of skipping a residual branch, reached at '
                f'the deepest block, which 1 would never run), got {rate}')


def check_feature_indices(
        num_levels: int,
        indices: Optional[Union[int, List[int]]],
        model: str = 'model',
) -> Tuple[List[int], int]:
    """timm's ``feature_take_indices`` (None: every level; n: the last n; a sequence: those levels, negative ones
    counted from the end, as timm allows) after checking ``indices``: a ``ValueError`` that lists the valid indices
    for one out of range, a level given twice or levels out of order (features come out shallow to deep, so an
    unordered request would silently return them in another order). Returns (absolute indices, largest index).
    TorchScript compiles timm's part only (a scripted ``features_only`` model takes the indices it was built with)."""
    if not torch.jit.is_scripting():
        indices = _checked_feature_indices(num_levels, indices, model)
    return feature_take_indices(num_levels, indices)


@torch.jit.unused
def _checked_feature_indices(num_levels: int, indices: Any, model: str) -> Any:
    valid = f'valid indices are 0..{num_levels - 1} (or -{num_levels}..-1 counted from the end)'
    if isinstance(indices, bool):
        raise TypeError(f'{model}: feature indices must be an int or a sequence of ints, got {indices!r}')
    if isinstance(indices, numbers.Integral):
        if not 0 < indices <= num_levels:
            raise ValueError(
                f'{model}: an int selects the last n of its {num_levels} feature levels, so it must be in '
                f'1..{num_levels}, got {indices}')
    elif indices is not None:
        requested = tuple(indices)
        if not requested:
            raise ValueError(f'{model}: no feature index given; {valid}')
        levels = []
        for i in requested:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f'{model}: feature indices must be ints, got {i!r} in {requested}')
            if not -num_levels <= i < num_levels:
                raise ValueError(f'{model}: feature index {i} is out of range: {valid}')
            levels.append(int(i) % num_levels)
        if len(set(levels)) != len(levels):
            raise ValueError(f'{model}: feature indices {requested} name a level twice (levels {levels}); {valid}')
        if levels != sorted(levels):
            raise ValueError(
                f'{model}: feature indices {requested} must go from shallow to deep (levels {levels}), the order '
                f'the features come out in; {valid}')
        indices = levels
    return indices


def refuse_img_size(img_size: Any, model: str, why: str) -> None:
    """One ``TypeError`` for an ``img_size`` given to a model with no size-dependent part (``why``: what sizes it
    takes), where timm's twin has no such argument either."""
    if img_size is not None:
        raise TypeError(f'{model} takes no img_size: no part of it depends on the input size ({why})')
