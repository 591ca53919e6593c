"""Every private timm symbol the zoo uses, imported here and nowhere else.

timm's public API (``timm.models``, ``timm.layers``, ``timm.utils``) covers most of what the zoo needs; these few
names are private (a leading underscore in their module), so a timm release may move or rename them. Importing them
in one place makes such a release fail here, at ``import backbones``, naming the symbol, and makes the dependency
visible (pyproject.toml pins timm up to its next minor release for this reason).

* ``_model_entrypoints`` -- timm's name -> entrypoint table: the no-shadow guard of
  :func:`backbones._registry.register_zoo_model` reads it (``timm.list_models`` would miss names without a cfg);
* ``update_model_input_size`` -- what timm's own ``set_input_size`` models call to update ``pretrained_cfg``;
* ``feature_take_indices`` -- the ``forward_intermediates`` index rule, so ``indices=`` reads as in timm;
* ``FeatureGetterNet`` -- timm's ``features_only`` wrapper over ``forward_intermediates``;
* ``reinit_non_persistent_buffers`` -- rebuilds buffers a meta-device model lacks (the benchmarks' timm twins).
"""
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._input import update_model_input_size
from timm.models._manipulate import reinit_non_persistent_buffers
from timm.models._registry import _model_entrypoints

__all__ = [
    'FeatureGetterNet', 'feature_take_indices', 'update_model_input_size', 'reinit_non_persistent_buffers',
    '_model_entrypoints',
]
