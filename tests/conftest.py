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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
