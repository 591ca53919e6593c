"""``optimize_for_inference``: exact inference-time simplifications of a zoo model (BatchNorm folding, branch
re-parameterisation), same logits up to float rounding.

The result is a *deploy form*, marked as such (:func:`mark_deploy_form`): ``model.deploy_form`` says what made it,
switching it to training warns once (it would train another network: one without BatchNorm), and
:func:`backbones.hub.save_for_hf` refuses it (its state dict no longer fits the model its ``config.json`` names).
"""
import copy
import types
import warnings

import torch
import torch.nn as nn
from timm.utils import reparameterize_model

__all__ = ['optimize_for_inference', 'mark_deploy_form']


def mark_deploy_form(model: nn.Module, how: str) -> nn.Module:
    """Mark ``model`` as a deploy form made by ``how`` (e.g. ``'optimize_for_inference'``): sets
    ``model.deploy_form`` and makes ``model.train()`` warn, once, that training it trains a network without its
    folded BatchNorms. Switching to eval (``model.eval()``, ``train(False)``) stays silent. Returns ``model``."""
    if getattr(model, 'deploy_form', None) is None:
        model.deploy_form = how
        model.train = types.MethodType(_train_deploy_form, model)  # this instance only (deep copies keep it)
    return model


def _train_deploy_form(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode and not self.__dict__.get('_deploy_form_warned', False):
        self._deploy_form_warned = True
        name = (getattr(self, 'pretrained_cfg', None) or {}).get('architecture') or type(self).__name__
        warnings.warn(
            f'{name} is a deploy form ({self.deploy_form}): its BatchNorms (and re-parameterised branches) are folded '
            f'into the convolutions, so training it trains another network, without BatchNorm. Train the model '
            f'as built and fold it again afterwards', UserWarning, stacklevel=2)
    return type(self).train(self, mode)


@torch.no_grad()
def optimize_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold what only training needs into the weights; returns the model in eval mode.

    Runs timm's ``reparameterize_model`` (parents before children, a module with a ``fuse()`` method is replaced by
    what it returns, one with ``reparameterize()`` is re-parameterised in place) on the eval-mode model: in the zoo
    every BatchNorm that directly follows a convolution (:class:`~backbones.layers.ConvNormAct`, projection
    shortcuts, the SK attention's reduction) is folded into it with its running statistics, and RapidNet's
    multi-branch blocks become single convolutions (its ``reparameterize``). The logits are those of the eval-mode
    model (float rounding apart: the folded weights are computed in float64).

    The result is for inference (a deploy form, :func:`mark_deploy_form`): its state dict has no folded BatchNorm
    entries, and training it would train without them (``.train()`` warns once). Modules that cannot be folded
    exactly are left as they are, so any model (zoo or not) can be passed. Beyond timm's walk it switches to eval
    mode first (the folds use the running statistics) and marks the result as a deploy form.

    Args:
        model: the model (weights loaded).
        inplace: modify ``model`` itself instead of a deep copy.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    keys = set(model.state_dict())
    reparameterize_model(model, inplace=True)
    if set(model.state_dict()) != keys:  # something was folded away: no longer the model its name builds
        mark_deploy_form(model, 'optimize_for_inference')
    return model.eval()
