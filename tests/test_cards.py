"""Generated model cards (model_cards/, tools/make_cards.py, backbones.cards)."""
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
import yaml
from conftest import ALL_MODELS, SMALL_MODELS

import backbones
from backbones import cards
from backbones._registry import _VARIANTS

ROOT = pathlib.Path(__file__).resolve().parents[1]
CARDS = ROOT / 'model_cards'


def _card(name: str) -> str:
    return (CARDS / cards.card_filename(name)).read_text()


def _python_blocks(text: str):
    usage = text[text.index('## Model Usage'):text.index('## Training Recipe')]
    return re.findall(r'```python\n(.*?)```', usage, flags=re.S)


def test_make_cards_check_passes():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(ROOT / 'tools/make_cards.py'), '--check'], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_one_card_per_model():
    assert sorted(p.name for p in CARDS.glob('*.md')) == sorted(f'{n}.md' for n in ALL_MODELS)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_front_matter(name):
    text = _card(name)
    meta = yaml.safe_load(cards.front_matter(text))
    assert meta['library_name'] == 'timm'
    assert meta['pipeline_tag'] == 'image-classification'
    fam = backbones.get_family(name)
    assert meta['license'] == fam.license
    assert {'image-classification', 'timm', 'backbones', fam.name} <= set(meta['tags'])
    assert 'transformers' not in meta['tags'] and 'transformers' not in cards.front_matter(text)
    tag = timm.models.get_pretrained_cfg(name).tag
    final_dataset = {'in1k': ['imagenet-1k'], 'in21k': ['imagenet-21k'], 'in22k': ['imagenet-22k']}
    expected = next((v for k, v in final_dataset.items() if tag == k or tag.endswith('_' + k)), None)
    assert meta.get('datasets') == expected  # the data the weights were last trained on (21k->1k: 1k)
    assert f'# Model card for {name}.{tag}' in text
    assert fam.arxiv_url in text and fam.repo_url in text
    assert f'](../configs/{fam.name}/{name}.yaml)' in text
    assert f'```bibtex\n{fam.bibtex}\n```' in text


@pytest.mark.parametrize('name', ALL_MODELS)
def test_usage_blocks_start_with_import_backbones(name):
    blocks = _python_blocks(_card(name))
    assert len(blocks) == 3
    for block in blocks:
        assert block.startswith('import backbones'), block.splitlines()[0]
        assert '\nimport timm\n' in block
        compile(block, name, 'exec')  # valid python


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_card_shapes_are_the_real_ones(name):
    """The shapes written in a card's Usage comments are what a meta-device model really outputs."""
    _, features, embeddings = _python_blocks(_card(name))
    written = [tuple(int(d) for d in m.split(', '))
               for m in re.findall(r'#\s+torch\.Size\(\[([\d, ]+)\]\)', features)]
    size = timm.models.get_pretrained_cfg(name).input_size
    x = torch.empty(1, *size, device='meta')
    with torch.no_grad():
        fm = timm.create_model(name, features_only=True, device='meta').eval()
        real = [tuple(o.shape) for o in fm(x)]
        emb = timm.create_model(name, num_classes=0, device='meta').eval()(x)
    assert written == real
    assert f'output is a torch.Size([{", ".join(map(str, emb.shape))}]) tensor' in embeddings


def test_card_goes_out_of_date_when_registry_changes(tmp_path, monkeypatch):
    name = SMALL_MODELS[0]
    shutil.copy(CARDS / cards.card_filename(name), tmp_path)
    shutil.copy(CARDS / cards.MEASURED_FILE, tmp_path)
    assert cards.check_cards(tmp_path, names=[name]) == []
    measured = cards.load_measured(tmp_path)[name]
    before = cards.render_card(name, measured=measured)
    monkeypatch.setitem(_VARIANTS, name, dataclasses.replace(_VARIANTS[name], gmacs=123.45, top1=1.0))
    after = cards.render_card(name, measured=measured)
    assert after != before and '123.45' in after
    assert cards.check_cards(tmp_path, names=[name]) == [f'{name}.md: out of date']
    # the fix: regenerating makes it current again (write_cards over a copy of the whole directory is slow;
    # writing the one rendered card is what it does per model)
    (tmp_path / cards.card_filename(name)).write_text(after)
    assert cards.check_cards(tmp_path, names=[name]) == []


def test_stale_measurements_are_flagged(tmp_path, monkeypatch):
    name = SMALL_MODELS[0]
    shutil.copy(CARDS / cards.card_filename(name), tmp_path)
    shutil.copy(CARDS / cards.MEASURED_FILE, tmp_path)
    # the model changed since it was measured (its fingerprint differs): flagged and measured again
    monkeypatch.setattr(cards, 'fingerprint', lambda n: 'changed')
    monkeypatch.setattr(cards, 'measure', lambda n: dict(cards.load_measured(CARDS)[n], fingerprint='changed'))
    assert cards.check_cards(tmp_path, names=[name]) == [f'{cards.MEASURED_FILE}: {name} changed since it was measured']


def test_missing_and_extra_cards(tmp_path, monkeypatch):
    names = ALL_MODELS[:2]
    monkeypatch.setattr(cards, 'list_models', lambda: names)
    monkeypatch.setattr(cards, 'fingerprint', lambda n: cards.load_measured(CARDS)[n]['fingerprint'])
    data = cards.load_measured(CARDS)
    (tmp_path / cards.MEASURED_FILE).write_text(cards._dump_measured({n: data[n] for n in names}))
    shutil.copy(CARDS / cards.card_filename(names[0]), tmp_path)
    (tmp_path / 'not_a_model.md').write_text('x')
    assert cards.check_cards(tmp_path) == [f'{names[1]}.md: missing', 'not_a_model.md: extra (no such zoo model)']


def test_render_card_options():
    name = SMALL_MODELS[0]
    measured = cards.load_measured(CARDS)[name]
    text = cards.render_card(name, measured=measured, repo_id='me/my-model', details={'Fine-tuned on': 'pets'})
    assert "timm.create_model('hf-hub:me/my-model', pretrained=True" in text
    assert '- **Fine-tuned on:** pets' in text
    assert cards.render_card(name, measured=measured) == _card(name)  # deterministic
    with pytest.raises(TypeError, match='unexpected'):
        cards.render_card(name, measured=measured, colour='red')


def test_every_family_has_a_citation():
    for name in backbones.list_families():
        bib = backbones.get_family(name).bibtex
        assert bib.startswith('@') and bib.endswith('}') and bib.count('{') == bib.count('}'), name


def test_activation_count_on_meta():
    """timm / fvcore convention: output elements of convs and linears (not of norms, activations, pools)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).to('meta').eval()
    assert backbones.count(model, input_size=(3, 10, 10), activations=True).activations == 8 * 10 * 10 + 5
