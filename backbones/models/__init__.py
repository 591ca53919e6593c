"""Importing this package registers every zoo family with timm."""
from . import rednet, res2net, senet, sknet
