"""timm's ``Mlp`` whose CPU inference runs in row blocks, so that its wide hidden layer never leaves the cache.

An MLP ``fc2(act(fc1(x)))`` on the tokens of a high-resolution stage (batch 8 at 224: 25,088 tokens of width 96 in
DaViT's or MaxViT's first stage, 8,192 of width 192 in Sequencer's) makes a hidden tensor 3-8x wider than its input:
19-50 MB, written by ``fc1``, read and rewritten by the activation, read by ``fc2``, and (being that large) a fresh
allocation from the operating system, page faults included, on every call. Run on blocks of a few hundred tokens,
the hidden block (about 1 MiB) stays in the cache between the three steps: the same arithmetic row by row, with the
same weights, 1.1-2.4x faster on such stages (measured on one CPU thread; no change on small token counts, where
blocking is not used).

Blocking is used only when nothing can observe the difference: inference (no gradient), the CPU, eager mode (not
while tracing, exporting or scripting), no autocast, token-major input ``[..., C]`` (not the 1x1-conv form), and a
hidden tensor of :data:`BLOCK_MIN_BYTES` or more. Outputs equal the unblocked ones up to float rounding (the matrix
products are cut differently): within 1e-6 for unit-scale activations.
"""
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import Mlp as _TimmMlp
from timm.layers import register_notrace_module

from .tracing import is_tracing

__all__ = ['Mlp', 'BLOCK_MIN_BYTES', 'BLOCK_TARGET_ELEMENTS']

BLOCK_MIN_BYTES = 12 * 2 ** 20  # a smaller hidden tensor stays in the last-level cache anyway
BLOCK_TARGET_ELEMENTS = 2 ** 18  # hidden values per block: 1 MiB in float32


@register_notrace_module  # an FX leaf: the choice of path reads tensor attributes
class Mlp(_TimmMlp):
    """``timm.layers.Mlp`` (same arguments, parameters and state-dict keys), blocked over tokens in CPU inference.

    See the module docstring for when blocking applies; otherwise this is timm's forward.
    """

    @torch.jit.unused
    def _block_rows(self, x: torch.Tensor) -> Optional[int]:
        """Tokens per block, or None to run unblocked."""
        # plain nn.Linear layers only (not the 1x1-conv form, not a quantized or QAT Linear): the blocks run fc2 as
        # addmm on its float weight
        if (is_tracing() or self.training or type(self.fc1) is not nn.Linear or type(self.fc2) is not nn.Linear
                or x.device.type != 'cpu' or x.dim() < 2
                or (torch.is_grad_enabled() and (x.requires_grad or self.fc1.weight.requires_grad))
                or torch.is_autocast_enabled(x.device.type) or x.dtype != self.fc2.weight.dtype):
            return None
        hidden = self.fc1.out_features
        tokens = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if tokens * hidden * x.element_size() < BLOCK_MIN_BYTES:
            return None
        rows = 1 << max(7, round(BLOCK_TARGET_ELEMENTS / hidden).bit_length() - 1)  # a power of two, >= 128
        return rows if tokens >= 2 * rows else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            rows = self._block_rows(x)
            if rows is not None:
                return self._forward_blocked(x, rows)
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))  # timm's Mlp.forward

    @torch.jit.unused
    def _forward_blocked(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = flat.new_empty(flat.shape[0], self.fc2.out_features)
        w2, b2 = self.fc2.weight.t(), self.fc2.bias
        for start in range(0, flat.shape[0], rows):
            h = self.norm(self.act(self.fc1(flat[start:start + rows])))  # drop1 / drop2: identities in eval
            dst = out[start:start + rows]
            if b2 is None:
                torch.mm(h, w2, out=dst)
            else:
                torch.addmm(b2, h, w2, out=dst)
        return out.view(*x.shape[:-1], self.fc2.out_features)
