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
    resolve_reference,
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
    'benchmark', 'check_benchmark', 'check_device', 'model_input', 'README_SUITE', 'resolve_reference',
    'BenchConfig', 'Row', 'Contender', 'run_group', 'peak_memory_mb',
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
    ('parcnetv2_xt', 'official'),
]


def model_input(model: torch.nn.Module, batch: int, img_size: Optional[int] = None, seed: int = 0) -> torch.Tensor:
    """``torch.randn(batch, C, H, W)`` at the model's default input size (or ``img_size`` square)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    c, h, w = cfg.get('input_size', (3, 224, 224))
    if img_size:
        h = w = img_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, c, h, w, generator=g)


def check_device(device: str) -> torch.device:
    """``torch.device(device)``, after checking it exists here: ``ValueError`` (one line) for a string that is not a
    device, or a device this machine does not have (``cuda`` without a GPU, ``cuda:3`` on a 2-GPU machine)."""
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"'{device}' is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if d.type in ('cpu', 'meta'):
        return d
    backend = getattr(torch, d.type, None)
    if backend is None or not backend.is_available():
        raise ValueError(f"device '{device}': this machine has no {d.type} device (use cpu)")
    count = backend.device_count() if hasattr(backend, 'device_count') else 1
    if d.index is not None and d.index >= count:
        raise ValueError(f"device '{device}': this machine has {count} {d.type} device(s), numbered from 0")
    return d


def check_benchmark(names: Sequence[str], references: Sequence[str], device: str = 'cpu',
                    img_size: Optional[int] = None) -> None:
    """Raise ``ValueError`` (one line) for what would otherwise stop a benchmark midway, before anything is measured:
    a name that is not a zoo model, a reference the model does not have (:func:`resolve_reference`), a device this
    machine lacks (:func:`check_device`), an input side a model cannot take (one forward on the meta device)."""
    import difflib

    import timm

    from .._registry import list_models
    from ..train.model import input_size_problem
    check_device(device)
    zoo = list_models()
    for name, reference in zip(names, references):
        if name not in zoo:
            close = difflib.get_close_matches(name, zoo, n=3, cutoff=0.6)
            hint = f'did you mean {", ".join(close)}?' if close else 'zoo models: backbones.list_models()'
            raise ValueError(f"'{name}' is not a zoo model ({hint})")
        resolve_reference(name, reference)
        if img_size is not None:
            model = timm.create_model(name, device='meta')
            problem = input_size_problem(model, (model.pretrained_cfg['input_size'][0], img_size, img_size))
            if problem:
                raise ValueError(f'{name} cannot take {img_size}x{img_size} inputs: {problem}')


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
