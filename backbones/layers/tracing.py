"""Is this forward being traced into a graph (``torch.compile`` / ``torch.export`` / ``torch.jit.trace`` /
``torch.fx.symbolic_trace``)?

Shape-dependent shortcuts ("nothing to pad, skip the pad") are free in eager mode but, under tracing, each one is a
guard on the traced sizes: the graph would only hold for inputs that take the same branch (``torch.export`` with
dynamic height / width, ONNX with dynamic axes). Layers take the general path while :func:`is_tracing` is true; it
gives the same numbers (padding by zero rows is a copy, a zero additive bias adds nothing).

``torch.fx.symbolic_trace`` (and the tracers built on it: torchvision's ``create_feature_extractor``, ``torch.ao``'s
``prepare_fx``, timm's FX feature extraction) runs forward on ``Proxy`` objects, where a Python branch on a size, a
dtype or a device raises ``TraceError``: under :func:`is_tracing` the layers take the path that only records ops, so a
condition must test ``is_tracing()`` before it reads anything of the input.
"""
import torch
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ['is_tracing', 'is_symbolic_tracing', 'is_exporting', 'contiguous_for_export', 'eager_channels_last']


def is_tracing() -> bool:
    """True under ``torch.compile`` / ``torch.export`` (dynamo or non-strict), ``torch.jit.trace`` and FX symbolic
    tracing (torch.fx's ``is_fx_symbolic_tracing``, which unlike its ``is_fx_tracing`` is false under
    ``torch.export``); False in TorchScript, which compiles every path."""
    if torch.jit.is_scripting():
        return False
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or is_fx_symbolic_tracing()


def is_symbolic_tracing() -> bool:
    """True while ``torch.fx`` traces symbolically (plain ``symbolic_trace`` and the tracers built on it), where
    tensors are ``Proxy`` objects: a branch that must not depend on :func:`is_tracing` (e.g. an autograd-only path
    that ``torch.compile`` should keep) tests this before it reads ``requires_grad``, ``is_meta`` and the like."""
    if torch.jit.is_scripting():
        return False
    return is_fx_symbolic_tracing()


def is_exporting() -> bool:
    """True under ``torch.export`` (and so ``torch.onnx.export(dynamo=True)``), not under ``torch.compile``."""
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_exporting()


def contiguous_for_export(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous()`` under ``torch.export``, ``x`` itself otherwise.

    For an NCHW map with channels-last strides (a permuted channels-last map) about to enter a convolution: the
    exporter picks the convolution's memory format from the input strides and, for channels-last strides, asks
    whether the batch is larger than 1 on the way, a guard that makes the exported program refuse batch 1. A
    contiguous input is not asked. Eager mode and ``torch.compile`` keep the channels-last input (no copy).
    """
    if is_exporting():
        return x.contiguous()
    return x


def eager_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory when running eagerly (oneDNN's fast CPU convolutions); unchanged under
    ``torch.compile`` / ``torch.export``, which choose layouts themselves (forcing one there only adds shape guards:
    a channels-last map with a side of 1 is ambiguous)."""
    if torch.compiler.is_compiling():
        return x
    return x.contiguous(memory_format=torch.channels_last)
