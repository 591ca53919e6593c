"""The counter (backbones.flops): every handle on tiny modules against hand-computed MACs, the meta-device path
against the CPU path, and the totals against ``torch.utils.flop_counter.FlopCounterMode`` (which counts FLOPs =
2 x MACs for matmuls and convolutions)."""
import logging

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from _oracle import flop_counter_macs

import backbones
from backbones import flops
from backbones.flops import MODULE_HANDLES, _materialize, _meta_tracing_works, count, format_rows, resolve_names
from backbones.layers import Involution

# fvcore operators that are multiply-accumulates (what FlopCounterMode also counts). fvcore's other default handles
# (batch_norm, layer_norm, group_norm, adaptive_avg_pool2d, upsample_*) have no FlopCounterMode counterpart.
MATMUL_OPS = {'conv', 'linear', 'addmm', 'matmul', 'mm', 'bmm', 'baddbmm', 'einsum', 'scaled_dot_product_attention'}


def _macs(module, x, per_module=False):
    """Count a module at the shape of ``x`` (through its ``pretrained_cfg``, as for a zoo model)."""
    module.pretrained_cfg = dict(input_size=tuple(x.shape[1:]))
    return count(module, batch_size=x.shape[0], per_module=per_module)


class _Lambda(nn.Module):
    """``fn(x, *mods)`` as a module (the op under test), ``mods`` registered as its submodules."""

    def __init__(self, fn, *mods):
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        return self.fn(x, *self.mods)


def _tokens(x):
    """[1, 32, 8, 8] image -> [1, 64, 32] tokens (N=64, D=32)."""
    return x.flatten(2).transpose(1, 2)


def _heads(t, h=4):
    b, n, d = t.shape
    return t.view(b, n, h, d // h).transpose(1, 2)  # [B, H, N, D/H]


IMG = (1, 32, 16, 16)
TOK_IMG = (1, 32, 8, 8)


# ------------------------------------------------------------------------------------------------------------------
# (a) handles against hand counts (cases of specs/flops.md §2)

@pytest.mark.parametrize('device', ['cpu', 'meta'])
@pytest.mark.parametrize('name,build,shape,expected', [
    ('conv3x3', lambda: nn.Conv2d(32, 32, 3, padding=1, bias=False), IMG, 32 * 32 * 9 * 16 * 16),
    ('depthwise3x3', lambda: nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), IMG, 32 * 9 * 16 * 16),
    ('grouped3x3_g4', lambda: nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), IMG, 32 * 8 * 9 * 16 * 16),
    ('conv1d', lambda: _Lambda(lambda x, c: c(x.flatten(2)), nn.Conv1d(32, 16, 3)), IMG, 16 * 32 * 3 * 254),
    ('conv_transpose', lambda: nn.ConvTranspose2d(32, 8, 2, stride=2), IMG, 32 * 8 * 4 * 16 * 16),
    ('linear', lambda: _Lambda(lambda x, fc: fc(_tokens(x)), nn.Linear(32, 32)), TOK_IMG, 64 * 32 * 32),
    ('attention_matmul', lambda: _Lambda(
        lambda x: (_heads(_tokens(x)) @ _heads(_tokens(x)).transpose(-1, -2)).softmax(-1) @ _heads(_tokens(x))),
        TOK_IMG, 2 * 4 * 64 * 64 * 8),
    ('sdpa', lambda: _Lambda(
        lambda x: F.scaled_dot_product_attention(_heads(_tokens(x)), _heads(_tokens(x)), _heads(_tokens(x)))),
        TOK_IMG, 2 * 4 * 64 * 64 * 8),
    ('sdpa_mask_cross', lambda: _Lambda(  # 64 queries, 16 keys with a different value width, additive mask
        lambda x: F.scaled_dot_product_attention(
            _heads(_tokens(x)), _heads(_tokens(x))[:, :, :16], _heads(_tokens(x)[:, :16, :16]),
            attn_mask=torch.zeros(64, 16, device=x.device))),
        TOK_IMG, 4 * 64 * 16 * (8 + 4)),
    ('sdpa_gqa', lambda: _Lambda(  # 4 query heads share 2 key/value heads
        lambda x: F.scaled_dot_product_attention(
            _heads(_tokens(x)), _heads(_tokens(x)[..., :16], 2), _heads(_tokens(x)[..., :16], 2), enable_gqa=True)),
        TOK_IMG, 4 * 64 * 64 * (8 + 8)),
    ('einsum_qk', lambda: _Lambda(
        lambda x: torch.einsum('bhnd,bhmd->bhnm', _heads(_tokens(x)), _heads(_tokens(x)))),
        TOK_IMG, 4 * 64 * 64 * 8),
    ('einsum_ellipsis', lambda: _Lambda(
        lambda x: torch.einsum('...nd,...md->...nm', _heads(_tokens(x)), _heads(_tokens(x)))),
        TOK_IMG, 4 * 64 * 64 * 8),
    ('matmul_broadcast_left', lambda: _Lambda(  # [64, 32] @ [4, 32, 8]: the left operand broadcasts over 4
        lambda x: _tokens(x)[0] @ _tokens(x)[0, :, :8].expand(4, 64, 8)[:, :32]),
        TOK_IMG, 4 * 64 * 32 * 8),
    ('bmm', lambda: _Lambda(lambda x: torch.bmm(_tokens(x), _tokens(x).transpose(1, 2))), TOK_IMG, 64 * 64 * 32),
    ('baddbmm', lambda: _Lambda(
        lambda x: torch.baddbmm(_tokens(x)[:, :, :16], _tokens(x), _tokens(x).transpose(1, 2)[:, :, :16])),
        TOK_IMG, 64 * 16 * 32),
    ('conv_same_padding', lambda: nn.Conv2d(32, 16, 3, padding='same', bias=False), IMG, 16 * 32 * 9 * 16 * 16),
    ('conv_dilated', lambda: nn.Conv2d(32, 16, 3, padding=2, dilation=2, bias=False), IMG, 16 * 32 * 9 * 16 * 16),
])
def test_op_handle(name, build, shape, expected, device):
    module = build().eval()
    res = _macs(module.to(device), torch.randn(shape))
    assert res.device == device or not list(module.parameters())  # parameter-free modules always run on meta
    matmul_macs = sum(v for k, v in res.by_operator.items() if k in MATMUL_OPS)
    assert matmul_macs == expected, res.by_operator


class _MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        t = _tokens(x)
        return self.mha(t, t, t, need_weights=False)[0]


@pytest.mark.parametrize('device', ['cpu', 'meta'])
def test_multihead_attention(device):
    """``nn.MultiheadAttention`` takes its fused ``_native_multi_head_attention`` path on CPU (eval, no grad) and the
    linear + SDPA path on meta: both count in/out projections and attention."""
    res = _macs(_MHA().eval().to(device), torch.randn(TOK_IMG))
    n, d = 64, 32
    assert res.macs == 4 * n * d * d + 2 * n * n * d, res.by_operator


class _RNN(nn.Module):
    def __init__(self, rnn, batch_first=False):
        super().__init__()
        self.rnn = rnn
        self.batch_first = batch_first

    def forward(self, x):
        t = _tokens(x)  # [1, 64, 32]
        return self.rnn(t if self.batch_first else t.transpose(0, 1))[0]


@pytest.mark.parametrize('device', ['cpu', 'meta'])
@pytest.mark.parametrize('name,build,expected', [
    # 64 steps, input 32, hidden 16: gates * (in*h + h*h) per step, per direction, per layer
    ('bilstm', lambda: _RNN(nn.LSTM(32, 16, bidirectional=True, batch_first=True), True),
     2 * 64 * 4 * (32 * 16 + 16 * 16)),
    ('lstm_2layers', lambda: _RNN(nn.LSTM(32, 16, num_layers=2)), 64 * 4 * (32 * 16 + 16 * 16 + 16 * 16 + 16 * 16)),
    ('lstm_proj', lambda: _RNN(nn.LSTM(32, 16, proj_size=8)), 64 * (4 * 16 * 32 + 4 * 16 * 8 + 8 * 16)),
    ('gru', lambda: _RNN(nn.GRU(32, 16)), 64 * 3 * (32 * 16 + 16 * 16)),
    ('rnn_tanh', lambda: _RNN(nn.RNN(32, 16)), 64 * (32 * 16 + 16 * 16)),
    ('rnn_relu_bidir', lambda: _RNN(nn.RNN(32, 16, nonlinearity='relu', bidirectional=True)),
     2 * 64 * (32 * 16 + 16 * 16)),
])
def test_rnn_handle(name, build, expected, device):
    """fvcore skips ``aten::lstm`` (and FlopCounterMode sees nothing either): our handle, checked by hand only."""
    module = build().eval()
    res = _macs(module.to(device) if device == 'meta' else module, torch.randn(TOK_IMG))
    assert res.by_operator == {_op_name(module): expected}, res.by_operator


def _op_name(module):
    rnn = module.rnn
    return {'LSTM': 'lstm', 'GRU': 'gru'}.get(type(rnn).__name__) or f'rnn_{rnn.nonlinearity}'


def _involution_expected(channels, k, stride, side, reduction=4, group_channels=16):
    out = -(-side // stride)
    red = channels // reduction
    gen_side = side // stride
    return dict(
        involution=channels * k * k * out * out,  # the aggregation
        conv=gen_side ** 2 * (channels * red + red * (k * k * channels // group_channels)),  # the two 1x1 convs
        batch_norm=2 * red * gen_side ** 2,  # fvcore: eval BN with affine = 2 per element
    )


@pytest.mark.parametrize('device', ['cpu', 'meta'])
@pytest.mark.parametrize('stride', [1, 2])
def test_involution_handle(stride, device):
    module = Involution(32, 7, stride).eval()
    res = _macs(module.to(device) if device == 'meta' else module, torch.randn(IMG))
    expected = _involution_expected(32, 7, stride, 16)
    assert res.by_operator == expected
    assert res.macs == sum(expected.values())


def test_involution_in_per_module_table_and_parents():
    inv = Involution(32, 3, 1)
    model = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.Sequential(inv)).eval()
    res = _macs(model, torch.randn(IMG), per_module=True)
    agg = 32 * 9 * 16 * 16
    assert res.by_operator['involution'] == agg
    assert res.per_module['1.0'] == res.per_module['1'] == res.macs - 32 * 32 * 16 * 16
    assert res.per_module['1.0'] - res.per_module['1.0.conv2'] - res.per_module['1.0.conv1'] == agg
    assert res.per_module[''] == res.macs
    rows = {r.split('|')[1].strip(): r.split('|')[3].strip() for r in res.table.splitlines()[2:]}
    assert rows['model'] == f'{res.macs / 1e6:.3g}M' and rows['1.0'] == f'{res.per_module["1.0"] / 1e6:.3g}M'
    assert '#MACs' in res.table.splitlines()[0]


def test_involution_count_forward_is_the_same_operator():
    """The unfold-based forward used while counting (fewer traced ops) computes what the layer computes and
    yields the same count as tracing the layer's own tap-by-tap forward."""
    entry = MODULE_HANDLES['backbones.layers.involution.Involution']
    torch.manual_seed(0)
    for stride in (1, 2):
        module = Involution(32, 7, stride).eval()
        x = torch.randn(2, 32, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(entry.count_forward(module, x), module(x), rtol=1e-5, atol=1e-5)
        fast = _macs(module, x[:1])
        MODULE_HANDLES['backbones.layers.involution.Involution'] = type(entry)(entry.label, entry.macs, None)
        try:
            slow = _macs(module, x[:1])
        finally:
            MODULE_HANDLES['backbones.layers.involution.Involution'] = entry
        assert fast.by_operator == slow.by_operator
        assert 'forward' not in vars(module)  # the substitute is removed after counting


# ------------------------------------------------------------------------------------------------------------------
# API behaviour

def test_count_by_name_uses_cfg_input_size_and_meta():
    name = backbones.list_models()[0]
    res = count(name)
    cfg = timm.create_model(name, device='meta').pretrained_cfg
    assert res.input_size == tuple(cfg['input_size'])
    assert res.device == 'meta'
    assert res.params == backbones.get_variant_info(name).params
    assert res.gmacs == res.macs / 1e9


def test_input_size_forms_and_batch():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False)).eval()
    model.pretrained_cfg = dict(input_size=(3, 32, 32))
    per_pixel = 8 * 3 * 9
    assert count(model).macs == per_pixel * 32 * 32
    assert count(model, input_size=16).macs == per_pixel * 16 * 16
    assert count(model, input_size=(16, 8)).macs == per_pixel * 16 * 8
    assert count(model, input_size=(3, 8, 8), batch_size=2).macs == 2 * per_pixel * 8 * 8


def test_module_mode_restored_and_weights_untouched():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    model.pretrained_cfg = dict(input_size=(3, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count(model)
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_skipped_ops_listed_and_silent(caplog):
    model = _Lambda(lambda x, c: (c(x) * 2).softmax(1) + x.sigmoid(), nn.Conv2d(32, 32, 1, bias=False)).eval()
    with caplog.at_level(logging.WARNING):
        res = _macs(model, torch.randn(IMG))
    assert res.macs == 32 * 32 * 16 * 16
    assert {'aten::mul', 'aten::softmax', 'aten::sigmoid', 'aten::add'} <= set(res.skipped_ops)
    assert not [r for r in caplog.records if r.name.startswith('fvcore')]


def test_meta_counting_restores_convolution_kernel():
    """The meta-tracing fix is scoped: afterwards meta convs run on torch's own kernel again."""
    count(nn.Sequential(nn.Conv2d(3, 4, 3)).to('meta'), input_size=(3, 8, 8))
    out = nn.Conv2d(3, 4, 3, device='meta')(torch.empty(1, 3, 8, 8, device='meta'))
    assert out.shape == (1, 4, 6, 6)


def test_meta_tracing_works_in_this_torch():
    """The fast path (no weights, no arithmetic) is available; if a torch upgrade breaks it, counts stay right
    (CPU fallback) but the counts suite gets several times slower: this test says so."""
    assert _meta_tracing_works()


class _DataDependent(nn.Module):
    """A forward with a host sync (``bool`` of a tensor): not traceable on meta."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)

    def forward(self, x):
        y = self.conv(x)
        return y if bool(y.sum() > -1e30) else -y


def test_meta_failure_falls_back_to_cpu_on_a_copy():
    model = _DataDependent().to('meta')
    model.pretrained_cfg = dict(input_size=(3, 10, 10))
    with pytest.warns(UserWarning, match='counting on the CPU'):
        res = count(model)
    assert res.device == 'cpu' and res.macs == 8 * 3 * 9 * 8 * 8
    assert model.conv.weight.is_meta  # the caller's model is left as it was


def test_cpu_fallback_for_a_name_gives_the_meta_numbers(monkeypatch):
    name = 'se_resnext50_32x4d' if 'se_resnext50_32x4d' in backbones.list_models() else backbones.list_models()[0]
    meta = count(name, input_size=64)
    monkeypatch.setattr(flops, '_meta_tracing_works', lambda: False)
    with pytest.warns(UserWarning, match='counting on the CPU'):
        cpu = count(name, input_size=64)
    assert (meta.device, cpu.device) == ('meta', 'cpu')
    assert cpu.by_operator == meta.by_operator and cpu.params == meta.params


def test_cli_helpers():
    zoo = backbones.list_models()
    assert resolve_names([]) == zoo
    assert resolve_names([zoo[0], zoo[0]]) == [zoo[0]]
    with pytest.raises(ValueError):
        resolve_names(['no_such_family_*'])
    row = dict(model='m', params_m=1.0, params_official_m=None, params_delta=None, gmacs=2.0, gmacs_paper=2.0,
               gmacs_delta_pct=0.0, input_size='3x224x224')
    assert format_rows([row], 'csv').splitlines()[1] == 'm,1.0,,,2.0,2.0,0.0,3x224x224'
    assert format_rows([row], 'markdown').splitlines()[2].startswith('| m | 1.000 | - | - | 2.000 | 2.00 |')
    assert format_rows([row]).splitlines()[1].split()[:3] == ['m', '1.000', '-']


# ------------------------------------------------------------------------------------------------------------------
# (b) cross-check against torch.utils.flop_counter (executes the model; counts conv / matmul / SDPA only)

def _ours_matmul_macs(res):
    """fvcore's matmul-like operators. Excluded on our side because FlopCounterMode has no formula for them:
    norms / adaptive pooling / upsampling (fvcore defaults) and the involution aggregation (element-wise multiply +
    sum, which FlopCounterMode does not count)."""
    return sum(v for k, v in res.by_operator.items() if k in MATMUL_OPS)


@pytest.mark.parametrize('name,size', [('se_resnext50_32x4d', 32), ('rednet26', 32)])
def test_against_flop_counter_mode_zoo(name, size):
    if name not in backbones.list_models():
        pytest.skip(f'{name} not registered')
    model = _materialize(timm.create_model(name, device='meta')).eval()
    x = torch.randn(1, 3, size, size)
    ours = count(model, input_size=(3, size, size))
    theirs = flop_counter_macs(model, x)
    assert ours.device == 'cpu'
    assert _ours_matmul_macs(ours) == pytest.approx(theirs, rel=0.01)
    # and the meta path gives exactly the CPU numbers
    meta = count(name, input_size=(3, size, size))
    assert meta.device == 'meta' and meta.by_operator == ours.by_operator


class _Attention(nn.Module):
    """A ViT block's attention with fused SDPA (what timm and our attention families use)."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        t = self.norm(x.flatten(2).transpose(1, 2))  # [B, N, C]
        b, n, c = t.shape
        q, k, v = self.qkv(t).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def test_against_flop_counter_mode_fused_attention():
    model = _Attention().eval()
    x = torch.randn(2, 64, 14, 14)
    ours = _macs(model, x)
    theirs = flop_counter_macs(model, x)
    n = 14 * 14
    assert ours.by_operator['scaled_dot_product_attention'] == 2 * 4 * n * n * (16 + 16)
    assert _ours_matmul_macs(ours) == pytest.approx(theirs, rel=0.01)
