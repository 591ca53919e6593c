"""Datasets and loaders for training and validation, on timm's ``create_dataset`` / ``create_loader``.

What is added to timm here is checking and determinism:

* **Checks before anything runs** (:func:`build_datasets`): a missing data directory, images that are not in class
  folders (timm's folder reader would make them one class: a 1-class model that scores 100 %), a class folder without
  images (timm's folder reader would silently drop that class and renumber the others), train/validation splits with
  different classes and a ``--num-classes`` smaller than the dataset's class count are :class:`DataError`\\ s that name
  the path or the classes.
* **Unreadable images** are an error naming the file (:class:`StrictImageDataset`), where timm would log a warning
  and silently train on the next image instead.
* **Data order per epoch is a function of (seed, epoch)** (:func:`set_loader_epoch`): the shuffling generator of the
  sampler and the base seed of the loader's workers are re-derived at the start of every epoch, so an epoch restarted
  after a crash sees the same batches in the same order, whatever happened before.
* **The embedded dataset**: with no ``--data-dir`` (and no ``--dataset``) the procedurally drawn shapes dataset of
  :mod:`backbones.data.shapes` is written once into the cache and used as an ordinary ImageFolder.
"""
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.utils.data
from PIL import Image
from timm.data import ImageDataset, create_dataset, create_loader
from timm.data.loader import PrefetchLoader
from timm.data.readers.img_extensions import get_img_extensions

from .errors import DataError

__all__ = [
    'EMBEDDED_DATASET', 'DataSources', 'StrictImageDataset', 'resolve_data_root', 'build_datasets',
    'check_folder_split', 'set_loader_epoch', 'num_valid_samples', 'epoch_generator',
]

_logger = logging.getLogger(__name__)

# The embedded default: backbones.data.make_shapes_dataset(**EMBEDDED_DATASET), 10 classes, 2000 train / 500 val images
EMBEDDED_DATASET: Dict[str, int] = dict(image_size=64, train_per_class=200, val_per_class=50, seed=0)


def resolve_data_root(data_dir: Optional[str], dataset: str = '') -> Tuple[Optional[str], bool]:
    """``(root, embedded)``: the data directory to read, and whether it is the embedded shapes dataset.

    With neither ``data_dir`` nor a ``dataset`` spec, the shapes dataset is generated (once) into the cache
    (``$BACKBONES_DATA_CACHE`` or ``~/.cache/backbones``) and its root returned."""
    if data_dir:
        return data_dir, False
    if dataset:
        return None, False  # e.g. torch/cifar10 with --dataset-download, hfds/...: timm resolves the source
    from backbones.data import make_shapes_dataset
    return str(make_shapes_dataset(**EMBEDDED_DATASET)), True


def _is_folder_spec(dataset: str) -> bool:
    """timm's ``create_dataset`` treats names without a known ``<type>/`` prefix as ImageFolder / ImageTar."""
    prefix = dataset.partition('/')[0].lower() if '/' in dataset else ''
    return prefix not in ('torch', 'hfds', 'hfids', 'tfds', 'wds')


def epoch_generator(seed: int, epoch: int, *tags: Any) -> torch.Generator:
    """A CPU generator seeded by a hash of ``(seed, epoch, *tags)``: independent streams for each purpose."""
    text = ':'.join(str(x) for x in (seed, epoch, *tags))
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'little') & ((1 << 63) - 1)
    g = torch.Generator()
    g.manual_seed(value)
    return g


# ------------------------------------------------------------------------------------------------------ datasets
class StrictImageDataset(torch.utils.data.Dataset):
    """Wraps timm's :class:`~timm.data.ImageDataset` so that an unreadable image is an error naming the file.

    timm skips a sample it cannot decode (a warning, then the next index): training would go on with silently
    different data. Here the first failure raises :class:`DataError`. ``transform`` reads and writes through to the
    wrapped dataset, so ``create_loader`` and ``AugMixDataset`` work on it unchanged.
    """

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset
        if hasattr(dataset, '_max_retries'):
            dataset._max_retries = 1  # timm's retry-next-index loop: fail on the first unreadable sample
        # timm logs a 'Skipped sample' warning before it gives up; the DataError below says it in one line
        logging.getLogger('timm.data.dataset').setLevel(logging.ERROR)

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value):
        self.dataset.transform = value

    @property
    def reader(self):
        return self.dataset.reader

    def __len__(self) -> int:
        return len(self.dataset)

    def filename(self, index: int, basename: bool = False, absolute: bool = False):
        return self.dataset.filename(index, basename, absolute)

    def filenames(self, basename: bool = False, absolute: bool = False):
        return self.dataset.filenames(basename, absolute)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except (OSError, RuntimeError, ValueError, SyntaxError) as e:  # PIL raises all of these for broken files
            try:
                path = self.dataset.filename(index, absolute=True)
            except Exception:  # noqa: BLE001 - a reader without file names
                raise DataError(f'cannot read sample {index} of the dataset: {e}') from None
            raise DataError(f'cannot read image {path}: {_why_unreadable(path) or e}') from None


def _why_unreadable(path: str) -> Optional[str]:
    try:
        with Image.open(path) as im:
            im.convert('RGB')
    except Exception as e:  # noqa: BLE001 - we only want its message
        return f'{type(e).__name__}: {e}'.replace(f" '{path}'", '').replace(f' {path}', '')
    return None


def check_folder_split(root: str, class_to_idx: Dict[str, int], split: str, check_empty: bool = True) -> None:
    """Raise :class:`DataError` when images lie directly in ``root`` (not in class folders), or (``check_empty``) a
    class folder directly under ``root`` holds no image.

    timm's folder reader labels an image by the folder it is in: images directly in ``root`` become one class named
    ``''``, so a split without class folders would train a 1-class model (100 % top-1, having learned nothing). And
    it builds the class list from the folders that contain images, so an empty class folder would silently remove
    that class and shift the index of every class after it (and differently in train and validation)."""
    exts = get_img_extensions(as_set=True)
    if '' in class_to_idx:
        try:
            loose = sorted(f for f in os.listdir(root) if os.path.splitext(f)[1].lower() in exts)
        except OSError:
            loose = []
        example = f', e.g. {loose[0]}' if loose else ''
        raise DataError(
            f'{len(loose) or "some"} image(s) lie directly in {root} ({split} split{example}), not in class folders: '
            f'expected {root}/<class name>/<image files>, one folder per class')
    if not check_empty:
        return
    try:
        subdirs = sorted((e for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.')),
                         key=lambda e: e.name)
    except OSError:
        return
    for entry in subdirs:
        if entry.name in class_to_idx:
            continue
        has_image = any(os.path.splitext(f)[1].lower() in exts for _, _, files in os.walk(entry.path) for f in files)
        if not has_image:
            raise DataError(
                f'empty class folder: {entry.path} ({split} split) holds no images '
                f'({", ".join(sorted(exts))}); add images or remove the folder')


@dataclass
class DataSources:
    """The datasets of a run and what was learned about them."""
    train: Optional[torch.utils.data.Dataset]
    eval: Optional[torch.utils.data.Dataset]
    root: Optional[str]
    embedded: bool
    class_names: Optional[List[str]] = None
    roots: Dict[str, str] = field(default_factory=dict)


def _folder_classes(ds) -> Optional[Dict[str, int]]:
    reader = getattr(ds, 'reader', None)
    c2i = getattr(reader, 'class_to_idx', None)
    return dict(c2i) if isinstance(c2i, dict) else None


def _create(args, split: str, is_training: bool, root: Optional[str], num_samples: Optional[int], img_mode: str):
    try:
        ds = create_dataset(
            args.dataset, root=root, split=split, is_training=is_training, class_map=args.class_map,
            download=args.dataset_download, batch_size=args.batch_size, seed=args.seed,
            repeats=args.epoch_repeats if is_training else 0, input_img_mode=img_mode, input_key=args.input_key,
            target_key=args.target_key, num_samples=num_samples, trust_remote_code=args.dataset_trust_remote_code,
        )
    except DataError:
        raise
    except (RuntimeError, OSError, ValueError, AssertionError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = root or args.dataset
        raise DataError(f'cannot load the {split!r} split of {where}: {msg}') from None
    if isinstance(ds, ImageDataset):
        ds = StrictImageDataset(ds)
    return ds


def build_datasets(args, need_train: bool = True, need_eval: bool = True, log: bool = True) -> DataSources:
    """Create (and check) the train / validation datasets of ``args`` (timm flag names).

    Folder datasets are checked: the data directory exists, no class folder is empty, both splits have the same
    classes, and ``args.num_classes`` (when given) covers them. When ``args.num_classes`` is None it is set to the
    number of classes of a folder dataset, and logged."""
    root, embedded = resolve_data_root(args.data_dir, args.dataset)
    folder = _is_folder_spec(args.dataset)
    if root is not None and not os.path.exists(root) and (folder or not args.dataset_download):
        raise DataError(f'data dir not found: {root}')
    if root is not None and folder and os.path.isdir(root) and not _has_any_file(root):
        raise DataError(f'no images under {root} (expected <root>/{args.train_split}/<class>/<image files>)')
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    img_mode = args.input_img_mode or ('RGB' if in_chans == 3 else 'L')
    train = _create(args, args.train_split, True, root, args.train_num_samples, img_mode) if need_train else None
    evald = _create(args, args.val_split, False, root, args.val_num_samples, img_mode) if need_eval else None

    roots, classes = {}, {}
    for name, ds, split in (('train', train, args.train_split), ('eval', evald, args.val_split)):
        c2i = _folder_classes(ds) if ds is not None else None
        if c2i is None:
            continue
        split_root = getattr(ds.reader, 'root', None)
        if split_root and os.path.isdir(split_root):
            roots[name] = split_root
            check_folder_split(split_root, c2i, split, check_empty=not args.class_map)
        classes[name] = c2i
    if 'train' in classes and 'eval' in classes and classes['train'] != classes['eval']:
        a, b = set(classes['train']), set(classes['eval'])
        if a != b:
            raise DataError(
                f'the train and validation splits have different classes: only in train {sorted(a - b)[:5]}, '
                f'only in validation {sorted(b - a)[:5]}')
        raise DataError('the train and validation splits number their classes differently (check --class-map)')
    if roots.get('train') and roots.get('train') == roots.get('eval') and log:
        _logger.warning(f'train and validation splits are the same folder ({roots["train"]}): no {args.train_split!r} '
                        f'/ {args.val_split!r} sub-folders found')
    c2i = classes.get('train') or classes.get('eval')
    class_names = None
    if c2i:
        class_names = [name for name, _ in sorted(c2i.items(), key=lambda kv: kv[1])]
        n = max(c2i.values()) + 1
        if args.num_classes is None:
            args.num_classes = n
            if log:
                _logger.info(f'num_classes: {n}, the number of classes of the dataset (--num-classes not given)')
        elif args.num_classes < n:
            raise DataError(f'the dataset has {n} classes but --num-classes is {args.num_classes}')
    return DataSources(train=train, eval=evald, root=root, embedded=embedded, class_names=class_names, roots=roots)


def _has_any_file(root: str) -> bool:
    for _, _, files in os.walk(root):
        if files:
            return True
    return False


# ------------------------------------------------------------------------------------------------------- loaders
def _inner_loader(loader):
    return loader.loader if isinstance(loader, PrefetchLoader) else loader


def set_loader_epoch(loader, seed: int, epoch: int, rank: int = 0) -> None:
    """Make the data of ``epoch`` a function of ``(seed, epoch)`` (and the rank, for worker augmentation seeds).

    Shuffling: a distributed sampler gets ``seed`` and ``set_epoch(epoch)``; a single-process ``RandomSampler`` gets
    a generator seeded from ``(seed, epoch)``. Workers: the loader's generator, from which the per-epoch base seed of
    the worker processes is drawn, is seeded from ``(seed, epoch, rank)``. With ``--workers 0`` augmentation draws from
    the process's global RNGs, which the trainer saves in every checkpoint and restores on resume."""
    dl = _inner_loader(loader)
    sampler = getattr(dl, 'sampler', None)
    if hasattr(sampler, 'set_epoch'):
        if hasattr(sampler, 'seed'):
            sampler.seed = seed
        sampler.set_epoch(epoch)
    elif isinstance(sampler, torch.utils.data.RandomSampler):
        sampler.generator = epoch_generator(seed, epoch, 'order')
    if isinstance(dl, torch.utils.data.DataLoader):
        dl.generator = epoch_generator(seed, epoch, rank, 'workers')


def num_valid_samples(loader) -> Optional[int]:
    """Samples of this rank that are not padding (timm's distributed eval sampler repeats samples to even out
    the ranks); None when nothing is padded."""
    sampler = getattr(_inner_loader(loader), 'sampler', None)
    return getattr(sampler, 'num_valid_samples', None)


def create_train_loader(args, dataset, data_config: Dict[str, Any], device: torch.device, collate_fn=None,
                        num_aug_splits: int = 0, img_dtype: torch.dtype = torch.float32):
    """timm's ``create_loader`` with the training flags of ``args`` (no persistent workers: each epoch's workers are
    seeded from that epoch, see :func:`set_loader_epoch`)."""
    interpolation = args.train_interpolation
    if args.no_aug or not interpolation:
        interpolation = data_config['interpolation']
    return create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
        color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
        gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa, num_aug_repeats=args.aug_repeats,
        num_aug_splits=num_aug_splits, interpolation=interpolation, mean=data_config['mean'],
        std=data_config['std'], num_workers=args.workers, distributed=args.distributed, collate_fn=collate_fn,
        pin_memory=args.pin_mem, img_dtype=img_dtype, device=device, use_prefetcher=args.prefetcher,
        use_multi_epochs_loader=args.use_multi_epochs_loader, worker_seeding=args.worker_seeding,
        persistent_workers=False,
    )


def create_eval_loader(dataset, data_config: Dict[str, Any], batch_size: int, workers: int, device: torch.device,
                       distributed: bool = False, use_prefetcher: bool = True, pin_memory: bool = False,
                       img_dtype: torch.dtype = torch.float32):
    """timm's ``create_loader`` with the eval transforms of ``data_config`` (resize, center crop, normalize)."""
    return create_loader(
        dataset, input_size=data_config['input_size'], batch_size=batch_size, is_training=False,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        num_workers=workers, distributed=distributed, crop_pct=data_config['crop_pct'],
        crop_mode=data_config.get('crop_mode'), pin_memory=pin_memory, img_dtype=img_dtype, device=device,
        use_prefetcher=use_prefetcher, persistent_workers=False,
    )


def data_config_summary(cfg: Dict[str, Any]) -> str:
    keys = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
    return ', '.join(f'{k}={_fmt(cfg[k])}' for k in keys if k in cfg)


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return '(' + ', '.join(_fmt(x) for x in v) + ')'
    if isinstance(v, float):
        return f'{v:.4g}'
    return str(v)


def class_names_of(dataset) -> Optional[Sequence[str]]:
    c2i = _folder_classes(dataset)
    if not c2i:
        return None
    return [name for name, _ in sorted(c2i.items(), key=lambda kv: kv[1])]
