"""Importing this package registers every zoo family with timm."""
from . import res2net, senet, sknet
