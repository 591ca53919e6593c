"""Patch embedding of token models: image ``[B, C, H, W]`` -> channels-last grid of patch tokens ``[B, H/p, W/p, D]``.

The grid keeps its 2-D shape so that attention that needs the token positions (ConViT's GPSA) reads the grid size
off the tensor; a model flattens it to ``[B, N, D]`` where it adds prefix (class) tokens.

Two forms of ``proj``:

- one conv with kernel = stride = patch (ViT, "An Image is Worth 16x16 Words", arXiv 2010.11929, Sec. 3.1);
- ``multi_conv``: the three-conv stem of CrossViT's dagger models (arXiv 2103.14899; official
  ``IBM/CrossViT@3f7ab77:models/crossvit.py`` ``PatchEmbed(multi_conv=True)``): 7x7/4 -> ReLU -> 3x3 -> ReLU -> 3x3
  with widths D/4, D/2, D; the last two convs are 3x3/3 (pad 0) + 3x3/1 for patch 12 and 3x3/2 + 3x3/2 (pad 1) for
  patch 16. ``proj`` is then an ``nn.Sequential`` whose convs sit at ``proj.0``, ``proj.2``, ``proj.4`` (the
  official key names).
"""
from typing import Optional

import torch
import torch.nn as nn

from .conv import LayerType, strided_conv2d
from .tracing import contiguous_for_export

__all__ = ['PatchEmbed']

# (stride, padding) of the 2nd and 3rd conv of the multi-conv stem, per patch size (the 1st is 7x7/4, pad 3)
_MULTI_CONV = {12: ((3, 0), (1, 1)), 16: ((2, 1), (2, 1))}


class PatchEmbed(nn.Module):
    """``proj`` (conv k = s = ``patch_size``, or the multi-conv stem) -> channels last -> ``norm`` -> ``drop``.

    Args:
        in_chs: image channels.
        embed_dim: token width ``D``.
        patch_size: side of a patch = the stride of the embedding (multi-conv: 12 or 16).
        multi_conv: the CrossViT-dagger three-conv stem instead of one conv.
        bias: conv biases.
        norm_layer: norm on the tokens (default none).
        drop: dropout on the tokens (Twins' ``pos_drop``).
        stride, dilation: of the single conv where a stage keeps its resolution instead of striding (Twins with
            ``output_stride``): ``stride=1`` reads the patch window at every pixel, dilated by ``dilation``
            (:func:`~backbones.layers.strided_conv2d`). Default: stride = ``patch_size``.

    ``forward(x)``: ``[B, C, H, W]`` -> ``[B, H // p, W // p, D]``. Sides that are not multiples of ``p`` are the
    model's to reject (``check_input``); the conv would silently drop the remainder.
    """

    def __init__(
            self,
            in_chs: int,
            embed_dim: int,
            patch_size: int = 16,
            multi_conv: bool = False,
            bias: bool = True,
            norm_layer: Optional[LayerType] = None,
            drop: float = 0.,
            stride: Optional[int] = None,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        if multi_conv:
            if patch_size not in _MULTI_CONV:
                raise ValueError(f'multi_conv patch embedding exists for patch sizes {sorted(_MULTI_CONV)}, '
                                 f'got {patch_size}')
            (s2, p2), (s3, p3) = _MULTI_CONV[patch_size]
            self.proj = nn.Sequential(
                nn.Conv2d(in_chs, embed_dim // 4, 7, stride=4, padding=3, bias=bias, **dd),
                nn.ReLU(inplace=True),
                nn.Conv2d(embed_dim // 4, embed_dim // 2, 3, stride=s2, padding=p2, bias=bias, **dd),
                nn.ReLU(inplace=True),
                nn.Conv2d(embed_dim // 2, embed_dim, 3, stride=s3, padding=p3, bias=bias, **dd),
            )
        else:
            stride = patch_size if stride is None else stride
            self.proj = strided_conv2d(in_chs, embed_dim, patch_size, stride, dilation=dilation, bias=bias, **dd)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer is not None else nn.Identity()
        self.drop = nn.Dropout(drop) if drop > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (contiguous when exported: a channels-last map, e.g. a previous stage's permuted output, guards on B > 1)
        return self.drop(self.norm(self.proj(contiguous_for_export(x)).permute(0, 2, 3, 1)))
