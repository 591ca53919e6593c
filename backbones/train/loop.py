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
from .model import check_model_input, create_train_model
from .plot import plot_summary
from .progress import Progress, format_duration
from .rundir import BEST_DIR, PLOT, SUMMARY, RunDir, run_dir_of
from .validate import evaluate

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


def _train(args, device: torch.device, args_text: str, cleanup: contextlib.ExitStack) -> Dict[str, Any]:
    primary = args.rank == 0
    if not primary:
        logging.getLogger('backbones').setLevel(logging.WARNING)
    if args.distributed:
        _logger.info(f'distributed: {args.world_size} processes ({dist.get_backend()}), device {device}')
    else:
        _logger.info(f'training on {device}')
    resolve_lr(args, args.world_size)
    amp_autocast, loss_scaler = _amp(args, device)
    model_dtype = None
    if args.model_dtype:
        if args.model_dtype not in ('float32', 'float16', 'bfloat16'):
            raise TrainError(f'--model-dtype {args.model_dtype}: expected float32, float16 or bfloat16')
        model_dtype = getattr(torch, args.model_dtype)
        if args.amp and model_dtype != torch.float32:
            raise TrainError('--amp with a low-precision --model-dtype: choose one')
    random_seed(args.seed, args.rank)
    check_model_input(args)  # the model's input-size rule, on the meta device: a bad --img-size fails here

    # 1. data (checked before anything is built or written)
    data = build_datasets(args, log=primary)
    if data.embedded and primary:
        _logger.info(f'data: the embedded shapes dataset at {data.root}')

    # 2. model and its starting weights
    model, _ = create_train_model(args, log=primary)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    data_config = resolve_data_config(vars(args), model=model, verbose=False)
    if primary:
        n_params = sum(p.numel() for p in model.parameters())
        _logger.info(f'model {args.model}: {n_params / 1e6:.3f}M params, {args.num_classes} classes; '
                     f'data config: {data_config_summary(data_config)}')
    num_aug_splits = 0
    if args.aug_splits > 0:
        if args.aug_splits < 2:
            raise TrainError('--aug-splits must be 0 or >= 2')
        num_aug_splits = args.aug_splits
    if args.split_bn:
        if not num_aug_splits:
            raise TrainError('--split-bn needs --aug-splits >= 2')
        model = convert_splitbn_model(model, max(num_aug_splits, 2))
    model.to(device=device, dtype=model_dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''  # synced BN needs no stat distribution
        model = convert_sync_batchnorm(model)
    if args.torchscript:
        model = torch.jit.script(model)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))

    # 3. resume (checked against this model before the output directory is touched)
    in_size = int(data_config['input_size'][-1])
    run_dir = run_dir_of(args, in_size)
    if args.distributed:  # one timestamped directory for all ranks
        holder = [str(run_dir)]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    resume_path = _resume_path(args, run_dir)
    ck = load_training_checkpoint(resume_path, args.model) if resume_path else None
    if ck is not None:
        load_model_state(unwrap_model(model), ck['state_dict'], str(resume_path))
        if not args.no_resume_opt and 'optimizer' in ck:
            try:
                optimizer.load_state_dict(ck['optimizer'])
            except (ValueError, KeyError) as e:
                raise CheckpointError(f'the optimizer state in {resume_path} does not fit this run ({e}); '
                                      f'--no-resume-opt starts a fresh optimizer') from None
        if loss_scaler is not None and loss_scaler.state_dict_key in ck:
            loss_scaler.load_state_dict(ck[loss_scaler.state_dict_key])

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device='cpu' if args.model_ema_force_cpu else None)
        if ck is not None:
            load_model_state(model_ema.module, ck.get('state_dict_ema') or ck['state_dict'], str(resume_path),
                             what='EMA weights')
            if isinstance(ck.get('ema_state'), dict) and 'sr_generator' in ck['ema_state']:
                model_ema._sr_generator.set_state(ck['ema_state']['sr_generator'])
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        from torch.nn.parallel import DistributedDataParallel
        ids = [device] if device.type == 'cuda' else None
        model = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=not args.no_ddp_bb)

    # 4. loaders, losses, schedule
    collate_fn, mixup_fn = None, None
    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixup_active:
        mixup_args = dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                          prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                          label_smoothing=args.smoothing, num_classes=args.num_classes)
        if args.prefetcher:
            if num_aug_splits:
                raise TrainError('mixup/cutmix with --aug-splits needs --no-prefetcher')
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)
    train_ds = data.train
    if num_aug_splits > 1:
        train_ds = AugMixDataset(train_ds, num_splits=num_aug_splits)
    img_dtype = model_dtype or torch.float32
    loader_train = create_train_loader(args, train_ds, data_config, device, collate_fn=collate_fn,
                                       num_aug_splits=num_aug_splits, img_dtype=img_dtype)
    eval_workers = args.workers
    if args.distributed and ('tfds' in args.dataset or 'wds' in args.dataset):
        eval_workers = min(2, args.workers)
    loader_eval = create_eval_loader(data.eval, data_config, args.validation_batch_size or args.batch_size,
                                     eval_workers, device, distributed=args.distributed,
                                     use_prefetcher=args.prefetcher, pin_memory=args.pin_mem, img_dtype=img_dtype)
    if len(loader_train) == 0:
        raise TrainError(f'the training set ({len(train_ds)} images) is smaller than one batch (-b {args.batch_size})')
    train_loss_fn = _losses(args, mixup_active, num_aug_splits, device)
    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    decreasing = args.eval_metric == 'loss'
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=decreasing), updates_per_epoch=updates_per_epoch)
    start_epoch = 0
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    elif ck is not None:
        start_epoch = int(ck.get('epoch', -1)) + (1 if ck.get('version', 1) >= 2 else 0)
    if lr_scheduler is not None:
        # the schedule is a function of the arguments and the epoch / update count: recomputed on resume (as timm
        # does), so a resume with more --epochs follows the new schedule; only the plateau scheduler has state
        if ck is not None and isinstance(ck.get('scheduler'), dict) and type(lr_scheduler).__name__ == \
                'PlateauLRScheduler':
            lr_scheduler.load_state_dict(ck['scheduler'])
        if start_epoch > 0:
            if args.sched_on_updates:
                lr_scheduler.step_update(start_epoch * updates_per_epoch)
            else:
                lr_scheduler.step(start_epoch)
    if primary:
        _logger.info(f'{num_epochs} epochs of {len(loader_train)} steps (global batch '
                     f'{args.batch_size * args.world_size * args.grad_accum_steps}, lr {args.lr:.3g}, '
                     f'{args.opt}, {args.sched}); train loss {type(train_loss_fn).__name__}')
    if ck is not None and start_epoch >= num_epochs:
        _logger.info(f'{resume_path}: the run is already complete ({start_epoch} of {num_epochs} epochs)')
        return {'output_dir': str(run_dir), 'best_metric': ck.get('metric'), 'best_epoch': None,
                'last_epoch': start_epoch - 1, 'history': []}

    # 5. output directory (primary process only) and checkpointing
    args_dict = plain_args(args)
    class_names = data.class_names
    rng_holder: Dict[str, Any] = {}
    continues = ck is not None and resume_path.resolve().parent == run_dir.resolve()
    rows = _resumed_summary(ck, run_dir, start_epoch, continues) if ck is not None else []

    def state_fn(epoch: int, metric: Optional[float]) -> Dict[str, Any]:
        state = {
            'epoch': epoch, 'arch': args.model, 'version': CHECKPOINT_VERSION,
            'state_dict': get_state_dict(model, unwrap_model), 'optimizer': optimizer.state_dict(),
            'args': args_dict, 'rng': rng_holder['rng'], 'data_config': _plain_cfg(data_config),
            'class_names': list(class_names) if class_names else None,
            # the data order of an epoch is a function of (seed, epoch): nothing else to save for the loader
            'loader': {'seed': args.seed, 'next_epoch': epoch + 1, 'order': 'sha256(seed:epoch) generators'},
            'summary': [dict(r) for r in rows],  # summary.csv is rewritten from these: no epoch without a checkpoint
        }
        if model_ema is not None:
            state['state_dict_ema'] = get_state_dict(model_ema, unwrap_model)
            state['ema_state'] = {'sr_generator': model_ema._sr_generator.get_state()}  # no top-level tensors
        if loss_scaler is not None:
            state[loss_scaler.state_dict_key] = loss_scaler.state_dict()
        if lr_scheduler is not None:
            state['scheduler'] = lr_scheduler.state_dict()
        if metric is not None:
            state['metric'] = metric
        return state

    out, saver = None, None
    if primary:
        out = RunDir(run_dir, args_text, continues, rows)
        out.prepare()
        cleanup.callback(out.close)
        saver = TrainCheckpointSaver(state_fn, str(run_dir), max_history=args.checkpoint_hist, decreasing=decreasing)
        if ck is not None:
            saver.last_epoch = start_epoch - 1
        if continues and isinstance(ck.get('saver'), dict):
            saver.load_state_dict(ck['saver'])
            _repair_best_export(run_dir, saver.best_epoch, model, data_config, class_names, args)
        _logger.info(f'output: {run_dir}')
    if ck is not None:
        _restore_rng(ck, args)
        if primary:
            _logger.info(f'resumed from {resume_path} at epoch {start_epoch}')

    # 6. epochs
    ema_eval = model_ema is not None and not (args.model_ema_force_cpu and device.type != 'cpu')
    metric_key = ('ema_' if ema_eval else '') + args.eval_metric
    history: List[Dict[str, Any]] = []
    epoch = start_epoch
    try:  # Ctrl-C and a full disk end with one line: the last good epoch and how to continue
        for epoch in range(start_epoch, num_epochs):
            t0 = time.perf_counter()
            set_loader_epoch(loader_train, args.seed, epoch, args.rank)
            if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
                if args.prefetcher and hasattr(loader_train, 'mixup_enabled'):
                    loader_train.mixup_enabled = False
                elif mixup_fn is not None:
                    mixup_fn.mixup_enabled = False
            train_metrics = train_one_epoch(
                epoch, model, loader_train, optimizer, train_loss_fn, args, device, lr_scheduler=lr_scheduler,
                amp_autocast=amp_autocast, loss_scaler=loss_scaler, model_ema=model_ema, mixup_fn=mixup_fn,
                num_epochs=num_epochs, log=primary)
            lrs = [g['lr'] for g in optimizer.param_groups]
            if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                distribute_bn(model, args.world_size, args.dist_bn == 'reduce')
            eval_metrics: Dict[str, float] = {}
            if (epoch + 1) % max(1, args.val_interval) == 0 or epoch + 1 == num_epochs:
                set_loader_epoch(loader_eval, args.seed, epoch, args.rank)
                m = evaluate(model, loader_eval, device, amp_autocast=amp_autocast, channels_last=args.channels_last,
                             distributed=args.distributed, use_prefetcher=args.prefetcher)
                eval_metrics = {'loss': m['loss'], 'top1': m['top1'], 'top5': m['top5']}
                if ema_eval:
                    if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                        distribute_bn(model_ema, args.world_size, args.dist_bn == 'reduce')
                    e = evaluate(model_ema, loader_eval, device, amp_autocast=amp_autocast,
                                 channels_last=args.channels_last, distributed=args.distributed,
                                 use_prefetcher=args.prefetcher)
                    eval_metrics.update(ema_loss=e['loss'], ema_top1=e['top1'], ema_top5=e['top5'])
            metric = eval_metrics.get(metric_key)
            if lr_scheduler is not None:
                lr_scheduler.step(epoch + 1, metric)
            rng_holder['rng'] = _gather_rng(args)
            row = summary_row(epoch, {'loss': train_metrics['loss']}, eval_metrics, lr=sum(lrs) / len(lrs))
            history.append(row)
            if primary:
                with _saving():
                    out.commit()
                    rows.append(row)  # into the checkpoint first, then into summary.csv
                    saver.save_checkpoint(epoch, metric=metric)
                    out.saved = out.saved or saver.last_epoch == epoch
                    write_summary(run_dir / SUMMARY, rows)
                new_best = metric is not None and saver.best_epoch == epoch
                if new_best:
                    best_model = model_ema if ema_eval else model
                    _export_best(unwrap_model(best_model), run_dir, data_config, class_names, args, epoch, metric,
                                 'ema' if ema_eval else 'model')
                try:
                    plot_summary(run_dir / SUMMARY, run_dir / PLOT)
                except Exception as e:  # noqa: BLE001 - a plot must never stop training
                    _logger.warning(f'could not draw {PLOT}: {e}')
                _logger.info(_epoch_line(epoch, num_epochs, train_metrics, eval_metrics, lrs, ema_eval, new_best,
                                         time.perf_counter() - t0))
    except KeyboardInterrupt:
        raise TrainInterrupted(_stopped('interrupted (Ctrl-C)', epoch, saver, run_dir)) from None
    except _SaveFailed as e:
        raise TrainError(_stopped(e.why, epoch, saver, run_dir, then=e.then)) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        why, then = _save_failure(e)
        raise TrainError(_stopped(why, epoch, saver, run_dir, then=then)) from None
    result = {'output_dir': str(run_dir), 'last_epoch': num_epochs - 1, 'history': history,
              'best_metric': saver.best_metric if saver else None, 'best_epoch': saver.best_epoch if saver else None}
    if primary and saver.best_metric is not None:
        _logger.info(f'best {metric_key} {saver.best_metric:.3f} at epoch {saver.best_epoch}; weights exported to '
                     f'{run_dir / BEST_DIR} (timm.create_model("local-dir:{run_dir / BEST_DIR}", pretrained=True))')
    return result


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
    which = 'ema' if isinstance(ck.get('state_dict_ema'), dict) else 'model'
    clone = copy.deepcopy(unwrap_model(model)).cpu()
    load_model_state(clone, ck['state_dict_ema' if which == 'ema' else 'state_dict'], str(best_ck))
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
