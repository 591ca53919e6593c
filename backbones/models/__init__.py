"""Importing this package registers every zoo family with timm (one import per family file)."""
from . import (
    biformer,  # noqa: F401
    convit,  # noqa: F401
    crossvit,  # noqa: F401
    davit,  # noqa: F401
    maxvit,  # noqa: F401
    moat,  # noqa: F401
    parcnetv2,  # noqa: F401
    rapidnet,  # noqa: F401
    rednet,  # noqa: F401
    res2net,  # noqa: F401
    senet,  # noqa: F401
    sequencer,  # noqa: F401
    sknet,  # noqa: F401
    tic,  # noqa: F401
    twins,  # noqa: F401
)
