"""Deployment: empty batches, ``torch.compile`` without graph breaks, and exports that hold at every input size.

Every family's smallest variant (``conftest.SMALL_MODELS``, so new families join automatically):

- batch size 0 gives empty outputs of the right shapes (classifier, ``forward_features``, ``forward_intermediates``,
  ``features_only``), like timm's CNNs;
- ``torch.compile(fullgraph=True)`` traces the whole forward as one graph, and the compiled model equals eager;
- exported once with a dynamic batch and a dynamic height / width (multiples of 32, or of the model's size rule),
  the program run at two sizes, the example's (batch 2, 64x96) and another (batch 1, 224x160: one window per side
  at stride 32, padded maps; sides rounded up to the size rule, e.g. CrossViT 72x96 and 228x168),
  equals the eager model there (float32 rounding: ``conftest.assert_close_f32``): ``torch.export``'s own program,
  and ONNX (run with onnxruntime) through the TorchScript exporter (``dynamo=False``) and through the dynamo
  exporter. onnxruntime's cubic Resize differs from torch's bicubic (CrossViT, ``ORT_ATOL``).

The compile and export tests use each family's smallest variant with fewer blocks (``_reduced.REDUCED_KWARGS``;
every block type of the family is kept): tracing visits every block, so depth only costs time.

What runs by default: empty batches, compile, ``torch.export``, the TorchScript ONNX exporter (the cheap one) and
the dynamo ONNX exporter for one family (``DYNAMO_DEFAULT``). ``-m slow`` adds the dynamo ONNX exporter for the other
families (5-25 s each; 30-90 s for those that need ``optimize=False``, ``ONNX_NO_OPTIMIZE``), those two at full size,
and every export of MOAT with its relative position bias (``tiny_moat_0``: the table is resized to the traced map
size).

Fixed height / width (``FIXED_SIZE``): Sequencer2D's LSTMs run one time step per row / column, and tracing an LSTM
(``aten.lstm`` under ``torch.export`` and the dynamo exporter, as any LSTM in PyTorch 2.x) unrolls its time steps:
the program holds for the example's height and width only. Its batch stays dynamic, which is what is checked
(two batch sizes at the example's size). The TorchScript exporter writes ONNX's own ``LSTM`` op, whose sequence
length is dynamic: there the height and width are dynamic too, and checked.

``torch.export`` needs ``torch.fx.experimental._config.patch(backed_size_oblivious=True)``, as ``torch.onnx``'s own
dynamo exporter sets it: without it the exporter specialises every size that is 1 in some case (one window per side
of the map, one token per region, batch 1) and the program only runs at inputs that agree with the example.
"""
import pytest
import timm
import torch
import torch.fx.experimental._config as fx_config
from _oracle import random_model
from _reduced import reduced_model
from conftest import F32_ATOL, SMALL_MODELS, assert_close_f32, input_side
from torch.export import Dim
from torch.utils._pytree import tree_map

from backbones._registry import _VARIANTS
from backbones.bench import calibrate_bn_

# variants that add a block type the smallest one lacks: MOAT's relative position bias, resized to every map size
EXPORT_MODELS = SMALL_MODELS + [pytest.param('tiny_moat_0', marks=pytest.mark.slow)]

# families whose traced program (torch.export, dynamo ONNX) holds at the example's height and width only, and why
FIXED_SIZE = {
    'sequencer': 'its LSTMs run one time step per row / column, and tracing an LSTM unrolls its time steps',
}
# families whose dynamo ONNX export is run with optimize=False, and why (README's deployment section says the same)
ONNX_NO_OPTIMIZE = {
    'involution': "at full size (rednet26) onnxscript's graph optimisation did not finish in 290 s (twice), the "
                  "export itself takes about 2 min: every involution is 49 window taps of slices and multiply-adds",
    'tic': 'the same for tic_tiny: every MSA-Conv attention is its window taps of slices and dot products',
}


def _optimize(name: str) -> bool:
    return _VARIANTS[name].family not in ONNX_NO_OPTIMIZE


# families whose TorchScript-exported ONNX holds at one height and width only: why, and that size
TORCHSCRIPT_FIXED_SIZE = {
    'convit': ("its position table is resampled to the patch grid with antialiased bicubic interpolation, an op the "
               "TorchScript exporter lacks (the dynamo exporter has it): exported at the table's own size, where "
               "nothing is resampled", (224, 224)),
    'crossvit': ('as ConViT: its two position tables are resampled with antialiased bicubic interpolation', (240, 240)),
}

EXAMPLE = (2, 3, 64, 96)  # exported at this size ...
SECOND = (1, 3, 224, 160)  # ... also run at this one: batch 1, one window per side at stride 32 (224), padded maps
# families whose ONNX graph holds an op that onnxruntime computes differently from torch: its absolute tolerance (per
# unit of the largest logit, as conftest.assert_close_f32 scales it), why
ORT_ATOL = {
    'crossvit': (1e-4, "the L branch's input resize: onnxruntime's cubic Resize differs from torch's bicubic "
                       "interpolation by up to 1.4e-4 on a unit-variance 240 -> 224 image (measured on the op alone)"),
}


def _fixed_size(name: str) -> bool:
    return _VARIANTS[name].family in FIXED_SIZE


def _sizes(model, dynamic_size: bool = True, example_hw=None):
    """The example input size and the two sizes the exported program is checked at. Sides are rounded up to what
    the model takes (``input_divisor``: Sequencer2D 64x96 -> 70x98); with ``dynamic_size=False`` the second size
    differs in batch only (and the example has height and width ``example_hw`` when given)."""
    def fit(size):
        b, c, h, w = size
        return b, c, input_side(model, h), input_side(model, w)
    example = fit(EXAMPLE if example_hw is None else (*EXAMPLE[:2], *example_hw))
    second = fit(SECOND) if dynamic_size else (SECOND[0], *example[1:])
    return example, [example, second]


def _inputs(sizes):
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(size, generator=generator) for size in sizes]


def _dynamic_shapes(model, dynamic_size: bool = True):
    """Batch 1..64; height and width about 64..512 in steps of the model's size rule (``input_divisor``, e.g.
    CrossViT's 12) or, for models that take any size, of 32 (the total stride of every family)."""
    batch = {0: Dim('batch', min=1, max=64)}
    if not dynamic_size:
        return (batch,)
    step = max(getattr(model, 'input_divisor', 1), 1)
    step = step if step > 1 else 32
    lo, hi = -(-64 // step), 512 // step
    return ({**batch, 2: step * Dim('h', min=lo, max=hi), 3: step * Dim('w', min=lo, max=hi)},)


def _check(run, model, inputs, atol: float = F32_ATOL):
    """``run`` (a traced program) equals eager at every input, up to float32 rounding: its kernels (decompositions,
    onnxruntime's own) sum in other orders, which thread count and load change too."""
    with torch.no_grad():
        for x in inputs:
            size = tuple(x.shape)
            assert_close_f32(run(x), model(x), atol=atol, msg=lambda m, size=size: f'{size}: {m}')


def _check_onnx(path, name, model, inputs):
    """onnxruntime's outputs equal eager (``ORT_ATOL`` where its ops differ from torch's)."""
    _check(_onnxruntime(path), model, inputs, ORT_ATOL.get(_VARIANTS[name].family, (F32_ATOL,))[0])


# ---------------------------------------------------------------------------------------------- empty batches

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_empty_batch(name):
    """Batch size 0: empty outputs of the right shapes on every path (no reshape(-1, ...) of an empty batch).

    The expected shapes come from a batch of 1 on the meta device; the real model's weights are left unset, as an
    empty batch computes nothing."""
    def empty_shapes(out):  # the shapes of a (possibly nested: CrossViT's branches) output, batch set to 0
        return tree_map(lambda t: (0, *t.shape[1:]), out)

    def shapes(out):
        return tree_map(lambda t: tuple(t.shape), out)

    meta = timm.create_model(name, device='meta').eval()
    h, w = input_side(meta, 64), input_side(meta, 96)
    one = torch.empty(1, 3, h, w, device='meta')
    ref_features = meta.forward_features(one)
    ref_final, ref_taps = meta.forward_intermediates(one)

    model = timm.create_model(name, device='meta').to_empty(device='cpu').eval()
    x = torch.empty(0, 3, h, w)
    with torch.no_grad():
        assert model(x).shape == (0, model.num_classes)
        assert shapes(model.forward_features(x)) == empty_shapes(ref_features)
        final, taps = model.forward_intermediates(x)
    assert shapes(final) == empty_shapes(ref_final)
    assert shapes(taps) == empty_shapes(ref_taps)

    features = timm.create_model(name, features_only=True, device='meta').to_empty(device='cpu').eval()
    with torch.no_grad():
        shapes = [t.shape for t in features(x)]
    expected = [(0, *ref_taps[i].shape[1:]) for i in features.feature_info.out_indices]
    assert shapes == expected


# ---------------------------------------------------------------------------------------------- torch.compile

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_compile_fullgraph(name):
    """``torch.compile(fullgraph=True)`` captures the whole forward as one graph (a graph break raises) and the
    compiled model equals eager.

    Graph breaks happen in dynamo's bytecode tracing, before any backend runs, so the ``'eager'`` backend (which
    runs the captured graph as it is, without generating code) finds every one of them at a fraction of inductor's
    compile time."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = reduced_model(name)
    x = _inputs([_sizes(model)[0]])[0]
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    try:
        with torch.no_grad():
            out = compiled(x)
            ref = model(x)
        breaks = dict(counters['graph_break'])
    finally:
        torch._dynamo.reset()
    assert not breaks, f'{name}: graph breaks {breaks}'
    assert_close_f32(out, ref)


# ---------------------------------------------------------------------------------------------- torch.export

@pytest.mark.parametrize('name', EXPORT_MODELS)
def test_torch_export_dynamic_size(name):
    """One program, exported with a dynamic batch and height / width, equals eager at two sizes."""
    model = reduced_model(name)
    dynamic_size = not _fixed_size(name)
    example, sizes = _sizes(model, dynamic_size)
    with fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(
            model, (torch.randn(example),), dynamic_shapes=_dynamic_shapes(model, dynamic_size))
    _check(program.module(), model, _inputs(sizes))


# ---------------------------------------------------------------------------------------------- ONNX

def _onnxruntime(path):
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return lambda x: torch.from_numpy(session.run(None, {'x': x.numpy()})[0])


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')  # the input-size checks run once, at trace time
@pytest.mark.filterwarnings('ignore:.*legacy TorchScript-based ONNX export:DeprecationWarning')
@pytest.mark.parametrize('name', EXPORT_MODELS)
def test_onnx_torchscript_dynamic_size(name, tmp_path):
    """The TorchScript-based exporter (``dynamo=False``): sizes are traced as tensors, so every size computation
    in forward must be an op on ``x.shape`` (no ``int()``, no Python branch on a size but the input checks).
    Height and width are dynamic for Sequencer2D too (ONNX's ``LSTM`` takes any sequence length); ConViT's are
    fixed (``TORCHSCRIPT_FIXED_SIZE``)."""
    model = reduced_model(name)
    fixed = TORCHSCRIPT_FIXED_SIZE.get(_VARIANTS[name].family)
    example, sizes = _sizes(model, fixed is None, None if fixed is None else fixed[1])
    path = tmp_path / f'{name}.onnx'
    axes = {0: 'batch'} if fixed else {0: 'batch', 2: 'height', 3: 'width'}
    torch.onnx.export(
        model, (torch.randn(example),), str(path), dynamo=False, input_names=['x'], output_names=['logits'],
        dynamic_axes={'x': axes, 'logits': {0: 'batch'}})
    _check_onnx(path, name, model, _inputs(sizes))


def _export_dynamo(model, name, example, dynamic_size, path):
    program = torch.onnx.export(
        model, (torch.randn(example),), dynamo=True, dynamic_shapes=_dynamic_shapes(model, dynamic_size),
        input_names=['x'], output_names=['logits'], optimize=_optimize(name))
    program.save(str(path))


# the dynamo ONNX exporter by default for one family (the exporter and onnxruntime of a fresh install work; it is
# torch.export, checked above for every family, plus onnxscript's translation): the others under -m slow, RedNet and
# TiC (``optimize=False``, 30-90 s each even reduced) among them
DYNAMO_DEFAULT = 'rapidnet_ti'


@pytest.mark.parametrize('name', [n if n == DYNAMO_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in SMALL_MODELS] + EXPORT_MODELS[len(SMALL_MODELS):])
def test_onnx_dynamo_dynamic_size(name, tmp_path):
    """The dynamo exporter (``optimize=False`` for ``ONNX_NO_OPTIMIZE``); by default for ``DYNAMO_DEFAULT`` only."""
    model = reduced_model(name)
    dynamic_size = not _fixed_size(name)
    example, sizes = _sizes(model, dynamic_size)
    path = tmp_path / f'{name}.onnx'
    _export_dynamo(model, name, example, dynamic_size, path)
    _check_onnx(path, name, model, _inputs(sizes))


@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in SMALL_MODELS if not _optimize(n)])
def test_onnx_dynamo_full_size(name, tmp_path):
    """The full-size models whose export needs ``optimize=False`` export (in 2-3 min each) and equal eager at the
    example's size and another one (BatchNorm statistics calibrated: a deep random network's logits grow large)."""
    model = random_model(name)
    example, sizes = _sizes(model)
    calibrate_bn_(model, _inputs([example])[0])
    path = tmp_path / f'{name}.onnx'
    _export_dynamo(model, name, example, True, path)
    _check_onnx(path, name, model, _inputs(sizes))
