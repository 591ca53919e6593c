import os

import pytest
import torch

import backbones
from backbones._registry import _VARIANTS

torch.set_num_threads(min(2, os.cpu_count() or 1))


def smallest_per_family():
    """The smallest zoo variant (official params) of each family: what behavioural tests run for real."""
    best = {}
    for name, info in _VARIANTS.items():
        if info.family not in best or info.params < _VARIANTS[best[info.family]].params:
            best[info.family] = name
    return sorted(best.values())


ALL_MODELS = backbones.list_models()
SMALL_MODELS = smallest_per_family()


def input_side(model, side: int) -> int:
    """The smallest side >= ``side`` that ``model`` takes: a multiple of its ``input_divisor`` (1 when it has none),
    e.g. 64 -> 70 for Sequencer2D (multiples of 14), 64 for the rest."""
    divisor = getattr(model, 'input_divisor', 1)
    return -(-side // divisor) * divisor


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
