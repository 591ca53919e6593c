"""configs/<family>/<model>.yaml are exactly what the recipe files configs/<family>.recipe.yaml say
(backbones.recipes), and the recipes are sound."""
import re

import pytest
import yaml

import backbones
from backbones.recipes import SUFFIX, RecipeError, Recipes, check_configs
from backbones.train import build_parser


@pytest.fixture(scope='module')
def recipes():
    return Recipes()


def _registered_families():
    return {backbones.get_variant_info(m).family for m in backbones.list_models()}


def test_configs_are_what_the_recipes_say():
    assert check_configs() == [], 'run python tools/make_configs.py'


def test_every_model_has_a_recipe_in_its_family_file(recipes):
    for model in backbones.list_models():
        assert recipes.family_of(model) == backbones.get_variant_info(model).family, model
    with pytest.raises(KeyError, match='no training recipe for .resnet50.'):
        recipes.family_of('resnet50')


def test_files_name_only_registered_models(recipes):
    """A file may exist before its family is registered (it gets no configs); a registered family's has no typos."""
    models = set(backbones.list_models())
    assert _registered_families() <= set(recipes.families())
    for family in _registered_families():
        assert set(recipes.models(family)) <= models, family


def test_recipes_are_valid_and_cite_primary_sources(recipes):
    """Every recipe, registered or not: train.py keys once each, a source for each value, no unreadable citation."""
    dests = {a.dest for a in build_parser()._actions}
    unreadable = re.compile(r'specs/|shared/|design\.md')
    for model in recipes.models():
        recipe = recipes.recipe(model)
        keys = [key for key, _, _ in recipe.values]
        assert len(keys) == len(set(keys)), f'{model}: duplicate keys'
        assert set(keys) <= dests, f'{model}: not train.py keys: {set(keys) - dests}'
        for key, _, src in recipe.values:
            assert src.strip(), f'{model}.{key}: no source'
        text = recipes.render(model)
        assert not unreadable.search(text), f'{model}: cites a file users cannot open'
        assert yaml.safe_load(text) == {'model': model, **{key: value for key, value, _ in recipe.values}}


# ---------------------------------------------------------------- the recipe-file format, on small files

_BASE = '''
caveat: the caveat
refs: {A: "paper §1", B: "{A} table"}
note: family note
recipes:
  base:
    epochs: [10, "{A}: ten"]
    lr: [null, "{LR_FROM_BASE}"]
    drop_path: ["{dp}", "{B}: {dp} for {size}"]
  derived:
    extends: base
    note: "derived note ({A})"
    inherited_sources: "ASSUMED: {source}"
    keep_sources: [lr]
    epochs: [20, "{B}: twenty"]
    smoothing: [0.1, own]
models:
  m1: {extends: base, vars: {dp: 0.1, size: small}}
  m2: {extends: derived, vars: {dp: 0.2, size: big}, note: "m2 only"}
  m3: {extends: derived, vars: {dp: 0.3, size: huge}}
'''


def _recipes(tmp_path, text, name='senet'):  # a registered family's name: the header reads its Family
    (tmp_path / f'{name}{SUFFIX}').write_text(text)
    return Recipes(tmp_path)


def test_format_extends_inherited_sources_and_vars(tmp_path):
    r = _recipes(tmp_path, _BASE)
    m1 = r.recipe('m1')
    assert m1.values == [('epochs', 10, 'paper §1: ten'), ('lr', None, 'unset so that lr_base below applies'),
                         ('drop_path', 0.1, 'paper §1 table: 0.1 for small')]
    assert m1.notes == ['family note']
    m3 = r.recipe('m3')  # replaced in place, appended, inherited sources rewritten except the kept one
    assert m3.values == [('epochs', 20, 'paper §1 table: twenty'), ('lr', None, 'unset so that lr_base below applies'),
                         ('drop_path', 0.3, 'ASSUMED: paper §1 table: 0.3 for huge'), ('smoothing', 0.1, 'own')]
    assert m3.notes == ['family note', 'derived note (paper §1)']
    assert r.recipe('m2').notes == ['family note', 'm2 only']  # the nearest note wins
    text = r.render('m3')
    senet = backbones.get_family('senet')  # the header names the paper as the registry does
    assert text.startswith(f'# m3: ImageNet-1k training recipe of {senet.paper} (Hu et al., arXiv {senet.arxiv}): '
                           'the caveat, in timm train.py args.yaml keys.\n')
    assert text.endswith('# NOTE: family note\n# NOTE: derived note (paper §1)\nmodel: m3  # the zoo variant this '
                         'recipe trains (file name)\nepochs: 20  # paper §1 table: twenty\nlr: null  # unset so that '
                         'lr_base below applies\ndrop_path: 0.3  # ASSUMED: paper §1 table: 0.3 for huge\n'
                         'smoothing: 0.1  # own\n')


def test_format_across_families(tmp_path):
    _recipes(tmp_path, _BASE)
    r = _recipes(tmp_path, 'models:\n  x: {extends: senet/base, vars: {dp: 0.5, size: s}}\n', 'other')
    assert r.recipe('x').values[2] == ('drop_path', 0.5, 'paper §1 table: 0.5 for s')
    assert r.recipe('x').notes == []  # the other family's note stays there


@pytest.mark.parametrize('text, match', [
    ('recipes:\n  a:\n    epochs: [1, x]\n    epochs: [2, y]\n', "duplicate key 'epochs'"),
    ('models:\n  m: {epochs: 10}\n', r'model m: epochs must be \[value, "source"\]'),
    ('models:\n  m: {epochs: [10, "{NOPE}"]}\n', r'\{NOPE\} is not a ref of the file nor a var of the model'),
    ('models:\n  m: {epochs: ["{n}", x]}\n', 'epochs is {n} but the model has no such var'),
    ('models:\n  m: nothing\n', "extends an unknown recipe 'nothing'"),
    ('recipes:\n  a: {extends: a}\nmodels:\n  m: a\n', "extends itself 'a'"),
    ('recipes:\n  a: {vars: {x: 1}}\n', 'vars belong to a model'),
    ('colour: red\n', r"unknown top-level keys \['colour'\]"),
])
def test_format_errors_name_the_place(tmp_path, text, match):
    with pytest.raises(RecipeError, match=match):
        _recipes(tmp_path, text).recipe('m')

