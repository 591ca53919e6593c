"""Every zoo variant against its paper / official figures (carried by the registry): params exactly (1000-class
head, built on the meta device) and GMACs at the default cfg input size within 2 %.

Counting GMACs traces the whole network (fvcore's jit trace, 1-8 s a variant). The default suite counts the smallest
variant of each family, which has every block type of its family, and every variant's params; ``-m slow`` counts
the GMACs of every variant (the deeper and wider ones, and the 384 / 512 px fine-tunes).

Parametrized over ``backbones.list_models()``, so a family registered later is covered without editing this file.
A variant that legitimately cannot match must say why in its registry ``notes``; the tolerance is not loosened here.
"""
import pytest
from conftest import smallest_per_family

import backbones
from backbones.flops import count

GMACS_RTOL = 0.02


SMALLEST = set(smallest_per_family())


def _check_params(name, params):
    official = backbones.get_variant_info(name).params
    assert params == official, f'{name}: {params:,} params, official {official:,} (diff {params - official:+,})'


@pytest.mark.parametrize('name', [n if n in SMALLEST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in backbones.list_models()])
def test_params_and_gmacs_match_paper(name):
    info = backbones.get_variant_info(name)
    res = count(name)
    _check_params(name, res.params)
    if info.gmacs is None:
        pytest.skip(f'{name}: no paper / official GMACs in the registry (params checked)')
    rel = (res.gmacs - info.gmacs) / info.gmacs
    assert abs(rel) <= GMACS_RTOL, (
        f'{name}: {res.gmacs:.3f} GMACs at {res.input_size}, paper/official {info.gmacs} ({info.gmacs_source}): '
        f'{100 * rel:+.2f} %; by operator {res.by_operator}; notes: {info.notes!r}')


@pytest.mark.parametrize('name', [n for n in backbones.list_models() if n not in SMALLEST])
def test_params_match_paper(name):
    """Every other variant's parameter count, on the meta device (its GMACs under -m slow)."""
    import timm
    model = timm.create_model(name, device='meta')
    _check_params(name, sum(p.numel() for p in model.parameters()))
