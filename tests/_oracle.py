"""Helpers for parity tests: non-trivial random weights, as the shared fixtures draw them."""
import torch


def redraw_(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Re-draw every floating state entry so a wrong mapping cannot hide.

    Norm weights 1+0.02*randn, BN running_mean 0.1*randn, running_var 1+0.1*rand, conv/linear weights
    randn/sqrt(fan_in), every other float tensor (biases) 0.02*randn — the recipe of shared/parity.
    """
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            if not v.is_floating_point():
                continue
            if k.endswith('running_mean'):
                new = 0.1 * torch.randn(v.shape, generator=g)
            elif k.endswith('running_var'):
                new = 1 + 0.1 * torch.rand(v.shape, generator=g)
            elif v.dim() >= 2:
                new = torch.randn(v.shape, generator=g) / max(1, v[0].numel()) ** 0.5
            elif k.endswith('weight'):
                new = 1 + 0.02 * torch.randn(v.shape, generator=g)
            else:
                new = 0.02 * torch.randn(v.shape, generator=g)
            v.copy_(new.to(v.dtype))
    return model


def random_model(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model`` without the (slow, irrelevant) init: built on meta, then re-drawn by ``redraw_``."""
    import timm
    model = timm.create_model(name, device='meta', **kwargs).to_empty(device='cpu')
    return redraw_(model).eval()


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
