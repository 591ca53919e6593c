"""RapidNet checkpoints in the official layouts -> this package's (:func:`to_model_layout`).

Official code: https://github.com/mmunir127/RapidNet-Official (commit 74c70715, ``models/rapidnet.py``): its training
layout (``cpe.pe``), its re-parameterised one (``cpe.reparam_conv``, after the official ``reparameterize_model``),
and its checkpoints with or without the distillation classifier. Kept out of the model file, which holds the
network; :func:`backbones.models.rapidnet.checkpoint_filter_fn` calls it and checks the fit.
"""
from typing import Mapping

import torch
import torch.nn as nn

from .._checkpoint import rename_keys
from ..layers.pos_conv import identity_folded

__all__ = ['to_model_layout']


# official layout -> ours. ``backbone.S.B``: stage S, index B; stages 1-3 hold their downsample at index 0.
_OFFICIAL_RULES = [
    (r'^stem\.stem\.0\.', 'stem.conv1.conv.'),
    (r'^stem\.stem\.1\.', 'stem.conv1.bn.'),
    (r'^stem\.stem\.3\.', 'stem.conv2.conv.'),
    (r'^stem\.stem\.4\.', 'stem.conv2.bn.'),
    (r'^backbone\.(\d+)\.0\.conv\.0\.', r'stages.\1.downsample.conv.'),
    (r'^backbone\.(\d+)\.0\.conv\.1\.', r'stages.\1.downsample.bn.'),
    (r'^backbone\.(\d+)\.(\d+)\.', lambda m: f'stages.{m[1]}.blocks.{int(m[2]) - (int(m[1]) > 0)}.'),
    (r'\.layer_scale_([12])$', r'.ls\1.gamma'),
    (r'\.dws\.pw1\.', '.conv_pw.conv.'),
    (r'\.dws\.norm1\.', '.conv_pw.bn.'),
    (r'\.dws\.dw\.', '.conv_dw.conv.'),
    (r'\.dws\.norm2\.', '.conv_dw.bn.'),
    (r'\.dws\.pw2\.', '.conv_pwl.conv.'),
    (r'\.dws\.norm3\.', '.conv_pwl.bn.'),
    (r'\.mixer\.fc([12])\.0\.', r'.mixer.fc\1.conv.'),
    (r'\.mixer\.fc([12])\.1\.', r'.mixer.fc\1.bn.'),
    (r'\.mixer\.graph_conv\.nn\.0\.', '.mixer.dilated.branches.0.conv.'),
    (r'\.mixer\.graph_conv\.nn\.1\.', '.mixer.dilated.branches.0.bn.'),
    (r'\.mixer\.graph_conv\.nn_2\.0\.', '.mixer.dilated.branches.1.conv.'),
    (r'\.mixer\.graph_conv\.nn_2\.1\.', '.mixer.dilated.branches.1.bn.'),
    (r'\.ffn\.conv\.conv\.', '.ffn.conv_dw.conv.'),
    (r'\.ffn\.norm1\.', '.ffn.conv_dw.bn.'),
    (r'\.ffn\.fc([12])\.', r'.ffn.fc\1.conv.'),
    (r'\.ffn\.norm2\.', '.ffn.fc1.bn.'),
    (r'\.ffn\.norm3\.', '.ffn.fc2.bn.'),
    (r'^head\.', 'head.fc.'),  # before the prediction rules, which write 'head.' keys
    (r'^dist_head\.', 'head.fc_dist.'),
    (r'^prediction\.1\.', 'head.conv.'),
    (r'^prediction\.2\.', 'head.norm.'),
]
_OFFICIAL_PREFIXES = ('stem.stem.', 'backbone.', 'prediction.', 'dist_head.')


def _from_official(sd: Mapping[str, torch.Tensor]) -> dict:
    """Official keys -> ours; layer scales ``[C, 1, 1]`` -> ``[C]``, 1x1-conv classifiers -> linear weights."""
    out = {}
    for k, v in sd.items():
        if k.endswith(('layer_scale_1', 'layer_scale_2')) or (k in ('head.weight', 'dist_head.weight') and v.ndim == 4):
            v = v.flatten(1) if k.endswith('head.weight') else v.flatten()
        out[k] = v
    return rename_keys(out, _OFFICIAL_RULES)


def _match_cpe(sd: dict, model_keys) -> dict:
    """Give each RepCPE the form the model has: a re-parameterised kernel (``reparam_conv``) has the identity taken
    out for a training model (``pe``), a training kernel has it folded in for a re-parameterised model."""
    for k in [k for k in sd if k.endswith(('.cpe.pe.weight', '.cpe.reparam_conv.weight'))]:
        folded = k.endswith('.reparam_conv.weight')
        base = k[:-len('reparam_conv.weight' if folded else 'pe.weight')]
        target = base + ('pe.' if folded else 'reparam_conv.')
        if target + 'weight' in model_keys and k not in model_keys:
            src = base + ('reparam_conv.' if folded else 'pe.')
            sd[target + 'weight'] = identity_folded(sd.pop(src + 'weight'), -1 if folded else +1)
            if src + 'bias' in sd:
                sd[target + 'bias'] = sd.pop(src + 'bias')
    return sd


def _match_distillation(sd: dict, model: nn.Module) -> dict:
    """A distilled checkpoint into a single-head model: one classifier with the averaged weights (the same eval
    logits); a single-head checkpoint into a distilled model: both classifiers start from it."""
    distilled = getattr(model.head, 'distilled', False)
    has_dist = 'head.fc_dist.weight' in sd
    if has_dist and not distilled and 'head.fc.weight' in sd:
        for p in ('weight', 'bias'):
            sd[f'head.fc.{p}'] = (sd[f'head.fc.{p}'] + sd.pop(f'head.fc_dist.{p}')) / 2
    elif distilled and not has_dist and 'head.fc.weight' in sd:
        for p in ('weight', 'bias'):
            sd[f'head.fc_dist.{p}'] = sd[f'head.fc.{p}'].clone()
    return sd


def to_model_layout(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
    """A RapidNet state dict (official or ours) in the layout of ``model``: official keys renamed, each RepCPE in the
    model's form and the distillation classifier matched to the model's."""
    if any(k.startswith(_OFFICIAL_PREFIXES) for k in sd):
        sd = _from_official(sd)
    return _match_distillation(_match_cpe(dict(sd), model.state_dict().keys()), model)
