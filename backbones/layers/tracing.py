"""Is this forward being traced into a graph (``torch.compile`` / ``torch.export`` / ``torch.jit.trace``)?

Shape-dependent shortcuts ("nothing to pad, skip the pad") are free in eager mode but, under tracing, each one is a
guard on the traced sizes: the graph would only hold for inputs that take the same branch (``torch.export`` with
dynamic height / width, ONNX with dynamic axes). Layers take the general path while :func:`is_tracing` is true; it
gives the same numbers (padding by zero rows is a copy, a zero additive bias adds nothing).
"""
import torch

__all__ = ['is_tracing', 'is_exporting', 'contiguous_for_export', 'eager_channels_last']


def is_tracing() -> bool:
    """True under ``torch.compile`` / ``torch.export`` (dynamo or non-strict) and ``torch.jit.trace``."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


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
