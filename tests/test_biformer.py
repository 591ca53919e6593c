"""BiFormer: parity with the official code (fixtures), the routing attention against a by-definition
reference, any-size inputs. (Official keys and counts, refused checkpoints: test_checkpoint_contract.py.)"""
import copy
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from _oracle import assert_official_logits, flop_counter_macs, parity_fixture
from torch.overrides import TorchFunctionMode

from backbones.flops import count
from backbones.layers.routing_attention import BiLevelRoutingAttention
from backbones.models.biformer import checkpoint_filter_fn

FIXTURES = Path(__file__).parent / 'fixtures' / 'biformer'


def _json(name):
    return json.loads((FIXTURES / f'{name}.json').read_text())


def _model_kwargs(cfg):
    """Official ``BiFormer(**config)`` -> our kwargs; the options we do not model must be at the released values."""
    assert cfg['kv_downsample_mode'] == 'identity' and cfg['layer_scale_init_value'] == -1 and cfg['pre_norm']
    assert cfg['before_attn_dwconv'] == 3 and not cfg['param_routing'] and not cfg['soft_routing']
    assert len(set(cfg['mlp_ratios'])) == 1
    return dict(
        depths=cfg['depth'], embed_dims=cfg['embed_dim'], head_dim=cfg['head_dim'], n_win=cfg['n_win'],
        topks=[t if t > 0 else -1 for t in cfg['topks']], mlp_ratio=cfg['mlp_ratios'][0],
        side_dwconv=cfg['side_dwconv'], qk_dims=cfg['qk_dims'], num_classes=cfg['num_classes'])


def _small(name='biformer_tiny', **kwargs):
    """The t224 fixture's reduced config (T/S/B layout, widths 16..64)."""
    cfg = _model_kwargs(_json('biformer_t224')['config'])
    if name == 'biformer_stl':
        cfg.update(head_dim=16, mlp_ratio=4.)
    return timm.create_model(name, **dict(cfg, **kwargs)).eval()


@pytest.fixture(scope='module')
def small_model():
    return _small()


# ---------------------------------------------------------------- parity with the official code

@pytest.mark.parametrize('fixture', ['biformer_t224', 'biformer_autopad'])
def test_fixture_parity(fixture):
    """Official weights in the released ``{'model': ...}`` container -> our filter -> the official logits.
    ``biformer_autopad``: a 100x164 input, which the official code runs with ``auto_pad=True``."""
    meta, official, x, expected = parity_fixture('biformer', fixture)
    model = timm.create_model('biformer_tiny', device='meta', **_model_kwargs(meta['config']))
    sd = checkpoint_filter_fn({'model': official, 'epoch': 299, 'max_accuracy': 0.}, model)
    model.load_state_dict(sd, assign=True)
    assert_official_logits(model, meta, x, expected)


def test_pretrained_file_and_convert(tmp_path):
    """The official file through timm's own ``pretrained`` path, and through tools/convert.py's converter."""
    from backbones.convert import convert_checkpoint
    meta, official, x, expected = parity_fixture('biformer', 'biformer_autopad')
    kwargs = _model_kwargs(meta['config'])
    ckpt = tmp_path / 'biformer_official.pth'
    torch.save({'model': official, 'epoch': 299}, ckpt)
    model = timm.create_model('biformer_tiny', pretrained=True, pretrained_cfg_overlay=dict(
        file=str(ckpt), num_classes=kwargs['num_classes']), **kwargs).eval()
    with torch.no_grad():
        assert (model(x) - expected).abs().max().item() <= meta['atol']
    kwargs.pop('num_classes')
    out = convert_checkpoint('biformer_tiny', ckpt, tmp_path / 'converted', model_kwargs=kwargs)
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert model.num_classes == meta['config']['num_classes']
    with torch.no_grad():
        assert (model(x) - expected).abs().max().item() <= meta['atol']


def test_filter_reads_model_not_ema():
    """Like the official evaluation, a training checkpoint's ``model`` entry is used, not ``model_ema``."""
    meta, official, _, _ = parity_fixture('biformer', 'biformer_t224')
    model = timm.create_model('biformer_tiny', device='meta', **_model_kwargs(meta['config']))
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in official.items()}
    sd = checkpoint_filter_fn({'model': official, 'model_ema': ema}, model)
    assert torch.equal(sd['head.fc.weight'], official['head.weight'])
    assert torch.equal(sd['stages.3.blocks.0.attn.mhsa.qkv.weight'], official['stages.3.0.attn.qkv.weight'])


# ---------------------------------------------------------------- bi-level routing attention, by definition

def _bra_by_definition(m: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Spec section 3.3 written out region by region: pad -> qkv -> region means -> top-k routing -> attention
    over the concatenated tokens of the routed regions, per head -> + LePE(v) -> crop -> projection."""
    B, H, W, C = x.shape
    S, cq, heads = m.n_win, m.qk_dim, m.num_heads
    xp = F.pad(x, (0, 0, 0, (S - W % S) % S, 0, (S - H % S) % S))
    qkv = F.linear(xp, m.qkv.weight, m.qkv.bias)
    Hp, Wp = qkv.shape[1:3]
    rh, rw = Hp // S, Wp // S
    dq, dv = cq // heads, C // heads
    out = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    for b in range(B):
        cells = [(i, j) for i in range(S) for j in range(S)]
        tok = [qkv[b, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw].reshape(rh * rw, -1) for i, j in cells]
        q_r = torch.stack([t[:, :cq].mean(0) for t in tok])
        k_r = torch.stack([t[:, cq:2 * cq].mean(0) for t in tok])
        routed = torch.topk((q_r * m.scale) @ k_r.T, m.topk, dim=-1).indices
        for r, (i, j) in enumerate(cells):
            keys = torch.cat([tok[s][:, cq:2 * cq] for s in routed[r].tolist()])
            vals = torch.cat([tok[s][:, 2 * cq:] for s in routed[r].tolist()])
            q = tok[r][:, :cq]
            o = torch.cat([
                torch.softmax(q[:, h * dq:(h + 1) * dq] @ keys[:, h * dq:(h + 1) * dq].T * m.scale, -1)
                @ vals[:, h * dv:(h + 1) * dv] for h in range(heads)], dim=-1)
            out[b, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw] = o.reshape(rh, rw, C)
    v = qkv[..., 2 * cq:].permute(0, 3, 1, 2)
    k = m.lepe.kernel_size[0]
    out = out + F.conv2d(v, m.lepe.weight, m.lepe.bias, padding=k // 2, groups=C).permute(0, 2, 3, 1)
    return F.linear(out[:, :H, :W], m.proj.weight, m.proj.bias)


def _random_bra(dim=12, heads=3, n_win=3, topk=2, qk_dim=None):
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(dim, heads, n_win=n_win, topk=topk, qk_dim=qk_dim).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


@pytest.mark.parametrize('size,n_win,topk,qk_dim', [
    ((6, 9), 3, 2, None),  # divisible: regions 2x3
    ((7, 5), 3, 4, None),  # padded to 9x6 (auto_pad): padded tokens take part, unmasked
    ((2, 3), 3, 9, None),  # smaller than the region grid: mostly padding, every region routed
    ((6, 6), 2, 3, 24),  # q/k wider than v
])
@pytest.mark.parametrize('masked', [False, True], ids=['gathered', 'masked'])
def test_bra_matches_definition(size, n_win, topk, qk_dim, masked):
    m = _random_bra(n_win=n_win, topk=topk, qk_dim=qk_dim)
    m.masked = masked
    x = torch.randn(2, *size, 12, dtype=torch.float64)
    expected = _bra_by_definition(m, x)
    for fused, tol in ((True, 1e-10), (False, 1e-5)):  # the explicit path of ``sdpa`` takes its softmax in float32
        m.fused_attn = fused
        with torch.no_grad():
            y = m(x)
        assert y.shape == x.shape
        torch.testing.assert_close(y, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize('masked', [False, True], ids=['gathered', 'masked'])
def test_bra_batch_elements_are_independent(masked):
    """The flattened (batch * region) gather and the mask must not mix images."""
    m = _random_bra()
    m.masked = masked
    x = torch.randn(3, 6, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        together = m(x)
        alone = torch.cat([m(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-12, rtol=1e-12)


class _OpLog(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append((getattr(func, '__name__', str(func)), args))
        return func(*args, **(kwargs or {}))


def test_routing_gather_is_one_index_select():
    """One ``index_select`` over the flattened (batch * region) axis; no ``gather`` and no expanded view."""
    m = _random_bra().float()
    log = _OpLog()
    with torch.no_grad(), log:
        m(torch.randn(2, 6, 9, 12))
    names = [n for n, _ in log.calls]
    assert names.count('index_select') == 1
    assert not {'gather', 'expand', 'expand_as', 'take_along_dim'} & set(names)
    (_, args), = [c for c in log.calls if c[0] == 'index_select']
    src, dim, index = args
    assert dim == 0 and index.dim() == 1 and src.shape[0] == 2 * 3 * 3 and index.numel() == 2 * 9 * 2


@pytest.mark.parametrize('masked', [False, True], ids=['gathered', 'masked'])
def test_bra_flops_counted(masked):
    """Token attention (SDPA) and the routing matmul are counted: B * R * heads * n * (topk * n) * (d_qk + d_v),
    the gathered form's work, also when the layer computes the masked form."""
    m = _random_bra(dim=12, heads=3, n_win=3, topk=2).float()
    m.masked = masked
    m.pretrained_cfg = dict(input_size=(6, 9, 12))
    res = count(m)
    regions, n = 9, 2 * 3
    assert res.by_operator['scaled_dot_product_attention'] == regions * 3 * n * (2 * n) * (4 + 4)
    assert res.by_operator['matmul'] == regions * regions * 12
    assert res.by_operator['linear'] == 6 * 9 * (12 * 36 + 12 * 12)


def test_model_flops_against_flop_counter_mode(small_model):
    """Our counter (fvcore + SDPA handle) against torch's FlopCounterMode on the matmul-like work of a whole model
    at a non-divisible size (padded regions)."""
    x = torch.randn(1, 3, 100, 164)
    ours = count(small_model, input_size=(3, 100, 164))
    matmul_like = {'conv', 'linear', 'matmul', 'scaled_dot_product_attention'}
    assert ours.by_operator['scaled_dot_product_attention'] > 0
    gathered = copy.deepcopy(small_model)  # the form the counter counts (the official operator's work)
    for m in gathered.modules():
        if isinstance(m, BiLevelRoutingAttention):
            m.masked = False
    assert sum(v for k, v in ours.by_operator.items() if k in matmul_like) == flop_counter_macs(gathered, x)


@pytest.mark.parametrize('masked', [False, True], ids=['gathered', 'masked'])
def test_bra_fx_leaf(masked):
    """Plain ``torch.fx`` (not only timm's tracer) traces the layer, routing as one leaf call."""
    m = _random_bra().float()
    m.masked = masked
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(2, 7, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), m(x))
    leaf = 'masked_routed_attention' if masked else 'routed_attention'
    assert any(n.op == 'call_function' and n.target.__name__ == leaf for n in gm.graph.nodes)


def test_bra_form_choice():
    """The masked form where queries route to at least a quarter of the regions (BiFormer's third stage: 16 of 49),
    the gathered one below (first two stages: 1 and 4 of 49)."""
    model = timm.create_model('biformer_tiny', device='meta')
    masked = [[blk.attn.masked for blk in stage.blocks] for stage in model.stages[:3]]
    assert masked == [[False] * 2, [False] * 2, [True] * 8]


# ---------------------------------------------------------------- input sizes

@pytest.mark.parametrize('size', [(224, 224), (96, 160), (336, 336), (33, 47)])
def test_any_input_size(size, small_model):
    """224 (default), non-square, 1.5x the default and an odd size (T/S/B take any size; the numbers at 224 and at
    the non-divisible 100x164 are checked against the official code by the fixtures)."""
    model = small_model
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
    for f, info in zip(feats, model.feature_info):
        assert f.shape == (1, info['num_chs'], -(-size[0] // info['reduction']), -(-size[1] // info['reduction']))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_stl_input_size_rule():
    model = _small('biformer_stl')
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 10)
    with pytest.raises(ValueError, match='BiFormer-STL takes input sides that are multiples of 32, got 100x96'):
        model(torch.randn(1, 3, 100, 96))


def test_wrong_channel_count():
    model = timm.create_model('biformer_tiny', device='meta')
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.empty(1, 4, 64, 64, device='meta'))
