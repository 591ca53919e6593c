"""Helpers for parity tests: non-trivial random weights, as the shared fixtures draw them, and the timm twins."""
from typing import Dict

import torch

from backbones import get_variant_info, list_models
from backbones.bench import random_timm_model, redraw_

__all__ = ['redraw_', 'random_model', 'load_converted', 'assert_same_layout', 'timm_twins', 'timm_twin']


def random_model(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model`` without the (slow, irrelevant) init: built on meta, then re-drawn by ``redraw_``."""
    return random_timm_model(name, **kwargs)


def load_converted(name: str, state_dict, filter_fn, **kwargs) -> torch.nn.Module:
    """Our model ``name`` holding ``filter_fn(state_dict)``, built on meta and loaded with ``assign``."""
    import timm
    model = timm.create_model(name, device='meta', **kwargs)
    model.load_state_dict(filter_fn(state_dict, model), assign=True)
    return model.eval()


def assert_same_layout(converted, ours) -> None:
    """A filter's output ``converted`` holds exactly the keys of our state dict ``ours``, each with its shape."""
    assert sorted(converted) == sorted(ours), sorted(set(converted) ^ set(ours))[:20]
    mismatched = [k for k, v in converted.items() if v.shape != ours[k].shape]
    assert not mismatched, mismatched[:20]


def flop_counter_macs(model: torch.nn.Module, *args) -> int:
    """Multiply-adds of the matmul-like work (conv, linear, matmul, attention) that torch's ``FlopCounterMode`` sees
    while ``model(*args)`` runs (its FLOPs / 2): an oracle for ``backbones.count`` independent of our counter.

    Attention runs on SDPA's math backend, which computes it as two batched matmuls that every torch counts. Whether
    ``FlopCounterMode`` has a formula for a fused kernel (flash, memory-efficient, the CPU fused op) depends on the
    torch release (torch 2.14 counts none on CPU), so the oracle must not run one.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(*args)
    return fc.get_total_flops() // 2


def timm_twins(family: str) -> Dict[str, str]:
    """Zoo model -> its timm twin (the timm entrypoint of the same network, as the variant registers it), for each
    variant of ``family`` that has one."""
    return {n: v.timm_twin for n in list_models(family=family) for v in [get_variant_info(n)] if v.timm_twin}


def timm_twin(name: str) -> str:
    """The timm twin zoo model ``name`` registers."""
    twin = get_variant_info(name).timm_twin
    if not twin:
        raise KeyError(f'{name} registers no timm twin')
    return twin
