"""Benchmarks: zoo models side by side with a reference, interleaved in one process (``tools/benchmark.py``).

    from backbones.bench import BenchConfig, benchmark, rows_markdown
    rows = benchmark(['se_resnet50', 'sknet50'], BenchConfig(threads=1, batch=8, rounds=9))
    print(rows_markdown(rows))

Each zoo model runs with its reference (timm twin on the same weights, the official operator, any timm model or
itself) and, for inference, its :func:`~backbones.optimize_for_inference` copy; see :mod:`.references` and
:mod:`.runner`.
"""
from typing import List, Optional, Sequence

import torch

from .references import (
    OFFICIAL_OPS,
    RECORDED_OFFICIAL,
    Contender,
    RecordedRatio,
    build_contenders,
    calibrate_bn_,
    random_timm_model,
    recorded_official_note,
    redraw_,
    timm_twin,
    zoo_model_from,
)
from .report import (
    SPEED_END,
    SPEED_START,
    check_readme_speed,
    machine_summary,
    merge_rows,
    official_notes,
    readme_speed_block,
    render_readme_speed,
    rows_from_dicts,
    rows_markdown,
)
from .runner import BenchConfig, Row, peak_memory_mb, run_group

__all__ = [
    'benchmark', 'model_input', 'README_SUITE', 'BenchConfig', 'Row', 'Contender', 'run_group', 'peak_memory_mb',
    'build_contenders', 'calibrate_bn_', 'timm_twin', 'OFFICIAL_OPS', 'RECORDED_OFFICIAL', 'RecordedRatio', 'redraw_',
    'random_timm_model', 'zoo_model_from', 'recorded_official_note', 'rows_markdown', 'machine_summary',
    'render_readme_speed', 'readme_speed_block', 'check_readme_speed', 'official_notes',
    'rows_from_dicts', 'merge_rows', 'SPEED_START', 'SPEED_END',
]

# README's table: (zoo model, reference) -- the smallest paper variant of every family, against its timm twin where
# timm has one, else the official operator formulation, else resnet50 (with the recorded official ratio) or nothing
README_SUITE = [
    ('se_resnet50', 'twin'),
    ('sknet50', 'twin'),
    ('res2net50', 'twin'),
    ('rednet26', 'official'),
    ('davit_t', 'twin'),
    ('maxvit_tiny', 'twin'),
    ('twins_pcpvt_s', 'twin'),
    ('twins_svt_s', 'twin'),
    ('sequencer2d_small', 'twin'),
    ('convit_ti', 'twin'),
    ('crossvit_tiny', 'twin'),
    ('biformer_tiny', 'resnet50'),
    ('tic_tiny', 'official'),
    ('rapidnet_ti', 'resnet50'),
    ('moat_0', 'official'),
    ('parcnetv2_xt', 'none'),
]


def model_input(model: torch.nn.Module, batch: int, img_size: Optional[int] = None, seed: int = 0) -> torch.Tensor:
    """``torch.randn(batch, C, H, W)`` at the model's default input size (or ``img_size`` square)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    c, h, w = cfg.get('input_size', (3, 224, 224))
    if img_size:
        h = w = img_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, c, h, w, generator=g)


def benchmark(
        names: Sequence[str],
        cfg: BenchConfig,
        reference: str = 'auto',
        references: Optional[Sequence[str]] = None,
        optimized: bool = True,
) -> List[Row]:
    """Benchmark zoo models ``names`` (each against ``reference``, or ``references[i]``); rows in order."""
    rows: List[Row] = []
    for i, name in enumerate(names):
        ref_kind = references[i] if references is not None else reference
        contenders, ref = build_contenders(name, ref_kind, optimized=optimized and cfg.mode == 'infer')
        x = model_input(contenders[0].model, cfg.batch, cfg.img_size)
        rows += run_group(contenders, ref, [x], cfg, group=name)
    return rows
