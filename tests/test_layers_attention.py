"""The shared attention pieces: partitions, SDPA wrapper, relative position bias, MBConv's TF-"SAME" pooling."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_f32

from backbones.layers import (
    Attention,
    MBConv,
    RelPosBias,
    avg_pool_same,
    crop,
    grid_partition,
    grid_reverse,
    pad_to_multiple,
    rel_pos_index,
    resize_rel_pos_table,
    sdpa,
    window_partition,
    window_reverse,
)


def test_window_partition_groups_contiguous_blocks():
    x = torch.randn(2, 6, 9, 4)
    w = window_partition(x, (3, 3))
    assert w.shape == (2 * 2 * 3, 9, 4)
    # window (1, 2) of image 1 holds rows 3..5, cols 6..8, row-major
    assert torch.equal(w[1 * 6 + 1 * 3 + 2].view(3, 3, 4), x[1, 3:6, 6:9])
    assert torch.equal(window_reverse(w, (3, 3), (6, 9)), x)


def test_grid_partition_groups_strided_tokens():
    x = torch.randn(2, 6, 9, 4)
    g = grid_partition(x, (3, 3))
    assert g.shape == (2 * 2 * 3, 9, 4)
    # group (a, b) = (1, 2) of image 0 holds positions (i * 2 + 1, j * 3 + 2)
    assert torch.equal(g[0 * 6 + 1 * 3 + 2].view(3, 3, 4), x[0, 1::2, 2::3])
    assert torch.equal(grid_reverse(g, (3, 3), (6, 9)), x)


def test_pad_to_multiple_and_crop():
    x = torch.randn(1, 10, 14, 3)
    p = pad_to_multiple(x, (7, 7))
    assert p.shape == (1, 14, 14, 3)
    assert torch.equal(p[:, 10:], torch.zeros_like(p[:, 10:]))
    assert torch.equal(crop(p, (10, 14)), x)
    assert pad_to_multiple(x, (5, 7)) is x


@pytest.mark.parametrize('with_bias', [False, True])
def test_sdpa_fused_equals_explicit(with_bias):
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    bias = torch.randn(4, 10, 10) if with_bias else None
    ref = torch.softmax(q @ k.transpose(-2, -1) * 8 ** -0.5 + (0 if bias is None else bias), -1) @ v
    torch.testing.assert_close(sdpa(q, k, v, bias, fused=True), ref)
    torch.testing.assert_close(sdpa(q, k, v, bias, fused=False), ref)


def test_attention_heads_and_bias():
    attn = Attention(32, head_dim=8).eval()
    assert attn.num_heads == 4
    x, bias = torch.randn(2, 5, 32), torch.randn(4, 5, 5)
    out = attn(x, bias)
    q, k, v = attn.qkv(x).view(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8) + bias, -1) @ v
    torch.testing.assert_close(out, attn.proj(ref.transpose(1, 2).reshape(2, 5, 32)))


@pytest.mark.parametrize('key_minus_query', [True, False])
def test_rel_pos_index_sign(key_minus_query):
    idx = rel_pos_index((3, 4), key_minus_query)
    q, k = 1 * 4 + 3, 2 * 4 + 0  # query (1, 3), key (2, 0)
    dy, dx = (1, -3) if key_minus_query else (-1, 3)
    assert idx[q, k] == (dy + 2) * 7 + (dx + 3)
    assert idx.diagonal().eq(2 * 7 + 3).all()


def _tf_bilinear(table, size):
    """tf.image.resize(bilinear) on [h, w]: half-pixel centres, no antialias (a loop, as the reference)."""
    h, w = table.shape
    out = torch.empty(size, dtype=torch.float64)
    t = table.double()
    for i in range(size[0]):
        for j in range(size[1]):
            y = min(max((i + 0.5) * h / size[0] - 0.5, 0), h - 1)
            x = min(max((j + 0.5) * w / size[1] - 0.5, 0), w - 1)
            y0, x0 = int(math.floor(y)), int(math.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = y - y0, x - x0
            out[i, j] = ((1 - fy) * (1 - fx) * t[y0, x0] + (1 - fy) * fx * t[y0, x1]
                         + fy * (1 - fx) * t[y1, x0] + fy * fx * t[y1, x1])
    return out


@pytest.mark.parametrize('size', [(23, 23), (5, 7), (13, 13)])
def test_resize_rel_pos_table_is_tf_bilinear(size):
    table = torch.randn(2, 13, 13)
    out = resize_rel_pos_table(table, size)
    for h in range(2):
        assert_close_f32(out[h].double(), _tf_bilinear(table[h], size))  # float32 interpolation vs float64


def test_rel_pos_bias_lookup_and_resize():
    rpb = RelPosBias(2, (3, 3))
    torch.nn.init.normal_(rpb.relative_position_bias_table)
    table = rpb.relative_position_bias_table
    bias = rpb((3, 3))
    assert bias.shape == (2, 9, 9)
    # query (0, 0), key (1, 2): offset key - query = (1, 2)
    assert torch.equal(bias[:, 0, 1 * 3 + 2], table[:, 1 + 2, 2 + 2])
    big = rpb((4, 2))
    resized = resize_rel_pos_table(table, (7, 3))
    assert torch.equal(big[:, 0, 3 * 2 + 1], resized[:, 3 + 3, 1 + 1])


def test_avg_pool_same_excludes_padding():
    x = torch.randn(1, 2, 6, 5)
    out = avg_pool_same(x, 3, 2)
    assert out.shape == (1, 2, 3, 3)
    # TF SAME, kernel 3 stride 2: rows 6 -> pad (0, 1); cols 5 -> pad (1, 1)
    torch.testing.assert_close(out[..., 2, 2], x[..., 4:6, 3:5].mean((-2, -1)))
    torch.testing.assert_close(out[..., 0, 0], x[..., 0:3, 0:2].mean((-2, -1)))
    torch.testing.assert_close(avg_pool_same(x[..., :4], 2, 2), F.avg_pool2d(x[..., :4], 2))


def test_mbconv_block():
    block = MBConv(8, 16, stride=2, pool_size=3).eval()
    assert block.conv1.out_channels == 64 and block.se.fc1.out_channels == 4
    assert block.norm1.eps == 1e-3
    x = torch.randn(2, 8, 10, 7)
    out = block(x)
    assert out.shape == (2, 16, 5, 4)
    torch.testing.assert_close(out - block.conv3(block.se(block.act2(block.norm2(block.conv2(
        block.act1(block.norm1(block.conv1(block.pre_norm(x))))))))), block.shortcut.conv(avg_pool_same(x, 3, 2)))
    assert isinstance(MBConv(8, 8, se_ratio=0).se, torch.nn.Identity)
