"""``optimize_for_inference``: exact inference-time simplifications of a zoo model (BatchNorm folding, branch
re-parameterisation), same logits up to float rounding."""
import copy

import torch
import torch.nn as nn

__all__ = ['optimize_for_inference']


@torch.no_grad()
def optimize_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold what only training needs into the weights; returns the model in eval mode.

    Walks the module tree (parents before children) the way timm's ``reparameterize_model`` does: a module with a
    ``fuse()`` method is replaced by what it returns, one with ``reparameterize()`` is re-parameterised in place.
    In the zoo that means every BatchNorm that directly follows a convolution (:class:`~backbones.layers.ConvNormAct`,
    projection shortcuts, the SK attention's reduction) is folded into it with its running statistics, and
    RapidNet's multi-branch blocks become single convolutions (its ``reparameterize``). The logits are those of the
    eval-mode model (float rounding apart: the folded weights are computed in float64).

    The result is for inference: its state dict has no folded BatchNorm entries, and training it would train
    without them. Modules that cannot be folded exactly are left as they are, so any model (zoo or not) can be
    passed. ``timm.utils.reparameterize_model`` reaches the same ``fuse`` / ``reparameterize`` methods (without
    switching to eval mode).

    Args:
        model: the model (weights loaded).
        inplace: modify ``model`` itself instead of a deep copy.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()

    def walk(parent: nn.Module):
        for name, child in parent.named_children():
            if hasattr(child, 'fuse'):
                child = child.fuse()
                setattr(parent, name, child)
            elif hasattr(child, 'reparameterize'):
                child.reparameterize()
            walk(child)

    walk(model)
    return model.eval()
