"""Each family's smallest variant with fewer blocks, every block type kept: for tests whose cost grows with depth
(exports trace every block) and that do not check official numbers. A family missing here runs at full depth."""
import torch
from _oracle import random_model

from backbones._registry import _VARIANTS

# BiFormer: a stage-0 block that follows another block, and global attention; Twins-SVT: a locally-grouped /
# global sub-sampled pair in the first and in the last stage (sub-sampling 8 and 1); ConViT: one GPSA block, then
# the class token and one ordinary attention block; RapidNet: one inverted-residual block per stage and one MLDC
# block where the variant has them; TiC: a block without and one with the cyclic shift; CrossViT: one multi-scale
# block (one block per branch, then the cross-attention fusion)
REDUCED_KWARGS = {
    'biformer': dict(depths=(2, 1, 1, 2)),
    'convit': dict(depth=2, local_up_to_layer=1),
    'crossvit': dict(depth=((1, 1),)),
    'davit': dict(depths=(1, 1, 1, 1)),
    'involution': dict(depths=(1, 1, 1, 1), kernel_size=3),  # 3x3 involutions: 9 kernel taps to trace, not 49
    'maxvit': dict(depths=(1, 1, 1, 1)),
    'moat': dict(depths=(1, 1, 1, 1)),
    'parcnetv2': dict(depths=(1, 1, 1, 1)),
    'rapidnet': dict(depths=((1, 0), (1, 0), (1, 1), (1, 1))),
    'res2net': dict(depths=(1, 1, 1, 1)),
    'senet': dict(depths=(1, 1, 1, 1)),
    'sequencer': dict(depths=(1, 1, 1, 1)),
    'sknet': dict(depths=(1, 1, 1, 1)),
    'tic': dict(depths=(2, 1, 1, 1)),
    'twins': dict(depths=(2, 1, 1, 2)),
}


def reduced_kwargs(name: str) -> dict:
    return dict(REDUCED_KWARGS.get(_VARIANTS[name].family, {}))


def reduced_model(name: str, **kwargs) -> torch.nn.Module:
    """``name`` with fewer blocks and non-trivial random weights (``_oracle.random_model``), in eval mode."""
    return random_model(name, **dict(reduced_kwargs(name), **kwargs))
