"""Every zoo variant against its paper / official figures (specs/<family>.md, carried by the registry):
params exactly (1000-class head, built on the meta device) and GMACs at the default cfg input size within 2 %.

Parametrized over ``backbones.list_models()``, so a family registered later is covered without editing this file.
A variant that legitimately cannot match must say why in its registry ``notes``; the tolerance is not loosened here.
"""
import pytest

import backbones
from backbones.flops import count

GMACS_RTOL = 0.02


# fine-tunes of a smaller-resolution variant at 384 / 512 px: the same network, whose count at 224 is checked in the
# default suite; counting them again at full resolution (fvcore tracing, ~5 s each) waits for -m slow
FINETUNES = [n for n in backbones.list_models() if n.endswith(('_384', '_512'))]


def _check_params(name, params):
    official = backbones.get_variant_info(name).params
    assert params == official, f'{name}: {params:,} params, official {official:,} (diff {params - official:+,})'


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in FINETUNES else n
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


@pytest.mark.parametrize('name', FINETUNES)
def test_finetune_params_match_paper(name):
    """The fine-tunes' parameter counts in the default suite (their GMACs under -m slow)."""
    import timm
    model = timm.create_model(name, device='meta')
    _check_params(name, sum(p.numel() for p in model.parameters()))
