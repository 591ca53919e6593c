"""Every zoo variant against its paper / official figures (specs/<family>.md, carried by the registry):
params exactly (1000-class head, built on the meta device) and GMACs at the default cfg input size within 2 %.

Parametrized over ``backbones.list_models()``, so a family registered later is covered without editing this file.
A variant that legitimately cannot match must say why in its registry ``notes``; the tolerance is not loosened here.
"""
import pytest

import backbones
from backbones.flops import count

GMACS_RTOL = 0.02


@pytest.mark.parametrize('name', backbones.list_models())
def test_params_and_gmacs_match_paper(name):
    info = backbones.get_variant_info(name)
    res = count(name)
    assert res.params == info.params, (
        f'{name}: {res.params:,} params, official {info.params:,} (diff {res.params - info.params:+,})')
    if info.gmacs is None:
        pytest.skip(f'{name}: no paper / official GMACs in the registry (params checked)')
    rel = (res.gmacs - info.gmacs) / info.gmacs
    assert abs(rel) <= GMACS_RTOL, (
        f'{name}: {res.gmacs:.3f} GMACs at {res.input_size}, paper/official {info.gmacs} ({info.gmacs_source}): '
        f'{100 * rel:+.2f} %; by operator {res.by_operator}; notes: {info.notes!r}')
