"""Backbone Zoo: timm-compatible vision backbones, faithful to their papers and official weights.

``import backbones`` registers every zoo model with timm, so ``timm.create_model('<zoo name>', ...)`` works.
"""
from . import models  # noqa: F401  (registers the zoo with timm)
from ._registry import get_family, get_variant_info, list_families, list_models, set_pretrained_loader
from .hub import pretrained_kwargs_offline
from .optimize import optimize_for_inference
from .version import __version__
from .weights import create_pretrained, list_pretrained


def _load_pretrained(fn, name: str, kwargs: dict):
    """``pretrained=True`` of every zoo entrypoint: Hub weights on an offline machine (one probe, then the cache or
    one line naming the repo), then other frameworks' formats and the no-weights answer."""
    return create_pretrained(fn, name, pretrained_kwargs_offline(name, kwargs))


set_pretrained_loader(_load_pretrained)

__all__ = [
    'list_models', 'list_families', 'get_family', 'get_variant_info', 'list_pretrained', 'count',
    'optimize_for_inference', '__version__',
]


def count(model_or_name, input_size=None, per_module: bool = False, batch_size: int = 1, table_depth: int = 3,
          activations: bool = False):
    """Params and GMACs (one multiply-add = one, the papers' "FLOPs"); see :func:`backbones.flops.count`."""
    from .flops import count as _count  # imported on use: fvcore is only needed for counting
    return _count(model_or_name, input_size=input_size, per_module=per_module, batch_size=batch_size,
                  table_depth=table_depth, activations=activations)
