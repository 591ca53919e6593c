"""The training loop, composed from timm's public pieces.

:func:`train` runs one experiment described by a namespace of timm ``train.py`` arguments
(:func:`backbones.train.parse_args`): ``create_dataset`` / ``create_loader`` / ``resolve_data_config``,
``Mixup`` / ``FastCollateMixup``, timm's losses (chosen as timm's train.py chooses them), ``create_optimizer_v2``
(layer decay included), ``create_scheduler_v2``, ``ModelEmaV3``, ``NativeScaler`` / ``dispatch_clip_grad``,
``AverageMeter`` and the distributed helpers (``init_distributed_device``, ``distribute_bn``).

Order of work, chosen so that bad input never damages an output directory: arguments -> datasets (checked) -> model
(and its starting weights) -> resume checkpoint (checked against the model) -> only then the output directory, which
the run locks (one writer) and writes into from its first checkpoint on (:mod:`backbones.train.rundir`). A run that
ends before its first checkpoint leaves nothing it created; one stopped by Ctrl-C or by a failure to save a
checkpoint (a full disk, a file-size limit, a read-only file system) says, in one line, which epoch is the last
good one and the command that continues from it.

Exact resume: every epoch's data order is a function of ``(seed, epoch)`` (:func:`~backbones.train.data.
set_loader_epoch`) and every checkpoint holds the RNG states of every rank at the end of its epoch, so a run killed
mid-epoch and resumed (``--resume auto``) restarts that epoch from the same state and, on CPU with ``--workers 0``,
ends with bit-identical weights.
"""
import contextlib
import errno
import logging
import shlex
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data import AugMixDataset, FastCollateMixup, Mixup, resolve_data_config
from timm.layers import convert_splitbn_model, convert_sync_batchnorm, set_fast_norm
from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import model_parameters
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    AverageMeter,
    ModelEmaV3,
    NativeScaler,
    dispatch_clip_grad,
    distribute_bn,
    get_state_dict,
    init_distributed_device,
    random_seed,
    set_jit_fuser,
    unwrap_model,
)

from .._checkpoint import select_state_dict
from .args import args_to_yaml, check_values, resolve_lr
from .checkpoint import (
    CHECKPOINT_VERSION,
    TrainCheckpointSaver,
    capture_rng_state,
    export_for_hf,
    load_model_state,
    load_training_checkpoint,
    plain_args,
    restore_rng_state,
    rewrite_summary,
    summary_row,
    write_summary,
)
from .data import build_datasets, create_eval_loader, create_train_loader, data_config_summary, set_loader_epoch
from .defaults import configure_cpu_threads
from .errors import CheckpointError, TrainError, TrainInterrupted, one_line
from .evaluation import evaluate
from .model import check_model_input, create_train_model
from .plot import plot_summary
from .progress import Progress, format_duration
from .rundir import BEST_DIR, PLOT, SUMMARY, RunDir, run_dir_of

__all__ = ['train', 'train_one_epoch', 'run_dir_of', 'BEST_DIR', 'SUMMARY', 'PLOT']

_logger = logging.getLogger('backbones.train')

def _resume_command(run_dir: Path) -> str:
    q = shlex.quote
    return (f'python tools/train.py -c {q(str(run_dir / "args.yaml"))} --output {q(str(run_dir.parent))} '
            f'--experiment {q(run_dir.name)} --resume auto')


def _stopped(why: str, epoch: int, saver: Optional['TrainCheckpointSaver'], run_dir: Path, then: str = '') -> str:
    """One line: what stopped the run, the last good epoch and how to continue."""
    if saver is None:  # not the primary process: rank 0 reports the checkpoint
        return f'{why} in epoch {epoch}'
    if saver.last_epoch is None:
        return (f'{why} in epoch {epoch}, before the first checkpoint: nothing was saved in {run_dir} ({then}run '
                f'the same command again to start over)')
    return (f'{why} in epoch {epoch}: the last good checkpoint is epoch {saver.last_epoch} '
            f'({run_dir / "last.pth.tar"}); {then}continue with: {_resume_command(run_dir)}')


class _SaveFailed(Exception):
    """Writing the run's files failed; ``why`` and ``then`` complete :func:`_stopped`'s line."""

    def __init__(self, why: str, then: str):
        super().__init__(why)
        self.why, self.then = why, then


# torch.save's zip writer reports a failed write (a full disk, a file-size limit) as a RuntimeError like
# "[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 1200" or "... file write failed"
_TORCH_WRITE_FAILED = ('inline_container', 'unexpected pos', 'file write failed', 'PytorchStreamWriter')


def _save_failure(e: BaseException) -> Tuple[str, str]:
    """``(why, then)`` for an error raised while writing a checkpoint or the files beside it."""
    where = f' writing {e.filename}' if isinstance(e, OSError) and e.filename else ''
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f'no space left on device{where}', 'free some space, then '
    if isinstance(e, OSError) and e.errno == errno.EFBIG:
        return (f'file too large{where} (the file system or the file-size limit, ulimit -f)',
                'raise the limit or use another --output, then ')
    if isinstance(e, OSError) and e.errno == errno.EROFS:
        return f'the file system is read-only{where}', 'make it writable, then '
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
        return f'permission denied{where}', 'fix the permissions, then '
    first = one_line(e)
    if isinstance(e, RuntimeError) and any(s in first for s in _TORCH_WRITE_FAILED):
        return (f'the checkpoint could not be written (torch.save: {first}; a full disk or a file-size limit?)',
                'free some space, then ')
    return f'saving failed ({type(e).__name__}: {first})', 'fix the cause, then '


@contextlib.contextmanager
def _saving() -> Iterator[None]:
    """Around the writes of an epoch's files: an OSError / RuntimeError there (but not Ctrl-C) ends the run like
    Ctrl-C does, naming the last good epoch (:class:`_SaveFailed`)."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        raise _SaveFailed(*_save_failure(e)) from e


def _resumed_summary(ck: Dict[str, Any], run_dir: Path, start_epoch: int, continues: bool) -> List[Dict[str, Any]]:
    """The summary rows of the epochs before ``start_epoch``: from the checkpoint, or (a checkpoint written before
    it held them) from this directory's ``summary.csv``."""
    if isinstance(ck.get('summary'), list):
        return [dict(r) for r in ck['summary'] if isinstance(r, dict) and int(r.get('epoch', -1)) < start_epoch]
    if continues:
        return [dict(r) for r in rewrite_summary(run_dir / SUMMARY, start_epoch)]
    return []


def _amp(args, device: torch.device):
    """``(autocast context factory, loss scaler or None)`` as timm sets them up."""
    if not args.amp:
        return contextlib.nullcontext, None
    if args.amp_impl != 'native':
        raise TrainError(f"--amp-impl {args.amp_impl}: only 'native' (torch.autocast) is supported")
    if args.amp_dtype not in ('float16', 'bfloat16'):
        raise TrainError(f'--amp-dtype {args.amp_dtype}: expected float16 or bfloat16')
    dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    scaler = NativeScaler(device=device.type) if dtype == torch.float16 and device.type == 'cuda' else None
    return partial(torch.autocast, device_type=device.type, dtype=dtype), scaler


def _losses(args, mixup_active: bool, num_aug_splits: int, device: torch.device):
    """The train loss timm's train.py picks for these flags (validation uses cross-entropy, as timm's)."""
    if args.jsd_loss:
        if not num_aug_splits:
            raise TrainError('--jsd-loss needs --aug-splits >= 2')
        train_loss = JsdCrossEntropy(num_splits=num_aug_splits, smoothing=args.smoothing)
    elif mixup_active:  # the smoothing is folded into the mixed targets
        if args.bce_loss:
            train_loss = BinaryCrossEntropy(target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum,
                                            pos_weight=args.bce_pos_weight)
        else:
            train_loss = SoftTargetCrossEntropy()
    elif args.smoothing:
        if args.bce_loss:
            train_loss = BinaryCrossEntropy(smoothing=args.smoothing, target_threshold=args.bce_target_thresh,
                                            sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight)
        else:
            train_loss = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    elif args.bce_loss:
        train_loss = BinaryCrossEntropy(target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum,
                                        pos_weight=args.bce_pos_weight)
    else:
        train_loss = nn.CrossEntropyLoss()
    return train_loss.to(device)


def _gather_rng(args) -> Dict[str, Any]:
    state = capture_rng_state()
    if not args.distributed:
        return {'world_size': 1, 'ranks': [state]}
    states: List[Any] = [None] * args.world_size
    dist.all_gather_object(states, state)
    return {'world_size': args.world_size, 'ranks': states}


def _reduce_sum(values: List[float], device: torch.device, distributed: bool) -> List[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(t)
    return t.tolist()


def train_one_epoch(epoch: int, model: nn.Module, loader, optimizer, loss_fn, args, device: torch.device,
                    lr_scheduler=None, amp_autocast=contextlib.nullcontext, loss_scaler=None, model_ema=None,
                    mixup_fn=None, num_epochs: int = 0, log: bool = True) -> Dict[str, float]:
    """One pass over ``loader`` with gradient accumulation (``--grad-accum-steps``; DDP gradient sync only on update
    steps), clipping (``--clip-grad`` / ``--clip-mode``, through the scaler under AMP), per-update LR schedule and EMA
    updates. Returns ``{'loss': mean train loss over all ranks}``."""
    accum = max(1, args.grad_accum_steps)
    second_order = getattr(optimizer, 'is_second_order', False)
    n_batches = len(loader)
    updates_per_epoch = (n_batches + accum - 1) // accum
    num_updates = epoch * updates_per_epoch
    last_idx = n_batches - 1
    last_accum = n_batches % accum
    last_accum_start = n_batches - last_accum
    clip_params = partial(model_parameters, model, exclude_head='agc' in args.clip_mode)
    losses = AverageMeter()
    progress = Progress(n_batches, f'train {epoch} ({epoch + 1}/{max(num_epochs, epoch + 1)})', enabled=log,
                        log_interval=args.log_interval)
    model.train()
    optimizer.zero_grad()
    try:
        for batch_idx, (inputs, target) in enumerate(loader):
            need_update = batch_idx == last_idx or (batch_idx + 1) % accum == 0
            steps = last_accum if (last_accum and batch_idx >= last_accum_start) else accum
            if not args.prefetcher:
                inputs, target = inputs.to(device), target.to(device)
                if mixup_fn is not None:
                    inputs, target = mixup_fn(inputs, target)
            if args.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            sync = contextlib.nullcontext()
            if args.distributed and not need_update and hasattr(model, 'no_sync'):
                sync = model.no_sync()
            with sync:
                with amp_autocast():
                    output = model(inputs)
                    loss = loss_fn(output, target)
                value = loss.item()
                if not torch.isfinite(loss):
                    raise TrainError(f'the loss is {value} at epoch {epoch}, step {batch_idx}: training diverged '
                                     f'(try a lower --lr, a longer --warmup-epochs or --clip-grad)')
                if steps > 1:
                    loss = loss / steps
                if loss_scaler is not None:
                    loss_scaler(loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                                parameters=clip_params(), create_graph=second_order, need_update=need_update)
                else:
                    loss.backward(create_graph=second_order)
                    if need_update:
                        if args.clip_grad is not None:
                            dispatch_clip_grad(clip_params(), value=args.clip_grad, mode=args.clip_mode)
                        optimizer.step()
            losses.update(value, inputs.size(0))
            lr = optimizer.param_groups[0]['lr']
            progress.update(inputs.size(0) * args.world_size, loss=losses.avg, lr=lr)
            if not need_update:
                continue
            num_updates += 1
            optimizer.zero_grad()
            if model_ema is not None:
                model_ema.update(model, step=num_updates)
            if args.synchronize_step and device.type == 'cuda':
                torch.cuda.synchronize()
            if lr_scheduler is not None:
                lr_scheduler.step_update(num_updates=num_updates, metric=losses.avg)
    finally:
        progress.close()
    total, count = _reduce_sum([losses.sum, losses.count], device, args.distributed)
    return {'loss': total / max(count, 1), 'img_per_sec': progress.rate, 'seconds': progress.elapsed}


def _resume_path(args, run_dir: Path) -> Optional[Path]:
    if not args.resume:
        return None
    if args.resume == 'auto':
        if not args.experiment:
            raise TrainError('--resume auto continues an experiment directory: also give --experiment NAME '
                             '(the run directory <output>/NAME)')
        last = run_dir / 'last.pth.tar'
        if last.is_file():
            return last
        _logger.info(f'--resume auto: no checkpoint in {run_dir} yet, starting a fresh run')
        return None
    path = Path(args.resume)
    if not path.is_file():
        raise CheckpointError(f'--resume: checkpoint not found: {path}')
    return path


def train(args, args_text: Optional[str] = None) -> Dict[str, Any]:
    """Run the experiment ``args`` describes (timm train.py argument names). Returns a dict with ``output_dir``,
    ``best_metric``, ``best_epoch``, ``last_epoch`` and the per-epoch ``history`` of this process."""
    if args_text is None:
        args_text = args_to_yaml(args)  # before the run adds its own keys (distributed, rank, ...)
    check_values(args)  # out-of-range numbers: before anything is built or written
    if args.recovery_interval:
        raise TrainError('--recovery-interval is not supported: every epoch is checkpointed atomically, and a '
                         'resume restarts the interrupted epoch exactly')
    if args.device_modules:
        import importlib
        for module in args.device_modules:
            importlib.import_module(module)
    if args.fuser:
        set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()
    if str(args.device).startswith('cuda') and not torch.cuda.is_available():
        raise TrainError(f'--device {args.device}: CUDA is not available (use --device cpu)')
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    device = init_distributed_device(args)
    if device.type == 'cpu':
        configure_cpu_threads(args.workers, log=args.rank == 0)
    try:
        with contextlib.ExitStack() as cleanup:  # the output directory is closed (lock, leftovers) however it ends
            return _train(args, device, args_text, cleanup)
    finally:
        if args.distributed and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class _Run:
    """What the steps of :func:`_train` build and hand on, in the order they build it."""
    args: Any
    device: torch.device
    args_text: str
    cleanup: contextlib.ExitStack
    primary: bool = True
    amp_autocast: Any = None
    loss_scaler: Any = None
    model_dtype: Optional[torch.dtype] = None
    data: Any = None  # 1. the datasets
    model: Optional[nn.Module] = None  # 2. (wrapped for compile / DDP after 3)
    data_config: Dict[str, Any] = field(default_factory=dict)
    num_aug_splits: int = 0
    optimizer: Any = None
    run_dir: Optional[Path] = None  # 3. resume
    resume_path: Optional[Path] = None
    ck: Optional[Dict[str, Any]] = None
    model_ema: Any = None
    loader_train: Any = None  # 4. loaders, losses, schedule
    loader_eval: Any = None
    mixup_fn: Any = None
    train_loss_fn: Any = None
    lr_scheduler: Any = None
    num_epochs: int = 0
    start_epoch: int = 0
    decreasing: bool = False
    rows: List[Dict[str, Any]] = field(default_factory=list)  # 5. output directory and checkpointing
    rng: Dict[str, Any] = field(default_factory=dict)
    out: Optional[RunDir] = None
    saver: Optional[TrainCheckpointSaver] = None
    ema_eval: bool = False  # 6. epochs
    metric_key: str = ''


def _train(args, device: torch.device, args_text: str, cleanup: contextlib.ExitStack) -> Dict[str, Any]:
    """The run, step by step; each step checks its input before the next one builds or writes anything."""
    r = _Run(args, device, args_text, cleanup, primary=args.rank == 0)
    _setup(r)
    # 1. data (checked before anything is built or written)
    r.data = build_datasets(args, log=r.primary)
    if r.data.embedded and r.primary:
        _logger.info(f'data: the embedded shapes dataset at {r.data.root}')
    _build_model(r)  # 2. model and its starting weights
    _resume(r)  # 3. resume (checked against this model before the output directory is touched)
    _wrap_model(r)
    _loaders_and_schedule(r)  # 4. loaders, losses, schedule
    if r.ck is not None and r.start_epoch >= r.num_epochs:
        _logger.info(f'{r.resume_path}: the run is already complete ({r.start_epoch} of {r.num_epochs} epochs)')
        return {'output_dir': str(r.run_dir), 'best_metric': r.ck.get('metric'), 'best_epoch': None,
                'last_epoch': r.start_epoch - 1, 'history': []}
    _open_output(r)  # 5. output directory (primary process only) and checkpointing
    history = _run_epochs(r)  # 6. epochs
    saver = r.saver
    result = {'output_dir': str(r.run_dir), 'last_epoch': r.num_epochs - 1, 'history': history,
              'best_metric': saver.best_metric if saver else None, 'best_epoch': saver.best_epoch if saver else None}
    if r.primary and saver.best_metric is not None:
        best = r.run_dir / BEST_DIR
        _logger.info(f'best {r.metric_key} {saver.best_metric:.3f} at epoch {saver.best_epoch}; weights exported to '
                     f'{best} (timm.create_model("local-dir:{best}", pretrained=True))')
    return result


def _setup(r: _Run) -> None:
    """Logging, the learning rate rule, mixed precision, the model dtype, the seed and the model's input-size rule."""
    args = r.args
    if not r.primary:
        logging.getLogger('backbones').setLevel(logging.WARNING)
    if args.distributed:
        _logger.info(f'distributed: {args.world_size} processes ({dist.get_backend()}), device {r.device}')
    else:
        _logger.info(f'training on {r.device}')
    resolve_lr(args, args.world_size)
    r.amp_autocast, r.loss_scaler = _amp(args, r.device)
    if args.model_dtype:
        if args.model_dtype not in ('float32', 'float16', 'bfloat16'):
            raise TrainError(f'--model-dtype {args.model_dtype}: expected float32, float16 or bfloat16')
        r.model_dtype = getattr(torch, args.model_dtype)
        if args.amp and r.model_dtype != torch.float32:
            raise TrainError('--amp with a low-precision --model-dtype: choose one')
    random_seed(args.seed, args.rank)
    check_model_input(args)  # the model's input-size rule, on the meta device: a bad --img-size fails here


def _build_model(r: _Run) -> None:
    """2. The model with its starting weights, split / synced BN, on its device, and its optimizer."""
    args = r.args
    model, _ = create_train_model(args, log=r.primary)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    r.data_config = resolve_data_config(vars(args), model=model, verbose=False)
    if r.primary:
        n_params = sum(p.numel() for p in model.parameters())
        _logger.info(f'model {args.model}: {n_params / 1e6:.3f}M params, {args.num_classes} classes; '
                     f'data config: {data_config_summary(r.data_config)}')
    if args.aug_splits > 0:
        if args.aug_splits < 2:
            raise TrainError('--aug-splits must be 0 or >= 2')
        r.num_aug_splits = args.aug_splits
    if args.split_bn:
        if not r.num_aug_splits:
            raise TrainError('--split-bn needs --aug-splits >= 2')
        model = convert_splitbn_model(model, max(r.num_aug_splits, 2))
    model.to(device=r.device, dtype=r.model_dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''  # synced BN needs no stat distribution
        model = convert_sync_batchnorm(model)
    if args.torchscript:
        model = torch.jit.script(model)
    r.model = model
    r.optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))


def _resume(r: _Run) -> None:
    """3. The run directory and, when resuming, the checkpoint's model, optimizer and loss-scaler states."""
    args = r.args
    run_dir = run_dir_of(args, int(r.data_config['input_size'][-1]))
    if args.distributed:  # one timestamped directory for all ranks
        holder = [str(run_dir)]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    r.run_dir = run_dir
    r.resume_path = _resume_path(args, run_dir)
    r.ck = ck = load_training_checkpoint(r.resume_path, args.model) if r.resume_path else None
    if ck is None:
        return
    load_model_state(unwrap_model(r.model), ck['state_dict'], str(r.resume_path))
    if not args.no_resume_opt and 'optimizer' in ck:
        try:
            r.optimizer.load_state_dict(ck['optimizer'])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f'the optimizer state in {r.resume_path} does not fit this run ({e}); '
                                  f'--no-resume-opt starts a fresh optimizer') from None
    if r.loss_scaler is not None and r.loss_scaler.state_dict_key in ck:
        r.loss_scaler.load_state_dict(ck[r.loss_scaler.state_dict_key])


def _wrap_model(r: _Run) -> None:
    """The EMA copy (resumed with the run), then ``torch.compile`` and DistributedDataParallel around the model."""
    args, ck = r.args, r.ck
    if args.model_ema:
        r.model_ema = ModelEmaV3(r.model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                                 device='cpu' if args.model_ema_force_cpu else None)
        if ck is not None:
            load_model_state(r.model_ema.module, ck.get('state_dict_ema') or ck['state_dict'], str(r.resume_path),
                             what='EMA weights')
            if isinstance(ck.get('ema_state'), dict) and 'sr_generator' in ck['ema_state']:
                r.model_ema._sr_generator.set_state(ck['ema_state']['sr_generator'])
    if args.torchcompile:
        r.model = torch.compile(r.model, backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        from torch.nn.parallel import DistributedDataParallel
        ids = [r.device] if r.device.type == 'cuda' else None
        r.model = DistributedDataParallel(r.model, device_ids=ids, broadcast_buffers=not args.no_ddp_bb)


def _loaders_and_schedule(r: _Run) -> None:
    """4. Mixup, the train and eval loaders, the train loss, the LR schedule and the epoch to start at."""
    args, ck = r.args, r.ck
    collate_fn = None
    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixup_active:
        mixup_args = dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                          prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                          label_smoothing=args.smoothing, num_classes=args.num_classes)
        if args.prefetcher:
            if r.num_aug_splits:
                raise TrainError('mixup/cutmix with --aug-splits needs --no-prefetcher')
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            r.mixup_fn = Mixup(**mixup_args)
    train_ds = r.data.train
    if r.num_aug_splits > 1:
        train_ds = AugMixDataset(train_ds, num_splits=r.num_aug_splits)
    img_dtype = r.model_dtype or torch.float32
    r.loader_train = create_train_loader(args, train_ds, r.data_config, r.device, collate_fn=collate_fn,
                                         num_aug_splits=r.num_aug_splits, img_dtype=img_dtype)
    eval_workers = args.workers
    if args.distributed and ('tfds' in args.dataset or 'wds' in args.dataset):
        eval_workers = min(2, args.workers)
    r.loader_eval = create_eval_loader(r.data.eval, r.data_config, args.validation_batch_size or args.batch_size,
                                       eval_workers, r.device, distributed=args.distributed,
                                       use_prefetcher=args.prefetcher, pin_memory=args.pin_mem, img_dtype=img_dtype)
    if len(r.loader_train) == 0:
        raise TrainError(f'the training set ({len(train_ds)} images) is smaller than one batch (-b {args.batch_size})')
    r.train_loss_fn = _losses(args, mixup_active, r.num_aug_splits, r.device)
    updates_per_epoch = (len(r.loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    r.decreasing = args.eval_metric == 'loss'
    r.lr_scheduler, r.num_epochs = create_scheduler_v2(
        r.optimizer, **scheduler_kwargs(args, decreasing_metric=r.decreasing), updates_per_epoch=updates_per_epoch)
    if args.start_epoch is not None:
        r.start_epoch = args.start_epoch
    elif ck is not None:
        r.start_epoch = int(ck.get('epoch', -1)) + (1 if ck.get('version', 1) >= 2 else 0)
    if r.lr_scheduler is not None:
        # the schedule is a function of the arguments and the epoch / update count: recomputed on resume (as timm
        # does), so a resume with more --epochs follows the new schedule; only the plateau scheduler has state
        if ck is not None and isinstance(ck.get('scheduler'), dict) and type(r.lr_scheduler).__name__ == \
                'PlateauLRScheduler':
            r.lr_scheduler.load_state_dict(ck['scheduler'])
        if r.start_epoch > 0:
            if args.sched_on_updates:
                r.lr_scheduler.step_update(r.start_epoch * updates_per_epoch)
            else:
                r.lr_scheduler.step(r.start_epoch)
    if r.primary:
        _logger.info(f'{r.num_epochs} epochs of {len(r.loader_train)} steps (global batch '
                     f'{args.batch_size * args.world_size * args.grad_accum_steps}, lr {args.lr:.3g}, '
                     f'{args.opt}, {args.sched}); train loss {type(r.train_loss_fn).__name__}')


def _checkpoint_state(r: _Run, args_dict: Dict[str, Any], epoch: int, metric: Optional[float]) -> Dict[str, Any]:
    """The checkpoint of ``epoch`` (timm ``CheckpointSaver``'s layout plus what an exact resume needs)."""
    class_names = r.data.class_names
    state = {
        'epoch': epoch, 'arch': r.args.model, 'version': CHECKPOINT_VERSION,
        'state_dict': get_state_dict(r.model, unwrap_model), 'optimizer': r.optimizer.state_dict(),
        'args': args_dict, 'rng': r.rng['rng'], 'data_config': _plain_cfg(r.data_config),
        'class_names': list(class_names) if class_names else None,
        # the data order of an epoch is a function of (seed, epoch): nothing else to save for the loader
        'loader': {'seed': r.args.seed, 'next_epoch': epoch + 1, 'order': 'sha256(seed:epoch) generators'},
        'summary': [dict(row) for row in r.rows],  # summary.csv is rewritten from these: no epoch without a checkpoint
    }
    if r.model_ema is not None:
        state['state_dict_ema'] = get_state_dict(r.model_ema, unwrap_model)
        state['ema_state'] = {'sr_generator': r.model_ema._sr_generator.get_state()}  # no top-level tensors
    if r.loss_scaler is not None:
        state[r.loss_scaler.state_dict_key] = r.loss_scaler.state_dict()
    if r.lr_scheduler is not None:
        state['scheduler'] = r.lr_scheduler.state_dict()
    if metric is not None:
        state['metric'] = metric
    return state


def _open_output(r: _Run) -> None:
    """5. The output directory and the checkpoint saver (primary process only); a resume's RNG states."""
    args, ck, run_dir = r.args, r.ck, r.run_dir
    continues = ck is not None and r.resume_path.resolve().parent == run_dir.resolve()
    r.rows = _resumed_summary(ck, run_dir, r.start_epoch, continues) if ck is not None else []
    if r.primary:
        r.out = RunDir(run_dir, r.args_text, continues, r.rows)
        r.out.prepare()
        r.cleanup.callback(r.out.close)
        r.saver = TrainCheckpointSaver(partial(_checkpoint_state, r, plain_args(args)), str(run_dir),
                                       max_history=args.checkpoint_hist, decreasing=r.decreasing)
        if ck is not None:
            r.saver.last_epoch = r.start_epoch - 1
        if continues and isinstance(ck.get('saver'), dict):
            r.saver.load_state_dict(ck['saver'])
            _repair_best_export(run_dir, r.saver.best_epoch, r.model, r.data_config, r.data.class_names, args)
        _logger.info(f'output: {run_dir}')
    if ck is not None:
        _restore_rng(ck, args)
        if r.primary:
            _logger.info(f'resumed from {r.resume_path} at epoch {r.start_epoch}')


def _run_epochs(r: _Run) -> List[Dict[str, Any]]:
    """6. The epochs; Ctrl-C and a full disk end with one line: the last good epoch and how to continue."""
    r.ema_eval = r.model_ema is not None and not (r.args.model_ema_force_cpu and r.device.type != 'cpu')
    r.metric_key = ('ema_' if r.ema_eval else '') + r.args.eval_metric
    history: List[Dict[str, Any]] = []
    epoch = r.start_epoch
    try:
        for epoch in range(r.start_epoch, r.num_epochs):
            history.append(_epoch(r, epoch))
    except KeyboardInterrupt:
        raise TrainInterrupted(_stopped('interrupted (Ctrl-C)', epoch, r.saver, r.run_dir)) from None
    except _SaveFailed as e:
        raise TrainError(_stopped(e.why, epoch, r.saver, r.run_dir, then=e.then)) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        why, then = _save_failure(e)
        raise TrainError(_stopped(why, epoch, r.saver, r.run_dir, then=then)) from None
    return history


def _epoch(r: _Run, epoch: int) -> Dict[str, Any]:
    """One epoch: train, evaluate (the model and its EMA), step the schedule, save; returns its summary row."""
    args = r.args
    t0 = time.perf_counter()
    set_loader_epoch(r.loader_train, args.seed, epoch, args.rank)
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and hasattr(r.loader_train, 'mixup_enabled'):
            r.loader_train.mixup_enabled = False
        elif r.mixup_fn is not None:
            r.mixup_fn.mixup_enabled = False
    train_metrics = train_one_epoch(
        epoch, r.model, r.loader_train, r.optimizer, r.train_loss_fn, args, r.device, lr_scheduler=r.lr_scheduler,
        amp_autocast=r.amp_autocast, loss_scaler=r.loss_scaler, model_ema=r.model_ema, mixup_fn=r.mixup_fn,
        num_epochs=r.num_epochs, log=r.primary)
    lrs = [g['lr'] for g in r.optimizer.param_groups]
    if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
        distribute_bn(r.model, args.world_size, args.dist_bn == 'reduce')
    eval_metrics: Dict[str, float] = {}
    if (epoch + 1) % max(1, args.val_interval) == 0 or epoch + 1 == r.num_epochs:
        eval_metrics = _evaluate_epoch(r, epoch)
    metric = eval_metrics.get(r.metric_key)
    if r.lr_scheduler is not None:
        r.lr_scheduler.step(epoch + 1, metric)
    r.rng['rng'] = _gather_rng(args)
    row = summary_row(epoch, {'loss': train_metrics['loss']}, eval_metrics, lr=sum(lrs) / len(lrs))
    if r.primary:
        new_best = _save_epoch(r, epoch, row, metric)
        _logger.info(_epoch_line(epoch, r.num_epochs, train_metrics, eval_metrics, lrs, r.ema_eval, new_best,
                                 time.perf_counter() - t0))
    return row


def _evaluate_epoch(r: _Run, epoch: int) -> Dict[str, float]:
    """The eval metrics of the model and, when it is evaluated, of its EMA (``ema_`` keys)."""
    args = r.args
    set_loader_epoch(r.loader_eval, args.seed, epoch, args.rank)
    m = evaluate(r.model, r.loader_eval, r.device, amp_autocast=r.amp_autocast, channels_last=args.channels_last,
                 distributed=args.distributed, use_prefetcher=args.prefetcher)
    eval_metrics = {'loss': m['loss'], 'top1': m['top1'], 'top5': m['top5']}
    if r.ema_eval:
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            distribute_bn(r.model_ema, args.world_size, args.dist_bn == 'reduce')
        e = evaluate(r.model_ema, r.loader_eval, r.device, amp_autocast=r.amp_autocast,
                     channels_last=args.channels_last, distributed=args.distributed, use_prefetcher=args.prefetcher)
        eval_metrics.update(ema_loss=e['loss'], ema_top1=e['top1'], ema_top5=e['top5'])
    return eval_metrics


def _save_epoch(r: _Run, epoch: int, row: Dict[str, Any], metric: Optional[float]) -> bool:
    """Checkpoint, summary, best export and plot of ``epoch`` (primary process); whether it is the new best."""
    out, saver, run_dir = r.out, r.saver, r.run_dir
    with _saving():
        out.commit()
        r.rows.append(row)  # into the checkpoint first, then into summary.csv
        saver.save_checkpoint(epoch, metric=metric)
        out.saved = out.saved or saver.last_epoch == epoch
        write_summary(run_dir / SUMMARY, r.rows)
    new_best = metric is not None and saver.best_epoch == epoch
    if new_best:
        best_model = r.model_ema if r.ema_eval else r.model
        _export_best(unwrap_model(best_model), run_dir, r.data_config, r.data.class_names, r.args, epoch, metric,
                     'ema' if r.ema_eval else 'model')
    try:
        plot_summary(run_dir / SUMMARY, run_dir / PLOT)
    except Exception as e:  # noqa: BLE001 - a plot must never stop training
        _logger.warning(f'could not draw {PLOT}: {e}')
    return new_best


def _plain_cfg(cfg: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _restore_rng(ck: Dict[str, Any], args) -> None:
    rng = ck.get('rng')
    if not isinstance(rng, dict) or 'ranks' not in rng:
        _logger.warning('the checkpoint holds no RNG states: the resumed run is not an exact continuation')
        return
    if rng.get('world_size') != args.world_size:
        _logger.warning(f'the checkpoint was written by {rng.get("world_size")} processes, this run has '
                        f'{args.world_size}: RNG states not restored (the continuation is not exact)')
        return
    restore_rng_state(rng['ranks'][args.rank])


def _export_best(model: nn.Module, run_dir: Path, data_config, class_names, args, epoch: int, metric: float,
                 which: str) -> None:
    note = (f'trained with backbones tools/train.py: best {args.eval_metric} {metric:.3f} ({which} weights) at '
            f'epoch {epoch} on {args.data_dir or args.dataset or "the embedded shapes dataset"}')
    extra = {'pretrained_cfg': {'notes': (note,), 'tag': 'trained'},
             'training': {'epoch': epoch, 'metric': metric, 'eval_metric': args.eval_metric, 'weights': which}}
    try:
        export_for_hf(model, run_dir / BEST_DIR, data_config=data_config, label_names=class_names, extra=extra)
    except Exception as e:  # noqa: BLE001 - model_best.pth.tar holds the same weights
        _logger.warning(f'could not export the best weights to {run_dir / BEST_DIR}: {e}')


def _repair_best_export(run_dir: Path, best_epoch: Optional[int], model: nn.Module, data_config, class_names,
                        args) -> None:
    """After a kill between writing ``model_best.pth.tar`` and exporting it, export it now."""
    import copy
    import json
    best_ck = run_dir / 'model_best.pth.tar'
    if best_epoch is None or not best_ck.is_file():
        return
    try:
        done = json.loads((run_dir / BEST_DIR / 'config.json').read_text()).get('training', {}).get('epoch')
    except (OSError, ValueError, RecursionError):  # missing, or not JSON we can read: export again
        done = None
    if done == best_epoch:
        return
    ck = load_training_checkpoint(best_ck, args.model)
    sd, which = select_state_dict(ck)  # the EMA weights when the run kept them, as _save_epoch exported
    clone = copy.deepcopy(unwrap_model(model)).cpu()
    load_model_state(clone, sd, str(best_ck))
    _export_best(clone, run_dir, data_config, class_names, args, int(ck['epoch']), ck.get('metric', float('nan')),
                 which)
    _logger.info(f'exported the best weights of {best_ck} (epoch {ck["epoch"]}) to {run_dir / BEST_DIR}')


def _epoch_line(epoch, num_epochs, train_m, eval_m, lrs, ema, new_best, seconds) -> str:
    parts = [f'epoch {epoch} ({epoch + 1}/{num_epochs})', f'train loss {train_m["loss"]:.4f}']
    if eval_m:
        parts.append(f'val loss {eval_m["loss"]:.4f} top-1 {eval_m["top1"]:.2f} top-5 {eval_m["top5"]:.2f}')
        if ema:
            parts.append(f'EMA top-1 {eval_m["ema_top1"]:.2f}')
    parts.append(f'lr {sum(lrs) / len(lrs):.3g}')
    parts.append(f'{train_m["img_per_sec"]:.1f} img/s')
    parts.append(format_duration(seconds))
    line = ' | '.join(parts)
    return line + (' | new best' if new_best else '')
