"""Evaluation: top-1 / top-5 of a model on a loader, shared by the training loop and ``tools/validate.py``.

:func:`evaluate` counts correct predictions as integers (summed over the ranks of a distributed run, the padding
samples of timm's distributed eval sampler left out) and reports ``100 * correct / images``: a count over the whole
set, not an average of per-batch percentages, so it does not depend on how the set was cut into batches or processes
(beyond the last-bit float differences a backend may have between batch shapes), and ``tools/validate.py`` on a
checkpoint prints exactly the top-1 that training logged for it (tested).
"""
import contextlib
import time
from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import num_valid_samples
from .errors import DataError

__all__ = ['evaluate']


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader,
        device: torch.device,
        amp_autocast: Callable = contextlib.nullcontext,
        channels_last: bool = False,
        distributed: bool = False,
        use_prefetcher: bool = True,
        progress=None,
) -> Dict[str, float]:
    """``{'loss', 'top1', 'top5', 'correct1', 'correct5', 'count', 'seconds', 'img_per_sec'}`` of ``model`` on
    ``loader`` (cross-entropy loss; top-5 is top-k with k = min(5, classes))."""
    model.eval()
    n_valid = num_valid_samples(loader) if distributed else None
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct1, correctk, count
    seen = 0
    start = time.perf_counter()
    for inputs, target in loader:
        if not use_prefetcher:
            inputs, target = inputs.to(device), target.to(device)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(inputs)
        if isinstance(output, (tuple, list)):
            output = output[0]
        output = output.float()
        b = output.shape[0]
        keep = b if n_valid is None else max(0, min(b, n_valid - seen))
        seen += b
        if keep < b:
            output, target = output[:keep], target[:keep]
        if keep > 0:
            k = min(5, output.shape[1])
            hits = output.topk(k, dim=1).indices.eq(target.reshape(-1, 1))
            sums[0] += F.cross_entropy(output, target, reduction='sum').double()
            sums[1] += hits[:, 0].sum()
            sums[2] += hits.any(dim=1).sum()
            sums[3] += keep
        if progress is not None:
            progress.update(b)
    if distributed:
        torch.distributed.all_reduce(sums)
    seconds = time.perf_counter() - start
    loss, c1, ck, n = sums.tolist()
    n = int(n)
    if n == 0:
        raise DataError('the validation set is empty')
    return {
        'loss': loss / n, 'top1': 100.0 * int(c1) / n, 'top5': 100.0 * int(ck) / n,
        'correct1': int(c1), 'correct5': int(ck), 'count': n, 'seconds': seconds, 'img_per_sec': n / seconds,
    }
