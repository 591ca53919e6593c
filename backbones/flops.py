"""Parameter and MAC counter (paper convention: one multiply-add = one "FLOP", as in ResNet-50's 3.8 GFLOPs of
arXiv 1512.03385 Table 1).

Engine: fvcore's :class:`~fvcore.nn.FlopCountAnalysis` (jit trace, one handle per aten op), which is what timm's
``benchmark.py`` (``infer_gmacs``) and the official repos of BiFormer / DaViT report, so our numbers are comparable
with theirs. fvcore's default handles are kept as they are: besides conv / linear / matmul they count norms (eval
BatchNorm with affine: 2 per element), ``adaptive_avg_pool2d`` and upsampling, as the published fvcore figures do.
On top of fvcore:

* op handles it lacks or gets wrong (:data:`OP_HANDLES`):
  - fused attention ``aten::scaled_dot_product_attention``: ``B*H*N_q*N_k*(D_qk + D_v)``;
  - ``nn.MultiheadAttention``'s fused inference op ``aten::_native_multi_head_attention``;
  - recurrent layers ``aten::lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``: every weight matrix once per step,
    per direction, per layer (LSTM: ``4*(in*h + h*h)``);
  - convolutions with string padding (``padding='same'`` traces as ``aten::_convolution_mode``) and
    ``aten::baddbmm``, which fvcore skips;
  - exact ``aten::einsum`` (fvcore estimates it through numpy, slightly off) and ``aten::matmul`` (fvcore
    under-counts a broadcast left operand);
* module handles (:data:`MODULE_HANDLES`, keyed by layer class) for layers whose work is invisible at op level
  (element-wise multiply + sum, which fvcore rightly skips elsewhere), gathered with forward hooks during the traced
  forward and added to the module's row, its ancestors' rows and the total: the aggregation of
  :class:`backbones.layers.involution.Involution` (``C * K**2 * H_out * W_out`` per image), the windowed
  attention of :class:`backbones.layers.msa_conv.MSAConvAttention` (Q.K and A.V, ``2 * C * kh*kw * H * W``) and
  Sequencer's ``BiLSTM`` (as ``aten::lstm``). A handle may also give a forward that is cheaper to trace: the same
  result (the unfold forms of the involution and MSA-Conv instead of their loops over the window taps), or only the
  output's shape where no value decides a later shape (the LSTM, whose meta fallback steps through time in Python).

Everything else fvcore does not know (element-wise ops, softmax, pooling other than adaptive average, ...) is not
counted, by convention, and listed in :attr:`FlopCount.skipped_ops`.

Speed: a zoo model given by name is built on the meta device and traced there (no weights allocated, no
arithmetic). Tracing on meta needs one fix, installed only while tracing (:func:`_meta_tracing`): the meta kernel
of ``aten::convolution`` is a Python function that the tracer does not record, so it is temporarily wrapped to go
through the traced ``aten::_convolution`` exactly as the CPU path does (checked once per process on a probe
conv). If tracing on meta fails for a model, the model is materialised on the CPU and counted there.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import functools
import math
import threading
import time
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ._registry import get_variant_info, list_models

with warnings.catch_warnings():  # fvcore's loss modules use torch.jit.script, deprecated in torch 2.x
    warnings.simplefilter('ignore', FutureWarning)
    from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis, flop_count_table
    from fvcore.nn.jit_handles import einsum_flop_jit, get_shape

__all__ = [
    'FlopCount', 'count', 'compare', 'format_rows', 'resolve_names', 'register_module_handle',
    'MODULE_HANDLES', 'OP_HANDLES',
]

# --------------------------------------------------------------------------------------------------------------------
# op handles (jit graph level): fn(inputs: List[torch._C.Value], outputs: List[torch._C.Value]) -> MACs


def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``scaled_dot_product_attention(q, k, v, ...)``: ``q @ k^T`` plus ``attn @ v`` = ``B*H*L*S*(E + Ev)``.

    Batch dims are the query's (grouped-query attention broadcasts k/v over the query heads); mask add, scaling,
    softmax and dropout are element-wise and not counted.
    """
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    *batch, n_q, d_qk = q
    return _prod(batch) * n_q * k[-2] * (d_qk + v[-1])


def native_mha_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::_native_multi_head_attention``: the fused inference path of ``nn.MultiheadAttention`` (CPU / CUDA,
    eval, no grad). q/k/v input projections, attention (``B*Nq*Nk*2E`` over all heads) and output projection."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, n_q, e = q
    n_k = k[-2]
    b = _prod(batch)
    return b * (n_q * e * e + 2 * n_k * e * e + 2 * n_q * n_k * e + n_q * e * e)


def rnn_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu`` (padded ``.input`` and packed ``.data`` overloads).

    Every weight matrix (``w_ih``: gates*h x in, ``w_hh``: gates*h x h, LSTM projection ``w_hr``) is applied once
    per time step per batch element, for each layer and direction: MACs = ``steps * sum(rows * cols)``. Biases and
    gate non-linearities are element-wise and not counted (fvcore / DeepSpeed convention).
    """
    x = get_shape(inputs[0])
    steps = _prod(x[:-1])  # (T, B) / (B, T) / unbatched (T,) / packed (sum of lengths,)
    lists = [v for v in inputs if v.type().kind() == 'ListType']
    weights = [get_shape(w) for w in lists[-1].node().inputs()]  # the flat parameter list is the last Tensor[]
    return steps * sum(_prod(s) for s in weights if s is not None and len(s) == 2)


def einsum_flop_jit_exact(inputs: List[Any], outputs: List[Any]) -> Union[int, float]:
    """``einsum``: exact for one or two operands (the product of every index's size once; no work for one
    operand, which only permutes / sums), fvcore's numpy-path estimate for three or more."""
    equation = inputs[0].toIValue().replace(' ', '')
    shapes = [get_shape(v) for v in inputs[1].node().inputs()]
    lhs = equation.split('->')[0].split(',')
    if len(shapes) > 2 or any(s is None for s in shapes) or len(lhs) != len(shapes):
        return einsum_flop_jit(inputs, outputs)
    if len(shapes) == 1:
        return 0
    sizes: Dict[str, int] = {}
    for term, shape in zip(lhs, shapes):
        for label, size in zip(_einsum_labels(term, len(shape)), shape):
            sizes[label] = max(sizes.get(label, 1), int(size))  # broadcast dims of size 1
    return _prod(sizes.values())


def _einsum_labels(term: str, ndim: int) -> List[str]:
    """One label per dim; ellipsis dims are right-aligned across operands, so they are named by their distance
    from the end of the ellipsis ('#0' = last)."""
    if '...' not in term:
        return list(term)
    pre, post = term.split('...')
    n = ndim - len(pre) - len(post)
    return list(pre) + [f'#{n - 1 - i}' for i in range(n)] + list(post)


def matmul_flop_jit_exact(inputs: List[Any], outputs: List[Any]) -> int:
    """``matmul`` / ``mm`` with broadcasting and 1-D operands: every output element costs ``K`` MACs."""
    a, out = get_shape(inputs[0]), get_shape(outputs[0])
    return _prod(out) * int(a[-1])


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``baddbmm(input, batch1, batch2)``: ``batch1 @ batch2`` (the scaled add is element-wise)."""
    return _prod(get_shape(outputs[0])) * int(get_shape(inputs[1])[-1])


def conv_mode_flop_jit(inputs: List[Any], outputs: List[Any]) -> typing.Counter[str]:
    """``aten::_convolution_mode``: a convolution with string padding (``padding='same'`` / ``'valid'``), which
    fvcore does not recognise as a conv. Every output element costs ``C_in / groups * prod(kernel)`` MACs; reported
    as ``conv`` like every other convolution."""
    w = get_shape(inputs[1])
    return collections.Counter({'conv': _prod(get_shape(outputs[0])) * _prod(w[1:])})


OP_HANDLES: Dict[str, Callable[[List[Any], List[Any]], Any]] = {
    'aten::_convolution_mode': conv_mode_flop_jit,
    'aten::baddbmm': baddbmm_flop_jit,
    'aten::scaled_dot_product_attention': sdpa_flop_jit,
    'aten::_native_multi_head_attention': native_mha_flop_jit,
    'aten::lstm': rnn_flop_jit,
    'aten::gru': rnn_flop_jit,
    'aten::rnn_tanh': rnn_flop_jit,
    'aten::rnn_relu': rnn_flop_jit,
    'aten::einsum': einsum_flop_jit_exact,
    'aten::matmul': matmul_flop_jit_exact,
}

# --------------------------------------------------------------------------------------------------------------------
# module handles: work a layer does that no op handle sees. Keyed by "<module>.<qualname>" of the layer class (so
# the counter imports no model code); subclasses are matched through their MRO.

ModuleHandle = Callable[[nn.Module, Tuple[Any, ...], Any], int]


@dataclass(frozen=True)
class _ModuleEntry:
    label: str  # operator name the MACs are reported under
    macs: ModuleHandle  # (module, inputs, output) -> MACs of one call
    count_forward: Optional[Callable[..., Any]] = None  # forward that is cheaper to trace (see register_...)


MODULE_HANDLES: Dict[str, _ModuleEntry] = {}


def _class_key(cls: type) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def register_module_handle(
        cls: Union[type, str],
        label: str,
        macs: ModuleHandle,
        count_forward: Optional[Callable[..., Any]] = None,
) -> None:
    """Count ``macs(module, inputs, output)`` MACs, reported under operator ``label``, for every call of a module of
    class ``cls`` (a class or its dotted path, e.g. ``'backbones.layers.involution.Involution'``) or a subclass.

    ``count_forward(module, *inputs)``, if given, replaces the module's forward while the model is traced: a forward
    with the same result (and the same counted ops: the child modules fvcore should see) that records far fewer jit
    nodes, for layers that loop over small ops (jit tracing costs about a millisecond per recorded op); or, for a
    layer whose output values never decide a later shape, one that returns a tensor of the output's shape.
    """
    MODULE_HANDLES[cls if isinstance(cls, str) else _class_key(cls)] = _ModuleEntry(label, macs, count_forward)


def _involution_macs(module: nn.Module, inputs: Tuple[Any, ...], output: torch.Tensor) -> int:
    """Aggregation of an involution: each output element is a ``K x K`` multiply-add of the generated kernel with
    the input window (``channels * K**2 * H_out * W_out`` per image). The kernel-generating 1x1 convs are ordinary
    convs counted by fvcore."""
    k = module.kernel_size
    taps = _prod(k) if isinstance(k, (tuple, list)) else k * k
    return output.numel() * taps


register_module_handle(
    'backbones.layers.involution.Involution', 'involution', _involution_macs,
    lambda module, x: module.forward_unfold(x))  # the official unfold form: a handful of traced ops, not ~5 per tap


def _msa_conv_macs(module: nn.Module, inputs: Tuple[Any, ...], output: torch.Tensor) -> int:
    """MSA-Conv attention: for each of the ``kh * kw`` window taps, Q.K costs one MAC per channel and pixel (summed
    over the heads: ``C * kh*kw * H * W``) and A.V the same again; softmax and scaling are element-wise. Its qkv /
    output convs are ordinary convs counted by fvcore."""
    return 2 * inputs[0].numel() * module.taps


register_module_handle(
    'backbones.layers.msa_conv.MSAConvAttention', 'msa_conv', _msa_conv_macs,
    lambda module, q, k, v: module.forward_unfold(q, k, v))  # the im2col form: a handful of traced ops


def _bilstm_macs(module: nn.Module, inputs: Tuple[Any, ...], output: torch.Tensor) -> int:
    """Sequencer's ``BiLSTM`` (``nn.LSTM``'s parameters and ``aten::lstm`` kernel on ``[T, N, C]``): as
    :func:`rnn_flop_jit`, every weight matrix once per time step, sequence and direction."""
    steps = _prod(inputs[0].shape[:2])
    return steps * sum(p.numel() for p in module.parameters() if p.dim() == 2)


def _bilstm_shape_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The LSTM's output shape only: no value of it decides a later shape, and tracing ``aten::lstm`` on meta
    tensors steps through every time step in Python (seconds per call)."""
    return x.new_zeros(x.shape[0], x.shape[1], 2 * module.hidden_size)


register_module_handle('backbones.models.sequencer.BiLSTM', 'lstm', _bilstm_macs, _bilstm_shape_forward)


def _cross_attention_formula_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Cross attention as the paper and the official code compute it (keys and values of every token), which is
    what the layer is counted as. In inference the layer gets the same result with its key and value projections
    folded into the query and the output (:mod:`backbones.layers.cross_attention`), about ``head_dim`` times fewer
    MACs, as an implementation detail, not a different network."""
    return module.proj_drop(module.proj(module.attend(x)))


# no MACs of its own: the formula's linears and attention are counted by the op handles
register_module_handle(
    'backbones.layers.cross_attention.CrossAttention', 'linear', lambda *args: 0, _cross_attention_formula_forward)


# no MACs of its own either: counted as the official gathered form (the masked form is an implementation detail)
register_module_handle(
    'backbones.layers.routing_attention.BiLevelRoutingAttention', 'linear', lambda *args: 0,
    lambda module, x: module.forward_gathered(x))


def _module_handle(module: nn.Module) -> Tuple[Optional[_ModuleEntry], Optional[type]]:
    """The handle registered for the module's class or its nearest registered base class, and that class."""
    for cls in type(module).__mro__:
        entry = MODULE_HANDLES.get(_class_key(cls))
        if entry is not None:
            return entry, cls
    return None, None


@contextlib.contextmanager
def _untraced():
    """Python code run inside a traced forward (hooks) sees sizes as traced tensors; this shows them as ints."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


@contextlib.contextmanager
def _module_handles(model: nn.Module, on_call: Callable[[nn.Module, _ModuleEntry, Tuple[Any, ...], Any], None]):
    """While ``model`` is traced: ``on_call(module, entry, inputs, output)`` after every call of a module that has a
    handle (sizes as ints, not traced values), and such modules run their handle's cheaper ``count_forward``."""
    handles, replaced = [], []
    for module in model.modules():
        entry, cls = _module_handle(module)
        if entry is None:
            continue

        def hook(mod, inputs, output, entry=entry):
            with _untraced():
                on_call(mod, entry, inputs, output)
        handles.append(module.register_forward_hook(hook))
        # the substitute stands in for the registered class's own forward only (not a subclass's override)
        own_forward = type(module).forward is cls.forward and 'forward' not in vars(module)
        if entry.count_forward is not None and own_forward:
            module.forward = types.MethodType(entry.count_forward, module)
            replaced.append(module)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for module in replaced:
            del module.forward


def _quiet(analysis):
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings('none')
    return analysis


class _ZooFlopCountAnalysis(FlopCountAnalysis):
    """fvcore's analysis plus :data:`OP_HANDLES`, and :data:`MODULE_HANDLES` folded into every statistic
    (``total``, ``by_operator``, ``by_module``, ``flop_count_table``) as operator ``label``."""

    def __init__(self, model: nn.Module, inputs: Any):
        super().__init__(model, inputs)
        self.set_op_handle(**OP_HANDLES)
        _quiet(self)

    def _analyze(self):
        if self._stats is not None:
            return self._stats
        extras: List[Tuple[str, str, int]] = []

        def on_call(module, entry, inputs, output):
            extras.append((self._aliases[module], entry.label, int(entry.macs(module, inputs, output))))
        with _module_handles(self._model, on_call), _meta_tracing(_is_meta(self._inputs)):
            stats = super()._analyze()
        for name, label, macs in extras:
            for owner in self._get_all_ancestors(name):
                stats.counts[owner][label] += macs
        return stats


def _activations(model: nn.Module, inputs: Any) -> int:
    """Activations as timm reports them: fvcore's ``ActivationCountAnalysis`` (output elements of conv / linear /
    matmul / einsum ops), plus the output of every call of a module with a handle (a conv-like op fvcore cannot see,
    such as the involution's aggregation)."""
    extra: List[int] = []
    analysis = _quiet(ActivationCountAnalysis(model, inputs))
    with _module_handles(model, lambda module, entry, inputs, output: extra.append(int(output.numel()))), \
            _meta_tracing(_is_meta(inputs)):
        return int(analysis.total()) + sum(extra)


# --------------------------------------------------------------------------------------------------------------------
# tracing on the meta device


def _is_meta(inputs: Any) -> bool:
    tensors = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return any(t.is_meta for t in tensors if isinstance(t, torch.Tensor))


_META_LOCK = threading.RLock()


@contextlib.contextmanager
def _meta_tracing(enabled: bool = True):
    """While tracing meta tensors, route ``aten::convolution``'s meta kernel through ``aten::_convolution``.

    ``convolution`` is one of the ops the jit tracer never records (it records the ``_convolution`` that the CPU and
    CUDA kernels call), and its meta kernel is Python code that, run under the tracer, sees traced tensors as sizes
    and fails. The wrapper calls ``_convolution`` while a trace is active (recorded, as on CPU; the tracer turns
    itself off inside it, which then reaches the original meta kernel) and is the original kernel otherwise. The
    override lives in a private ``torch.library.Library`` destroyed on exit, which restores the original kernel.
    """
    if not enabled:
        yield
        return
    from torch._meta_registrations import meta_conv

    def convolution_meta(inp, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
        if torch._C._get_tracing_state() is not None:
            return torch.ops.aten._convolution.default(
                inp, weight, bias, stride, padding, dilation, transposed, output_padding, groups,
                False, False, True, True)
        return meta_conv(inp, weight, bias, stride, padding, dilation, transposed, output_padding, groups)

    with _META_LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # "overriding a previously registered kernel"
            lib = torch.library.Library('aten', 'IMPL', 'Meta')
            lib.impl('convolution', convolution_meta)
        try:
            yield
        finally:
            lib._destroy()


@functools.cache
def _meta_tracing_works() -> bool:
    """Whether this torch traces a meta convolution into a counted ``aten::_convolution`` (probed once)."""
    try:
        probe = nn.Conv2d(2, 4, 3, device='meta').eval()
        by_op = _analyze(probe, torch.empty(1, 2, 5, 5, device='meta'), False, 0)[1]
        return by_op == {'conv': 4 * 2 * 3 * 3 * 3 * 3}
    except Exception:
        return False


# --------------------------------------------------------------------------------------------------------------------
# the public counter


@dataclass
class FlopCount:
    """What :func:`count` returns. ``macs`` is for the whole batch (``batch_size`` images, default 1)."""
    name: str
    params: int
    macs: int
    input_size: Tuple[int, ...]
    batch_size: int = 1
    device: str = 'meta'  # where the model was traced
    by_operator: Dict[str, int] = field(default_factory=dict)
    skipped_ops: Dict[str, int] = field(default_factory=dict)  # aten ops seen but not counted, with call counts
    per_module: Optional[Dict[str, int]] = None  # module name ('' = whole model) -> MACs, module handles included
    table: Optional[str] = None  # fvcore flop_count_table of the same numbers
    activations: Optional[int] = None  # with count(activations=True): timm's activation count (see _activations)
    seconds: float = 0.0

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def __str__(self) -> str:
        size = 'x'.join(str(s) for s in self.input_size)
        return f'{self.name}: {self.mparams:.3f} M params, {self.gmacs:.3f} GMACs at {self.batch_size}x{size}'


def _normalize_input_size(input_size: Union[int, Sequence[int]], in_chans: int = 3) -> Tuple[int, ...]:
    if isinstance(input_size, int):
        return (in_chans, input_size, input_size)
    size = tuple(int(s) for s in input_size)
    return (in_chans, *size) if len(size) == 2 else size


def _in_chans(model: nn.Module) -> int:
    try:
        return int(_default_input_size(model)[0])
    except ValueError:
        return 3


def _default_input_size(model: nn.Module) -> Tuple[int, ...]:
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    if not isinstance(cfg, dict):
        cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else vars(cfg)
    if cfg.get('input_size'):
        return tuple(cfg['input_size'])
    raise ValueError(f'{type(model).__name__} has no pretrained_cfg input_size; pass input_size=(C, H, W)')


def _build(name: str, device: str = 'meta') -> nn.Module:
    import timm  # the zoo is registered: importing this module imported the package
    if device != 'cpu':
        try:
            return timm.create_model(name, pretrained=False, device=device)
        except Exception:  # a (non-zoo) model that cannot be built on meta: build it for real
            pass
    return timm.create_model(name, pretrained=False)


def _materialize(model: nn.Module, device: str = 'cpu') -> nn.Module:
    """A meta model on ``device`` with cheap deterministic values: counts do not depend on the values, but an
    uninitialised ``to_empty`` would hold denormals / NaNs that make CPU arithmetic crawl, and garbage in integer
    buffers (e.g. relative-position indices) that indexing would reject; those are zeroed (a valid index)."""
    model = model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.normal_(0.0, 0.02, generator=g)
            else:
                p.zero_()
        for b in model.buffers():
            if b.is_floating_point():
                b.fill_(1.0)
            else:
                b.zero_()
    return model


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _analyze(model: nn.Module, inputs: torch.Tensor, per_module: bool, table_depth: int, activations: bool = False):
    analysis = _ZooFlopCountAnalysis(model, inputs)
    with torch.no_grad():
        total = analysis.total()
        acts = _activations(model, inputs) if activations else None
    by_op = {k: int(v) for k, v in analysis.by_operator().items()}
    skipped = dict(analysis.unsupported_ops())
    per_mod = table = None
    if per_module:
        per_mod = {k: int(v) for k, v in analysis.by_module().items()}
        table = flop_count_table(analysis, max_depth=table_depth).replace('#flops', '#MACs ', 1)
    return int(total), by_op, skipped, per_mod, table, acts


def count(
        model_or_name: Union[str, nn.Module],
        input_size: Optional[Union[int, Sequence[int]]] = None,
        per_module: bool = False,
        batch_size: int = 1,
        table_depth: int = 3,
        activations: bool = False,
) -> FlopCount:
    """Parameters and MACs of a model, paper convention (one multiply-add = one "FLOP"), eval mode, no grad.

    Args:
        model_or_name: a zoo (or timm) model name, built with ``timm.create_model`` on the meta device, or a module
            (counted where its parameters live; its train/eval mode is restored afterwards).
        input_size: ``(C, H, W)``, ``(H, W)`` or a side; default: the model's ``pretrained_cfg['input_size']``.
        per_module: also return ``per_module`` (module name -> MACs) and ``table`` (printable, ``table_depth``).
        batch_size: images per forward; ``macs`` is for the whole batch.
        activations: also count ``activations`` as timm's benchmarks report them (output elements of the conv /
            linear / matmul / einsum ops, fvcore's ``ActivationCountAnalysis``, and of the module-handle layers).

    Returns:
        :class:`FlopCount` (``params``, ``macs``, ``gmacs``, ``by_operator``, ``skipped_ops``, ...).
    """
    t0 = time.perf_counter()
    built = isinstance(model_or_name, str)
    if built:
        name, model = model_or_name, _build(model_or_name)
    else:
        model = model_or_name
        name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    if input_size is None:
        input_size = _default_input_size(model)
    size = _normalize_input_size(input_size, _in_chans(model))
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    # a module without parameters or buffers holds nothing to allocate: trace it on meta too
    device = tensor.device if tensor is not None else torch.device('meta')
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32

    original, was_training = model, model.training
    model.eval()
    try:
        params = _param_count(model)
        if device.type == 'meta':
            result = None
            if _meta_tracing_works():
                try:
                    result = _analyze(model, torch.empty(batch_size, *size, device='meta', dtype=dtype),
                                      per_module, table_depth, activations)
                except Exception as e:  # any op without a usable meta path
                    warnings.warn(f'{name}: tracing on the meta device failed ({type(e).__name__}: {e}); '
                                  f'counting on the CPU instead', stacklevel=2)
            else:
                warnings.warn('this torch cannot trace convolutions on the meta device; counting on the CPU',
                              stacklevel=2)
            if result is None:  # built here: rebuilt on the CPU; a caller's model: a copy, theirs stays on meta
                model = _build(model_or_name, 'cpu') if built else _materialize(copy.deepcopy(model), 'cpu')
                model.eval()
                device = torch.device('cpu')
                result = _analyze(model, torch.randn(batch_size, *size, dtype=dtype), per_module, table_depth,
                                  activations)
        else:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(batch_size, *size, generator=g, dtype=dtype).to(device)
            result = _analyze(model, x, per_module, table_depth, activations)
    finally:
        original.train(was_training)
    macs, by_op, skipped, per_mod, table, acts = result
    return FlopCount(
        name=name, params=params, macs=macs, input_size=size, batch_size=batch_size, device=device.type,
        by_operator=by_op, skipped_ops=skipped, per_module=per_mod, table=table, activations=acts,
        seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------------------------
# comparison with the registry (what tools/flops.py prints)


def resolve_names(patterns: Sequence[str] = ()) -> List[str]:
    """Zoo names for fnmatch patterns (all zoo models if none); a plain name that is not a zoo model is kept as is
    (a timm model: counted, with no official figures beside it)."""
    if not patterns:
        return list_models()
    names: List[str] = []
    for pattern in patterns:
        if any(c in pattern for c in '*?['):
            matched = list_models(pattern)
            if not matched:
                raise ValueError(f"no zoo model matches '{pattern}'")
        else:
            matched = [pattern]
        names += [n for n in matched if n not in names]
    return names


def compare(names: Sequence[str], input_size: Optional[Union[int, Sequence[int]]] = None) -> List[Dict[str, Any]]:
    """One row per model: our params / GMACs beside the registry's official figures and the differences.

    The paper GMACs are shown only at the model's default input size (they are not comparable at another).
    """
    rows = []
    for name in names:
        res = count(name, input_size=input_size)
        try:
            info = get_variant_info(name)
        except KeyError:
            info = None
        paper = info.gmacs if info is not None else None
        if paper is not None and input_size is not None:
            from timm.models import get_pretrained_cfg
            cfg = get_pretrained_cfg(name)
            if cfg is None or tuple(res.input_size) != tuple(cfg.input_size):
                paper = None
        official = info.params if info is not None else None
        rows.append(dict(
            model=name,
            params_m=res.params / 1e6,
            params_official_m=None if official is None else official / 1e6,
            params_delta=None if official is None else res.params - official,
            gmacs=res.gmacs,
            gmacs_paper=paper,
            gmacs_delta_pct=None if not paper else 100.0 * (res.gmacs - paper) / paper,
            input_size='x'.join(str(s) for s in res.input_size),
            device=res.device,
            seconds=res.seconds,
            notes=info.notes if info is not None else '',
        ))
    return rows


_COLUMNS = [
    ('model', 'model', '{}'),
    ('params_m', 'params (M)', '{:.3f}'),
    ('params_official_m', 'params official (M)', '{:.3f}'),
    ('params_delta', 'Δ', '{:+d}'),
    ('gmacs', 'GMACs', '{:.3f}'),
    ('gmacs_paper', 'GMACs paper', '{:.2f}'),
    ('gmacs_delta_pct', 'Δ%', '{:+.2f}'),
    ('input_size', 'input', '{}'),
]


def format_rows(rows: Sequence[Dict[str, Any]], fmt: str = 'text') -> str:
    """``fmt``: ``'text'`` (aligned columns), ``'markdown'`` or ``'csv'`` (raw numbers)."""
    if fmt == 'csv':
        import csv
        import io
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator='\n')
        writer.writerow([key for key, _, _ in _COLUMNS])
        for r in rows:
            writer.writerow(['' if r[key] is None else r[key] for key, _, _ in _COLUMNS])
        return buf.getvalue().rstrip('\n')
    header = [title for _, title, _ in _COLUMNS]
    body = [['-' if r[key] is None else spec.format(r[key]) for key, _, spec in _COLUMNS] for r in rows]
    if fmt == 'markdown':
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(
            '---' if i == 0 else '---:' for i in range(len(header))) + '|']
        lines += ['| ' + ' | '.join(row) + ' |' for row in body]
        return '\n'.join(lines)
    if fmt != 'text':
        raise ValueError(f"unknown format '{fmt}' (text, markdown, csv)")
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ['  '.join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += ['  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in body]
    return '\n'.join(lines)

