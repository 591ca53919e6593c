"""timm's own tests/test_models.py, run on the smallest zoo variant of every family.

The timm test file is fetched at test time from the sdist of the installed timm (``pip download``, cached; see
``tests/timm_suite``) and run ONCE in a subprocess for all selected families; each family is then one item here, so
a failure names the family and lists timm's failing test ids with their errors.

- ``test_timm_suite[<family>]`` (mark ``timm_suite``): timm's marked per-model tests: forward, backward, cfg,
  cfg_nonstd, features, fxforward, fxbackward, torchscript.
- ``test_timm_prune_contract[<family>]`` (marks ``timm_suite`` and ``slow``; run with ``-m slow`` or
  ``-m timm_suite``): timm's unmarked ``test_prune_intermediate_layers_contract``, which prunes the model at every
  feature index and trains each pruned copy; it alone costs more than all the other tests together.
"""
import pytest
import timm_suite

# one subprocess serves every item: under pytest-xdist they all run on one worker (--dist loadfile, pyproject.toml)
SUITE_MODELS = timm_suite.smallest_per_family()
FAMILIES = sorted(SUITE_MODELS)


def _selected_families(session, test_name):
    return sorted({
        item.callspec.params['family'] for item in session.items
        if getattr(item, 'originalname', None) == test_name and hasattr(item, 'callspec')})


@pytest.fixture(scope='session')
def timm_suite_run(request, tmp_path_factory):
    # one subprocess for every selected item (e.g. `-k senet` runs one family)
    main = _selected_families(request.session, 'test_timm_suite')
    prune = _selected_families(request.session, 'test_timm_prune_contract')
    try:
        suite = timm_suite.run(tmp_path_factory.mktemp('timm_suite'), main, prune)
    except timm_suite.SuiteError as e:
        error = str(e)
    else:
        error = None
    if error:  # failed outside the except block: no chained traceback repeating the message
        pytest.fail(f'timm test suite: {error}', pytrace=False)
    print('\n' + suite.report())
    return suite


def _check(suite, family, prune):
    problems = suite.family_problems(family, prune=prune)
    if problems:
        what = 'test_prune_intermediate_layers_contract' if prune else 'tests/test_models.py'
        pytest.fail(
            f'timm {what} on {SUITE_MODELS[family]} ({family}):\n' + '\n'.join(problems)
            + f'\n\n--- {family} ---\n{suite.report(family)}'
            + '\n\n--- tail of the timm run ---\n' + suite.output[-4000:],
            pytrace=False)


@pytest.mark.timm_suite
@pytest.mark.parametrize('family', FAMILIES)
def test_timm_suite(family, timm_suite_run):
    _check(timm_suite_run, family, prune=False)


@pytest.mark.slow
@pytest.mark.timm_suite
@pytest.mark.parametrize('family', FAMILIES)
def test_timm_prune_contract(family, timm_suite_run):
    _check(timm_suite_run, family, prune=True)
