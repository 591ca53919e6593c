"""Importing this package registers every zoo family with timm."""
from . import senet, sknet
