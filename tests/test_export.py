"""Deployment: empty batches, ``torch.compile`` without graph breaks, and exports that hold at every input size.

Every family's smallest variant (``conftest.SMALL_MODELS``, so new families join automatically):

- batch size 0 gives empty outputs of the right shapes (classifier, ``forward_features``, ``forward_intermediates``,
  ``features_only``), like timm's CNNs;
- ``torch.compile`` traces the forward without a single graph break;
- exported at one size with a dynamic batch and a dynamic height / width (multiples of 32), the program run at
  another size (batch 1, 224x160: one window per side at stride 32, padded maps) equals the eager model there
  (<= 1e-5): ONNX through the TorchScript exporter (``dynamo=False``) and through the dynamo exporter, both run with
  onnxruntime, and ``torch.export``'s own program.

The compile and export tests use each family's smallest variant with fewer blocks (``_reduced.REDUCED_KWARGS``;
every block type of the family is kept): tracing visits every block, so depth only costs time.

What runs by default (about 55 s on one core): empty batches, compile and ``torch.export`` (1-10 s per family).
``-m slow`` adds both ONNX exporters, the TorchScript one (1-3 s per family) and the dynamo one (5-25 s), and every
export of MOAT with its relative position bias (``tiny_moat_0``: the table is resized to the traced map size).

``torch.export`` needs ``torch.fx.experimental._config.patch(backed_size_oblivious=True)``, as ``torch.onnx``'s own
dynamo exporter sets it: without it the exporter specialises every size that is 1 in some case (one window per side
of the map, one token per region, batch 1) and the program only runs at inputs that agree with the example.
"""
import pytest
import timm
import torch
import torch.fx.experimental._config as fx_config
from _reduced import reduced_model
from conftest import SMALL_MODELS
from torch.export import Dim

# variants that add a block type the smallest one lacks: MOAT's relative position bias, resized to every map size
EXPORT_MODELS = SMALL_MODELS + [pytest.param('tiny_moat_0', marks=pytest.mark.slow)]

EXAMPLE = (2, 3, 64, 96)  # exported at this size ...
SECOND = (1, 3, 224, 160)  # ... run at this one: batch 1, one window per side at stride 32 (224), padded maps (160)
ATOL = 1e-5


def _dynamic_shapes():
    """Batch 1..64, height and width 64..512 in steps of 32 (the total stride of every family)."""
    return ({0: Dim('batch', min=1, max=64), 2: 32 * Dim('h', min=2, max=16), 3: 32 * Dim('w', min=2, max=16)},)


def _export(model):
    with fx_config.patch(backed_size_oblivious=True):
        return torch.export.export(model, (torch.randn(EXAMPLE),), dynamic_shapes=_dynamic_shapes())


def _second():
    x = torch.randn(SECOND, generator=torch.Generator().manual_seed(2))
    return x


# ---------------------------------------------------------------------------------------------- empty batches

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_empty_batch(name):
    """Batch size 0: empty outputs of the right shapes on every path (no reshape(-1, ...) of an empty batch).

    The expected shapes come from a batch of 1 on the meta device; the real model's weights are left unset, as an
    empty batch computes nothing."""
    meta = timm.create_model(name, device='meta').eval()
    one = torch.empty(1, 3, 64, 96, device='meta')
    ref_features = meta.forward_features(one)
    ref_final, ref_taps = meta.forward_intermediates(one)

    model = timm.create_model(name, device='meta').to_empty(device='cpu').eval()
    x = torch.empty(0, 3, 64, 96)
    with torch.no_grad():
        assert model(x).shape == (0, model.num_classes)
        assert model.forward_features(x).shape == (0, *ref_features.shape[1:])
        final, taps = model.forward_intermediates(x)
    assert final.shape == (0, *ref_final.shape[1:])
    assert [t.shape for t in taps] == [(0, *t.shape[1:]) for t in ref_taps]

    features = timm.create_model(name, features_only=True, device='meta').to_empty(device='cpu').eval()
    with torch.no_grad():
        shapes = [t.shape for t in features(x)]
    expected = [(0, *ref_taps[i].shape[1:]) for i in features.feature_info.out_indices]
    assert shapes == expected




# ---------------------------------------------------------------------------------------------- torch.compile

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_compile_without_graph_breaks(name):
    """``torch.compile`` traces the whole forward as one graph (what ``fullgraph=True`` requires).

    Graph breaks happen in dynamo's bytecode tracing, before any backend runs, so the ``'eager'`` backend (which
    runs the captured graph as it is, without generating code) finds every one of them at a fraction of inductor's
    compile time."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = reduced_model(name)
    x = torch.randn(2, 3, 64, 96)
    compiled = torch.compile(model, backend='eager')
    with torch.no_grad():
        out = compiled(x)
        ref = model(x)
    breaks = dict(counters['graph_break'])
    torch._dynamo.reset()
    assert not breaks, f'{name}: graph breaks {breaks}'
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------- torch.export

@pytest.mark.parametrize('name', EXPORT_MODELS)
def test_torch_export_dynamic_size(name):
    model = reduced_model(name)
    program = _export(model)
    x = _second()
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------- ONNX

def _onnxruntime(path, x):
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(None, {'x': x.numpy()})[0])


@pytest.mark.slow
@pytest.mark.parametrize('name', EXPORT_MODELS)
def test_onnx_dynamo_dynamic_size(name, tmp_path):
    model = reduced_model(name)
    path = tmp_path / f'{name}.onnx'
    program = torch.onnx.export(
        model, (torch.randn(EXAMPLE),), dynamo=True, dynamic_shapes=_dynamic_shapes(), input_names=['x'],
        output_names=['logits'])
    program.save(str(path))
    x = _second()
    with torch.no_grad():
        torch.testing.assert_close(_onnxruntime(path, x), model(x), rtol=0, atol=ATOL)


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')  # the input-size checks run once, at trace time
@pytest.mark.parametrize('name', EXPORT_MODELS)
def test_onnx_torchscript_dynamic_size(name, tmp_path):
    """The TorchScript-based exporter (``dynamo=False``): sizes are traced as tensors, so every size computation
    in forward must be an op on ``x.shape`` (no ``int()``, no Python branch on a size but the input checks)."""
    model = reduced_model(name)
    path = tmp_path / f'{name}.onnx'
    torch.onnx.export(
        model, (torch.randn(EXAMPLE),), str(path), dynamo=False, input_names=['x'], output_names=['logits'],
        dynamic_axes={'x': {0: 'batch', 2: 'height', 3: 'width'}, 'logits': {0: 'batch'}})
    x = _second()
    with torch.no_grad():
        torch.testing.assert_close(_onnxruntime(path, x), model(x), rtol=0, atol=ATOL)
