"""The eager inference fast paths of shared layers give the numbers of the plain formulation they replace.

Oracles: timm's ``Mlp`` (same weights), the MBConv op by op (``forward_unfused``, the official block order, itself
checked against the official MOAT / MaxViT fixtures), ``F.pad`` and ``nn.Conv2d``.
"""
import pytest
import timm.layers
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_close_f32
from timm.layers import create_feature_extractor, get_graph_node_names

import backbones.layers.mlp as mlp_mod
from backbones.layers import Mlp, PointwiseConv2d
from backbones.layers.activation import InplaceGELU
from backbones.layers.conv import fill_border_, pad_same
from backbones.layers.mbconv import MBConv


def _randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith('running_var'):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.is_floating_point():
                t.copy_(0.3 * torch.randn(t.shape, generator=g))
    return module


@pytest.mark.parametrize('act', [nn.GELU, InplaceGELU])
def test_blocked_mlp_equals_timm_mlp(monkeypatch, act):
    """Blocked over tokens (the last block shorter) in inference; timm's forward in training and under autograd."""
    monkeypatch.setattr(mlp_mod, 'BLOCK_MIN_BYTES', 1)  # block small test inputs
    monkeypatch.setattr(mlp_mod, 'BLOCK_TARGET_ELEMENTS', 128 * 48)  # 128 tokens per block for hidden 48
    ours = _randomize_(Mlp(16, 48, act_layer=act)).eval()
    ref = timm.layers.Mlp(16, 48, act_layer=nn.GELU).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 29, 16)  # 609 tokens: 4 full blocks and a partial one
    with torch.no_grad():
        assert ours._block_rows(x) == 128
        assert_close_f32(ours(x), ref(x))
    with torch.inference_mode():
        assert_close_f32(ours(x), ref(x))
    assert ours._block_rows(x) is None  # autograd on: timm's forward
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert ours._block_rows(x) is None  # autocast: timm's forward (the blocked loop writes into a float32 buffer)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    ours.train()
    with torch.no_grad():
        assert ours._block_rows(x) is None
    ours.eval()
    monkeypatch.setattr(mlp_mod, 'BLOCK_MIN_BYTES', 1 << 40)
    with torch.no_grad():
        assert ours._block_rows(x) is None  # a small hidden tensor stays unblocked


def test_blocked_mlp_keeps_keys_and_empty_batch(monkeypatch):
    monkeypatch.setattr(mlp_mod, 'BLOCK_MIN_BYTES', 1)
    ours, ref = Mlp(8, 32), timm.layers.Mlp(8, 32)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        assert ours.eval()(torch.randn(0, 5, 8)).shape == (0, 5, 8)


def _mbconv(stride: int, se_ratio: float, act=nn.GELU, in_chs: int = 8, out_chs: int = 12) -> MBConv:
    return _randomize_(MBConv(in_chs, out_chs, stride=stride, se_ratio=se_ratio, act_layer=act)).eval()


@pytest.mark.parametrize('stride,se_ratio,size', [(1, 0.25, (9, 10)), (2, 0.25, (10, 12)), (2, 0., (9, 7)),
                                                  (1, 0., (1, 1)), (2, 0.25, (1, 2))])
@pytest.mark.parametrize('channels_last', [False, True])
def test_mbconv_eval_path_equals_op_by_op(stride, se_ratio, size, channels_last):
    """BatchNorms folded on the fly, 1x1 convs as matmuls, the strided conv's "SAME" padding moved before conv1:
    the eval-mode numbers of the block op by op (GELU exact and tanh; before and after ``fuse``)."""
    for act in (nn.GELU, lambda: nn.GELU(approximate='tanh')):
        block = _mbconv(stride, se_ratio, act, out_chs=12 if stride == 1 else 16)
        x = torch.randn(2, 8, *size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = block.forward_unfused(x)
            out = block(x)
            assert_close_f32(out, ref)
            block.fuse()
            assert_close_f32(block(x), ref)


def test_mbconv_eval_path_gradients():
    """In eval mode with autograd on (e.g. saliency maps), the folded path back-propagates the same gradients."""
    block = _mbconv(2, 0.25)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    block(x).square().sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad()
    block.forward_unfused(x).square().sum().backward()
    for a, b in zip(grads, [x.grad] + [p.grad for p in block.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mbconv_training_and_fx_use_the_op_by_op_block():
    block = _mbconv(2, 0.25).train()
    x = torch.randn(2, 8, 10, 10)
    calls = []
    block._forward_eval = lambda x: calls.append(x)  # must not be reached
    block(x)
    block.eval()
    nodes = get_graph_node_names(block)[1]  # FX (timm's tracer): the op-by-op graph
    graph = create_feature_extractor(block, return_nodes={nodes[-1]: 'out'})
    assert not calls and any('conv1' in n for n in nodes)
    del block._forward_eval
    with torch.no_grad():
        assert_close_f32(graph(x)['out'], block(x))


@pytest.mark.parametrize('shape,kernel,stride', [((2, 3, 8, 8), 3, 2), ((2, 3, 7, 9), 3, 2), ((1, 4, 5, 6), 3, 1),
                                                 ((2, 3, 8, 8), 2, 2), ((2, 3, 6, 6), 7, 3)])
def test_pad_same_matches_f_pad(shape, kernel, stride):
    """The eager border fill equals ``F.pad`` (layout kept), with autograd and while tracing ``F.pad`` itself."""
    from backbones.layers.conv import same_pads
    x = torch.randn(shape)
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        expected = F.pad(xx, same_pads(xx, kernel, stride), value=0.5)
        out = pad_same(xx, kernel, stride, value=0.5)
        assert torch.equal(out, expected)
        assert out.is_contiguous(memory_format=torch.channels_last) == (xx.stride(1) == 1 and xx.shape[1] > 1)
    y = x.clone().requires_grad_()
    pad_same(y, kernel, stride).sum().backward()
    assert torch.equal(y.grad, torch.ones_like(x))


def test_fill_border():
    x = torch.randn(2, 3, 6, 7)
    out = fill_border_(x.clone(), [1, 2, 0, 3], 0.)
    expected = F.pad(x[:, :, 0:3, 1:5], [1, 2, 0, 3])
    assert torch.equal(out, expected)


def test_pointwise_conv_is_the_conv():
    conv = _randomize_(PointwiseConv2d(6, 10))
    ref = nn.Conv2d(6, 10, 1)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 5, 7)
    for xx in (x, x.contiguous(memory_format=torch.channels_last), torch.randn(2, 6, 1, 1)):
        out = conv(xx)
        assert_close_f32(out, ref(xx))
    out = conv(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)  # the matmul path ran (channels-last out)
    traced = create_feature_extractor(nn.Sequential(conv), return_nodes={'0': 'out'})  # an FX leaf
    assert_close_f32(traced(x)['out'], ref(x))


def _conv_norm_act(in_chs, out_chs, stride, first, **kwargs):
    from backbones.layers import ConvNormAct
    return ConvNormAct(in_chs, out_chs, 3, stride=stride, **kwargs)


@pytest.mark.parametrize('gated', [False, True])
def test_bottleneck_sums_in_place_without_touching_its_input(gated):
    """The residual sum (and SE's fused gate) is written into the branch's own fresh output in inference: same
    numbers as the out-of-place sum, the block input (the identity shortcut, possibly a collected feature) intact,
    and the same gradients when autograd records the block."""
    from backbones.layers import Bottleneck, SqueezeExcite
    block = _randomize_(Bottleneck(16, 16, 4, _conv_norm_act, attn_layer=SqueezeExcite if gated else None)).eval()
    x = torch.randn(2, 16, 6, 6)
    before = x.clone()
    with torch.no_grad():
        out = block(x)
        branch = block.conv3(block.conv2(block.conv1(x)))
        ref = torch.relu(x + (branch * block.attn.excitation(branch) if gated else branch))
    assert torch.equal(x, before)
    assert_close_f32(out, ref)
    y = x.clone().requires_grad_()
    block(y).sum().backward()
    assert y.grad is not None and torch.equal(x, before)
