"""Bad input gets a clear error naming what was expected, for every family."""
import pytest
import timm
import torch
from conftest import SMALL_MODELS

import backbones  # noqa: F401
from backbones._checkpoint import CheckpointMismatchError, family_filter_fn
from backbones._features import StageFeatureMixin
from backbones._token import MultiBranchTokenMixin, TokenFeatureMixin


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_wrong_channel_count(name):
    model = timm.create_model(name, device='meta')
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.empty(1, 4, 64, 64, device='meta'))
    with pytest.raises(ValueError, match='4-D'):
        model(torch.empty(3, 64, 64, device='meta'))


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_size_rule(name):
    """The shared size rule: token models take multiples of their patch size, multi-branch token models and stage
    models multiples of their ``input_divisor`` (1: any size); anything else is a ValueError naming the rule."""
    model = timm.create_model(name, device='meta').eval()
    if isinstance(model, TokenFeatureMixin):
        divisor = model.patch_size
    elif isinstance(model, MultiBranchTokenMixin) or type(model)._check_input is StageFeatureMixin._check_input:
        divisor = model.input_divisor
    else:
        pytest.skip(f'{name} has its own size rule (tested in its family tests)')
    side = divisor * -(-16 // divisor)  # the smallest multiple of the divisor >= 16
    model(torch.empty(1, 3, 4 * side, 5 * side, device='meta'))
    if divisor == 1:
        model(torch.empty(1, 3, 67, 45, device='meta'))
    else:
        with pytest.raises(ValueError, match=f'multiples of {divisor}'):
            model(torch.empty(1, 3, 4 * divisor, 4 * divisor + divisor // 2, device='meta'))


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_wrong_family_checkpoint(name):
    """Every family's filter refuses a checkpoint of another family, listing the offending keys."""
    model = timm.create_model(name, device='meta')
    others = [n for n in SMALL_MODELS if backbones.get_family(n) != backbones.get_family(name)]
    assert others
    foreign = timm.create_model(others[0], device='meta').state_dict()
    with pytest.raises(CheckpointMismatchError, match='(missing|unexpected) keys'):
        family_filter_fn(name)(foreign, model)


def test_checkpoint_without_tensors():
    model = timm.create_model(SMALL_MODELS[0], device='meta')
    with pytest.raises(CheckpointMismatchError, match='no tensors'):
        family_filter_fn(SMALL_MODELS[0])({'epoch': 3, 'args': {}}, model)


def test_pretrained_file_of_wrong_family(tmp_path):
    """Through timm's own loading path: a safetensors file of another family fails with our message."""
    from safetensors.torch import save_file
    names = [n for n in SMALL_MODELS if n != 'se_resnext50_32x4d']
    src = timm.create_model(names[0])
    path = tmp_path / 'weights.safetensors'
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    with pytest.raises(CheckpointMismatchError, match='does not fit'):
        timm.create_model('se_resnext50_32x4d', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
