"""Importing this package registers every zoo family with timm (one import per family file)."""
from . import (
    rednet,  # noqa: F401
    res2net,  # noqa: F401
    senet,  # noqa: F401
    sknet,  # noqa: F401
)
