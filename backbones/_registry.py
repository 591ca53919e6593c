"""The zoo's registry: zoo names, family metadata and the no-shadow guard.

Every zoo model is registered with timm (so ``timm.create_model`` finds it) through :func:`register_zoo_model`,
which refuses a name that timm already owns: registering over a timm entrypoint would silently replace timm's model
(and its pretrained cfgs) for the whole process. A future timm that adds, say, ``biformer_tiny`` therefore makes our
import fail loudly, naming the clash, instead of shadowing timm.
"""
from __future__ import annotations

import fnmatch
import functools
import re
import textwrap
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model

from ._timm import _model_entrypoints
from .layers.helpers import check_model_kwargs

__all__ = [
    'Family', 'VariantInfo', 'register_family', 'register_zoo_model', 'list_models', 'list_families',
    'get_family', 'get_variant_info', 'zoo_cfg', 'set_pretrained_loader', 'NameClashError',
]


class NameClashError(RuntimeError):
    """A zoo name equals a timm entrypoint (registering it would replace timm's model)."""


@dataclass(frozen=True)
class Family:
    """Metadata of one model family (one paper): what cards, configs, tables, benchmarks and tests say about it.

    ``bibtex`` is the one place the paper's title and authors are written (:attr:`paper`, :attr:`authors` read it);
    it may be indented like the code around it.
    """
    name: str
    bibtex: str
    arxiv: str
    repo: str
    license: str
    module: str  # python module holding the family, e.g. 'backbones.models.senet'
    oracle: str = ''  # what parity is verified against
    weights: str = ''  # where the released weights come from
    reconstruction: str = ''  # only for a network the paper does not give: what is official, what is ours and why
    # the container entry of the official checkpoints that the official evaluation reads, where it is not the EMA
    # weights first (timm's rule): e.g. 'state_dict' beside 'state_dict_ema' (see _checkpoint.select_state_dict)
    checkpoint_key: str = ''

    def __post_init__(self):
        object.__setattr__(self, 'bibtex', textwrap.dedent(self.bibtex).strip())
        if not self.paper or not self.authors:
            raise ValueError(f"family '{self.name}': bibtex needs a title={{...}} and an author={{...}} field")

    @property
    def paper(self) -> str:
        """The paper's title."""
        return _latex_text(_bib_field(self.bibtex, 'title'))

    @property
    def authors(self) -> Tuple[str, ...]:
        """The paper's authors, in order, as 'First Last'."""
        return tuple(' '.join(reversed(name)).strip() for name in self._author_names())

    @property
    def authors_short(self) -> str:
        """'Hu et al.' / 'Tatsunami and Taki' / 'Hu': the authors as a citation in running text names them."""
        last = [name[0] for name in self._author_names()]
        return last[0] if len(last) == 1 else ' and '.join(last) if len(last) == 2 else f'{last[0]} et al.'

    def _author_names(self) -> List[Tuple[str, str]]:
        """(last, first) of each BibTeX author ('Last, First' or 'First Last')."""
        names = []
        for name in _bib_field(self.bibtex, 'author').split(' and '):
            name = _latex_text(name)
            last, _, first = name.partition(', ') if ', ' in name else tuple(reversed(name.rpartition(' ')))
            names.append((last.strip(), first.strip()))
        return [n for n in names if n[0]]

    @property
    def arxiv_url(self) -> str:
        return f'https://arxiv.org/abs/{self.arxiv}'

    @property
    def repo_url(self) -> str:
        return f'https://github.com/{self.repo}'


def _bib_field(bibtex: str, key: str) -> str:
    """The braced value of field ``key`` of a BibTeX entry (nested braces kept, white space folded); '' if absent."""
    m = re.search(rf'(?<![\w]){key}\s*=\s*{{', bibtex)
    if m is None:
        return ''
    depth, end = 1, m.end()
    while depth and end < len(bibtex):
        depth += {'{': 1, '}': -1}.get(bibtex[end], 0)
        end += 1
    return ' '.join(bibtex[m.end():end - 1].split())


_ACCENTS = {"'": '\u0301', '`': '\u0300', '"': '\u0308', '^': '\u0302', '~': '\u0303'}


def _latex_text(text: str) -> str:
    """BibTeX text as plain text: accents (``{\\'e}``) as characters, case-protecting braces dropped."""
    text = re.sub(r'\\([\'`"^~])\{?(\w)\}?', lambda m: m.group(2) + _ACCENTS[m.group(1)], text)
    return unicodedata.normalize('NFC', text.replace('{', '').replace('}', ''))


@dataclass(frozen=True)
class VariantInfo:
    """What the paper / official release says about one variant (the numbers our tests hold us to)."""
    name: str
    family: str
    params: int  # official parameter count (1000-class head)
    gmacs: Optional[float] = None  # official / paper GMACs ("FLOPs") at the default input size
    top1: Optional[float] = None  # official ImageNet-1k top-1
    gmacs_source: str = ''
    notes: str = ''
    timm_twin: Optional[str] = None  # timm's entrypoint for the same network (what parity and benchmarks compare with)
    timm_twin_kwargs: Dict[str, Any] = field(default_factory=dict, hash=False)  # what makes it the same network


_FAMILIES: Dict[str, Family] = {}
_VARIANTS: Dict[str, VariantInfo] = {}
_MODULE_TO_FAMILY: Dict[str, str] = {}
_ours: set = set()  # names we registered (so re-importing a family module is not mistaken for a clash)
_pretrained_loader: Optional[Callable[[Callable, str, Dict[str, Any]], Any]] = None


def set_pretrained_loader(loader: Callable[[Callable, str, Dict[str, Any]], Any]) -> None:
    """Set what a zoo entrypoint called with ``pretrained=True`` runs: ``loader(fn, name, kwargs)`` builds the model.

    A hook, not an import: the loaders (:mod:`backbones.hub`, :mod:`backbones.weights`) sit above the model files
    that import this module, so this module must not import them back. ``backbones/__init__.py`` sets it.
    """
    global _pretrained_loader
    _pretrained_loader = loader


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    _MODULE_TO_FAMILY[family.module] = family.name
    return family


def register_zoo_model(
        params: int,
        gmacs: Optional[float] = None,
        top1: Optional[float] = None,
        gmacs_source: str = '',
        notes: str = '',
        timm_twin: Optional[str] = None,
        timm_twin_kwargs: Optional[Dict[str, Any]] = None,
) -> Callable[[Callable], Callable]:
    """Register a zoo entrypoint with timm after checking that timm does not own its name.

    The decorated function's module must have registered its family with :func:`register_family` and define
    ``default_cfgs`` above the entrypoints (timm's ``register_model`` reads it). The registered entrypoint checks
    timm's generic arguments (``in_chans``, ``drop_path_rate``: :func:`~backbones.layers.check_model_kwargs`) before
    anything is built, so every zoo model refuses them with one clear message. With ``pretrained=True`` it runs the
    loader :func:`set_pretrained_loader` set (the package's: one probe that Hub weights can be had, offline from the
    cache, then :func:`backbones.weights.create_pretrained` for other frameworks' formats and the no-weights answer).
    ``timm_twin`` names timm's implementation of the same network, built with ``timm_twin_kwargs`` (the parity tests
    and benchmarks read it).
    """
    def _register(fn: Callable) -> Callable:
        name = fn.__name__
        if name in _model_entrypoints and name not in _ours:
            raise NameClashError(
                f"zoo model name '{name}' is already a timm entrypoint ({_model_entrypoints[name].__module__}); "
                f"registering it would replace timm's model. Rename the zoo variant.")
        family = _MODULE_TO_FAMILY.get(fn.__module__)
        if family is None:
            raise RuntimeError(f'{fn.__module__} registers {name} before calling register_family()')
        _ours.add(name)
        _VARIANTS[name] = VariantInfo(
            name=name, family=family, params=params, gmacs=gmacs, top1=top1, gmacs_source=gmacs_source, notes=notes,
            timm_twin=timm_twin, timm_twin_kwargs=dict(timm_twin_kwargs or {}))

        @functools.wraps(fn)
        def entrypoint(pretrained: bool = False, **kwargs):
            check_model_kwargs(name, kwargs)
            if pretrained:
                if _pretrained_loader is None:
                    raise RuntimeError('no pretrained loader set: import backbones (the package) first')
                return _pretrained_loader(fn, name, kwargs)
            return fn(pretrained=pretrained, **kwargs)
        return register_model(entrypoint)
    return _register


def list_models(pattern: str = '*', family: Optional[str] = None) -> List[str]:
    """Zoo model names (never timm's own) matching an fnmatch ``pattern``, in natural order."""
    names = [n for n, v in _VARIANTS.items() if family is None or v.family == family]
    return sorted((n for n in names if fnmatch.fnmatch(n, pattern)), key=_natural_key)


def _natural_key(name: str):
    """Sort key putting rednet26 before rednet101."""
    return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', name)]


def list_families() -> List[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    """Family metadata by family name or by model name."""
    if name in _FAMILIES:
        return _FAMILIES[name]
    if name in _VARIANTS:
        return _FAMILIES[_VARIANTS[name].family]
    raise KeyError(f"unknown zoo family or model '{name}'; known families: {', '.join(_FAMILIES)}")


def family_of_module(module: str) -> Optional[Family]:
    """The family registered by the python module ``module`` (a zoo model's ``type(model).__module__``), or None."""
    name = _MODULE_TO_FAMILY.get(module)
    return _FAMILIES[name] if name is not None else None


def get_variant_info(name: str) -> VariantInfo:
    arch = name.split('.')[0]
    if arch not in _VARIANTS:
        raise KeyError(f"'{name}' is not a zoo model; see backbones.list_models()")
    return _VARIANTS[arch]


def zoo_cfg(family: Family, url: str = '', **kwargs) -> dict:
    """A complete pretrained cfg dict for one variant of ``family`` (timm ``PretrainedCfg`` field names)."""
    cfg = dict(
        url=url,
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation='bilinear',
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        license=family.license,
        paper_ids=f'arXiv:{family.arxiv}',
        paper_name=family.paper,
        origin_url=family.repo_url,
    )
    cfg.update(kwargs)
    return cfg

