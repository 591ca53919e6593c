"""What a zoo model is measured against, on the same weights wherever the comparison allows it.

* **timm twin** (:func:`timm_twin`: the ``timm_twin`` each variant registers): timm's implementation of the same
  network. The twin gets random non-trivial weights (:func:`redraw_`), and the zoo model gets exactly those weights
  through its family's ``checkpoint_filter_fn``, so the two must give the same logits (the parity column).
* **official operator** (:data:`OFFICIAL_OPS`): the zoo model with its layers switched to the official code's
  formulation of the operator (the naive unfold-based involution of RedNet, the im2col form of TiC's MSA-Conv): the
  same weights and numbers, the official arithmetic.
* **any timm model** by name (no parity: different networks), e.g. ``resnet50`` for ratios comparable with the
  :data:`RECORDED_OFFICIAL` measurements of official code that cannot run here.
* **itself**: the eager zoo model is the reference of its :func:`~backbones.optimize_for_inference` copy.
"""
from __future__ import annotations

import copy
import importlib
import types
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .._registry import get_family, get_variant_info, list_models

__all__ = [
    'Contender', 'resolve_reference', 'timm_twin', 'OFFICIAL_OPS', 'RECORDED_OFFICIAL', 'RecordedRatio', 'redraw_',
    'calibrate_bn_',
    'random_timm_model', 'zoo_model_from', 'build_contenders',
]

def _use_official_involution(model: nn.Module) -> int:
    from ..layers.involution import Involution
    return _swap_forward(model, Involution, Involution.forward_unfold)


def _use_official_msa_conv(model: nn.Module) -> int:
    from ..layers.msa_conv import MSAConvAttention
    return _swap_forward(model, MSAConvAttention, MSAConvAttention.forward_unfold)


def _use_official_moat(model: nn.Module) -> int:
    from ..layers.attention import Attention
    from ..layers.mbconv import MBConv
    from ..models.moat import MoatStem
    n = _swap_forward(model, MBConv, MBConv.forward_unfused) + _swap_forward(model, MoatStem, nn.Sequential.forward)
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = False
            n += 1
    return n


def _use_official_oversize_conv(model: nn.Module) -> int:
    from ..layers.oversize_conv import OversizeConv2d
    return _swap_forward(model, OversizeConv2d, OversizeConv2d.forward_nchw)


# family -> (label, function switching a model's layers to the official formulation in place; returns how many)
OFFICIAL_OPS: Dict[str, Tuple[str, Callable[[nn.Module], int]]] = {
    'involution': ('official unfold involution (d-li14/involution, naive PyTorch op)', _use_official_involution),
    'tic': ('official im2col MSA-Conv (zs670980918/MSA-Conv op, as unfold)', _use_official_msa_conv),
    # the official code is TensorFlow (google-research/deeplab2@64bc1c1a model/layers/moat_blocks.py,
    # moat_attention.py): its blocks op by op in PyTorch eager, on NCHW maps: BatchNorms as separate ops, the
    # convolutions as written, attention as explicit products (q k^T + relative-position bias, softmax, times v)
    'moat': ('official op sequence (deeplab2 MOAT blocks op by op: separate BatchNorms, NCHW convs, explicit '
             'attention)', _use_official_moat),
    # XuRuihan/ParCNetV2@b9d8524 models/parcnetv2.py OversizeConv2d: conv_h then conv_w on the NCHW map
    'parcnetv2': ('official NCHW oversized convs (XuRuihan/ParCNetV2 OversizeConv2d)', _use_official_oversize_conv),
}


@dataclass(frozen=True)
class RecordedRatio:
    """CPU time of official code divided by timm ``resnet50``'s, measured once where that code could run."""
    ratio: float
    source: str


_PROTOCOL = ('1 thread, batch 8 @ 224, eval, inference_mode; median of 33 alternating rounds (3 processes) against '
             'timm resnet50 in the same process, idle 2-vCPU AVX-512 machine, torch 2.15 / timm 1.0.31')

# zoo name -> the official code's inference CPU time / timm resnet50's (official code that needs einops, fairscale or
# mmcv stand-ins is not installed here; compare with ``--ref resnet50`` at 1 thread, batch 8)
RECORDED_OFFICIAL: Dict[str, RecordedRatio] = {
    'biformer_tiny': RecordedRatio(1.410, f'rayleizhu/BiFormer@1697bbbe models/biformer.py biformer_tiny; {_PROTOCOL}'),
    'rednet26': RecordedRatio(2.701, f'd-li14/involution@21c3158f RedNet-26, naive unfold op; {_PROTOCOL}'),
    'rednet50': RecordedRatio(5.358, f'd-li14/involution@21c3158f RedNet-50, naive unfold op; {_PROTOCOL}'),
    'rapidnet_ti': RecordedRatio(0.277, f'mmunir127/RapidNet-Official@74c70715 RapidNet_Ti as built; {_PROTOCOL}'),
}


def _swap_forward(model: nn.Module, cls: type, forward: Callable) -> int:
    n = 0
    for m in model.modules():
        if isinstance(m, cls):
            m.forward = types.MethodType(forward, m)
            n += 1
    return n


@torch.no_grad()
def redraw_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Re-draw every floating state entry with non-trivial values, so that a wrong mapping cannot hide.

    Norm weights ``1 + 0.02 * randn``, BatchNorm ``running_mean`` ``0.1 * randn`` and ``running_var``
    ``1 + 0.1 * rand``, weights with 2+ dims ``randn / sqrt(fan_in)``, every other float tensor ``0.02 * randn``.
    """
    g = torch.Generator().manual_seed(seed)
    for k, v in model.state_dict().items():
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


@torch.no_grad()
def calibrate_bn_(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics from one train-mode forward of ``x`` (momentum 1), the variance
    replaced by the second moment (``var + mean**2``); returns the model in eval mode.

    Random weights make a deep network's activations grow layer by layer (RedNet's logits reach 1e14 with
    :func:`redraw_` alone); calibrated statistics keep them O(1), so output differences read as they would on
    trained weights. The second moment keeps every channel's variance large next to its mean, as in trained
    networks (a tiny variance next to a large mean would turn float rounding into large differences).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 1.
    model.train()(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
        m.running_var.add_(m.running_mean ** 2)
    return model.eval()


def timm_twin(name: str) -> Optional[Tuple[str, dict]]:
    """(timm entrypoint, kwargs making it the same network) of zoo model ``name``, or None when timm has no twin."""
    info = get_variant_info(name)
    return (info.timm_twin, dict(info.timm_twin_kwargs)) if info.timm_twin else None


def random_timm_model(name: str, seed: int = 1, **kwargs) -> nn.Module:
    """``timm.create_model(name)`` built on meta (no init), then given :func:`redraw_` weights; eval mode, CPU.

    Computed buffers that are not in the state dict (timm's relative-position lookup tables, RoPE frequencies) are
    rebuilt: ``to_empty`` leaves them as uninitialised memory (MaxViT's gave NaN logits).
    """
    import timm

    from .._timm import reinit_non_persistent_buffers
    model = timm.create_model(name, device='meta', **kwargs).to_empty(device='cpu')
    reinit_non_persistent_buffers(model)
    return redraw_(model, seed).eval()


def zoo_model_from(name: str, source: nn.Module, **kwargs) -> nn.Module:
    """Zoo model ``name`` holding ``source``'s weights, converted by the family's ``checkpoint_filter_fn``."""
    import timm

    module = importlib.import_module(get_family(get_variant_info(name).family).module)
    model = timm.create_model(name, device='meta', **kwargs)
    model.load_state_dict(module.checkpoint_filter_fn(source.state_dict(), model), assign=True)
    return model.eval()


@dataclass
class Contender:
    """One model of a comparison group.

    Attributes:
        label: row label.
        model: the module (its ``forward`` takes the group's inputs).
        kind: ``'zoo'``, ``'zoo+opt'`` (after optimize_for_inference), ``'timm twin'``, ``'official op'``,
            ``'timm'`` (another network) or ``'module'``.
        same_weights: whether its outputs must equal the reference's (the parity column is shown only then).
        train: whether it takes part in training-step runs (an inference-optimized copy does not).
    """
    label: str
    model: nn.Module
    kind: str = 'module'
    same_weights: bool = True
    train: bool = True


def resolve_reference(name: str, reference: str = 'auto') -> str:
    """The reference kind for zoo model ``name``: ``'auto'`` resolved (the timm twin, else the official operator,
    else ``'none'``), any other kind checked: ``ValueError`` (one line) for a twin or official operator the model
    does not have, or a name that is neither a kind nor a timm model."""
    import timm

    family = get_variant_info(name).family
    if reference == 'auto':
        return 'twin' if timm_twin(name) else 'official' if family in OFFICIAL_OPS else 'none'
    if reference == 'twin' and not timm_twin(name):
        raise ValueError(f'{name} has no timm twin (models with one: {", ".join(filter(timm_twin, list_models()))})')
    if reference == 'official' and family not in OFFICIAL_OPS:
        raise ValueError(f'no official-operator reference for family {family!r} (families: {sorted(OFFICIAL_OPS)})')
    if reference not in ('twin', 'official', 'none') and not timm.is_model(reference):
        raise ValueError(f"reference '{reference}' is not auto, twin, official, none or a timm model name")
    return reference


def build_contenders(
        name: str,
        reference: str = 'auto',
        optimized: bool = True,
        seed: int = 1,
) -> Tuple[List[Contender], int]:
    """The contenders of one zoo model and the index of the reference among them.

    Args:
        name: zoo model name.
        reference: ``'auto'`` (the timm twin, else the official operator, else none), ``'twin'``, ``'official'``,
            ``'none'`` (the eager zoo model is the reference of its optimized copy) or any timm model name.
        optimized: add the model after :func:`~backbones.optimize_for_inference`.
        seed: weights seed.

    The zoo model carries the twin's (redrawn) weights when there is a twin, else its own redrawn weights with
    calibrated BatchNorm statistics (:func:`calibrate_bn_`, on a small random batch at the default input size).
    """
    import timm

    from ..optimize import optimize_for_inference
    family = get_variant_info(name).family
    reference = resolve_reference(name, reference)
    twin = timm_twin(name)

    contenders: List[Contender] = []
    if reference == 'twin':
        twin_name, twin_kwargs = twin
        twin = random_timm_model(twin_name, seed, **twin_kwargs)
        zoo = zoo_model_from(name, twin)
    else:
        zoo = redraw_(timm.create_model(name, device='meta').to_empty(device='cpu'), seed)
        size = zoo.pretrained_cfg.get('input_size', (3, 224, 224))
        calibrate_bn_(zoo, torch.randn(2, *size, generator=torch.Generator().manual_seed(seed)))
    contenders.append(Contender(name, zoo, 'zoo'))
    if optimized:
        contenders.append(Contender(f'{name} + optimize_for_inference', optimize_for_inference(zoo), 'zoo+opt',
                                    train=False))
    if reference == 'twin':
        contenders.append(Contender(f'timm {twin_name}', twin, 'timm twin'))
        ref = len(contenders) - 1
    elif reference == 'official':
        label, use_official = OFFICIAL_OPS[family]
        official = copy.deepcopy(zoo)
        use_official(official)
        contenders.append(Contender(label, official, 'official op'))
        ref = len(contenders) - 1
    elif reference == 'none':
        ref = 0
    else:
        other = random_timm_model(reference, seed)
        contenders.append(Contender(f'timm {reference}', other, 'timm', same_weights=False))
        ref = len(contenders) - 1
    return contenders, ref


def recorded_official_note(name: str, speedup_vs_resnet50: Optional[float]) -> Optional[str]:
    """For a zoo model measured against timm ``resnet50``: what that implies against the recorded official code."""
    rec = RECORDED_OFFICIAL.get(name)
    if rec is None or not speedup_vs_resnet50:
        return None
    ours = 1 / speedup_vs_resnet50  # our time / resnet50's
    return (f'{name}: {ours:.3f}x resnet50 CPU time here; the official code measured {rec.ratio:.3f}x '
            f'({rec.source}) -> about {rec.ratio / ours:.2f}x faster than the official code')
