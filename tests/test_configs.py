"""configs/<family>/<model>.yaml are exactly what tools/make_configs.py writes, and its recipe tables are sound."""
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

import backbones
from backbones.train import build_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location('make_configs', ROOT / 'tools' / 'make_configs.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _registered_families():
    return {backbones.get_variant_info(m).family for m in backbones.list_models()}


def test_configs_are_what_the_tool_writes(tool, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tool, 'ROOT', str(tmp_path))
    assert tool.main() == 0
    written = {p.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.glob('configs/*/*.yaml')}
    expected = {f'configs/{backbones.get_variant_info(m).family}/{m}.yaml' for m in backbones.list_models()}
    assert set(written) == expected  # one config per registered model, nothing for unregistered tables
    shipped = {p.relative_to(ROOT).as_posix(): p.read_text() for p in ROOT.glob('configs/*/*.yaml')}
    assert set(shipped) == expected, 'stale or missing configs: run python tools/make_configs.py'
    stale = sorted(path for path, text in written.items() if shipped[path] != text)
    assert not stale, f'{stale} differ from what tools/make_configs.py writes: run it'


def test_every_model_has_a_recipe_in_its_family_table(tool):
    for model in backbones.list_models():
        assert tool.family_of(model) == backbones.get_variant_info(model).family, model
    with pytest.raises(KeyError, match='no training recipe for .resnet50.'):
        tool.recipe_for('resnet50')


def test_tables_name_only_registered_models(tool):
    """A table may exist before its family is registered (it is skipped); a registered family's table has no typos."""
    models = set(backbones.list_models())
    for family in _registered_families() & set(tool.RECIPES):
        assert set(tool.RECIPES[family]) <= models, family
    assert _registered_families() <= set(tool.PAPERS)


def test_recipes_are_valid_and_cite_primary_sources(tool):
    """Every table, registered or not: train.py keys once each, a source for each value, no unreadable citation."""
    dests = {a.dest for a in build_parser()._actions}
    unreadable = re.compile(r'specs/|shared/|design\.md')
    for table in tool.RECIPES.values():
        for model, recipe in table.items():
            keys = [key for key, _, _ in recipe]
            assert len(keys) == len(set(keys)), f'{model}: duplicate keys'
            assert set(keys) <= dests, f'{model}: not train.py keys: {set(keys) - dests}'
            for key, _, src in recipe:
                assert src.strip(), f'{model}.{key}: no source'
            text = tool.render(model)
            assert not unreadable.search(text), f'{model}: cites a file users cannot open'
            assert yaml.safe_load(text) == {'model': model, **{key: value for key, value, _ in recipe}}
