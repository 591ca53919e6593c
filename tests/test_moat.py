"""MOAT: parity with the official TensorFlow code (fixtures), the TF checkpoint layout's own gaps, any input size,
window attention, the drop-path schedule."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from _oracle import manifest_state_dict, meta_model, random_model, read_fixture

from backbones._checkpoint import CheckpointMismatchError
from backbones.models.moat import MOAT, MoatBlock, checkpoint_filter_fn, moat_drop_path_rates

VARIANTS = [f'{base}{pe}' for pe in ('', '_no_pe') for base in (
    'moat_0', 'moat_1', 'moat_2', 'moat_3', 'moat_4', 'tiny_moat_0', 'tiny_moat_1', 'tiny_moat_2', 'tiny_moat_3')]
FIXTURE_NAMES = ['moat_fx_global', 'moat_fx_window', 'moat_fx_nope_os16']

# official MOAT config key -> our constructor kwarg
_OFFICIAL_KWARGS = dict(
    stem_size='stem_widths', num_blocks='depths', hidden_size='embed_dims', block_type='block_types',
    stage_stride='stage_strides', head_size='head_dim', window_size='window_sizes',
    position_embedding_size='pos_embed_sizes', global_attention_at_end_of_moat_stage='global_attn_at_stage_end',
    expansion_rate='expand_ratio', se_ratio='se_ratio', pool_size='pool_size',
    build_classification_head_with_class_num='num_classes')


def _kwargs_from_official(meta):
    """The fixture's official config (class defaults + overrides) as MOAT kwargs."""
    cfg = dict(meta['moat_class_defaults'], **meta['config'])
    assert cfg.pop('ln_epsilon') == 1e-5 and cfg.pop('survival_prob') is None
    for unused in ('use_checkpointing_for_attention', 'kernel_initializer', 'bias_initializer'):
        cfg.pop(unused)
    kwargs = dict(rel_pos={'2d_multi_head': True, None: False}[cfg.pop('relative_position_embedding_type')])
    kwargs.update({_OFFICIAL_KWARGS[k]: v for k, v in cfg.items()})
    return kwargs


# ---------------------------------------------------------------- parity with the official code

@pytest.mark.parametrize('fixture', FIXTURE_NAMES)
def test_fixture_parity(fixture):
    """TF variables (TF layout; numpy arrays as tf.train.load_checkpoint returns them) -> filter -> our model ->
    the official logits and every official endpoint (stem, stages)."""
    meta, t, official = read_fixture('moat', fixture)
    model = MOAT(**_kwargs_from_official(meta), device='meta')
    sd = checkpoint_filter_fn({k: v.numpy() for k, v in official.items()}, model)
    # q/k/v weights and biases (6 TF tensors per attention) -> the fused qkv weight and bias
    assert len(sd) == len(official) - 4 * sum(k.endswith('attention/q/weight') for k in official)
    model.load_state_dict(sd, assign=True)
    model.eval()
    assert sum(p.numel() for p in model.parameters()) == meta['num_params']
    assert sum(b.numel() for n, b in model.named_buffers() if 'running' in n) + meta['num_params'] == \
        meta['num_params_incl_bn_moving_stats']
    x = t['input']
    with torch.no_grad():
        logits = model(x)
        stem = model.stem(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
    atol = meta['atol']
    assert logits.shape == t['logits'].shape
    assert (logits - t['logits']).abs().max().item() <= atol
    assert (stem - t['features.stem']).abs().max().item() <= atol
    assert torch.equal(feats[0], stem)  # level 0: the stem's map (the official encoder's 'stage1')
    for i, f in enumerate(feats[1:]):
        assert (f - t[f'features.stage{i + 2}']).abs().max().item() <= atol, f'stage {i}'


def test_fixture_parity_through_timm_and_ema_names():
    """The fixture's kwargs through timm.create_model; the checkpoint in a container, as EMA shadow copies only (the
    plain names absent), with optimizer slots and global_step around it, TF2 stem names (conv_0/kernel)
    and Keras ':0' suffixes."""
    meta, t, official = read_fixture('moat', 'moat_fx_global')
    ckpt = {'global_step': np.array(1000)}
    for k, v in official.items():
        trainable = not k.endswith(('moving_mean', 'moving_variance'))
        name = k.replace('moat/stem/', '') if k.startswith('moat/stem/') else k  # TF2 stem names
        ckpt[name + ('/ExponentialMovingAverage' if trainable else ':0')] = v  # ':0': Keras variable.name form
        if trainable:
            ckpt[k + '/Momentum'] = torch.zeros_like(v)
    kwargs = _kwargs_from_official(meta)
    model = timm.create_model('tiny_moat_0', device='meta', **kwargs)
    model.load_state_dict(checkpoint_filter_fn({'state_dict': ckpt}, model), assign=True)
    with torch.no_grad():
        assert (model.eval()(t['input']) - t['logits']).abs().max().item() <= meta['atol']


def test_tf_checkpoint_file_through_timm_pretrained(tmp_path):
    """The TF variables dumped to a safetensors file load through timm's own pretrained path (cfg overlay)."""
    from safetensors.torch import save_file
    meta, t, official = read_fixture('moat', 'moat_fx_window')
    path = tmp_path / 'moat_tf_variables.safetensors'
    save_file({k: v.contiguous() for k, v in official.items()}, str(path))
    kwargs = _kwargs_from_official(meta)
    model = timm.create_model('tiny_moat_0', pretrained=True, **kwargs,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=kwargs['num_classes'])).eval()
    with torch.no_grad():
        assert (model(t['input']) - t['logits']).abs().max().item() <= meta['atol']


def test_ema_choice():
    """Plain variables win by default (as the official loader); use_ema=True takes the shadow copies."""
    _, _, official = read_fixture('moat', 'moat_fx_nope_os16')
    ckpt = dict(official)
    ema_value = torch.full_like(official['moat/final_layer_norm/gamma'], 7.)
    ckpt['moat/final_layer_norm/gamma/ExponentialMovingAverage'] = ema_value
    model = MOAT(**_kwargs_from_official(read_fixture('moat', 'moat_fx_nope_os16')[0]), device='meta')
    assert torch.equal(checkpoint_filter_fn(ckpt, model)['head.norm.weight'], official['moat/final_layer_norm/gamma'])
    assert torch.equal(checkpoint_filter_fn(ckpt, model, use_ema=True)['head.norm.weight'], ema_value)


# ---------------------------------------------------------------- what the official TF loader would let through

def test_incomplete_tf_checkpoints_are_refused():
    """The other networks' checkpoints are refused in the checkpoint contract; these are the TF layout's own gaps."""
    model = meta_model('tiny_moat_0')
    official = manifest_state_dict('moat', 'tiny_moat_0')
    # trainable variables only (what the official loader restores): the moving statistics must be there
    trainable = {k: v for k, v in official.items() if not k.endswith(('moving_mean', 'moving_variance'))}
    with pytest.raises(CheckpointMismatchError, match='missing keys.*running_'):
        checkpoint_filter_fn(trainable, model)
    partial_qkv = {k: v for k, v in official.items() if k != 'moat/block_02_00/attention/k/weight'}
    with pytest.raises(CheckpointMismatchError, match=r'attention/q/weight \(no matching q/k/v\)'):
        checkpoint_filter_fn(partial_qkv, model)


# ---------------------------------------------------------------- any input size, global and window attention

def _tf_resize_half_pixel(table: np.ndarray, size):
    """tf.image.resize(bilinear, half_pixel_centers, no antialias) written out: source coordinate
    (i + 0.5) * in / out - 0.5, clamped, linear weights between the two neighbours."""
    def weights(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.), n_in - 1.)
            lo = int(np.floor(src))
            hi = min(lo + 1, n_in - 1)
            w[i, lo] += 1 - (src - lo)
            w[i, hi] += src - lo
        return w
    wy, wx = weights(table.shape[1], size[0]), weights(table.shape[2], size[1])
    return np.einsum('yh,nhw,xw->nyx', wy, table, wx)


def _attention_by_definition(block: MoatBlock, x: torch.Tensor) -> torch.Tensor:
    """The attention branch of a MOAT block over the whole map ``x`` (the output of its MBConv part), from the spec:
    bias[n, q, k] = R[n, ky - qy + H - 1, kx - qx + W - 1] with R the table resized to (2H-1, 2W-1); q/k/v the three
    thirds of the fused qkv Linear; softmax over keys."""
    B, C, H, W = x.shape
    y = F.layer_norm(x.permute(0, 2, 3, 1), (C,), block.norm.weight, block.norm.bias, block.norm.eps).reshape(B, -1, C)
    n, d = block.attn.num_heads, block.attn.head_dim
    q, k, v = (t.reshape(B, H * W, n, d).transpose(1, 2) for t in block.attn.qkv(y).chunk(3, dim=-1))
    logits = (q * d ** -0.5) @ k.transpose(-1, -2)
    if block.rel_pos is not None:
        table = block.rel_pos.relative_position_bias_table.detach().double().numpy()
        r = _tf_resize_half_pixel(table, (2 * H - 1, 2 * W - 1))
        qy, qx = (a.reshape(-1) for a in np.indices((H, W)))  # row-major token order
        bias = r[:, qy[None, :] - qy[:, None] + H - 1, qx[None, :] - qx[:, None] + W - 1]  # [heads, query, key]
        logits = logits + torch.from_numpy(bias).float()
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, H * W, C)
    return block.attn.proj(out).reshape(B, H, W, C).permute(0, 3, 1, 2)


@pytest.fixture(scope='module')
def tiny_moat():
    """tiny_moat_0 with the fixtures' non-trivial weights (fan-in scaled, BN statistics, position tables 0.5*randn):
    with the official 0.02 init the attention branch is too small for a wrong bias to show."""
    model = random_model('tiny_moat_0')
    with torch.no_grad():
        for blk in list(model.stages[2].blocks) + list(model.stages[3].blocks):
            blk.rel_pos.relative_position_bias_table.normal_(0, 0.5)
    return model


@pytest.mark.parametrize('size', [(224, 224), (160, 288), (336, 336), (100, 75)])
def test_any_input_size(tiny_moat, size):
    """Every size runs (TF SAME: each stride-2 op gives ceil(n / 2)); global attention attends over the whole current
    map with the table resized to it (224: 14x14 / 7x7 = the tables' own size; 336: 21x21 / 11x11, resized)."""
    h, w = size
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        final, feats = tiny_moat.forward_intermediates(x)
        assert tiny_moat.forward_head(final).shape == (1, 1000)
        for f, info in zip(feats, tiny_moat.feature_info):
            assert f.shape[-2:] == (-(-h // info['reduction']), -(-w // info['reduction']))
        # the first block of each MOAT stage against the spec's definition, on its real input at this size
        for stage in (2, 3):  # (feature level stage + 1: level 0 is the stem's map)
            block = tiny_moat.stages[stage].blocks[0]
            mid = block.mbconv(feats[stage])
            got = block(feats[stage]) - mid
            assert (got - _attention_by_definition(block, mid)).abs().max().item() < 1e-4, (stage, size)


def _window_moat(**kwargs):
    return MOAT(depths=(1, 1, 2, 1), embed_dims=(16, 24, 32, 48), stem_widths=(16, 16), head_dim=8,
                window_sizes=(None, None, (2, 3), None), pos_embed_sizes=(None, None, 2, 2), num_classes=5, **kwargs)


def test_window_attention_size_rule():
    """Window attention needs the stage map to divide by the window (no padding path, as in the official code)."""
    model = _window_moat().eval()
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 5)  # stage 2 map 4x6 divides by 2x3
    assert model(torch.randn(1, 3, 49, 81)).shape == (1, 5)  # ceil(49/16)=4, ceil(81/16)=6
    with pytest.raises(ValueError, match=r'2x3 window attention.*gives 4x4.*nearest larger: 64x96'):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match='window attention'):
        model.forward_intermediates(torch.randn(1, 3, 96, 64))  # map 6x4
    # only the last block of the stage is global: the same rule still applies to the others
    with pytest.raises(ValueError, match='window attention'):
        _window_moat(global_attn_at_stage_end=True)(torch.randn(1, 3, 64, 64))
    blocks = _window_moat(global_attn_at_stage_end=True).stages[2].blocks
    assert [b.window for b in blocks] == [(2, 3), None]


def test_window_attention_by_definition():
    """A windowed block = the spec's attention run on each window separately (table resized to the window)."""
    torch.manual_seed(0)
    block = MoatBlock(32, 32, head_dim=8, window=(2, 3), pos_embed_size=2).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
        x = torch.randn(2, 32, 4, 6)
        mid = block.mbconv(x)
        got = block(x) - mid
        for i in range(0, 4, 2):
            for j in range(0, 6, 3):
                ref = _attention_by_definition(block, mid[:, :, i:i + 2, j:j + 3])
                torch.testing.assert_close(got[:, :, i:i + 2, j:j + 3], ref, atol=1e-5, rtol=1e-5)


def test_window_config_traces_and_scripts():
    from timm.models._features_fx import create_feature_extractor
    model = _window_moat(global_attn_at_stage_end=True).eval()
    x = torch.randn(1, 3, 64, 96)
    fx = create_feature_extractor(model, return_nodes=[info['module'] for info in model.feature_info])
    scripted = torch.jit.script(model)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        for got, e in zip(fx(x).values(), expected):
            torch.testing.assert_close(got, e)
        torch.testing.assert_close(scripted(x), model(x))
    with pytest.raises(Exception, match='window attention'):
        scripted(torch.randn(1, 3, 64, 64))


# ---------------------------------------------------------------- schedule, init, weight decay

def test_drop_path_schedule():
    """Official: block b of n gets rate * b / n (the last one rate * (n-1)/n); both branches of a MOAT block."""
    rates = moat_drop_path_rates(0.2, (2, 3, 7, 2))
    assert [r for stage in rates for r in stage] == pytest.approx([0.2 * b / 14 for b in range(14)])
    model = timm.create_model('moat_0', drop_path_rate=0.2, device='meta')
    last = model.stages[3].blocks[1]
    assert last.drop_path.drop_prob == pytest.approx(0.2 * 13 / 14)
    assert last.mbconv.drop_path.drop_prob == pytest.approx(0.2 * 13 / 14)
    assert isinstance(model.stages[0].blocks[0].drop_path, torch.nn.Identity)  # rate 0: skipped


def test_init_and_no_weight_decay():
    model = timm.create_model('tiny_moat_0')
    w = model.stages[2].blocks[0].attn.qkv.weight
    assert 0.018 < w.std().item() < 0.022 and w.abs().max().item() > 2 * 0.02 * 2  # normal, not truncated at 2 std
    assert model.stages[0].blocks[0].conv3.bias.abs().max().item() == 0
    table = model.stages[3].blocks[0].rel_pos.relative_position_bias_table
    assert table.shape == (8, 13, 13) and 0.015 < table.std().item() < 0.025
    assert model.no_weight_decay() == {f'stages.{s}.blocks.{b}.rel_pos.relative_position_bias_table'
                                       for s, n in ((2, 7), (3, 2)) for b in range(n)}
    assert timm.create_model('tiny_moat_0_no_pe', device='meta').no_weight_decay() == set()


def test_cfgs():
    for name in VARIANTS:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        size = {'moat_0': 224, 'moat_1': 224, 'moat_2': 384, 'moat_3': 512, 'moat_4': 512}.get(
            name.replace('_no_pe', ''), 256)
        assert cfg['input_size'] == (3, size, size) and cfg['pool_size'] == (size // 32, size // 32)
        big = name.startswith(('moat_2', 'moat_3', 'moat_4'))
        assert cfg['mean'] == ((0.5,) * 3 if big else timm.data.IMAGENET_DEFAULT_MEAN)
        # the official TF1 archive, converted on load (backbones.weights): a custom format for timm
        pe = 'wo_position_embedding' if name.endswith('_no_pe') else 'w_position_embedding'
        base = name.replace('_no_pe', '')
        stem = {'moat_0': 'moat0_imagenet_1k_224', 'moat_1': 'moat1_imagenet_1k_224',
                'moat_2': 'moat2_imagenet_22k_and_1k_384', 'moat_3': 'moat3_imagenet_22k_and_1k_512',
                'moat_4': 'moat4_imagenet_22k_and_1k_512'}.get(base, f'tiny_moat{base[-1]}_imagenet_1k_256')
        assert cfg['url'] == f'https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint/{stem}_{pe}.tar.gz'
        assert cfg['custom_load'] is True and not cfg.get('hf_hub_id')
