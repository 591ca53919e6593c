"""The checkpoint contract every family keeps, from one table: a family joins by adding its row.

For every family: our own layout passes through the family's filter untouched (bare, in its container, behind
``module.``); the checkpoints of other networks are refused with a ``CheckpointMismatchError`` that names what
does not fit. For every variant with an official source (that its family's parity tests do not already load): each
official key lands on our key of the same shape, one to one, and the parameter count equals the official count and
the registry's. The official sources are oracles: the manifests written from the official code
(``tests/fixtures/<dir>/manifest_<variant>.json``) or the timm twin (registered with the variant) in timm's and in the
official layout. All of it on the meta device: no weights, no forward.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import pytest
import timm
import torch
from _oracle import (
    FIXTURES,
    assert_same_layout,
    crossvit_official,
    davit_official,
    filter_fn,
    manifest_state_dict,
    meta_model,
    num_params,
    read_manifest,
    sequencer_official,
)
from conftest import smallest_per_family
from timm.models import get_pretrained_cfg

import backbones
from backbones._checkpoint import CheckpointMismatchError


@dataclass(frozen=True)
class Refusal:
    """``source``'s checkpoint into zoo model ``model`` raises a mismatch whose message matches ``match``.
    Sources: ``official:<variant>`` (its official checkpoint, in the family's container), ``model:<name>`` (the state
    dict of any timm / zoo model), ``partial:<text>`` (``model``'s own state dict without the keys holding text)."""
    model: str
    source: str
    match: str


@dataclass(frozen=True)
class Row:
    """What the checkpoint contract needs to know about a family."""
    container: Optional[str]  # the key its released / training checkpoints hold the weights under (None: bare)
    refusals: Tuple[Refusal, ...]
    manifests: Optional[str] = None  # fixture folder of the official manifests; else the variants' timm twins
    official_layout: Optional[Callable] = None  # timm twin's state dict -> the official layout, where they differ
    no_source: Tuple[str, ...] = ()  # variants with neither a manifest nor a timm twin (checked elsewhere or nowhere)
    merged_keys: Callable[[Dict], int] = lambda official: 0  # official keys the filter merges away
    # the family's parity test loads every variant's timm-twin weights strictly (every key and shape, so the counts
    # too): the key check here would repeat it
    twins_loaded_by_parity: bool = False


def _qkv_merged(official):
    """MOAT: TF's separate q/k/v weights and biases (6 tensors) become one fused qkv weight and bias."""
    return 4 * sum(k.endswith('attention/q/weight') for k in official)


R = Refusal
FAMILIES = {
    'senet': Row('state_dict', (
        R('se_resnet50', 'model:se_resnet101', 'unexpected keys'),
        R('se_resnet50', 'partial:stages.3', r'missing keys .*stages\.3'),
        R('se_resnet50', 'model:se_resnext50_32x4d', 'shape mismatches')),
        twins_loaded_by_parity=True),
    'sknet': Row('state_dict', (
        R('sknet50', 'model:se_resnext50_32x4d',
          r'(?s)missing keys.*conv2\.attn\.fc_reduce\.weight.*unexpected keys.*attn\.fc1'),),
        no_source=('sknet101',), twins_loaded_by_parity=True),  # no SKNet-101 in timm: test_sknet has its count
    'res2net': Row('state_dict', (
        R('res2net50', 'model:resnet50', 'res2net checkpoint does not fit'),  # same key style, no split
        R('res2net50', 'model:se_resnet50', 'res2net checkpoint does not fit'),  # zoo SENet
        R('res2net50', 'official:res2net50_w48s2', 'res2net checkpoint does not fit'),  # 48w-2s
        R('res2net50_v1b', 'official:res2net50', 'res2net checkpoint does not fit')),  # v1 into v1b
        twins_loaded_by_parity=True),
    'maxvit': Row('state_dict', (
        R('maxvit_tiny', 'model:maxvit_base', 'unexpected keys'),
        R('maxvit_tiny', 'model:maxvit_tiny_rw_224', '(missing|unexpected) keys'))),  # timm's own MaxViT design
    'davit': Row('state_dict', (
        R('davit_t', 'model:davit_s', r'unexpected keys .*stages\.2\.blocks\.3'),
        R('davit_t', 'official:davit_b', 'shape mismatches'),
        R('davit_t', 'partial:.cpe2.', r'missing keys .*cpe2')),
        official_layout=davit_official),
    'biformer': Row('model', (
        R('biformer_tiny', 'official:biformer_small', 'unexpected keys'),
        R('biformer_small', 'official:biformer_base', 'shape mismatches'),
        R('biformer_stl', 'official:biformer_stl_nchw', 'qkv_linear')),  # the refactored NCHW ablation's weights
        manifests='biformer'),
    'convit': Row('model', (
        R('convit_ti', 'official:convit_s', 'shape mismatches'),
        R('convit_ti', 'partial:gating_param', r'missing keys .*gating_param')),
        no_source=('convit_ti_plus', 'convit_s_plus', 'convit_b_plus')),  # timm's ConVit class with 64-d heads there
    'twins': Row('model', (
        R('twins_svt_s', 'official:twins_pcpvt_s', r'missing keys .*attn\.qkv'),  # GSA everywhere: no LSA qkv
        R('twins_svt_s', 'official:twins_svt_b', 'unexpected keys'))),
    'crossvit': Row('model', (
        R('crossvit_tiny', 'official:crossvit_9', 'shape mismatches'),
        R('crossvit_tiny', 'partial:fusion.1', r'missing keys .*fusion\.1')),
        official_layout=crossvit_official),
    'moat': Row('state_dict', (
        R('tiny_moat_0', 'official:tiny_moat_1', 'shape mismatches'),
        R('tiny_moat_0', 'official:tiny_moat_0_no_pe', 'missing keys.*relative_position_bias_table')),
        manifests='moat', merged_keys=_qkv_merged),
    'sequencer': Row('model', (
        R('sequencer2d_small', 'model:sequencer2d_medium', r'unexpected keys .*stages\.2\.blocks\.1[0-3]\.'),
        R('sequencer2d_small', 'partial:.rnn_h.', r'missing keys .*rnn_h')),
        official_layout=sequencer_official),
    'rapidnet': Row('state_dict', (
        R('rapidnet_ti', 'official:rapidnet_s', 'unexpected keys'),
        R('rapidnet_s', 'official:rapidnet_m', 'shape mismatches')),
        manifests='rapidnet'),
    'parcnetv2': Row('state_dict', (
        R('parcnetv2_xt', 'official:parcnetv2_tiny', 'unexpected keys'),),
        manifests='parcnetv2'),
    'tic': Row(None, (
        R('tic_tiny', 'model:tic_small', r'unexpected keys .*stages\.2\.blocks\.1[0-6]\.'),
        R('tic_tiny', 'partial:.msa.', r'missing keys .*msa')),
        no_source=('tic_tiny', 'tic_small', 'tic_base')),  # a reconstruction: no official weights
    'involution': Row('state_dict', (
        R('rednet26', 'model:se_resnet50', '(missing|unexpected) keys'),
        R('rednet26', 'official:rednet50', 'unexpected keys')),
        manifests='involution'),
}
SMALLEST = {backbones.get_variant_info(n).family: n for n in smallest_per_family()}


def _wrap(row: Row, sd):
    return {row.container: sd} if row.container else sd


def _official(row: Row, name: str) -> Dict[str, torch.Tensor]:
    """The official checkpoint of ``name`` (a variant of ``row``'s family, or an official model with a manifest that
    we do not register), on meta, in the family's container."""
    if row.manifests:
        return _wrap(row, manifest_state_dict(row.manifests, name))
    info = backbones.get_variant_info(name)
    sd = meta_model(info.timm_twin, **info.timm_twin_kwargs).state_dict()
    return _wrap(row, row.official_layout(sd) if row.official_layout else sd)


def _source(row: Row, refusal: Refusal):
    kind, _, what = refusal.source.partition(':')
    if kind == 'official':
        return _official(row, what)
    if kind == 'model':
        return meta_model(what).state_dict()
    assert kind == 'partial', refusal.source
    return {k: v for k, v in meta_model(refusal.model).state_dict().items() if what not in k}


def test_every_family_has_a_row():
    assert sorted(FAMILIES) == sorted({backbones.get_variant_info(n).family for n in backbones.list_models()})


# ---------------------------------------------------------------- own layout, other networks' checkpoints

@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_own_layout_passes_through(family):
    """Our state dict comes back as it is (the same tensors, in order): bare, in the family's container and in a
    training script's ``{'state_dict': {'module.' + key: ...}}``."""
    row, model = FAMILIES[family], meta_model(SMALLEST[family])
    sd = model.state_dict()
    for ckpt in (sd, _wrap(row, sd), {'state_dict': {'module.' + k: v for k, v in sd.items()}}):
        out = filter_fn(SMALLEST[family])(ckpt, model)
        assert list(out) == list(sd) and all(out[k] is sd[k] for k in sd)


@pytest.mark.parametrize('family,refusal', [(f, r) for f, row in sorted(FAMILIES.items()) for r in row.refusals],
                         ids=lambda v: v.source if isinstance(v, Refusal) else v)
def test_other_checkpoints_are_refused(family, refusal):
    model = meta_model(refusal.model)
    with pytest.raises(CheckpointMismatchError, match=refusal.match) as err:
        filter_fn(refusal.model)(_source(FAMILIES[family], refusal), model)
    assert isinstance(err.value, ValueError)  # what callers that know only the builtins catch


# ---------------------------------------------------------------- official key layout and parameter counts

def _variants_with_source():
    cases = []
    for family, row in sorted(FAMILIES.items()):
        for name in backbones.list_models(family=family):
            if name not in row.no_source and not row.twins_loaded_by_parity:
                cases.append(name)
    return cases


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_every_variant_has_its_source(family):
    """A variant without a manifest or a timm twin is declared (no_source), never skipped silently."""
    row = FAMILIES[family]
    for name in backbones.list_models(family=family):
        has = (FIXTURES / row.manifests / f'manifest_{name}.json').is_file() if row.manifests else \
            backbones.get_variant_info(name).timm_twin
        assert bool(has) != (name in row.no_source), name


@pytest.mark.parametrize('name', _variants_with_source())
def test_official_keys_map_and_params_equal(name):
    """Every official key lands on our key of the same shape, one to one (no official tensor dropped), and the
    parameter count is the official one (manifest or timm twin) and the registry's."""
    info = backbones.get_variant_info(name)
    row, model = FAMILIES[info.family], meta_model(name)
    if row.manifests:
        manifest = read_manifest(row.manifests, name)
        sources, expected = [manifest_state_dict(row.manifests, name)], manifest['num_params']
        if 'num_params_incl_bn_moving_stats' in manifest:
            moving = [v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')]
            assert sum(v.numel() for v in moving) == manifest['num_params_incl_bn_moving_stats']
    else:  # timm's layout (its hub files) and the official one where they differ
        twin = meta_model(info.timm_twin, **info.timm_twin_kwargs)
        sources, expected = [twin.state_dict()], num_params(twin)
        if row.official_layout:
            sources.append(row.official_layout(twin.state_dict()))
    for official in sources:
        # a source without BatchNorm's batch counters (TF has none) gives none: the fit check lets them be missing
        counters = any(k.endswith('num_batches_tracked') for k in official)
        ours = {k: v for k, v in model.state_dict().items() if counters or not k.endswith('num_batches_tracked')}
        for ckpt in (official, _wrap(row, official)):
            sd = filter_fn(name)(ckpt, model)
            assert_same_layout(sd, ours)
            assert len(official) == len(sd) + row.merged_keys(official)
            assert sum(v.numel() for v in official.values()) == sum(v.numel() for v in sd.values())
    assert num_params(model) == expected == info.params


def _tags_on_timms_hub():
    """Every zoo pretrained tag whose weights are timm's hub files (``hf_hub_id`` ``timm/<twin>.<tag>``)."""
    tags = [t for n in backbones.list_models() for t in timm.list_pretrained(n)]
    return [t for t in tags if (get_pretrained_cfg(t).hf_hub_id or '').startswith('timm/')]


@pytest.mark.parametrize('tag', _tags_on_timms_hub())
def test_tags_on_timms_hub_preprocess_as_timm(tag):
    """A tag that downloads timm's weights names the variant's registered timm twin and evaluates those weights as
    timm does: the same classes, input size, crop and normalisation."""
    cfg = get_pretrained_cfg(tag).to_dict()
    twin_tag = cfg['hf_hub_id'][len('timm/'):]
    assert twin_tag.split('.')[0] == backbones.get_variant_info(tag.split('.')[0]).timm_twin
    ref = get_pretrained_cfg(twin_tag).to_dict()
    for key in ('num_classes', 'input_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std'):
        assert cfg[key] == ref[key], (tag, key)
