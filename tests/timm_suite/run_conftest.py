"""conftest.py for running timm's own ``tests/test_models.py`` on Backbone Zoo models.

NOT a test module of this repo: ``tests/timm_suite`` copies this file as ``conftest.py`` next to the ``tests/``
directory extracted from timm's sdist (a temp dir), together with ``bb_timm_suite.json`` (written by the runner).
pytest loads it before importing timm's ``test_models.py``, so it can:

1. import ``backbones`` (registers the zoo with timm);
2. replace ``timm.list_models`` (which ``test_models.py`` calls at import time to parametrize its tests) by a wrapper
   that only returns the zoo models chosen by the runner (one per family), maps timm's ``module=`` filter (the
   ``forward_intermediates`` model list) onto every zoo family that has ``forward_intermediates``, and swaps timm's
   name-based "non-standard output" patterns for our own classification (``forward_features`` output not 4-D);
3. deselect every collected item that is not about one of those models, and the network tests;
4. add the zoo families whose head pools before extra layers to ``EARLY_POOL_MODELS``;
5. record every result (family, outcome, duration, error text) in a JSON file the runner reads back.
"""
import ast
import json
import os
import pathlib
import time

import pytest
import timm
import torch

import backbones  # noqa: F401  (registers the zoo models with timm)

HERE = pathlib.Path(__file__).resolve().parent
CFG = json.loads((HERE / 'bb_timm_suite.json').read_text())
torch.set_num_threads(int(CFG.get('threads', 2)))

MODELS = CFG['models']  # family -> arch name
MAIN_FAMILIES = set(CFG['main_families'])  # families that get every marked per-model test
PRUNE_FAMILIES = set(CFG['prune_families'])  # families that get test_prune_intermediate_layers_contract
ARCH_TO_FAMILY = {arch: fam for fam, arch in MODELS.items()}
# tests that download weights / hub fixtures; test_model_inference only covers timm's own test_* models
NETWORK_TESTS = {'test_model_inference', 'test_model_load_pretrained', 'test_model_features_pretrained'}
PRUNE_TEST = 'test_prune_intermediate_layers_contract'


def _timm_assignment(name):
    """A literal list assigned at module level of timm's test_models.py (read without importing it)."""
    tree = ast.parse((HERE / 'tests' / 'test_models.py').read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f'{name} not found in timm tests/test_models.py: the recipe needs updating')


TIMM_NON_STD = set(_timm_assignment('NON_STD_FILTERS'))


def _classify(arch):
    """Whether the model is non-standard (token output), has forward_intermediates, and its class (meta device)."""
    info = dict(non_std=False, feat_inter=False, cls=None, error=None)
    try:
        model = timm.create_model(arch, device='meta').eval()
        info['cls'] = type(model)
        info['feat_inter'] = callable(getattr(model, 'forward_intermediates', None))
        x = torch.empty(1, *model.pretrained_cfg['input_size'], device='meta')
        with torch.no_grad():
            out = model.forward_features(x)
        info['non_std'] = not (torch.is_tensor(out) and out.ndim == 4)
    except Exception as e:  # the cfg test will fail on the same problem with a full traceback
        info['error'] = f'{type(e).__name__}: {e}'
    return info


for _arch in ARCH_TO_FAMILY:
    if _arch not in timm.list_models(_arch):
        raise pytest.UsageError(f'{_arch} is not registered with timm after importing backbones')

CLASSES = {fam: _classify(arch) for fam, arch in MODELS.items()}
for _fam, _forced in CFG.get('non_std_override', {}).items():
    if _fam in CLASSES:
        CLASSES[_fam]['non_std'] = bool(_forced)

_timm_list_models = timm.list_models


def _as_list(filters):
    if not filters:
        return []
    return [filters] if isinstance(filters, str) else list(filters)


def list_models(filter='', module='', pretrained=False, exclude_filters='', name_matches_cfg=False,
                include_tags=None):
    """timm.list_models restricted to the chosen zoo models, with timm's model groups mapped onto ours."""
    include, exclude = _as_list(filter), _as_list(exclude_filters)
    want_non_std = None  # None: both kinds
    # timm passes NON_STD_FILTERS whole; a single pattern shared with another list (e.g. 'gemma4_vit*' in the
    # TorchScript / FX exclusions) is just that pattern
    if TIMM_NON_STD <= set(include):
        include = [f for f in include if f not in TIMM_NON_STD]
        want_non_std = True
    if TIMM_NON_STD <= set(exclude):
        exclude = [f for f in exclude if f not in TIMM_NON_STD]
        want_non_std = False
    names = _timm_list_models(
        filter=include or '', pretrained=pretrained, exclude_filters=exclude or '',
        name_matches_cfg=name_matches_cfg, include_tags=include_tags)
    out = []
    for name in names:
        fam = ARCH_TO_FAMILY.get(name.split('.')[0])
        if fam is None:
            continue
        if want_non_std is not None and CLASSES[fam]['non_std'] != want_non_std:
            continue
        if module and not CLASSES[fam]['feat_inter']:
            continue
        out.append(name)
    return out


timm.list_models = list_models


def _family_of(item):
    params = getattr(getattr(item, 'callspec', None), 'params', {})
    name = params.get('model_name')
    if not isinstance(name, str):
        return None
    return ARCH_TO_FAMILY.get(name.split('.')[0])


@pytest.hookimpl(tryfirst=True)  # before -m deselection, so the prune_contract mark counts
def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        fam = _family_of(item)
        if fam is None or item.originalname in NETWORK_TESTS or 'pretrained' in item.originalname:
            drop.append(item)
            continue
        if item.originalname == PRUNE_TEST:
            if fam not in PRUNE_FAMILIES:
                drop.append(item)
                continue
            item.add_marker('prune_contract')
        elif fam not in MAIN_FAMILIES:
            drop.append(item)
            continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    early_pool = tuple(
        CLASSES[f]['cls'] for f in CFG.get('early_pool_families', []) if f in CLASSES and CLASSES[f]['cls'])
    if early_pool and keep:
        keep[0].module.EARLY_POOL_MODELS = tuple(keep[0].module.EARLY_POOL_MODELS) + early_pool
    for item in keep:
        _NODE_FAMILY[item.nodeid] = (_family_of(item), item.originalname)


_NODE_FAMILY = {}
_RESULTS = {}


def pytest_runtest_logreport(report):
    if report.nodeid not in _NODE_FAMILY:
        return
    fam, test = _NODE_FAMILY[report.nodeid]
    res = _RESULTS.setdefault(report.nodeid, dict(family=fam, test=test, outcome='passed', duration=0.0, error=''))
    res['duration'] += report.duration
    if report.failed:
        res['outcome'] = 'failed' if report.when == 'call' else 'error'
        res['error'] += f'[{report.when}] {report.longreprtext}\n'
    elif report.skipped and res['outcome'] == 'passed':
        res['outcome'] = 'skipped'
        res['error'] += f'[skipped] {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}\n'


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.process_time()  # CPU seconds of all threads: comparable across busy and idle machines
    yield
    if item.nodeid in _RESULTS:
        _RESULTS[item.nodeid]['cpu'] = time.process_time() - start


def pytest_sessionfinish(session, exitstatus):
    classes = {
        fam: dict(model=MODELS[fam], non_std=c['non_std'], feat_inter=c['feat_inter'], error=c['error'],
                  cls=c['cls'].__name__ if c['cls'] else None)
        for fam, c in CLASSES.items()
    }
    out = dict(exitstatus=int(exitstatus), classes=classes, results=_RESULTS)
    pathlib.Path(os.environ.get('BB_TIMM_SUITE_RESULTS', HERE / 'bb_results.json')).write_text(json.dumps(out))
