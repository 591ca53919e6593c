"""MaxViT: parity with timm's maxvit_*_tf_* (random non-trivial weights through our filter), the 13x13 -> 23x23 /
31x31 table resize of the official 384 / 512 checkpoints, padded window / grid attention at sizes the windows do not
divide, set_input_size."""
import copy
import dataclasses
import math

import numpy as np
import pytest
import timm
import torch
from _oracle import redraw_, timm_twins
from conftest import max_diff_f32
from timm.layers import RelPosBiasTf
from timm.models import get_pretrained_cfg
from timm.models._manipulate import reinit_non_persistent_buffers
from timm.models.maxxvit import MaxxVit, model_cfgs

from backbones.models.maxvit import PartitionAttention, checkpoint_filter_fn

ORACLES = timm_twins('maxvit')  # ours -> timm's entrypoint for the same network
# reduced widths / depths (a stride-1 block in stage 1) given to both timm and ours: every code path, cheaply
REDUCED = dict(depths=(1, 2, 1, 1), widths=(32, 64, 96, 128), stem_widths=(8, 16))
ATOL = 1e-5


def _timm_reduced(window, num_classes=10):
    """timm's maxvit_tiny_tf config (TF padding, eps, GELU-tanh, bias_tf tables) at REDUCED size, random weights."""
    cfg = dataclasses.replace(
        model_cfgs['maxvit_tiny_tf'], embed_dim=REDUCED['widths'], depths=REDUCED['depths'],
        stem_width=REDUCED['stem_widths'], head_hidden_size=REDUCED['widths'][-1])
    model = MaxxVit(cfg, num_classes=num_classes, transformer_window_size=window, device='meta')
    return _materialize(model)


def _materialize(model):
    """meta -> CPU with the fixtures' non-trivial draw; relative tables x4 so that a wrong offset shows clearly."""
    model = model.to_empty(device='cpu')
    reinit_non_persistent_buffers(model)  # timm's one-hot lookup tables of RelPosBiasTf
    redraw_(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith('relative_position_bias_table'):
                p.mul_(4)
    return model.eval()


def _ours(oracle, name='maxvit_tiny', **kwargs):
    model = timm.create_model(name, device='meta', **kwargs)
    model.load_state_dict(checkpoint_filter_fn(oracle.state_dict(), model), assign=True)
    return model.eval()


def _compare(oracle, model, size, batch=1):
    x = torch.randn(batch, 3, *size)
    diffs = []
    with torch.no_grad():
        features = oracle.forward_features(x), model.forward_features(x)
        for pre_logits in (False, True):  # logits, and the tanh layer's output
            expected, got = (m.forward_head(f, pre_logits=pre_logits) for m, f in zip((oracle, model), features))
            assert expected.shape == got.shape
            diffs.append(max_diff_f32(got, expected))
    return max(diffs)


# ---------------------------------------------------------------- parity with timm (timm layout through our filter)

def test_parity_tiny_224():
    """The full MaxViT-T at 224 (the only full-size forward in this file)."""
    oracle = _materialize(timm.create_model(ORACLES['maxvit_tiny'], device='meta'))
    assert _compare(oracle, _ours(oracle), (224, 224)) <= ATOL


@pytest.fixture(scope='module')
def reduced_pair():
    oracle = _timm_reduced(window=2)
    return oracle, _ours(oracle, num_classes=10, window_size=2, **REDUCED)


@pytest.mark.parametrize('size', [
    (128, 128),  # the reduced config's default (32 * P * 2 for P = 2): stage maps 32 .. 4
    (128, 192),  # non-square
    (192, 192),  # 1.5x the default: 48 .. 6 (timm needs maps that divide by P, so 1.5x of 224 cannot be compared)
])
def test_parity_reduced(reduced_pair, size):
    assert _compare(*reduced_pair, size) <= ATOL


def _crop_table(table, window):
    """The centre ``(2h-1) x (2w-1)`` of a ``(2P-1) x (2P-1)`` table: the offsets a ``h x w`` map can have."""
    ph, pw = (table.shape[-2] + 1) // 2, (table.shape[-1] + 1) // 2
    h, w = window
    return table[:, ph - h:ph + h - 1, pw - w:pw + w - 1]


def test_parity_maps_smaller_than_window():
    """Input 64x32 with P = 16: every stage map (16x8, 8x4, 4x2, 2x1) is padded to one 16x16 window / grid, its
    padding masked. The oracle is timm with each stage's window and grid set to its map size and the tables cut to
    the offsets that map has: attention over exactly the real tokens with their true relative positions."""
    oracle = _timm_reduced(window=16)
    model = _ours(oracle, num_classes=10, window_size=16, **REDUCED)
    maps = [(16, 8), (8, 4), (4, 2), (2, 1)]
    for stage, size in zip(oracle.stages, maps):
        for block in stage.blocks:
            for unit in (block.attn_block, block.attn_grid):
                table = unit.attn.rel_pos.relative_position_bias_table.detach()
                rel_pos = RelPosBiasTf(size, unit.attn.num_heads)
                with torch.no_grad():
                    rel_pos.relative_position_bias_table.copy_(_crop_table(table, size))
                unit.partition_size, unit.attn.rel_pos = size, rel_pos
    assert _compare(oracle, model, (64, 32), batch=2) <= ATOL


# ---------------------------------------------------------------- padded attention against its definition

def _attention_by_definition(unit: PartitionAttention, x: torch.Tensor) -> torch.Tensor:
    """Module docstring, token by token: a real token attends to the real tokens of its group; window groups are
    ``(r // P, c // P)`` with in-group index ``(r % P, c % P)``, grid groups (dilation d = ceil(H / P)) are
    ``(r % d, c % d)`` with index ``(r // d, c // d)``; bias = table[key index - query index + P - 1]."""
    B, H, W, C = x.shape
    ph, pw = unit.partition_size
    dh, dw = math.ceil(H / ph), math.ceil(W / pw)
    heads, hd = unit.attn.num_heads, unit.attn.head_dim
    table = unit.rel_pos.relative_position_bias_table
    q, k, v = unit.attn.qkv(x).view(B, H, W, 3, heads, hd).unbind(3)

    def group_index(r, c):
        if unit.grid:
            return (r % dh, c % dw), (r // dh, c // dw)
        return (r // ph, c // pw), (r % ph, c % pw)

    cells = [(r, c) for r in range(H) for c in range(W)]
    out = torch.zeros(B, H, W, heads, hd, dtype=x.dtype)
    for r, c in cells:
        g, (qi, qj) = group_index(r, c)
        keys = [(r2, c2) for r2, c2 in cells if group_index(r2, c2)[0] == g]
        kk = torch.stack([k[:, r2, c2] for r2, c2 in keys], 2)  # [B, heads, n, hd]
        vv = torch.stack([v[:, r2, c2] for r2, c2 in keys], 2)
        bias = torch.stack([
            table[:, ki - qi + ph - 1, kj - qj + pw - 1] for ki, kj in (group_index(r2, c2)[1] for r2, c2 in keys)],
            -1)  # [heads, n]
        logits = (q[:, r, c, :, None, :] * kk).sum(-1) * unit.attn.scale + bias
        out[:, r, c] = (logits.softmax(-1)[..., None] * vv).sum(-2)
    return unit.attn.proj(out.reshape(B, H, W, heads * hd))


@pytest.mark.parametrize('grid', [False, True], ids=['window', 'grid'])
@pytest.mark.parametrize('size', [(6, 9), (7, 5), (2, 3)], ids=['divisible', 'padded', 'smaller'])
def test_partition_attention_by_definition(grid, size):
    torch.manual_seed(0)
    unit = PartitionAttention(64, (3, 3), grid=grid).double().eval()
    with torch.no_grad():
        for p in unit.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, *size, 64, dtype=torch.float64)
    with torch.no_grad():
        got = unit._partition_attn(x)
        expected = _attention_by_definition(unit, x)
    assert got.shape == x.shape
    assert torch.allclose(got, expected, atol=1e-10)


def test_any_input_size():
    """1.5x the default (336: stem 168, stage maps 84, 42, 21, 11) and odd sides run (TF "SAME" strided layers: ceil);
    padding leaves the real tokens alone: cutting a map below a row of whole windows changes nothing above it."""
    meta = timm.create_model('maxvit_tiny', device='meta').eval()
    model = timm.create_model('maxvit_tiny', num_classes=10, **REDUCED).eval()
    for m, size in [(meta, (336, 336)), (meta, (336, 224)), (model, (100, 75))]:
        x = torch.randn(1, 3, *size, device=m.stem.conv1.weight.device)
        with torch.no_grad():
            feats = m.forward_intermediates(x, intermediates_only=True)
        assert [f.shape[-2:] for f in feats] == [
            (math.ceil(size[0] / r), math.ceil(size[1] / r)) for r in (2, 4, 8, 16, 32)]  # the stem, the stages
        assert all(torch.isfinite(f).all() for f in feats if not f.is_meta)
    unit = model.stages[0].blocks[0].attn_block
    x = torch.randn(1, 14, 14, 32)
    with torch.no_grad():  # rows 0..6 are one row of whole windows: cutting the map below them changes nothing
        assert torch.allclose(unit(x)[:, :7], unit(x[:, :10])[:, :7], atol=1e-6)


# ---------------------------------------------------------------- the official 384 / 512 tables

def _tf_resize_bilinear(table: np.ndarray, size) -> np.ndarray:
    """``tf.image.resize(method='bilinear', antialias=False)`` (TF2: half-pixel centres), written out in numpy."""
    def weights(n_in, n_out):
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        lo = np.floor(x)
        frac = x - lo
        return np.clip(lo, 0, n_in - 1).astype(int), np.clip(lo + 1, 0, n_in - 1).astype(int), frac
    y0, y1, fy = weights(table.shape[-2], size[0])
    x0, x1, fx = weights(table.shape[-1], size[1])
    top = table[:, y0][:, :, x0] * (1 - fx) + table[:, y0][:, :, x1] * fx
    bottom = table[:, y1][:, :, x0] * (1 - fx) + table[:, y1][:, :, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


@pytest.mark.parametrize('name,table', [('maxvit_tiny_384', 23), ('maxvit_tiny_512', 31), ('maxvit_large_512', 31)])
def test_official_13x13_tables_resized_once(name, table):
    """The official 384 / 512 checkpoints hold the 224 model's 13x13 tables and resize them at run time with
    tf.image.resize; loading such a checkpoint resizes them once to the model's table, exactly that way."""
    source = timm.create_model(name.rsplit('_', 1)[0], device='meta').state_dict()
    g = torch.Generator().manual_seed(0)
    tables = {k: torch.randn(v.shape, generator=g) for k, v in source.items() if k.endswith('bias_table')}
    assert all(v.shape[-2:] == (13, 13) for v in tables.values())
    model = timm.create_model(name, device='meta')
    sd = checkpoint_filter_fn({**source, **tables}, model)
    for k, v in tables.items():
        assert sd[k].shape[-2:] == (table, table)
        np.testing.assert_allclose(sd[k].numpy(), _tf_resize_bilinear(v.numpy(), (table, table)), atol=1e-6)


def test_set_input_size_resizes_like_the_checkpoint_filter(reduced_pair):
    """set_input_size (timm's API) gives the network that loading the checkpoint into the larger window gives."""
    oracle, model = reduced_pair
    model = copy.deepcopy(model)
    model.requires_grad_(False)
    model.set_input_size(img_size=96)  # window = grid = 96 // 32 = 3
    assert model.window_size == model.grid_size == (3, 3)
    assert model._model_args['window_size'] == (3, 3)
    assert not any(p.requires_grad for p in model.parameters())
    direct = _ours(oracle, num_classes=10, window_size=3, **REDUCED)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), direct(x), atol=ATOL)


# ---------------------------------------------------------------- checkpoint layouts, cfgs

def test_pretrained_file_in_timm_layout_loads_through_timm(reduced_pair, tmp_path):
    """timm's own loading path (pretrained=True, a file in timm's layout, as the hub weights are) uses our filter."""
    from safetensors.torch import save_file
    oracle, model = reduced_pair
    path = tmp_path / 'timm_layout.safetensors'
    save_file({k: v.contiguous() for k, v in oracle.state_dict().items()}, str(path))
    loaded = timm.create_model(
        'maxvit_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), num_classes=10,
        window_size=2, **REDUCED)
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_pretrained_cfgs_are_timms():
    """Every tag points at timm's hub weights with timm's preprocessing and class count for those weights."""
    names = timm.list_pretrained('maxvit_*')
    ours = [n for n in names if n.split('.')[0] in ORACLES]
    assert len(ours) == 21
    for name in ours:
        arch, tag = name.split('.')
        cfg = get_pretrained_cfg(name).to_dict()  # preprocessing as timm's: tests/test_checkpoint_contract.py
        assert cfg['hf_hub_id'] == f'timm/{ORACLES[arch]}.{tag}'
        assert cfg['pool_size'] == tuple(s // 32 for s in cfg['input_size'][1:])
        assert not cfg.get('fixed_input_size')


def test_head_and_no_weight_decay():
    model = timm.create_model('maxvit_tiny', device='meta')
    assert model.head_hidden_size == model.num_features == 512
    assert model.get_classifier() is model.head.fc
    nwd = model.no_weight_decay()
    assert len(nwd) == 2 * 11 and all(n.endswith('rel_pos.relative_position_bias_table') for n in nwd)
