"""Interleaved timing of a group of models on the same inputs: speed ratios that a busy machine cannot fake.

Every round runs each contender once (inference forward, or a training step: forward + loss + backward), in
alternating order (A B C, then C B A, ...), so load changes, frequency scaling and cache state hit all of them
alike. A contender's speed-up is the median over rounds of ``reference time / its time`` from the same round.
Absolute times (ms per batch, img/s, GFLOP/s) are medians too, but on a shared machine only the ratios mean much.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .references import Contender

__all__ = ['BenchConfig', 'Row', 'run_group', 'peak_memory_mb']

_KINETO_SILENT = 6  # kineto's log levels: 0 verbose ... 4 error, 5 USDT (trace start / stop); 6 shows none


@dataclass
class BenchConfig:
    """How to measure.

    Attributes:
        mode: ``'infer'`` (eval, ``torch.inference_mode``) or ``'train'`` (train mode; forward + cross-entropy +
            backward, gradients reset to ``None`` outside the timed region; no optimizer step).
        batch, img_size: input batch and side (``None``: the model's default input size).
        threads: CPU threads (``torch.set_num_threads``; ``None`` leaves the current setting).
        device: ``'cpu'`` or ``'cuda'`` (any torch device string).
        channels_last: models and input in channels-last memory format.
        amp: ``'bf16'`` for bfloat16 autocast, ``None`` for float32.
        compile: ``torch.compile`` every contender (warm-up rounds absorb the compilation).
        rounds, warmup: timed and untimed rounds.
        clock: ``'cpu'`` (process CPU time, all threads: robust to other jobs' load), ``'wall'``, or ``'auto'``
            (CPU time on the CPU, wall time with synchronisation on an accelerator).
        memory, flops: also measure peak memory and count GMACs (``backbones.count``).
    """
    mode: str = 'infer'
    batch: int = 8
    img_size: Optional[int] = None
    threads: Optional[int] = None
    device: str = 'cpu'
    channels_last: bool = False
    amp: Optional[str] = None
    compile: bool = False
    rounds: int = 9
    warmup: int = 2
    clock: str = 'auto'
    memory: bool = True
    flops: bool = True

    def __post_init__(self):
        if self.mode not in ('infer', 'train'):
            raise ValueError(f"mode must be 'infer' or 'train', got {self.mode!r}")
        if self.amp not in (None, 'bf16'):
            raise ValueError(f"amp must be None or 'bf16', got {self.amp!r}")
        if self.clock not in ('auto', 'cpu', 'wall'):
            raise ValueError(f"clock must be 'auto', 'cpu' or 'wall', got {self.clock!r}")
        if self.rounds < 1 or self.warmup < 0 or self.batch < 1:
            raise ValueError('rounds and batch must be >= 1, warmup >= 0')
        if self.threads is not None and self.threads < 1:
            raise ValueError(f'threads must be >= 1 (or None: leave the setting), got {self.threads}')
        if self.img_size is not None and self.img_size < 1:
            raise ValueError(f'img_size must be >= 1 (or None: the model\'s default), got {self.img_size}')

    @property
    def resolved_clock(self) -> str:
        if self.clock != 'auto':
            return self.clock
        return 'cpu' if torch.device(self.device).type == 'cpu' else 'wall'

    def options(self) -> str:
        """The non-default execution options, for table headings."""
        opts = [f'{self.device}']
        if self.channels_last:
            opts.append('channels_last')
        if self.amp:
            opts.append(f'{self.amp} autocast')
        if self.compile:
            opts.append('torch.compile')
        return ', '.join(opts)


@dataclass
class Row:
    """One contender's results (times on the config's clock; speed-ups against the group's reference)."""
    group: str
    label: str
    kind: str
    mode: str
    batch: int
    input_size: Tuple[int, ...]
    threads: int
    options: str
    clock: str
    is_reference: bool
    ms: float  # median time per batch
    img_s: float
    peak_mb: Optional[float] = None  # peak memory allocated during one step (beyond weights and input)
    gmacs: Optional[float] = None  # per image, forward
    gflop_s: Optional[float] = None  # achieved: 2 FLOPs per MAC (training step: 3x the forward)
    speedup: Optional[float] = None  # median over rounds of reference time / own time
    speedup_min: Optional[float] = None
    speedup_max: Optional[float] = None
    speedup_wall: Optional[float] = None  # the same on wall-clock times
    max_abs_diff: Optional[float] = None  # outputs vs the reference's (same weights only)
    ref_max_abs: Optional[float] = None  # largest reference output, to read max_abs_diff against
    rounds: int = 0
    when: str = ''  # UTC, minutes, when the group was measured
    load: Optional[float] = None  # the machine's 1-minute load average then (other jobs: 0 on an idle machine)
    cpu: str = ''  # the CPU model it ran on ('' in rows stored before it was recorded)
    times: List[float] = field(default_factory=list, repr=False)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``, else what ``platform`` knows)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _first_tensor(out):
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    return out


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out = _first_tensor(out)
    if out.dim() == 2 and target is not None:
        return F.cross_entropy(out.float(), target)
    return out.float().sum()


def peak_memory_mb(step: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak of the memory allocated by ``step()`` beyond what was allocated before it, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the allocation and free events of the torch profiler, summed in
    time order (tensor memory only; the allocator's caching and the Python heap are not counted).
    """
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    if device.type != 'cpu':
        return None
    # The profiler's library (kineto) logs its own lines to stderr: a trace start / stop, and, when a profile stops
    # on a CUDA build of torch that finds no GPU, "ERROR: ... gpuGetDeviceCount failed" from its device-properties
    # query, which runs even for CPU-only profiles. None of it concerns this measurement: silence kineto's log unless
    # the user set its level (read when the profiler first starts in the process).
    os.environ.setdefault('KINETO_LOG_LEVEL', str(_KINETO_SILENT))
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'), key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 2 ** 20


def _gmacs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Optional[float]:
    if len(inputs) != 1 or inputs[0].dim() != 4:
        return None
    from ..flops import count
    try:
        return count(model, input_size=tuple(inputs[0].shape[1:])).gmacs
    except Exception:  # a model the counter cannot trace: leave the column empty rather than fail the benchmark
        return None


def run_group(
        contenders: Sequence[Contender],
        ref: int,
        inputs: Sequence[torch.Tensor],
        cfg: BenchConfig,
        group: Optional[str] = None,
        target: Optional[torch.Tensor] = None,
) -> List[Row]:
    """Time ``contenders`` interleaved on ``inputs``; speed-ups and parity against ``contenders[ref]``.

    In training mode, contenders with ``train=False`` are left out, and ``target`` (default: random labels when
    the output is ``[B, classes]``) feeds the cross-entropy loss; other outputs are summed. Models are moved to
    ``cfg.device`` (and channels-last) in place.
    """
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train = cfg.mode == 'train'
    chosen = [i for i, c in enumerate(contenders) if not train or c.train]
    if ref not in chosen:
        raise ValueError(f'the reference {contenders[ref].label!r} does not take part in {cfg.mode} runs')
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    inputs = [x.to(device, memory_format=fmt) if x.dim() == 4 else x.to(device) for x in inputs]
    if train and any(x.is_floating_point() for x in inputs) and not any(
            p.requires_grad for i in chosen for p in contenders[i].model.parameters()):
        inputs = [x.requires_grad_() if x.is_floating_point() else x for x in inputs]  # parameter-free ops
    batch = inputs[0].shape[0]
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg.amp else contextlib.nullcontext
    clock = cfg.resolved_clock
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)

    runners, originals = [], []
    for i in chosen:
        model = contenders[i].model.to(device, memory_format=fmt).train(train)
        originals.append(model)
        runners.append(torch.compile(model) if cfg.compile else model)

    with torch.no_grad(), autocast():  # reference outputs first (this also compiles, when asked)
        outputs = [_first_tensor(r(*inputs)).float() for r in runners]
    if train and target is None and outputs[0].dim() == 2:
        g = torch.Generator().manual_seed(0)
        target = torch.randint(0, outputs[0].shape[1], (batch,), generator=g).to(device)

    steps = [_make_step(r, m, inputs, target, train, autocast) for r, m in zip(runners, originals)]
    cpu, wall = _time_interleaved(steps, cfg, sync)

    r = chosen.index(ref)
    times = cpu if clock == 'cpu' else wall
    stamp = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M'), os.getloadavg()[0] if hasattr(os, 'getloadavg') \
        else None
    rows = []
    for j, i in enumerate(chosen):
        c = contenders[i]
        row = _row(c, cfg, group or contenders[0].label, inputs, times, wall, j, r, stamp)
        # parity: inference only (a training step's outputs differ by dropout draws), same weights only
        if not train and c.same_weights and contenders[ref].same_weights and j != r:
            row.max_abs_diff = (outputs[j] - outputs[r]).abs().max().item()
            row.ref_max_abs = outputs[r].abs().max().item()
        if cfg.flops:
            row.gmacs = _gmacs(originals[j], inputs)
            if row.gmacs is not None:
                row.gflop_s = 2 * row.gmacs * batch * (3 if train else 1) / (row.ms / 1e3)
        if cfg.memory:
            prepare, step = steps[j]
            prepare()
            row.peak_mb = peak_memory_mb(step, device)
        rows.append(row)
    return rows


def _make_step(runner: nn.Module, model: nn.Module, inputs: Sequence[torch.Tensor], target: Optional[torch.Tensor],
               train: bool, autocast: Callable) -> Tuple[Callable[[], None], Callable[[], object]]:
    """``(prepare, step)`` of one contender: a forward (inference mode) or a forward + backward of the loss."""
    if train:
        def prepare():
            model.zero_grad(set_to_none=True)
            for x in inputs:
                x.grad = None

        def step():
            with autocast():
                out = runner(*inputs)
            _loss(out, target).backward()
    else:
        def prepare():
            pass

        def step():
            with torch.inference_mode(), autocast():
                return runner(*inputs)
    return prepare, step


def _time_interleaved(steps: Sequence[Tuple[Callable, Callable]], cfg: BenchConfig,
                      sync: Callable[[], None]) -> Tuple[List[List[float]], List[List[float]]]:
    """Per contender, the CPU and the wall seconds of each timed round: the contenders take turns within a round,
    in alternating order, so a change in the machine's load falls on all of them alike."""
    cpu, wall = [[] for _ in steps], [[] for _ in steps]
    for rnd in range(cfg.warmup + cfg.rounds):
        order = range(len(steps)) if rnd % 2 == 0 else reversed(range(len(steps)))
        for j in order:
            prepare, step = steps[j]
            prepare()
            sync()
            c0, w0 = time.process_time(), time.perf_counter()
            step()
            sync()
            c1, w1 = time.process_time(), time.perf_counter()
            if rnd >= cfg.warmup:
                cpu[j].append(c1 - c0)
                wall[j].append(w1 - w0)
    return cpu, wall


def _row(c: Contender, cfg: BenchConfig, group: str, inputs: Sequence[torch.Tensor], times: List[List[float]],
         wall: List[List[float]], j: int, r: int, stamp: Tuple[str, Optional[float]]) -> Row:
    """The timing row of contender ``j`` (``times``: the clock's rounds) with its speed-up over contender ``r``;
    ``stamp``: when, and the machine's load then."""
    batch = inputs[0].shape[0]
    ms = 1e3 * statistics.median(times[j])
    row = Row(
        group=group, label=c.label, kind=c.kind, mode=cfg.mode, batch=batch, input_size=tuple(inputs[0].shape[1:]),
        threads=torch.get_num_threads(), options=cfg.options(), clock=cfg.resolved_clock, is_reference=j == r, ms=ms,
        img_s=batch / ms * 1e3, rounds=cfg.rounds, when=stamp[0], load=stamp[1], cpu=cpu_model(), times=times[j])
    if j != r:
        ratios = [a / b for a, b in zip(times[r], times[j])]
        row.speedup = statistics.median(ratios)
        row.speedup_min, row.speedup_max = min(ratios), max(ratios)
        row.speedup_wall = statistics.median(a / b for a, b in zip(wall[r], wall[j]))
    return row
