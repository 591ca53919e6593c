"""Folders the zoo writes load in Hugging Face transformers, offline, and give timm's logits.

``AutoModelForImageClassification.from_pretrained(folder)`` (a ``TimmWrapperForImageClassification``, after
``import backbones``) must build the same network as ``timm.create_model('local-dir:<folder>', pretrained=True)`` and
return the same logits, for every writer: ``backbones.hub.save_for_hf`` (at reduced depth, so that ``model_args``
must carry the architecture), ``convert_checkpoint`` (``tools/convert.py``), ``export_for_hf`` (a training run's
``best/``) and ``backbones.hub.push`` (the folder it uploads, on RedNet-26).
"""
import json
import shutil

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from _reduced import reduced_kwargs, reduced_model
from conftest import SMALL_MODELS, assert_close_f32, input_side
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification, TimmWrapperForImageClassification

import backbones  # noqa: F401  (registers the zoo's architectures with timm, which transformers builds through)
from backbones import hub
from backbones.convert import convert_checkpoint
from backbones.train.checkpoint import export_for_hf

LABELS = ['cat', 'dog', 'fox', 'owl', 'yak']


def _input(model) -> torch.Tensor:
    """A 2 x 3 x 64 x 96 batch, sides rounded up to what ``model`` takes (Sequencer2D: multiples of 14)."""
    size = (2, 3, input_side(model, 64), input_side(model, 96))
    return torch.randn(size, generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network, as users run it with HF_HUB_OFFLINE=1: everything comes from the local folder."""
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')


def _check_folder(folder, x, expected_logits, labels=None):
    """transformers and timm's ``local-dir:`` build the folder's network and agree with ``expected_logits`` on
    ``x``."""
    config = json.loads((folder / 'config.json').read_text())
    assert 'num_classes' not in config.get('model_args', {})  # the key transformers would pass twice
    hf_model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert isinstance(hf_model, TimmWrapperForImageClassification)
    assert hf_model.config.num_labels == config['num_classes']
    if labels is not None:
        assert [hf_model.config.id2label[i] for i in range(len(labels))] == labels
    timm_model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    with torch.no_grad():
        hf_logits = hf_model(pixel_values=x).logits
        timm_logits = timm_model(x)
    assert_close_f32(timm_logits, expected_logits)
    assert_close_f32(hf_logits, timm_logits)
    direct = TimmWrapperForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        assert_close_f32(direct(pixel_values=x).logits, timm_logits)


def _logits(model):
    """An input for ``model`` and its logits."""
    x = _input(model)
    with torch.no_grad():
        return x, model.eval()(x)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_save_for_hf_folder_loads_in_transformers(name, tmp_path):
    model = reduced_model(name, num_classes=len(LABELS))
    hub.save_for_hf(model, tmp_path, model_config={'label_names': LABELS})
    config = json.loads((tmp_path / 'config.json').read_text())
    # the reduced architecture travels in model_args (as JSON: tuples become lists)
    assert {k: config['model_args'][k] for k in reduced_kwargs(name)} == json.loads(json.dumps(reduced_kwargs(name)))
    _check_folder(tmp_path, *_logits(model), LABELS)


def test_converted_folder_loads_in_transformers(tmp_path):
    """tools/convert.py's folder: a 5-class checkpoint (num_classes inferred from it) of a non-default depth."""
    model = reduced_model('rednet26', num_classes=5)
    ckpt = tmp_path / 'rednet26.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    out = convert_checkpoint('rednet26', ckpt, tmp_path / 'out', model_kwargs=reduced_kwargs('rednet26'))
    _check_folder(out, *_logits(model))


def test_training_best_folder_loads_in_transformers(tmp_path):
    """A training run's best/ (written by export_for_hf), with the run's class names and eval transforms."""
    model = reduced_model('rednet26', num_classes=len(LABELS))
    data_config = dict(input_size=(3, 64, 64), interpolation='bilinear', mean=(0.5,) * 3, std=(0.25,) * 3,
                       crop_pct=1.0, crop_mode='center')
    out = export_for_hf(model, tmp_path / 'best', data_config=data_config, label_names=LABELS)
    _check_folder(out, *_logits(model), LABELS)


def test_pushed_folder_loads_in_transformers(tmp_path, monkeypatch):
    """``backbones.hub.push`` uploads a folder transformers loads (the upload is intercepted, no Hub involved)."""
    uploaded = tmp_path / 'uploaded'

    class FakeApi:
        def __init__(self, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type('RepoUrl', (), {'repo_id': repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, uploaded)
            return f'https://huggingface.co/{repo_id}/commit/0'

    monkeypatch.setattr(hub, 'HfApi', FakeApi)
    model = reduced_model('rednet26', num_classes=len(LABELS))
    hub.push(model, 'me/rednet26-pets', label_names=LABELS)
    assert sorted(p.name for p in uploaded.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    _check_folder(uploaded, *_logits(model), LABELS)
