"""The pre-norm transformer block of token models, around an attention and an MLP given by the family.

ViT's block ("An Image is Worth 16x16 Words", arXiv 2010.11929, Eq. 2-3), optionally with LayerScale (CaiT, arXiv
2103.17239)::

    x = x + drop_path(ls1(attn(norm1(x))))
    x = x + drop_path(ls2(mlp(norm2(x))))

The family passes its own ``attn`` (SDPA multi-head attention, ConViT's GPSA, a cross-attention ...) and ``mlp``;
any leading shape works (``[B, N, C]`` tokens or a ``[B, H, W, C]`` grid) as long as ``attn`` takes it.

``num_query_tokens = n > 0`` makes it a class-attention block (CrossViT's fusion, CaiT's class attention): ``attn``
reads all tokens but returns only the first ``n`` (``[B, n, C]``, e.g. queries from the class token only), the
residual and the MLP apply to those ``n`` tokens, and the block returns ``[B, n, C]``.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerScale

__all__ = ['TransformerBlock']


class TransformerBlock(nn.Module):
    """Pre-norm residual attention + MLP (see module docstring).

    Args:
        dim: token width ``C``.
        attn: token mixer, ``attn(norm1(x))`` has ``x``'s shape (or ``[B, n, C]`` with ``num_query_tokens``).
        mlp: channel mixer on ``norm2(x)``; ``None``: no MLP half (``norm2`` / ``mlp`` are then parameter-free
            identities).
        norm_layer: norm constructor, called as ``norm_layer(dim, device=, dtype=)``.
        drop_path: stochastic depth of both residual branches.
        init_values: LayerScale init (``None``: no LayerScale).
        num_query_tokens: ``n > 0``: class-attention block (see module docstring); 0: every token is updated.
    """

    def __init__(
            self,
            dim: int,
            attn: nn.Module,
            mlp: Optional[nn.Module],
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            drop_path: float = 0.,
            init_values: Optional[float] = None,
            num_query_tokens: int = 0,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_query_tokens = num_query_tokens
        self.norm1 = norm_layer(dim, **dd)
        self.attn = attn
        self.ls1 = LayerScale(dim, init_values, **dd) if init_values is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.has_mlp = mlp is not None
        self.norm2 = norm_layer(dim, **dd) if mlp is not None else nn.Identity()
        self.mlp = mlp if mlp is not None else nn.Identity()
        self.ls2 = LayerScale(dim, init_values, **dd) if mlp is not None and init_values is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if mlp is not None and drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residuals(x)

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """The two residual branches: what a subclass that adds a step before or after calls (TorchScript compiles
        no ``super().forward``)."""
        shortcut = x[:, :self.num_query_tokens] if self.num_query_tokens > 0 else x
        x = shortcut + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        if self.has_mlp:
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x
