"""Released weights: where each zoo variant's come from, and ``pretrained=True`` for formats timm cannot read.

Every zoo entrypoint hands ``pretrained=True`` to :func:`create_pretrained` before timm builds the model:

* weights timm loads itself (a Hub repo, a ``.pth`` URL, a user's ``pretrained_cfg_overlay`` state dict / file in a
  PyTorch or safetensors format, ``hf-hub:`` / ``local-dir:``) go to timm untouched;
* weights released in another framework's format -- a pretrained cfg whose ``url`` is a TensorFlow checkpoint archive
  (``.tar.gz``) or a PaddlePaddle ``.pdparams`` (MOAT, RedNet; ``custom_load=True``) -- are downloaded into timm's
  cache (``cache_dir`` / ``$TORCH_HOME/hub/checkpoints``: :mod:`backbones._download`, resumable, ``HF_HUB_OFFLINE``-
  aware), read without that framework (:mod:`backbones.formats`), mapped and checked key by key by the family's
  ``checkpoint_filter_fn`` and cached as ``backbones/<model>.<tag>.safetensors`` beside the download; timm then loads
  that file as any other, adapting the head and the input channels as usual. A second load reads only the
  safetensors file. A local file in such a format (``pretrained_cfg_overlay=dict(file=...)``: an archive, a TF
  checkpoint folder / prefix / ``.index``, a ``.pdparams``) is converted the same way, without caching;
* a variant whose weights cannot be downloaded raises :class:`NoPretrainedWeightsError`: one line saying why and,
  where a person can fetch them by hand, from where and the exact call that then loads them.

:func:`list_pretrained` lists every variant's weights: status (automatic / manual / none), source, format, licence.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg, resolve_pretrained_cfg

from ._checkpoint import CheckpointMismatchError, UnreadableCheckpointError, family_filter_fn, read_checkpoint_file
from ._cli import one_line
from ._download import DownloadError, download, partial_path
from ._files import remove_stale_temps, temp_name
from ._registry import list_models
from .formats import foreign_kind

__all__ = [
    'WeightsInfo', 'list_pretrained', 'weights_info', 'create_pretrained', 'converted_path',
    'PretrainedWeightsError', 'NoPretrainedWeightsError', 'CONVERTER_VERSION',
]

CONVERTER_VERSION = '1'  # bump when a conversion changes: cached conversions of another version are redone
AUTOMATIC, MANUAL, NONE = 'automatic', 'manual', 'none'
_FOREIGN_SUFFIXES = {'.tar.gz': 'TensorFlow 1 checkpoint in a .tar.gz', '.tgz': 'TensorFlow 1 checkpoint in a .tgz',
                     '.tar': 'TensorFlow 1 checkpoint in a .tar', '.pdparams': 'PaddlePaddle .pdparams'}
_NOT_ARCHITECTURE = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'features_only', 'out_indices',
                     'feature_cls', 'num_classes', 'in_chans', 'device', 'dtype')


class PretrainedWeightsError(RuntimeError):
    """The released weights could not be downloaded, read or converted (one line: what, where, what to do)."""


class NoPretrainedWeightsError(PretrainedWeightsError):
    """The variant has no weights a program can download (manual download only, or none released)."""


@dataclass(frozen=True)
class _Unavailable:
    status: str  # MANUAL or NONE
    reason: str
    where: str = ''  # MANUAL: where a person can download them
    format: str = ''


# Variants without an automatic download, and why (sources: the official repositories and issues named)
_UNAVAILABLE: Tuple[Tuple[str, _Unavailable], ...] = (
    ('biformer_*', _Unavailable(
        MANUAL, 'the official OneDrive links refuse programs ("The provided share id was malformed", '
                'rayleizhu/BiFormer issue #53)',
        where='the official OneDrive folder https://1drv.ms/u/s!AkBbczdRlZvChGsXFqAA-PVnA-R8?e=IPlOCG',
        format='PyTorch .pth ({"model": state_dict})')),
    ('sknet101', _Unavailable(
        NONE, 'the only official SKNet-101 weights are a Caffe model (implus/SKNet README, Google Drive) that needs '
              'custom Caffe layers, and no PyTorch copy exists', format='Caffe .caffemodel')),
    ('davit_[lhg]', _Unavailable(NONE, 'DaViT-L/H/G weights were never released (dingmyu/davit issues #5 and #10)')),
    ('convit_*_plus', _Unavailable(
        NONE, "the paper's ConViT+ models were never released (facebookresearch/convit publishes Ti/S/B only)")),
    ('parcnetv2_*', _Unavailable(
        NONE, 'no weights were released (XuRuihan/ParCNetV2 issue #3 asks for them, unanswered)')),
    ('tic_*', _Unavailable(NONE, 'no weights (and no network code) were released (zs670980918/MSA-Conv)')),
)


@dataclass(frozen=True)
class _Rehost:
    publisher: str
    reference: str  # where the publisher reports its accuracy
    top1: Dict[str, float]  # ImageNet-1k top-1 the publisher reports for its copy, per variant


# Weights downloaded from someone other than the authors (the official copies cannot be fetched by programs)
_REHOSTED: Tuple[Tuple[str, _Rehost], ...] = (
    ('rednet*', _Rehost(
        'PaddleClas', 'PaddlePaddle/PaddleClas docs/en/algorithm_introduction/ImageNet_models_en.md, RedNet series',
        {'rednet26': 75.95, 'rednet38': 77.47, 'rednet50': 78.33, 'rednet101': 78.94, 'rednet152': 79.17})),
)


@dataclass(frozen=True)
class WeightsInfo:
    """One pretrained tag of a zoo variant."""
    model: str  # 'name.tag'
    status: str  # 'automatic' (pretrained=True downloads them), 'manual' (a person can fetch them), 'none'
    source: str  # a URL, 'hf-hub:<repo>', or ''
    format: str
    license: str
    note: str  # how they are loaded, or why there is no download
    publisher: str = ''  # 'official', a re-host ('PaddleClas'), or the Hub organisation ('timm')
    top1: Optional[float] = None  # ImageNet-1k top-1 a re-host reports for its copy
    top1_source: str = ''


def _unavailable(arch: str) -> Optional[_Unavailable]:
    return next((u for pattern, u in _UNAVAILABLE if fnmatch.fnmatch(arch, pattern)), None)


def _foreign_format(location: str) -> Optional[str]:
    name = location.split('?')[0].lower()
    return next((fmt for suffix, fmt in _FOREIGN_SUFFIXES.items() if name.endswith(suffix)), None)


def _native_format(location: str) -> str:
    name = location.split('?')[0].lower()
    return 'safetensors' if name.endswith('.safetensors') else 'PyTorch .pth (read with weights_only=True)'


def _notes(cfg) -> List[str]:
    notes = cfg.notes or ()
    return [notes] if isinstance(notes, str) else list(notes)


def _manual_url(cfg) -> str:
    """The official link a person can try by hand (kept in the cfg notes by the families)."""
    for note in _notes(cfg):
        m = re.search(r'https?://\S+', note)
        if m:
            return m.group(0)
    return ''


def weights_info(name: str) -> WeightsInfo:
    """The weights of zoo model ``name`` (``arch`` or ``arch.tag``; the default tag when none is given)."""
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise KeyError(f"'{name}' has no pretrained cfg; zoo models: backbones.list_models()")
    arch = name.split('.')[0]
    full, license_ = f'{arch}.{cfg.tag}', cfg.license or ''
    if cfg.hf_hub_id:
        fmt = _native_format(cfg.hf_hub_filename) if cfg.hf_hub_filename else 'safetensors (timm layout)'
        return WeightsInfo(full, AUTOMATIC, f'hf-hub:{cfg.hf_hub_id}', fmt, license_, 'downloaded by timm',
                           publisher=cfg.hf_hub_id.split('/')[0])
    if cfg.url:
        rehost = next((r for pattern, r in _REHOSTED if fnmatch.fnmatch(arch, pattern)), None)
        who = dict(publisher=rehost.publisher, top1=rehost.top1.get(arch), top1_source=rehost.reference) \
            if rehost else dict(publisher='official')
        foreign = _foreign_format(cfg.url)
        if foreign:
            return WeightsInfo(full, AUTOMATIC, cfg.url, foreign, license_, 'read without its framework and converted '
                               'on first load, then cached as safetensors', **who)
        return WeightsInfo(full, AUTOMATIC, cfg.url, _native_format(cfg.url), license_, 'downloaded by timm', **who)
    u = _unavailable(arch) or _Unavailable(NONE, 'no weights were released')
    return WeightsInfo(full, u.status, _manual_url(cfg) if u.status == MANUAL else '', u.format, license_, u.reason,
                       publisher='official' if u.status == MANUAL else '')


def list_pretrained(pattern: str = '*', family: Optional[str] = None) -> List[WeightsInfo]:
    """Every pretrained tag of the zoo models matching ``pattern`` (and ``family``): status, source, format, licence.

    ``automatic``: ``timm.create_model(name, pretrained=True)`` downloads them; ``manual``: a person can fetch them
    by hand (the :class:`NoPretrainedWeightsError` raised by ``pretrained=True`` says from where and how to load them);
    ``none``: nothing was released.
    """
    names = list_models(pattern, family=family)
    return [weights_info(full) for arch in names for full in get_arch_pretrained_cfgs(arch)]


# ---------------------------------------------------------------------------------------------- pretrained=True

def _no_weights_message(arch: str) -> str:
    info = weights_info(arch)
    u = _unavailable(arch) or _Unavailable(NONE, info.note)
    if u.status == MANUAL:
        return (f"{arch} has no automatic download: {u.reason}. Download its checkpoint in a browser from {u.where}, "
                f"then load it with timm.create_model('{arch}', pretrained=True, "
                f"pretrained_cfg_overlay=dict(file='<downloaded .pth>')) or convert it once with python "
                f"tools/convert.py --model {arch} --checkpoint <downloaded .pth> --out weights/{arch}")
    return (f"{arch} has no pretrained weights: {u.reason}. Use pretrained=False (random init), or load weights of "
            f"your own with pretrained_cfg_overlay=dict(file=...)")


def _cache_root(kwargs: Dict[str, Any]) -> Path:
    return Path(kwargs.get('cache_dir') or Path(torch.hub.get_dir()) / 'checkpoints')


def converted_path(model: str, cache_dir: Optional[Path] = None) -> Path:
    """Where the converted weights of ``model`` (``arch.tag``) are cached as safetensors."""
    root = Path(cache_dir) if cache_dir else _cache_root({})
    return root / 'backbones' / f'{model}.safetensors'


def _probe(arch: str, cfg: Dict[str, Any], kwargs: Dict[str, Any]) -> torch.nn.Module:
    """The architecture the weights are for, on the meta device: the caller's architecture kwargs, the weights'
    class count and input channels, the resolved cfg without its weight location."""
    import timm
    arch_kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_ARCHITECTURE}
    located = dict(cfg, url='', file=None, state_dict=None, hf_hub_id=None, custom_load=False)
    return timm.create_model(arch, pretrained=False, device='meta', pretrained_cfg=located,
                             num_classes=cfg.get('num_classes', 1000), in_chans=(cfg.get('input_size') or (3,))[0],
                             **arch_kwargs)


def _convert(arch: str, path: Path, cfg: Dict[str, Any], kwargs: Dict[str, Any], out: Path, source: str) -> None:
    """Read ``path`` (any format :func:`read_checkpoint_file` reads), map it onto ``arch`` strictly, write ``out``
    (safetensors) atomically."""
    from safetensors.torch import save_file
    model = _probe(arch, cfg, kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = read_checkpoint_file(path, workdir=out.parent)
    sd = family_filter_fn(arch)(raw, model)
    del raw
    sd = {k: v.contiguous() for k, v in sd.items() if not k.endswith('num_batches_tracked')}
    tmp = temp_name(out)
    try:
        save_file(sd, str(tmp), metadata=dict(source=source, converter=CONVERTER_VERSION, model=arch))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _current(path: Path, source: str) -> bool:
    """A cached conversion of ``source`` by this converter version."""
    if not path.is_file():
        return False
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable: convert again
        return False
    return meta.get('converter') == CONVERTER_VERSION and meta.get('source') == source


def _fetch_converted(arch: str, cfg: Dict[str, Any], kwargs: Dict[str, Any]) -> Path:
    """The cached safetensors conversion of the cfg's foreign ``url``: made on first use, from a download that is
    kept (so a new converter version converts again offline). A download that cannot be read or does not fit is
    deleted, so the next call fetches it again."""
    url, root = cfg['url'], _cache_root(kwargs)
    out = converted_path(f'{arch}.{cfg.get("tag") or "default"}', root)
    if _current(out, url):
        return out
    remove_stale_temps(out.parent)
    archive = root / url.split('?')[0].rstrip('/').split('/')[-1]
    try:
        download(url, archive)
    except DownloadError as e:
        hint = ('; a copy downloaded by hand loads with pretrained_cfg_overlay=dict(file=...)'
                if not partial_path(archive).exists() else '')
        raise PretrainedWeightsError(f'{arch}: {e}{hint}') from e
    try:
        _convert(arch, archive, cfg, kwargs, out, url)
    except (UnreadableCheckpointError, CheckpointMismatchError) as e:
        archive.unlink(missing_ok=True)
        raise PretrainedWeightsError(f'{arch}: the file downloaded from {url} cannot be used and was removed from the '
                                     f'cache ({one_line(e)})') from e
    return out


def _with_file(kwargs: Dict[str, Any], path: Path) -> Dict[str, Any]:
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(path), custom_load=False)
    return dict(kwargs, pretrained_cfg_overlay=overlay)


def create_pretrained(fn: Callable[..., torch.nn.Module], arch: str, kwargs: Dict[str, Any]) -> torch.nn.Module:
    """``fn(pretrained=True, **kwargs)`` (a zoo entrypoint), with the weights' location made loadable by timm first:
    see the module docstring."""
    cfg = resolve_pretrained_cfg(arch, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')).to_dict()
    if cfg.get('source') in ('hf-hub', 'local-dir') or cfg.get('state_dict') is not None:
        return fn(pretrained=True, **kwargs)
    if cfg.get('file'):
        user_file = Path(cfg['file'])
        if foreign_kind(user_file) is None:
            return fn(pretrained=True, **kwargs)  # a PyTorch / safetensors file: timm's own
        tmp = temp_name(converted_path(f'{arch}.local', _cache_root(kwargs)))  # a folder: timm reads by suffix
        try:
            _convert(arch, user_file, cfg, kwargs, tmp / 'model.safetensors', str(user_file))
            model = fn(pretrained=True, **_with_file(kwargs, tmp / 'model.safetensors'))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        model.pretrained_cfg['file'] = str(user_file)  # what was loaded, not the temporary conversion
        return model
    if cfg.get('hf_hub_id') or (cfg.get('url') and not (cfg.get('custom_load') or _foreign_format(cfg['url']))):
        return fn(pretrained=True, **kwargs)
    if cfg.get('url'):
        return fn(pretrained=True, **_with_file(kwargs, _fetch_converted(arch, cfg, kwargs)))
    raise NoPretrainedWeightsError(_no_weights_message(arch))
