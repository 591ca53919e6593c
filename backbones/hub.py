"""Push zoo models to the Hugging Face Hub and pull them back, safely.

Built on timm's hub code: :func:`push` writes the folder with :func:`save_for_hf` (``config.json`` +
``model.safetensors``, no pickle) and uploads it with a ``README.md`` model card as ONE commit, like
``timm.models.push_to_hf_hub`` does, except that the card is always (re)written: timm leaves an existing README
untouched, so a second push would keep a stale card. Anything pushed loads back with plain timm after
``import backbones``::

    import backbones, timm
    model = timm.create_model('hf-hub:org/name', pretrained=True)

:func:`pull` downloads the files timm needs into the Hugging Face cache and returns the snapshot folder;
:func:`load_model` pulls and builds the model. Offline (``HF_HUB_OFFLINE=1``, or the Hub cannot be reached: one
probe request, no retries) a pulled repo loads from the cache at once and a missing one is a one-line error naming
it. Both check what timm would only discover later, with messages that say what to do: a wrong repo id, a
``config.json`` that is not valid JSON, lacks ``architecture``, has values of the wrong type, ``model_args`` the
architecture's entrypoint does not take (an unknown key, a value of the wrong type, an argument of
``timm.create_model`` itself) or a ``num_classes`` the weights' classifier does not have (each naming the file), an
architecture that is not registered (``import backbones`` first), a repo whose only weights are a pickle (never
loaded: pickles can run code), a truncated ``model.safetensors`` or one that is not safetensors at all (whatever
makes its header unreadable).

:func:`save_for_hf` is the one writer of the zoo's folders (``push``, ``tools/convert.py``, a training run's
``best/``): timm's ``save_for_hf`` whose ``config.json`` also loads in Hugging Face transformers
(``AutoModelForImageClassification.from_pretrained(folder)`` after ``import backbones``).
"""
from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    FileMetadataError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from timm.models import is_model
from timm.models import save_for_hf as timm_save_for_hf

from ._checkpoint import (
    caller_adapts,
    check_state_dict,
    classifier_names,
    family_filter_fn,
    read_checkpoint_file,
    read_safetensors_header,
)
from ._checkpoint import check_safetensors as _check_safetensors
from ._cli import one_line

__all__ = [
    'push', 'pull', 'load_model', 'load_checkpoint', 'build_model', 'check_safetensors', 'read_label_names',
    'save_for_hf', 'hub_weights_offline', 'pretrained_kwargs_offline',
    'HubError', 'UnsafeWeightsError', 'UnregisteredArchitectureError', 'CorruptWeightsError',
]

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
PICKLE_NAMES = ('pytorch_model.bin', 'pytorch_model.pth', 'model.pth', 'model.bin', 'model.pt', 'model.ckpt')


class HubError(RuntimeError):
    """A Hub repository (or a local export folder) cannot be used, and why."""


class UnsafeWeightsError(HubError):
    """The only weights are a pickle: refused, since unpickling can execute code."""


class UnregisteredArchitectureError(HubError):
    """``config.json`` names an architecture timm does not know (usually: ``import backbones`` is missing)."""


class CorruptWeightsError(HubError, ValueError):
    """A weights file is truncated or not a safetensors file."""


# -- writing a folder -------------------------------------------------------------------------------------------

def save_for_hf(
        model: nn.Module,
        save_directory: Union[str, Path],
        model_config: Optional[dict] = None,
        model_args: Optional[dict] = None,
        data_config: Optional[dict] = None,
        safe_serialization: Union[bool, str] = True,
) -> None:
    """``timm.models.save_for_hf`` (``config.json`` + ``model.safetensors``), with a ``config.json`` that Hugging Face
    transformers loads as well as timm.

    timm records ``num_classes`` twice: at the top of ``config.json`` and in ``model_args``. transformers'
    ``TimmWrapperForImageClassification`` passes the top-level one (as ``num_labels``) AND ``model_args`` to
    ``timm.create_model``, which then fails with "got multiple values for keyword argument 'num_classes'". timm's
    own ``local-dir:`` / ``hf-hub:`` loading takes ``num_classes`` from the top level, so it is dropped from
    ``model_args``; everything else is timm's.

    A deploy form (:func:`backbones.optimize_for_inference`, RapidNet's ``reparameterize``) is refused with a
    ``ValueError``: its folded state dict does not load into the model ``config.json`` describes (save the model
    before folding; fold again after loading).
    """
    how = getattr(model, 'deploy_form', None)
    if how:
        name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
        raise ValueError(
            f'{name} is a deploy form ({how}: BatchNorms folded into the convolutions), whose weights do not load '
            f'into the model config.json describes: save the model before folding it, and fold again after loading')
    timm_save_for_hf(model, save_directory, model_config=model_config, model_args=model_args,
                     data_config=data_config, safe_serialization=safe_serialization)
    path = Path(save_directory) / CONFIG_NAME
    config = json.loads(path.read_text(encoding='utf-8'))
    if 'num_classes' in config.get('model_args', {}):  # (timm checks that it equals the top-level one)
        del config['model_args']['num_classes']
        path.write_text(json.dumps(config, indent=2), encoding='utf-8')


# -- checkpoints ------------------------------------------------------------------------------------------------

def check_safetensors(path: Union[str, Path]) -> None:
    """Raise :class:`CorruptWeightsError` unless ``path`` is a complete safetensors file (reads the header only):
    "truncated" for a cut safetensors file, "not a safetensors file" for anything else (a torch pickle, text)."""
    _check_safetensors(path, error=CorruptWeightsError)


def _read_checkpoint(path: Union[str, Path]) -> Mapping:
    """Read a safetensors file or a torch checkpoint WITHOUT executing pickled code."""
    return read_checkpoint_file(path, error=CorruptWeightsError)


def _arch(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    arch = cfg.get('architecture')
    if not arch:
        raise ValueError(f'{type(model).__name__} has no pretrained_cfg architecture: build it with timm.create_model')
    return arch


def load_checkpoint(model: nn.Module, checkpoint: Union[str, Path, Mapping]) -> nn.Module:
    """Load ``checkpoint`` (a file or a state dict, in any layout the family's filter accepts) strictly."""
    sd = _read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    sd = family_filter_fn(_arch(model))(sd, model)
    # the filter leaves a head or input channels to timm's adaptation; here the model is loaded as built
    check_state_dict(sd, model, strict=True)
    model.load_state_dict(sd, strict=False)  # only BN counters may be missing (older checkpoints)
    return model


def build_model(
        model_or_name: Union[str, nn.Module],
        checkpoint: Union[str, Path, Mapping, None] = None,
        **kwargs,
) -> nn.Module:
    """A zoo model (by name, or given) with ``checkpoint`` loaded; head size and ``in_chans`` follow the checkpoint."""
    if isinstance(model_or_name, nn.Module):
        model = model_or_name
        if kwargs:
            raise TypeError(f'model kwargs {sorted(kwargs)} need a model name, not a model instance')
        return load_checkpoint(model, checkpoint) if checkpoint is not None else model
    name = model_or_name
    if not is_model(name.split('.')[0]):
        raise UnregisteredArchitectureError(
            f"'{name}' is not a registered model (zoo names: backbones.list_models())")
    if checkpoint is None:
        return timm.create_model(name, **kwargs)
    sd = _read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    probe = timm.create_model(name, **dict(kwargs, pretrained=False), device='meta')  # shapes only, no init cost
    with caller_adapts():  # our layout now; every key checked but the head's size and the input channels
        sd = family_filter_fn(_arch(probe))(sd, probe)
    # rebuild when the checkpoint's head size / input channels differ from the defaults (a fine-tuned checkpoint)
    overrides = {}
    classifier = next(iter(classifier_names(probe)), None)
    if classifier and 'num_classes' not in kwargs:
        w = sd.get(f'{classifier}.weight')
        n = 0 if w is None else w.shape[0]
        if n != probe.num_classes:
            overrides['num_classes'] = n
    first_conv = probe.pretrained_cfg.get('first_conv')
    if first_conv and 'in_chans' not in kwargs and f'{first_conv}.weight' in sd:
        c = sd[f'{first_conv}.weight'].shape[1]
        if c != probe.state_dict()[f'{first_conv}.weight'].shape[1]:
            overrides['in_chans'] = c
    kwargs.pop('pretrained', None)  # the checkpoint replaces any released weights
    return load_checkpoint(timm.create_model(name, **kwargs, **overrides), sd)


def read_label_names(label_names: Union[str, Path, Sequence[str], None]) -> Optional[List[str]]:
    """Label names from a list, a comma-separated string, or a file (a JSON list, or one name per line)."""
    if label_names is None:
        return None
    if isinstance(label_names, (str, Path)):
        p = Path(label_names)
        if p.is_file():
            text = p.read_text(encoding='utf-8')
            if text.lstrip().startswith('['):
                return [str(x) for x in json.loads(text)]
            return [line.strip() for line in text.splitlines() if line.strip()]
        if isinstance(label_names, Path) or os.sep in str(label_names):
            raise FileNotFoundError(f'label names file {label_names} does not exist')
        return [s.strip() for s in str(label_names).split(',')]
    return [str(x) for x in label_names]


# -- model card -------------------------------------------------------------------------------------------------

@functools.cache
def _measured(arch: str) -> dict:
    """The card's measured figures: from model_cards/measured.json when it is current (a checkout), else measured."""
    from .cards import load_measured, update_measured  # on use: only a push writes a card
    cached = load_measured(Path(__file__).resolve().parents[1] / 'model_cards')
    return update_measured(cached, [arch])[arch]


def _render_card(model_name: str, repo_id: str, details: Dict[str, str]) -> str:
    from .cards import render_card
    return render_card(model_name, repo_id=repo_id, details=details, measured=_measured(model_name.split('.')[0]))


# -- push -------------------------------------------------------------------------------------------------------

def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"invalid repo id '{repo_id}': expected 'org/name' ({e})") from e
    if repo_id.count('/') != 1:
        raise HubError(f"invalid repo id '{repo_id}': expected 'org/name' (an organisation or user, a slash, a name)")


def push(
        model_or_name: Union[str, nn.Module],
        repo_id: str,
        checkpoint: Union[str, Path, Mapping, None] = None,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: str = 'Add model',
        label_names: Union[str, Path, Sequence[str], None] = None,
        token: Optional[str] = None,
        create_pr: bool = False,
        model_args: Optional[dict] = None,
        data_config: Optional[dict] = None,
        model_card: Optional[str] = None,
        safe_serialization: Union[bool, str] = True,
        **model_kwargs,
) -> str:
    """Push a zoo model to ``repo_id`` as one commit: ``config.json``, ``model.safetensors`` and ``README.md``.

    Args:
        model_or_name: a zoo model, or a zoo name (``name[.tag]``; pass ``pretrained=True`` to push released weights).
        checkpoint: weights to push: a ``tools/train.py`` checkpoint (``state_dict_ema`` preferred, as timm does),
            a state dict, or a safetensors file, in any layout the family's ``checkpoint_filter_fn`` accepts. The
            head size and input channels follow the checkpoint.
        label_names: list, comma-separated string, or file; written to ``config.json`` (timm restores them).
        revision: an existing branch to commit to (default ``main``).
        model_card: the README text; default: the generated card, which replaces the repo's README on every push.
        safe_serialization: ``True`` (safetensors only, default), or ``'both'`` to add a ``pytorch_model.bin``.
        model_kwargs: passed to ``timm.create_model`` when a name is given.

    Returns the commit URL (a ``huggingface_hub.CommitInfo``).
    """
    _check_repo_id(repo_id)
    labels = read_label_names(label_names)
    model = build_model(model_or_name, checkpoint, **model_kwargs)
    if labels is not None and len(labels) != model.num_classes:
        raise ValueError(f'{len(labels)} label names for a model with {model.num_classes} classes')
    arch = _arch(model)
    model_config = {'label_names': labels} if labels is not None else None

    api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if model_card is None:
        tag = model.pretrained_cfg.get('tag')
        if isinstance(checkpoint, (str, Path)):
            weights, card_name = f'fine-tuned checkpoint `{Path(checkpoint).name}`', arch
        elif checkpoint is not None:
            weights, card_name = 'a given state dict', arch
        elif model_kwargs.get('pretrained'):
            weights, card_name = f'released weights ({tag or "default tag"})', f'{arch}.{tag}' if tag else arch
        else:
            weights, card_name = 'random initialisation (no checkpoint)', arch
        details = {'Weights in this repository': weights, 'Classes': str(model.num_classes)}
        if labels:
            details['Label names'] = ', '.join(labels[:20]) + (f', ... ({len(labels)} in all)' if len(labels) > 20
                                                               else '')
        model_card = _render_card(card_name, repo_id, details)
    with TemporaryDirectory() as tmp:
        save_for_hf(model, tmp, model_config=model_config, model_args=model_args, data_config=data_config,
                    safe_serialization=safe_serialization)
        Path(tmp, CARD_NAME).write_text(model_card, encoding='utf-8')
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message)


# -- pull -------------------------------------------------------------------------------------------------------

def _split_repo(repo_id: str, revision: Optional[str]) -> Tuple[str, Optional[str]]:
    if repo_id.startswith('hf-hub:'):
        repo_id = repo_id[len('hf-hub:'):]
    if '@' in repo_id:
        repo_id, rev = repo_id.split('@', 1)
        if revision is not None and revision != rev:
            raise HubError(f"revision given twice: '@{rev}' and revision='{revision}'")
        revision = rev
    _check_repo_id(repo_id)
    return repo_id, revision


def _config_problem(cfg) -> Optional[str]:
    """What makes a parsed config.json unusable for timm, or None. Types are checked where timm would fail later with
    an error that does not name the file."""
    if not isinstance(cfg, dict):
        return f'expected a JSON object, got a {type(cfg).__name__}'
    arch = cfg.get('architecture')
    if arch is None:
        return "no 'architecture': not a timm model export"
    if not isinstance(arch, str) or not arch:
        return f"'architecture' must be a model name (a string), got {arch!r}"
    is_count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
    for key in ('num_classes', 'num_features'):
        if key in cfg and cfg[key] is not None and not is_count(cfg[key]):
            return f"'{key}' must be a whole number >= 0, got {cfg[key]!r}"
    for key in ('model_args', 'pretrained_cfg'):
        if key in cfg and not isinstance(cfg[key], dict):
            return f"'{key}' must be a JSON object, got {type(cfg[key]).__name__} {cfg[key]!r}"
    labels = cfg.get('label_names', (cfg.get('pretrained_cfg') or {}).get('label_names'))
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            return f"'label_names' must be a list of strings, got {labels!r}"[:200]
        if is_count(cfg.get('num_classes')) and len(labels) != cfg['num_classes']:
            return f"'label_names' has {len(labels)} names for num_classes={cfg['num_classes']}"
    pcfg = cfg.get('pretrained_cfg', cfg)
    size = pcfg.get('input_size')
    if size is not None and not (isinstance(size, list) and len(size) == 3 and all(is_count(v) and v for v in size)):
        return f"'input_size' must be [channels, height, width], got {size!r}"
    for key in ('mean', 'std'):
        v = pcfg.get(key)
        if v is not None and not (isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)):
            return f"'{key}' must be a list of numbers, got {v!r}"
    return None


def _check_config(config_path: Path, where: str) -> Dict:
    """Read and check a timm ``config.json``; every problem is a :class:`HubError` naming the file (``where``)."""
    try:
        cfg = json.loads(Path(config_path).read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HubError(f'{where} is not valid JSON ({e})') from e
    except RecursionError:
        raise HubError(f'{where} is not valid JSON (nested too deep to parse)') from None
    problem = _config_problem(cfg)
    if problem:
        raise HubError(f'{where}: {problem}')
    arch = cfg['architecture']
    if not is_model(arch):
        raise UnregisteredArchitectureError(
            f"{where}: architecture '{arch}' is not registered with timm: `import backbones` first "
            f"(it registers the zoo models; any other package defining '{arch}' likewise). "
            f"Zoo models: backbones.list_models()")
    problem = _model_args_problem(arch, cfg.get('model_args') or {})
    if problem:
        raise HubError(f'{where}: {problem}')
    return cfg


# timm.create_model's own arguments: timm passes config.json's model_args beside them, so one of these there fails
# deep inside timm ("got multiple values for keyword argument"), without naming the file
_CREATE_MODEL_ARGS = frozenset(inspect.signature(timm.create_model).parameters) - {'model_name', 'kwargs'} | {
    'device', 'dtype', 'pretrained_model_args'}


def _model_args_problem(arch: str, model_args: Dict) -> Optional[str]:
    """Why ``model_args`` (config.json) do not build ``arch``, or None: no ``create_model`` argument among them, and
    the entrypoint itself takes them -- one build on the meta device (no memory, no init), whose checks are the
    entrypoint's own (an unknown key is a ``TypeError``, a value of the wrong type or range is refused)."""
    reserved = sorted(set(model_args) & _CREATE_MODEL_ARGS)
    if reserved:
        return (f"model_args holds {', '.join(map(repr, reserved))}: an argument of timm.create_model itself, not of "
                f"the model (remove it from model_args)")
    try:
        with torch.device('meta'):
            timm.create_model(arch, **model_args)
    except Exception as e:  # noqa: BLE001 - whatever the entrypoint refuses is what timm's loading would hit
        return f'model_args {json.dumps(model_args)[:200]} do not build {arch}: {one_line(e)}'
    return None


def _hub_reachable(repo_id: str, revision: Optional[str], token) -> bool:
    """Whether the Hub answers: ONE request, no retries (huggingface_hub retries a file that is not cached for ~23 s
    when the network is down). ``HF_HUB_OFFLINE=1``: no request, False."""
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, CONFIG_NAME, revision=revision), token=token,
                             timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except (HfHubHTTPError, EntryNotFoundError, FileMetadataError):
        return True  # the Hub answered; the download says what is wrong
    except Exception:  # noqa: BLE001 - connection refused, name resolution, timeout, proxy: offline
        return False
    return True


def hub_weights_offline(repo_id: str, filenames: Sequence[str], what: str, revision: Optional[str] = None,
                        token=None) -> Optional[Path]:
    """Before released weights are downloaded from Hub repo ``repo_id``: know in ONE probe whether that can work.

    Returns None when the Hub answers (the download goes ahead as usual). When the machine is offline
    (``HF_HUB_OFFLINE=1``, or the Hub cannot be reached: one request, no retries, where huggingface_hub's own
    download would retry for ~50 s) returns the first of ``filenames`` found in the Hugging Face cache, to be loaded
    from there, and raises a one-line :class:`HubError` naming ``what`` (e.g. the model), the repo and the ways out
    (download once online, later runs with ``HF_HUB_OFFLINE=1``; or a local weights file) when none is cached.

    The zoo's ``pretrained=True`` path calls it (:func:`pretrained_kwargs_offline`); any other downloader of Hub
    weights can too."""
    offline = constants.HF_HUB_OFFLINE or not _hub_reachable(repo_id, revision, token)
    if not offline:
        return None
    for name in filenames:
        cached = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
    where = f"'{repo_id}'" + (f'@{revision}' if revision else '')
    raise HubError(
        f'{what}: its weights come from the Hugging Face Hub repository {where}, which is not in the cache, and '
        f'{_offline_reason()}. Download them once online (then HF_HUB_OFFLINE=1 loads them from the cache at once), '
        f"or give a local weights file: pretrained_cfg_overlay=dict(file='<weights file>')")


def pretrained_kwargs_offline(model_name: str, kwargs: Dict) -> Dict:
    """``kwargs`` of a zoo entrypoint called with ``pretrained=True``, fitted to an offline machine: when timm would
    download the weights from the Hub (the resolved ``pretrained_cfg`` has an ``hf_hub_id`` and no ``file`` /
    ``state_dict``), :func:`hub_weights_offline` decides in one probe -- a cached file is given to timm as
    ``pretrained_cfg_overlay['file']`` (no network), a missing one is a one-line :class:`HubError`. Any other source
    (a URL, a file) is left to timm."""
    from timm.models import resolve_pretrained_cfg
    cfg = resolve_pretrained_cfg(model_name, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    if cfg.state_dict or cfg.file or not cfg.hf_hub_id or cfg.source == 'local-dir':
        return kwargs
    repo_id, _, revision = cfg.hf_hub_id.partition('@')
    if cfg.hf_hub_filename:
        names = [cfg.hf_hub_filename]
    else:  # timm's order: the safetensors alternative first, then the pickle (read with weights_only)
        names = ['model.safetensors', 'open_clip_model.safetensors', 'pytorch_model.bin']
    arch = cfg.architecture or model_name
    cached = hub_weights_offline(repo_id, names, f'{arch} (pretrained=True)', revision or None)
    if cached is None:
        return kwargs
    # timm loads 'file' before any Hub id, but an 'hf-hub:' model's source='hf-hub' before 'file': unset it
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(cached), source='')
    return dict(kwargs, pretrained_cfg_overlay=overlay)


def _offline_reason() -> str:
    if constants.HF_HUB_OFFLINE:
        return 'the machine is offline (HF_HUB_OFFLINE=1)'
    return f'the machine is offline: the Hub ({constants.ENDPOINT}) cannot be reached'


def _download(repo_id: str, filename: str, revision: Optional[str], cache_dir, token, online: bool = True) -> Path:
    where = f"'{repo_id}'" + (f'@{revision}' if revision else '')
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                                    local_files_only=not online))
    except RepositoryNotFoundError as e:
        raise HubError(
            f"repository {where} not found on {constants.ENDPOINT}: check the id ('org/name') and, for a private "
            f"repo, the token") from e
    except RevisionNotFoundError as e:
        raise HubError(f"repository '{repo_id}' has no revision '{revision}'") from e
    except LocalEntryNotFoundError as e:
        what = f'repository {where}' if filename == CONFIG_NAME else f'{filename} of {where}'
        raise HubError(f'{what} is not in the Hugging Face cache and {_offline_reason()}; pull it once online') from e


def pull(
        repo_id: str,
        revision: Optional[str] = None,
        cache_dir: Union[str, Path, None] = None,
        token: Optional[str] = None,
) -> Path:
    """Download ``config.json``, ``model.safetensors`` (and the card) of a repo; return the local snapshot folder.

    Files land in the Hugging Face cache (``cache_dir`` or ``HF_HUB_CACHE``). Offline (``HF_HUB_OFFLINE=1``, or the
    Hub cannot be reached: one request, no retries) a pulled repo is served from there at once, and a repo that was
    never pulled is a one-line :class:`HubError` naming it. The folder loads with
    ``timm.create_model('local-dir:' + str(folder), pretrained=True)`` (see :func:`load_model`).
    Raises :class:`HubError` subclasses for a wrong repo id / revision, a bad ``config.json``, an unregistered
    architecture, pickle-only weights and a truncated ``model.safetensors``.
    """
    repo_id, revision = _split_repo(repo_id, revision)
    where = f"'{repo_id}'" + (f'@{revision}' if revision else '')
    online = _hub_reachable(repo_id, revision, token)
    try:
        config = _download(repo_id, CONFIG_NAME, revision, cache_dir, token, online)
    except EntryNotFoundError as e:
        raise HubError(f'{where} has no config.json: not a timm model repository') from e
    cfg = _check_config(config, f'config.json of {where} ({config})')
    try:
        weights = _download(repo_id, WEIGHTS_NAME, revision, cache_dir, token, online)
    except EntryNotFoundError as e:
        api = HfApi(token=token)
        pickles = [n for n in PICKLE_NAMES if api.file_exists(repo_id, n, revision=revision, token=token)]
        if pickles:
            raise UnsafeWeightsError(
                f"{where} has no model.safetensors, only pickle weights ({', '.join(pickles)}): refused, since "
                f"unpickling can execute arbitrary code. Convert them to safetensors where you trust them "
                f"(tools/convert.py) and push again") from e
        raise HubError(f'{where} has no weights file (model.safetensors)') from e
    check_safetensors(weights)
    _check_head(cfg, weights, f'config.json of {where}')
    try:
        _download(repo_id, CARD_NAME, revision, cache_dir, token, online)
    except (EntryNotFoundError, HubError):
        pass  # the card is optional
    return weights.parent


def _check_local_dir(folder: Path) -> None:
    if not folder.is_dir():
        raise HubError(f'{folder} {"is not a folder" if folder.exists() else "does not exist"}: expected a '
                       f'save_for_hf export (config.json + model.safetensors)')
    if not (folder / CONFIG_NAME).is_file():
        raise HubError(f'{folder} has no config.json: not a save_for_hf export')
    cfg = _check_config(folder / CONFIG_NAME, str(folder / CONFIG_NAME))
    if not (folder / WEIGHTS_NAME).is_file():
        pickles = [n for n in PICKLE_NAMES if (folder / n).is_file()]
        if pickles:
            raise UnsafeWeightsError(
                f"{folder} has no model.safetensors, only pickle weights ({', '.join(pickles)}): refused, since "
                f"unpickling can execute arbitrary code")
        raise HubError(f'{folder} has no model.safetensors')
    check_safetensors(folder / WEIGHTS_NAME)
    _check_head(cfg, folder / WEIGHTS_NAME, str(folder / CONFIG_NAME))


def _check_head(cfg: Dict, weights: Path, where: str) -> None:
    """The ``num_classes`` timm builds from config.json (``model_args``' first) must be the classifier size in the
    weights (read from the safetensors header only), or timm would build a head the weights do not fit."""
    pcfg = cfg.get('pretrained_cfg', cfg)
    num_classes = (cfg.get('model_args') or {}).get('num_classes', cfg.get('num_classes', pcfg.get('num_classes')))
    classifier = pcfg.get('classifier')
    if not isinstance(num_classes, int) or not isinstance(classifier, str):
        return
    header = read_safetensors_header(weights, error=CorruptWeightsError)
    entry = header.get(f'{classifier}.weight')
    n = int(entry['shape'][0]) if isinstance(entry, dict) and entry.get('shape') else 0
    if n != num_classes:
        raise HubError(f"{where} says num_classes={num_classes}, but the classifier {classifier} in {weights.name} "
                       + (f'has {n} classes' if n else 'is missing (a headless export)')
                       + ': the export is inconsistent; re-export it (save_for_hf) or fix num_classes')


def load_model(
        repo_or_dir: Union[str, Path],
        revision: Optional[str] = None,
        cache_dir: Union[str, Path, None] = None,
        token: Optional[str] = None,
        **kwargs,
) -> nn.Module:
    """Pull (or take the local export folder) and build the model with its weights, after the checks of :func:`pull`.

    ``kwargs`` go to ``timm.create_model`` (e.g. ``num_classes=10`` to re-head, ``features_only=True``).
    """
    if isinstance(repo_or_dir, Path) or str(repo_or_dir).startswith('local-dir:') or Path(str(repo_or_dir)).is_dir():
        folder = Path(str(repo_or_dir).removeprefix('local-dir:'))
        _check_local_dir(folder)
    else:
        folder = pull(str(repo_or_dir), revision=revision, cache_dir=cache_dir, token=token)
    return timm.create_model(f'local-dir:{folder}', pretrained=True, **kwargs)
