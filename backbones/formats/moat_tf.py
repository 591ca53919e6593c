"""MOAT's official TensorFlow variables -> the zoo's MOAT state dict (names and layouts).

The names are the TF1 variable names of google-research/deeplab2 (commit 64bc1c1a) ``model/pixel_encoder/moat.py``
(``MOAT._build_stem`` / ``_build_blocks``, ``model/layers/moat_blocks.py`` ``MBConvBlock`` / ``MOATBlock``,
``model/layers/moat_attention.py`` ``Attention``), as the released checkpoints store them and
``_load_moat_pretrained_checkpoint`` reads them:

* ``moat/stem/conv_{i}/{kernel,bias}``, ``moat/stem/norm_{i}/*`` -> ``stem.conv{i}`` / ``stem.norm{i}``;
* ``moat/block_{SS}_{BB}/...`` -> ``stages.{S}.blocks.{B}...`` (the MBConv part of a MOAT block under ``mbconv.``);
  q / k / v (``[C, heads, head_dim]`` each) become the rows of one fused ``attn.qkv`` Linear (head-major);
* ``moat/final_layer_norm``, ``moat/logits_head`` -> ``head.norm``, ``head.fc``;
* BN ``gamma / beta / moving_mean / moving_variance`` -> ``weight / bias / running_mean / running_var``;
* conv kernels HWIO -> OIHW, depthwise ``[kh, kw, C, 1]`` -> ``[C, 1, kh, kw]``, dense ``[in, ...]`` -> ``[out, in]``.

The file side (reading the checkpoint itself) is :mod:`backbones.formats.tf_bundle`.
"""
import re
from typing import Dict, Mapping, Union

import numpy as np
import torch
import torch.nn as nn

from . import to_torch
from .tf_bundle import TRAINING_STATE

__all__ = ['convert_tf_state_dict', 'is_tf_layout']

_BN = {'gamma': 'weight', 'beta': 'bias', 'moving_mean': 'running_mean', 'moving_variance': 'running_var'}
# block sub-name -> (our name inside the MBConv part, or None for the attention part)
_TF_MBCONV = {
    'shortcut_conv/kernel': 'shortcut.conv.weight', 'shortcut_conv/bias': 'shortcut.conv.bias',
    'expand_conv/kernel': 'conv1.weight',
    'depthwise_conv/depthwise_kernel': 'conv2.weight',
    'se/reduce_conv2d/kernel': 'se.fc1.weight', 'se/reduce_conv2d/bias': 'se.fc1.bias',
    'se/expand_conv2d/kernel': 'se.fc2.weight', 'se/expand_conv2d/bias': 'se.fc2.bias',
    'shrink_conv/kernel': 'conv3.weight', 'shrink_conv/bias': 'conv3.bias',
    **{f'{tf}/{k}': f'{ours}.{v}' for tf, ours in (('pre_norm', 'pre_norm'), ('expand_norm', 'norm1'),
                                                   ('depthwise_norm', 'norm2')) for k, v in _BN.items()},
}
_TF_ATTN = {
    'attention_norm/gamma': 'norm.weight', 'attention_norm/beta': 'norm.bias',
    'attention/relative_position_embedding': 'rel_pos.relative_position_bias_table',
    'attention/o/weight': 'attn.proj.weight', 'attention/o/bias': 'attn.proj.bias',
}
_EMA_SUFFIX = '/ExponentialMovingAverage'


def _tf_layout(name: str, v: torch.Tensor) -> torch.Tensor:
    """TF layout -> PyTorch layout, by variable kind (TF1 variable names of google-research/deeplab2@64bc1c1's
    model/pixel_encoder/moat.py)."""
    if name.endswith('depthwise_kernel'):  # [kh, kw, C, 1] -> [C, 1, kh, kw]
        return v.permute(2, 3, 0, 1)
    if name.endswith('logits_head/kernel'):  # [1, 1, C, classes] -> Linear [classes, C]
        return v[0, 0].t()
    if name.endswith('kernel'):  # HWIO -> OIHW
        return v.permute(3, 2, 0, 1)
    if name.endswith('attention/o/weight'):  # [N, K, C] -> Linear [C, N*K]
        return v.reshape(-1, v.shape[-1]).t()
    return v


def is_tf_layout(sd: Mapping) -> bool:
    """TF variable names (``scope/name``) rather than module paths."""
    return any('/' in k for k in sd)


def convert_tf_state_dict(
        state_dict: Mapping[str, Union[torch.Tensor, np.ndarray]],
        model: nn.Module,
        use_ema: bool = False,
) -> Dict[str, torch.Tensor]:
    """Official TF variable names and layouts -> our keys and layouts (unchecked: the family's
    ``checkpoint_filter_fn`` checks the result against the model).

    Accepts TF1 names (``moat/block_02_13/attention/q/weight``), the TF2/Keras stem names without the
    ``moat/stem/`` scope (``conv_0/kernel``), Keras ``variable.name`` forms (``...:0``), and
    ``<name>/ExponentialMovingAverage`` shadow copies: by default the plain variables are used, as the official
    loader does, and a shadow copy only fills in a variable that is missing; ``use_ema=True`` prefers the shadow
    copies. Optimizer slots and ``global_step`` are dropped. Keys that match no
    rule are returned unchanged (so the strict check lists them).
    """
    plain, ema = {}, {}
    for k, v in state_dict.items():
        k = k[:-2] if k.endswith(':0') else k  # Keras variable.name form
        if TRAINING_STATE.search(k):
            continue
        if k.endswith(_EMA_SUFFIX):
            ema[k[:-len(_EMA_SUFFIX)]] = v
        else:
            plain[k] = v
    merged = {**plain, **ema} if use_ema else {**ema, **plain}

    ours = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}  # our block prefix -> {'q/weight': ..., ...}
    for k, v in merged.items():
        v = to_torch(v)
        name = k[len('moat/'):] if k.startswith('moat/') else k
        new = None
        m = re.fullmatch(r'(?:stem/)?(conv|norm)_(\d+)/(\w+)', name)
        if m:
            kind, i, leaf = m.groups()
            new = f'stem.{kind}{i}.' + ({'kernel': 'weight', 'bias': 'bias'} if kind == 'conv' else _BN).get(leaf, leaf)
        elif re.fullmatch(r'final_layer_norm/(gamma|beta)', name):
            new = 'head.norm.' + _BN[name.split('/')[1]]
        elif re.fullmatch(r'logits_head/(kernel|bias)', name):
            new = 'head.fc.' + ('weight' if name.endswith('kernel') else 'bias')
        else:
            m = re.fullmatch(r'block_(\d+)_(\d+)/(.+)', name)
            if m:
                prefix = f'stages.{int(m[1])}.blocks.{int(m[2])}.'
                sub = m[3]
                moat = f'{prefix}mbconv.pre_norm.weight' in ours
                qm = re.fullmatch(r'attention/([qkv])/(weight|bias)', sub)
                if qm:  # [C, N, K] / [N, K] -> rows of the fused qkv Linear (head-major)
                    t = v.reshape(v.shape[0], -1).t() if qm[2] == 'weight' else v.reshape(-1)
                    qkv.setdefault(prefix, {})[f'{qm[1]}/{qm[2]}'] = t
                    continue
                if sub in _TF_MBCONV:
                    new = prefix + ('mbconv.' if moat else '') + _TF_MBCONV[sub]
                elif sub in _TF_ATTN:
                    new = prefix + _TF_ATTN[sub]
        if new is None:
            out[k] = v  # unknown: left for the strict check to report
        else:
            out[new] = _tf_layout(name, v)
    for prefix, parts in qkv.items():
        for kind in ('weight', 'bias'):
            got = [parts.get(f'{c}/{kind}') for c in 'qkv']
            if all(t is not None for t in got):
                out[f'{prefix}attn.qkv.{kind}'] = torch.cat(got, 0)
            else:  # incomplete: report the TF names that are there
                for c, t in zip('qkv', got):
                    if t is not None:
                        out[f'{prefix}attention/{c}/{kind} (no matching q/k/v)'] = t
    return {k: v.contiguous() for k, v in out.items()}
