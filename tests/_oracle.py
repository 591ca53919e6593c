"""Helpers for parity tests: non-trivial random weights, as the shared fixtures draw them, and the timm twins."""
import functools
import importlib
import json
import re
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch
from safetensors.torch import load_file

from backbones import get_family, get_variant_info, list_models
from backbones.bench import random_timm_model, redraw_

__all__ = ['redraw_', 'random_model', 'load_converted', 'assert_same_layout', 'timm_twins', 'timm_twin', 'filter_fn',
           'meta_model', 'num_params', 'read_manifest', 'manifest_state_dict', 'read_fixture', 'davit_official',
           'sequencer_official', 'crossvit_official', 'parity_fixture', 'assert_official_logits',
           'assert_fx_stage_features']


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


# ---------------------------------------------------------------- checkpoints: filters, fixtures, official layouts

FIXTURES = Path(__file__).parent / 'fixtures'


def filter_fn(name: str) -> Callable:
    """The ``checkpoint_filter_fn`` of zoo model ``name``'s family (the one timm's pretrained path runs)."""
    return importlib.import_module(get_family(name).module).checkpoint_filter_fn


@functools.cache
def meta_model(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model(name, **kwargs)`` on the meta device, built once per session (shared: never modify it)."""
    import timm
    return timm.create_model(name, device='meta', **kwargs)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def read_manifest(directory: str, name: str) -> Dict:
    """A manifest written from the official code: ``{'keys': {official key: shape}, 'num_params': ...}``."""
    return json.loads((FIXTURES / directory / f'manifest_{name}.json').read_text())


def manifest_state_dict(directory: str, name: str) -> Dict[str, torch.Tensor]:
    """The official state dict of ``name`` as its manifest lists it: every key, with its shape, on meta."""
    return {k: torch.empty(s, device='meta') for k, s in read_manifest(directory, name)['keys'].items()}


def read_fixture(directory: str, name: str) -> Tuple[Dict, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """A parity fixture made by the official code: (its json meta: config, num_params, atol...; every tensor of its
    safetensors file: ``input``, ``logits``...; the official weights, the file's ``state_dict.*`` entries)."""
    meta = json.loads((FIXTURES / directory / f'{name}.json').read_text())
    tensors = load_file(str(FIXTURES / directory / f'{name}.safetensors'))
    official = {k[len('state_dict.'):]: v for k, v in tensors.items() if k.startswith('state_dict.')}
    return meta, tensors, official


def davit_official(timm_sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm's (= our) DaViT state dict in the official dingmyu/davit layout (``patch_embeds`` / ``main_blocks`` /
    ``norms`` / ``head``): the inverse of the mapping timm's filter documents, checked by running that filter."""
    from timm.models.davit import checkpoint_filter_fn as timm_filter_fn
    rules = [
        (r'^stem\.conv\.', 'patch_embeds.0.proj.'),
        (r'^stem\.norm\.', 'patch_embeds.0.norm.'),
        (r'^stages\.(\d+)\.downsample\.conv\.', r'patch_embeds.\1.proj.'),
        (r'^stages\.(\d+)\.downsample\.norm\.', r'patch_embeds.\1.norm.'),
        (r'^stages\.(\d+)\.blocks\.', r'main_blocks.\1.'),
        (r'\.cpe1\.', '.cpe.0.'),
        (r'\.cpe2\.', '.cpe.1.'),
        (r'^head\.norm\.', 'norms.'),
        (r'^head\.fc\.', 'head.'),
    ]
    official = {functools.reduce(lambda k, r: re.sub(*r, k), rules, k): v for k, v in timm_sd.items()}
    assert list(timm_filter_fn({'state_dict': dict(official)}, None)) == list(timm_sd)
    return official


def sequencer_official(timm_sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm's (= our) Sequencer2D state dict in the official okojoalg/sequencer layout (models/two_dim_sequencer.py:
    ``blocks`` is one Sequential per stage whose last element is the next stage's ``Downsample2D``; ``head`` is a
    Linear), checked by running timm's filter (its documentation of the official names) back over it."""
    from timm.models.sequencer import checkpoint_filter_fn as timm_filter_fn
    depths = {}
    for k in timm_sd:
        m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.', k)
        if m:
            depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)

    def official_key(key):
        m = re.match(r'^stages\.(\d+)\.downsample\.down\.(.*)$', key)
        if m:
            prev = int(m[1]) - 1
            return f'blocks.{prev}.{depths[prev]}.down.{m[2]}'
        return re.sub(r'^head\.fc\.', 'head.', re.sub(r'^stages\.(\d+)\.blocks\.', r'blocks.\1.', key))

    official = {official_key(k): v for k, v in timm_sd.items()}
    assert list(timm_filter_fn({'model': dict(official)}, None)) == list(timm_sd)
    return official


def crossvit_official(timm_sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm's CrossViT state dict in the official IBM/CrossViT layout: timm's filter turns the official
    ParameterLists ``pos_embed.<b>`` / ``cls_token.<b>`` into ``pos_embed_<b>`` / ``cls_token_<b>``; every other key
    is the same."""
    return {k.replace('pos_embed_', 'pos_embed.').replace('cls_token_', 'cls_token.'): v for k, v in timm_sd.items()}


def assert_official_logits(model: torch.nn.Module, meta: Dict, x: torch.Tensor, expected: torch.Tensor) -> None:
    """``model`` (official weights loaded) has the fixture's parameter count and, in eval mode, gives the official
    logits for ``x`` within the fixture's ``atol``."""
    assert sum(p.numel() for p in model.parameters()) == meta['num_params']
    with torch.no_grad():
        logits = model.eval()(x)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= meta['atol']


def assert_fx_stage_features(model: torch.nn.Module, x: torch.Tensor) -> None:
    """timm's FX feature extractor on the four ``stages.i`` of ``model`` returns ``forward_intermediates``'s maps."""
    from timm.models._features_fx import create_feature_extractor
    fx = create_feature_extractor(model, return_nodes={f'stages.{i}': str(i) for i in range(4)})
    with torch.no_grad():
        got = list(fx(x).values())
        expected = model.forward_intermediates(x, intermediates_only=True)
    assert len(got) == len(expected) == 4
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-6)


def parity_fixture(directory: str, name: str):
    """A parity fixture as (json meta, official weights, the input, the official logits)."""
    meta, tensors, official = read_fixture(directory, name)
    return meta, official, tensors['input'], tensors['logits']
