"""The tools a model meets after timm: plain ``torch.fx``, torchvision's feature extraction and int8 quantization
(``torch.ao.quantization``: ``quantize_dynamic`` and FX static ``prepare_fx`` / ``convert_fx``), on the smallest
variant of every family (``conftest.SMALL_MODELS``) at reduced depth (``_reduced``: every block type kept).

``torch.compile(fullgraph=True)``, ``torch.export`` and the ONNX exporters are ``tests/test_export.py``'s, float
TorchScript is ``tests/test_contract.py``'s; this module shares test_export's tolerance.

Every tool runs on one input (``X``: batch 1, 96x160, maps padded to every window size) and is compared with one
eager forward of it (``_reference``), which also records the feature modules' outputs with forward hooks:

- ``torch.fx.symbolic_trace`` (no example input: nothing is specialised, the graph holds every size) equals eager
  within float32 rounding (that FX graphs keep the input checks, ``.half()`` included, is
  ``tests/test_bad_input_models.py``'s);
- torchvision's ``create_feature_extractor`` on the ``feature_info`` modules returns their eager outputs, and its
  dead-code elimination keeps the (side-effecting) input check;
- int8 on random non-trivial weights, so only the agreement with float is meaningful (README's int8 table, from
  ``tools/bench_int8.py``, has the full-size numbers): every Linear that ``quantize_dynamic`` should swap is
  swapped, every convolution and Linear of the FX graph becomes an int8 module, and the int8 logits stay within
  ``INT8_REL_ERR`` of float (relative L2 error). A broken quantization (wrong scales, an op without statistics, a
  -inf mask quantized) gives errors of order 1.

``-m slow`` adds FX static int8 for the families with the largest graphs (``SLOW_STATIC``) and TorchScript of the
dynamically quantized models.
"""
import copy
import functools
import warnings
from typing import Dict, List, NamedTuple

import pytest
import torch
import torch.nn as nn
from _reduced import reduced_model
from conftest import SMALL_MODELS, assert_close_f32, input_side

from backbones._registry import _VARIANTS

# batch 1, sides that are not the exports' example, maps padded to every window size (6x10 at stride 16, 3x5 at 32)
X = (1, 3, 96, 160)

# torchvision takes one node per name, the last op inside a module: a feature module that returns several tensors
# (CrossViT's multi-scale block returns both branches) is asked for the modules that return each branch's tokens
FEATURE_NODES = {'crossvit': ['norm.0', 'norm.1']}

# relative L2 error of the int8 logits against float: measured on these random weights, at most 0.09 (dynamic) and
# 0.26 (static, MaxViT's without its -inf mask kept float: 1.3); a broken quantization gives ~1
INT8_REL_ERR = {'dynamic': 0.2, 'static': 0.5}

# families whose FX static int8 test runs under -m slow: the largest graphs (2-3k FX nodes, each observed and
# converted), 10-25 s each on a busy 2-core machine
SLOW_STATIC = {'tic', 'maxvit', 'davit', 'biformer'}


def _family(name: str) -> str:
    return _VARIANTS[name].family


class Reference(NamedTuple):
    model: nn.Module
    x: torch.Tensor
    logits: torch.Tensor
    features: Dict[str, torch.Tensor]  # the feature nodes' eager outputs


def _feature_nodes(name: str, model: nn.Module) -> List[str]:
    return FEATURE_NODES.get(_family(name)) or list(dict.fromkeys(f['module'] for f in model.feature_info))


@functools.cache
def _reference(name: str) -> Reference:
    """One reduced model per family, ``X`` for it (sides rounded up to its size rule) and its eager outputs, shared
    by the tests (none changes the model: quantization works on copies)."""
    model = reduced_model(name)
    x = _batch(model)
    features = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: features.__setitem__(n, o))
             for n in _feature_nodes(name, model)]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return Reference(model, x, logits, features)


def _batch(model: nn.Module, seed: int = 2) -> torch.Tensor:
    b, c, h, w = X
    return torch.randn(b, c, input_side(model, h), input_side(model, w), generator=torch.Generator().manual_seed(seed))


def _assert_close(got: torch.Tensor, ref: torch.Tensor, what: str = ''):
    """Equal up to float32 rounding (another summation order, through every block): ``conftest.assert_close_f32``."""
    assert_close_f32(got, ref, msg=lambda m: f'{what}: {m}')


def _raises(exc, match, fn, *args):
    with pytest.raises(exc, match=match) as info:
        fn(*args)
    assert type(info.value) is exc, f'{type(info.value).__name__}: {info.value}'


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------- torch.fx

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_fx_symbolic_trace(name):
    """Plain ``torch.fx.symbolic_trace`` gives the eager numbers (that its graphs keep the input checks:
    ``tests/test_bad_input_models.py``)."""
    ref = _reference(name)
    with torch.no_grad():
        _assert_close(torch.fx.symbolic_trace(ref.model)(ref.x), ref.logits)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_torchvision_feature_extractor(name):
    """torchvision's ``create_feature_extractor`` returns the ``feature_info`` modules' eager outputs and still
    refuses bad input."""
    from torchvision.models.feature_extraction import create_feature_extractor
    ref = _reference(name)
    extractor = create_feature_extractor(ref.model, return_nodes=list(ref.features))
    with torch.no_grad():
        got = extractor(ref.x)
    assert list(got) == list(ref.features)
    for node, expected in ref.features.items():
        _assert_close(got[node], expected, node)
    four_channels = ref.x[:, :1].expand(-1, 4, -1, -1)
    _raises(ValueError, r'expects 3 input channels \(in_chans=3\), got 4', extractor, four_channels)


# ---------------------------------------------------------------------------------------------- int8

@pytest.fixture
def no_quant_warnings():
    """torch.ao.quantization warns on every call that it is deprecated (torchao's pt2e flow is its successor)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*torch.ao.quantization is deprecated')
        warnings.filterwarnings('ignore', message='.*quantized tensor creation functions')
        warnings.filterwarnings('ignore', message='.*reduce_range will be deprecated')
        yield


def _quantize_dynamic(model: nn.Module) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_int8_quantize_dynamic(name, monkeypatch, no_quant_warnings):
    """``quantize_dynamic(model, {nn.Linear, nn.LSTM})`` swaps every Linear that runs as a layer (ConViT's
    ``pos_proj`` holds the coefficients of a closed-form attention and stays float; Sequencer's LSTMs are not
    ``nn.LSTM``, see README), and the fast paths take the int8 layers as they are: the MLP's row blocks are forced
    on (``BLOCK_MIN_BYTES = 0``)."""
    import backbones.layers.mlp as mlp
    monkeypatch.setattr(mlp, 'BLOCK_MIN_BYTES', 0)
    ref = _reference(name)
    linears = [n for n, m in ref.model.named_modules() if type(m) is nn.Linear and getattr(m, 'qconfig', 1) is not None]
    int8 = _quantize_dynamic(ref.model)
    swapped = [n for n, m in int8.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert swapped == linears and linears
    with torch.no_grad():
        err = _rel_err(int8(ref.x), ref.logits)
    assert err < INT8_REL_ERR['dynamic'], err


@pytest.mark.parametrize('name', [n if _family(n) not in SLOW_STATIC else pytest.param(n, marks=pytest.mark.slow)
                                  for n in SMALL_MODELS])
def test_int8_fx_static(name, no_quant_warnings):
    """FX static quantization: ``prepare_fx``, a calibration pass (another batch), ``convert_fx``. Every convolution
    and Linear that the graph calls becomes an int8 module (fused with the BatchNorm and ReLU that follow it), and
    the int8 logits stay close to float. torch's default x86 configuration, with min / max activation observers
    instead of its histogram ones (the same graph; histograms take several times the calibration time)."""
    from torch.ao.quantization import (
        MinMaxObserver,
        QConfig,
        default_per_channel_weight_observer,
        get_default_qconfig_mapping,
    )
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=True),
                      weight=default_per_channel_weight_observer)
    ref = _reference(name)
    calibration = _batch(ref.model, seed=3)
    prepared = prepare_fx(copy.deepcopy(ref.model), get_default_qconfig_mapping('x86').set_global(qconfig),
                          (calibration,))
    with torch.no_grad():
        prepared(calibration)
    int8 = convert_fx(prepared)
    float_layers = [n for n, m in int8.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    assert not float_layers, f'left in float: {float_layers}'
    assert any(isinstance(m, torch.ao.nn.quantized.Conv2d) for m in int8.modules())
    with torch.no_grad():
        err = _rel_err(int8(ref.x), ref.logits)
    assert err < INT8_REL_ERR['static'], err


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
@pytest.mark.parametrize('name', SMALL_MODELS)
def test_int8_dynamic_torchscript(name, no_quant_warnings):
    """The dynamically quantized model scripts (TorchScript resolves the fast paths' ``isinstance(..., nn.Linear)``
    when it compiles, so the int8 layers run as they are) and equals its eager self."""
    ref = _reference(name)
    int8 = _quantize_dynamic(ref.model)
    scripted = torch.jit.script(int8)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        got, expected = scripted(ref.x), int8(ref.x)
    # activations are quantized per batch from their range: where TorchScript takes another float path than eager
    # (MaxViT's MBConv), a rounding difference may move a value across a quantization step (measured: 0.04 max)
    assert _rel_err(got, expected) < 0.05
