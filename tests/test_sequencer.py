"""Sequencer2D: parity with timm's sequencer2d_* (random non-trivial weights through our filter) at three sizes, the
official layout, the LSTM (nn.LSTM's parameters and kernel, traced by Dynamo without graph
breaks), sizes, export."""

import pytest
import timm
import torch
import torch.nn as nn
from _oracle import load_converted, random_model, sequencer_official, timm_twins
from conftest import assert_close_f32, max_diff_f32

from backbones.flops import count
from backbones.models.sequencer import BiLSTM, checkpoint_filter_fn

ORACLES = timm_twins('sequencer')
SMALL = ORACLES['sequencer2d_small']
# reduced widths and depths given to both timm (``layers``) and ours (``depths``): cheap full-path forwards
TINY_WIDTHS = dict(embed_dims=(32, 64, 64, 64), hidden_sizes=(8, 16, 16, 16))
TINY_DEPTHS = (1, 2, 1, 1)
ATOL = 1e-5


def _max_diff(oracle, model, size, batch=1):
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        expected, got = oracle(x), model(x)
    assert expected.shape == got.shape
    return max_diff_f32(got, expected)


def _tiny_pair():
    oracle = random_model(SMALL, layers=TINY_DEPTHS, **TINY_WIDTHS)
    model = load_converted(
        'sequencer2d_small', oracle.state_dict(), checkpoint_filter_fn, depths=TINY_DEPTHS, **TINY_WIDTHS)
    return oracle, model


def _tiny(**kwargs):
    return timm.create_model('sequencer2d_small', depths=TINY_DEPTHS, **TINY_WIDTHS, **kwargs).eval()


# ---------------------------------------------------------------- parity with timm's sequencer2d_s (timm layout)

@pytest.fixture(scope='module')
def small_pair():
    oracle = random_model(SMALL)
    return oracle, load_converted('sequencer2d_small', oracle.state_dict(), checkpoint_filter_fn)


@pytest.mark.parametrize('size', [
    (224, 224),  # the default: 32x32 then 16x16 maps
    (154, 154),  # odd maps in stages 2-4 (22x22 then 11x11)
    (196, 252),  # non-square: rows and columns of different lengths (14x18 in stages 2-4)
])
def test_parity_sequencer2d_small(small_pair, size):
    assert _max_diff(*small_pair, size) <= ATOL


def test_timm_checkpoint_file_loads_through_timm(tmp_path):
    """timm's hub weights (timm layout, e.g. timm/sequencer2d_s.in1k) load through timm's own pretrained path."""
    from safetensors.torch import save_file
    oracle = random_model(SMALL, layers=TINY_DEPTHS, **TINY_WIDTHS)
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in oracle.state_dict().items()}, str(path))
    model = timm.create_model(
        'sequencer2d_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), depths=TINY_DEPTHS,
        **TINY_WIDTHS)
    assert _max_diff(oracle, model.eval(), (56, 84), batch=2) <= ATOL


# ---------------------------------------------------------------- the official layout

@pytest.mark.parametrize('container', ['flat', 'model'])
def test_official_layout_parity(container):
    """An official checkpoint (official key names; flat or inside ``{'model': ...}``) gives the same logits."""
    oracle = random_model(SMALL, layers=TINY_DEPTHS, **TINY_WIDTHS)
    official = sequencer_official(oracle.state_dict())
    assert 'blocks.0.1.down.weight' in official and 'blocks.1.2.down.weight' in official
    assert 'head.weight' in official
    ckpt = official if container == 'flat' else {'model': official, 'epoch': 300}
    model = load_converted('sequencer2d_small', ckpt, checkpoint_filter_fn, depths=TINY_DEPTHS, **TINY_WIDTHS)
    assert _max_diff(oracle, model, (42, 70), batch=2) <= ATOL


def test_convert_official_checkpoint(tmp_path):
    """tools/convert.py's library path: an official-layout file -> save_for_hf folder -> local-dir: same logits."""
    from backbones.convert import convert_checkpoint
    oracle = random_model(SMALL, layers=TINY_DEPTHS, **TINY_WIDTHS)
    ckpt = tmp_path / f'{SMALL}.pth'
    torch.save({'model': sequencer_official(oracle.state_dict())}, ckpt)
    out = convert_checkpoint(
        'sequencer2d_small', ckpt, tmp_path / 'out', model_kwargs=dict(depths=TINY_DEPTHS, **TINY_WIDTHS))
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert _max_diff(oracle, model, (28, 56), batch=2) <= ATOL


# ---------------------------------------------------------------- counts and configs

def test_lstm_macs_counted():
    """Every LSTM direction costs 4h(C + h) MACs per time step per sequence (input and recurrent gate matmuls):
    4 directions x H*W steps per block. The same on the meta device and on CPU, and the same as the counter's
    ``aten::lstm`` op handle gives timm's nn.LSTM model."""
    model = _tiny()
    size = (3, 56, 84)
    res = count(model, input_size=size)
    expected = 0
    for i, stage in enumerate(model.stages):
        r = model.feature_info[i]['reduction']
        for block in stage.blocks:
            lstm = block.rnn_tokens.rnn_v
            expected += 4 * (56 // r) * (84 // r) * 4 * lstm.hidden_size * (lstm.input_size + lstm.hidden_size)
    assert res.by_operator['lstm'] == expected
    meta = count(timm.create_model('sequencer2d_small', depths=TINY_DEPTHS, **TINY_WIDTHS, device='meta'), size)
    assert meta.device == 'meta' and meta.by_operator == res.by_operator
    oracle = count(timm.create_model(SMALL, layers=TINY_DEPTHS, **TINY_WIDTHS).eval(), size)
    pooled = dict(res.by_operator, adaptive_avg_pool2d=0)  # timm pools with x.mean(), which fvcore skips
    assert oracle.by_operator == {k: v for k, v in pooled.items() if v}


def test_drop_path_is_linear_over_blocks():
    """Official ``get_stage``: block k of all N blocks gets ``rate * k / (N - 1)``."""
    model = timm.create_model('sequencer2d_small', drop_path_rate=0.3, device='meta')
    rates = [getattr(b.drop_path1, 'drop_prob', 0.) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 18).tolist(), abs=1e-6)


# ---------------------------------------------------------------- the LSTM

def test_bilstm_is_nn_lstm():
    """Same parameters (names, order, shapes, init bounds), same outputs and gradients as nn.LSTM."""
    torch.manual_seed(0)
    ours = BiLSTM(12, 5)
    ref = nn.LSTM(12, 5, bidirectional=True)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert all(p.abs().max() <= 5 ** -0.5 for p in ours.parameters())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(7, 3, 12, requires_grad=True)
    out, expected = ours(x), ref(x)[0]
    assert torch.equal(out, expected)
    out.square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    expected.square().sum().backward()
    assert torch.equal(grad, x.grad)


def test_compile_fullgraph_without_graph_breaks():
    """Dynamo captures the whole model as ONE graph (timm's nn.LSTM model breaks at every LSTM; fullgraph=True would
    raise on any break), and the captured graph gives the eager numbers (it runs the same aten.lstm kernel)."""
    torch._dynamo.reset()
    model = _tiny()
    x = torch.randn(2, 3, 42, 56)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, fullgraph=True, backend=counting_backend)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    assert len(graphs) == 1
    assert sum(n.target is torch.lstm for n in graphs[0].graph.nodes) == 2 * sum(TINY_DEPTHS)
    torch._dynamo.reset()


def test_export_dynamic_batch():
    """torch.export with a dynamic batch (height and width are fixed by the example: aten.lstm unrolls time)."""
    model = _tiny()
    batch = torch.export.Dim('batch', max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 28, 42),), dynamic_shapes=({0: batch},))
    for b in (1, 3):
        x = torch.randn(b, 3, 28, 42)
        with torch.no_grad():
            assert_close_f32(program.module()(x), model(x))
    assert program.module()(torch.randn(0, 3, 28, 42)).shape == (0, 1000)


# ---------------------------------------------------------------- sizes

def test_input_sizes():
    """Multiples of 14 (stem stride 7, then the stride-2 conv), square or not, down to 14; anything else raises."""
    model = timm.create_model('sequencer2d_small', features_only=True, out_indices=(0, 1, 2, 3), depths=TINY_DEPTHS,
                              **TINY_WIDTHS).eval()
    with torch.no_grad():
        for h, w in [(14, 14), (42, 70)]:
            feats = model(torch.randn(1, 3, h, w))
            assert [f.shape[-2:] for f in feats] == [(h // r, w // r) for r in (7, 14, 14, 14)]
        assert model(torch.randn(0, 3, 28, 28))[-1].shape == (0, 64, 2, 2)
    classifier = _tiny(num_classes=5)
    with torch.no_grad():
        assert classifier(torch.randn(0, 3, 28, 28)).shape == (0, 5)
    for h, w in [(64, 64), (224, 230), (7, 14)]:
        with pytest.raises(ValueError, match=f'multiples of 14.*got {h}x{w}'):
            classifier(torch.randn(1, 3, h, w))
