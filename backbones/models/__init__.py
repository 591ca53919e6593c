"""Importing this package registers every zoo family with timm: each module here whose name does not start with ``_``
is one family's file, imported in name order (a new family needs no line here). ``_``-modules hold code that
families share (``_resnet``) or keep beside their network (``_rapidnet_layout``); the families import them."""
import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith('_')):
    importlib.import_module(f'{__name__}.{_module}')
del _module
