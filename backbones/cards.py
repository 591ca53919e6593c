"""Model cards (``model_cards/<model>.md`` and the Hub ``README.md``) generated from the registry and measured figures.

A card follows the layout of timm's Hub cards (as on huggingface.co/timm/<model>): YAML front matter
(``library_name: timm``, ``tags`` without ``transformers``, ``license``, ``datasets``, ``pipeline_tag``), Model
Details, Usage (classification, ``features_only`` feature maps, image embeddings: every snippet begins with
``import backbones``), training recipe, citation.

Measured figures (params, GMACs, activations, feature-map and embedding shapes) come from :func:`measure`, which builds
the model on the meta device: params, GMACs and activations (timm's convention) from :func:`backbones.flops.count`;
shapes from real meta forwards. Measuring takes a few seconds per model, so the figures are cached in
``model_cards/measured.json`` with a fingerprint of each model (structure, parameter shapes, pretrained cfg,
:data:`MEASURE_VERSION`): :func:`check_cards` recounts nothing whose fingerprint still matches (and flags those that do
not). After a change to the counter, bump :data:`MEASURE_VERSION` or run ``tools/make_cards.py --recount``.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ._registry import get_family, get_variant_info, list_models
from .docs import weights_link
from .weights import AUTOMATIC, MANUAL, weights_info

__all__ = [
    'MEASURE_VERSION', 'render_card', 'measure', 'fingerprint', 'card_filename',
    'load_measured', 'update_measured', 'render_all', 'write_cards', 'check_cards', 'front_matter',
]

MEASURE_VERSION = 1  # bump when what measure() computes changes (cached figures are then recounted)
MEASURED_FILE = 'measured.json'

_DATASETS = {'in1k': ('imagenet-1k', 'ImageNet-1k'), 'in22k': ('imagenet-22k', 'ImageNet-22k'),
             'in21k': ('imagenet-21k', 'ImageNet-21k')}
_IMAGE_URL = 'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'


# --------------------------------------------------------------------------------------------------------------------
# measuring (meta device)


def _cfg(name: str):
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise KeyError(f"'{name}' has no pretrained cfg")
    return cfg


def _full_name(name: str) -> str:
    """``arch.tag`` (the default tag when ``name`` has none)."""
    return name if '.' in name else f'{name}.{_cfg(name).tag}'


def _meta_model(name: str, **kwargs):
    import timm
    return timm.create_model(name, pretrained=False, device='meta', **kwargs).eval()


def fingerprint(name: str) -> str:
    """Hash of what the measured figures depend on: module structure, parameter/buffer shapes, pretrained cfg and
    the feature levels (``features_only``'s default ``out_indices`` included, which no module shows)."""
    model = _meta_model(name)
    parts = [f'v{MEASURE_VERSION}', repr(model), json.dumps(model.pretrained_cfg, sort_keys=True, default=str)]
    parts += [json.dumps(model.feature_info, sort_keys=True, default=str),
              repr(_meta_model(name, features_only=True).feature_info.out_indices)]
    parts += [f'{k}:{tuple(v.shape)}' for k, v in model.state_dict().items()]
    return hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:16]


def measure(name: str) -> Dict[str, Any]:
    """Figures a card prints, measured at the default input size (batch 1) on the meta device."""
    from .flops import count
    cfg = _cfg(name)
    size = tuple(cfg.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = count(name, activations=True)
        model = _meta_model(name)
        x = torch.empty(1, *size, device='meta')
        with torch.no_grad():
            feats = _meta_model(name, features_only=True)(x)
            pre_logits = _meta_model(name, num_classes=0)(x)
            unpooled = model.forward_features(x)
    return dict(
        fingerprint=fingerprint(name),
        params=res.params,
        macs=res.macs,
        activations=res.activations,
        input_size=list(size),
        feature_shapes=[list(f.shape) for f in feats],
        embedding_shape=list(pre_logits.shape),
        # a multi-branch model (CrossViT) returns one token tensor per branch
        features_shape=[list(u.shape) for u in unpooled] if isinstance(unpooled, list) else list(unpooled.shape),
    )


def load_measured(directory) -> Dict[str, Dict[str, Any]]:
    path = pathlib.Path(directory) / MEASURED_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _dump_measured(measured: Dict[str, Dict[str, Any]]) -> str:
    """One line per figure (diff-friendly, deterministic)."""
    models = []
    for name in sorted(measured, key=_model_order):
        fields = ',\n'.join(f'    {json.dumps(k)}: {json.dumps(v)}' for k, v in sorted(measured[name].items()))
        models.append(f'  {json.dumps(name)}: {{\n{fields}\n  }}')
    return '{\n' + ',\n'.join(models) + '\n}\n'


def _model_order(name: str):
    order = list_models()
    return order.index(name) if name in order else len(order)


def update_measured(measured: Dict[str, Dict[str, Any]], names: Sequence[str], recount: bool = False,
                    log=None) -> Dict[str, Dict[str, Any]]:
    """``measured`` for ``names``: cached entries whose fingerprint matches are kept, the others measured."""
    out = {}
    for name in names:
        old = measured.get(name)
        if not recount and old is not None and old.get('fingerprint') == fingerprint(name):
            out[name] = old
        else:
            if log:
                log(f'measuring {name}')
            out[name] = measure(name)
    return out


# --------------------------------------------------------------------------------------------------------------------
# rendering


def card_filename(name: str) -> str:
    return f'{name.split(".")[0]}.md'


def _dataset(tag: str):
    for key, value in _DATASETS.items():
        if tag == key or tag.endswith('_' + key) or tag.startswith(key + '_'):
            return value
    return None


def _notes(name: str) -> List[str]:
    notes = _cfg(name).notes or ()
    return [notes] if isinstance(notes, str) else list(notes)


def _manual_weights(name: str) -> bool:
    """No automatic download, but official weights a person can fetch by hand."""
    return weights_info(name).status == MANUAL


def _weights_line(name: str) -> str:
    """Where the weights come from, in what format and licence (and, for a re-host, the accuracy it reports)."""
    info = weights_info(name)
    link = re.sub(r'(https?://\S+)', r'[link](\1)', info.source) if info.status == MANUAL else weights_link(info)
    if info.status == AUTOMATIC:
        family = get_family(name.split('.')[0])
        line = f'{link} ({info.format}, licence {info.license})' + (f' — {family.weights}' if family.weights else '')
        if info.top1 is not None:
            line += f'; {info.publisher} reports ImageNet-1k top-1 {info.top1:.2f} for it ({info.top1_source})'
        return line
    if info.status == MANUAL:
        return f'manual download only ({info.format}, licence {info.license}): {info.note}; official {link}'
    return f'none: {info.note}'


def _size(s: Sequence[int]) -> str:
    return f'{s[-2]} x {s[-1]}'


def _shape(s: Sequence[int]) -> str:
    return f'torch.Size([{", ".join(str(int(d)) for d in s)}])'


def _unpooled(shape: Sequence) -> str:
    """``forward_features``'s output: one tensor, or a list of them (one per branch of a multi-branch model)."""
    if shape and isinstance(shape[0], (list, tuple)):
        return f'a list of {" and ".join(_shape(s) for s in shape)} tensors, one per branch'
    return f'a {_shape(shape)} tensor'


def _yaml_list(items: Sequence[str]) -> List[str]:
    return [f'- {i}' for i in items]


def front_matter(text: str) -> str:
    """The YAML text between the leading ``---`` lines of a card."""
    if not text.startswith('---\n'):
        raise ValueError('card has no front matter')
    return text[4:text.index('\n---\n', 4) + 1]


def render_card(model_name: str, **extra) -> str:
    """Markdown model card of one zoo variant (``name`` or ``name.tag``).

    Keyword args:
        measured: the :func:`measure` dict of the model (default: measured now, a few seconds).
        repo_id: a Hub repository holding the weights: the snippets then load ``hf-hub:<repo_id>``.
        description: a paragraph placed under the title.
        details: extra ``{label: value}`` bullets for Model Details.
    """
    measured = extra.pop('measured', None)
    repo_id = extra.pop('repo_id', None)
    description = extra.pop('description', None)
    more_details = extra.pop('details', None) or {}
    if extra:
        raise TypeError(f'render_card() got unexpected keyword arguments: {", ".join(sorted(extra))}')
    arch = model_name.split('.')[0]
    family = get_family(arch)
    full = _full_name(model_name)
    cfg = _cfg(full)
    if measured is None:
        measured = measure(arch)
    dataset = _dataset(cfg.tag or '')

    lines = ['---']
    lines += ['tags:'] + _yaml_list(['image-classification', 'timm', 'backbones', family.name])
    lines += ['library_name: timm', f'license: {cfg.license or family.license}']
    if dataset:
        lines += ['datasets:'] + _yaml_list([dataset[0]])
    lines += ['pipeline_tag: image-classification', '---', '']
    lines += [f'# Model card for {full}', '']
    lines += [description.strip(), ''] if description else []
    reconstructed = family.reconstruction  # the card says so instead of calling the model faithful
    if reconstructed:
        lines += [f'`{arch}` from Backbone Zoo (python package `backbones`): a timm-compatible backbone after '
                  f'"{family.paper}". {reconstructed}', '']
    else:
        lines += [f'`{arch}` from Backbone Zoo (python package `backbones`): the model of "{family.paper}" '
                  f'as a timm-compatible backbone, faithful to the paper and the official code.', '']
    lines += _details(full, cfg, measured, dataset, more_details)
    lines += _usage(full, cfg, measured, repo_id)
    recipe = f'configs/{family.name}/{arch}.yaml'
    lines += ['## Training Recipe', '',
              f'The training configuration for `tools/train.py` is [`{recipe}`](../{recipe}) in the Backbone Zoo '
              f'repository.', '']
    lines += ['## Citation', '', '```bibtex', family.bibtex, '```', '']
    return '\n'.join(lines)


def _details(full: str, cfg, measured: Dict[str, Any], dataset, more_details: Dict[str, str]) -> List[str]:
    """The card's Model Details: measured figures beside the registered (official) ones, papers, sources."""
    arch = full.split('.')[0]
    info, family = get_variant_info(arch), get_family(arch)
    lines = ['## Model Details', '', '- **Model Type:** Image classification / feature backbone', '- **Model Stats:**']
    params_m = measured['params'] / 1e6
    registered = 'our design' if family.reconstruction else 'official'
    lines.append(f'  - Params (M): {params_m:.2f} ({registered}: {info.params / 1e6:.2f})')
    paper_macs = f' (reported: {info.gmacs:.2f}' + (f'; {info.gmacs_source}' if info.gmacs_source else '') + ')' \
        if info.gmacs is not None else ''
    lines.append(f'  - GMACs: {measured["macs"] / 1e9:.2f}{paper_macs}')
    lines.append(f'  - Activations (M): {measured["activations"] / 1e6:.2f}')
    test_size = cfg.test_input_size
    if test_size and tuple(test_size) != tuple(cfg.input_size):
        lines.append(f'  - Image size: train = {_size(cfg.input_size)}, test = {_size(test_size)}')
    else:
        lines.append(f'  - Image size: {_size(cfg.input_size)}')
    lines.append('  - (measured at the default image size: params and GMACs by `backbones.count`, one multiply-add '
                 '= one MAC; activations by fvcore\'s ActivationCountAnalysis, as timm reports them)')
    if info.top1 is not None:
        lines.append(f'- **ImageNet-1k top-1 (official):** {info.top1:.2f}')
    lines.append(f'- **Papers:**\n  - {family.paper}: {family.arxiv_url}')
    if dataset:
        lines.append(f'- **Dataset:** {dataset[1]}')
    lines.append(f'- **Original:** {family.repo_url}')
    lines.append(f'- **Weights:** {_weights_line(full)}')
    if family.oracle:
        lines.append(f'- **Parity verified against:** {family.oracle}')
    if info.notes:
        lines.append(f'- **Notes:** {info.notes}')
    for k, v in more_details.items():
        lines.append(f'- **{k}:** {v}')
    lines.append('')
    return lines


def _loading(full: str, cfg, repo_id: Optional[str]) -> Tuple[str, str, str]:
    """``(name to load, pretrained argument, comment)`` of the usage snippets: the Hub repo, the released weights,
    the official checkpoint downloaded by hand, or a random init."""
    if repo_id:
        return f'hf-hub:{repo_id}', 'pretrained=True', ''
    if cfg.has_weights:
        return full, 'pretrained=True', ''
    if _manual_weights(full):
        return (full, "pretrained=True, pretrained_cfg_overlay=dict(file='checkpoint.pth')",
                '  # the official checkpoint, downloaded by hand (see Weights)')
    return full, 'pretrained=False', '  # no weights released: random init'


def _usage(full: str, cfg, measured: Dict[str, Any], repo_id: Optional[str]) -> List[str]:
    """The card's Model Usage: classification, feature maps and embeddings, each a complete snippet."""
    load, pretrained, no_weights_note = _loading(full, cfg, repo_id)
    head = ['import backbones  # registers the zoo models with timm: import it before timm.create_model', 'import timm']
    lines = ['## Model Usage', '',
             '`import backbones` must run before `timm.create_model(...)` (also for `hf-hub:` / `local-dir:` '
             'names): timm only knows the architectures registered at that time.', '']

    def snippet(title: str, create: str, body: List[str]) -> List[str]:
        """One usage block: the shared preamble (imports, image, model), then ``body``."""
        return [f'### {title}', '', '```python'] + head + [
            'import torch',
            'from urllib.request import urlopen',
            'from PIL import Image',
            '',
            f"img = Image.open(urlopen('{_IMAGE_URL}'))",
            '',
            create,
            'model = model.eval()',
            '',
        ] + body + ['```', '']

    transforms = [
        'data_config = timm.data.resolve_model_data_config(model)',
        'transforms = timm.data.create_transform(**data_config, is_training=False)',
        '',
    ]
    lines += snippet(
        'Image Classification',
        f"model = timm.create_model('{load}', {pretrained}){no_weights_note}",
        ['# model-specific transforms (normalization, resize)'] + transforms + [
            'with torch.no_grad():',
            '    output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1',
            f'print(output.shape)  # {_shape([1, cfg.num_classes])}',
            '',
            'top5_probabilities, top5_class_indices = torch.topk(output.softmax(dim=1) * 100, k=5)',
        ])
    lines += snippet(
        'Feature Map Extraction',
        f"model = timm.create_model('{load}', {pretrained}, features_only=True){no_weights_note}",
        transforms + [
            'with torch.no_grad():',
            '    output = model(transforms(img).unsqueeze(0))',
            '',
            'for o in output:',
            '    # print the shape of each feature map in output, e.g.:',
        ] + [f'    #  {_shape(s)}' for s in measured['feature_shapes']] + [
            '    print(o.shape)',
        ])
    embedding = _shape(measured['embedding_shape'])
    lines += snippet(
        'Image Embeddings',
        f"model = timm.create_model('{load}', {pretrained}, num_classes=0)  # remove classifier nn.Linear"
        f"{no_weights_note.replace('  #', ';')}",
        transforms + [
            'with torch.no_grad():',
            f'    output = model(transforms(img).unsqueeze(0))  # output is a {embedding} tensor',
            '',
            '    # or equivalently (without needing to set num_classes=0)',
            f'    output = model.forward_features(transforms(img).unsqueeze(0))  # unpooled, '
            f'{_unpooled(measured["features_shape"])}',
            f'    output = model.forward_head(output, pre_logits=True)  # a {embedding} tensor',
        ])
    return lines


# --------------------------------------------------------------------------------------------------------------------
# the model_cards/ directory


def render_all(measured: Dict[str, Dict[str, Any]], names: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """``{filename: card}`` for every zoo variant (or ``names``), from cached measurements."""
    names = list_models() if names is None else names
    return {card_filename(n): render_card(n, measured=measured[n]) for n in names}


def write_cards(directory, recount: bool = False, log=None) -> List[str]:
    """(Re)write ``directory`` (cards, ``measured.json``) for every zoo variant; remove cards of unknown models.
    Returns the files written or removed."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list_models()
    measured = update_measured(load_measured(directory), names, recount=recount, log=log)
    files = render_all(measured, names)
    files[MEASURED_FILE] = _dump_measured(measured)
    changed = []
    for fname, text in files.items():
        path = directory / fname
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(fname)
    for path in sorted(directory.glob('*.md')):
        if path.name not in files:
            path.unlink()
            changed.append(f'{path.name} (removed)')
    return changed


def check_cards(directory, recount: bool = False, names: Optional[Sequence[str]] = None) -> List[str]:
    """Problems that make ``directory`` out of date (empty list: current): missing / out-of-date / extra cards, and
    cached measurements that are missing or whose model fingerprint changed (``recount``: measure every model
    again and compare the figures too). ``names``: check only these models' cards (no extra-file checks)."""
    directory = pathlib.Path(directory)
    only = names is not None
    names = list(names) if only else list_models()
    cached = load_measured(directory)
    problems = []
    measured = {}
    for name in names:
        entry = cached.get(name)
        if entry is None:
            problems.append(f'{MEASURED_FILE}: no measurements for {name}')
            entry = measure(name)
        elif recount:
            fresh = measure(name)
            if fresh != entry:
                problems.append(f'{MEASURED_FILE}: measurements of {name} changed')
            entry = fresh
        elif entry.get('fingerprint') != fingerprint(name):
            problems.append(f'{MEASURED_FILE}: {name} changed since it was measured')
            entry = measure(name)
        measured[name] = entry
    if not only and set(cached) - set(names):
        problems.append(f'{MEASURED_FILE}: extra models {", ".join(sorted(set(cached) - set(names)))}')
    expected = render_all(measured, names)
    for fname, text in expected.items():
        path = directory / fname
        if not path.exists():
            problems.append(f'{fname}: missing')
        elif path.read_text() != text:
            problems.append(f'{fname}: out of date')
    if not only and (directory / MEASURED_FILE).exists() and \
            (directory / MEASURED_FILE).read_text() != _dump_measured(measured):
        problems.append(f'{MEASURED_FILE}: out of date')
    for path in sorted(directory.glob('*.md') if not only else ()):
        if path.name not in expected:
            problems.append(f'{path.name}: extra (no such zoo model)')
    return problems
