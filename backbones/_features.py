"""The feature API shared by every stage-based zoo model (stem -> stages -> norm -> head).

A model that mixes in :class:`StageFeatureMixin` gets timm's ``forward_intermediates``,
``prune_intermediate_layers``, ``set_grad_checkpointing``, ``group_matcher`` and the classifier methods, given
these attributes:

- ``stem``: module (its output feeds ``stages[0]``);
- ``stages``: ``nn.Sequential`` of :class:`backbones.layers.Stage` (one feature tap after each);
- ``norm``: final norm applied to the last stage's output (``nn.Identity`` when the net has none);
- ``head``: :class:`backbones.layers.Head`;
- ``feature_info``: one dict per feature level (``num_chs``, ``reduction``, ``module``) from
  :func:`stage_feature_info`: the stem's output first when ``stem_feature`` is set (level 0, ``module='stem'``),
  then one per stage (``module='stages.<i>'``);
- ``stem_feature``: whether the stem's output is a feature level (timm's convention where the stem ends at stride 2
  before a downsampling first stage: ResNets' ``act1``, MaxViT's ``stem``);
- ``in_chans``, ``input_divisor`` (input sides must be multiples of it; 1 = any size), ``_model_name`` (for error
  messages) and, when its strides / pooling cannot take every size down to 1x1, ``min_input_size``, which the
  default ``_check_input`` uses; a model with another size rule overrides ``_check_input`` (calling ``check_input``
  with ``self._input_weight()`` first, so the channel / rank / dtype checks stay the same).

``forward_features`` is ``norm(stages(stem(x)))`` and ``forward_head`` is ``head(x, pre_logits)``.

A family's constructor sets these through the mixin, in three calls: :meth:`~StageFeatureMixin.init_model` (the
names, widths and size rule the contract reads), :meth:`~StageFeatureMixin.build_stages` (``stages``,
``feature_info`` and ``num_features`` from a per-stage factory, over timm's ``output_stride`` layout) and
:meth:`~StageFeatureMixin.build_head` (``norm``, ``head``, ``head_hidden_size``). A head other than
:class:`~backbones.layers.Head` takes part in ``reset_classifier`` / ``prune_intermediate_layers`` by having
``reset(num_classes, pool_type, device=, dtype=)``, ``prune(in_features)`` (drop every layer sized for the last
stage, leaving pooling and no classifier) and its pre-logits width as ``hidden_size`` (or ``num_features``, timm's
name in ``NormMlpClassifierHead``).

Token (ViT-style) models use :class:`backbones._token.TokenFeatureMixin` instead. Every zoo family's
``features_only`` wrapper is :class:`FeatureGetter`.
"""
from typing import Callable, Dict, Final, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype

from ._timm import FeatureGetterNet
from .layers.head import Head
from .layers.helpers import check_feature_indices, check_input, check_num_classes, input_dtype_ref
from .layers.stage import StageStride, stage_strides

__all__ = ['StageFeatureMixin', 'stage_feature_info', 'FeatureGetter', 'feature_cfg']

# a call_function leaf for every FX tracer (plain ``torch.fx.symbolic_trace``, torchvision's feature extraction,
# ``torch.ao``'s ``prepare_fx``), not only timm's: ``torch.fx.wrap`` patches the globals of the module it is called in
torch.fx.wrap('check_input')


def stage_feature_info(
        chs: Sequence[int],
        reductions: Sequence[int],
        stem: Optional[Tuple[int, int]] = None,
) -> List[Dict]:
    """One feature level per stage (``module='stages.<i>'``), after the stem's (``stem = (num_chs, reduction)``,
    ``module='stem'``) when it is one."""
    levels = [dict(num_chs=stem[0], reduction=stem[1], module='stem')] if stem is not None else []
    for i, (c, r) in enumerate(zip(chs, reductions)):
        levels.append(dict(num_chs=c, reduction=r, module=f'stages.{i}'))
    return levels


class FeatureGetter(FeatureGetterNet):
    """timm's ``FeatureGetterNet`` (``features_only`` through ``forward_intermediates``) that also honours
    ``return_layers``, the ``{module name: output name}`` attribute of timm's module-based wrappers
    (``FeatureListNet``), which tools set to pick levels by name: transformers' ``TimmBackbone`` sets every level's
    module there to return all hidden states (``output_hidden_states=True``), then restores its ``out_indices``.

    Setting it selects, in depth order, the levels whose ``feature_info`` module is named (only those the wrapped
    model still computes: ``features_only`` prunes the stages after the deepest ``out_indices``, as
    ``FeatureListNet`` drops its modules). Module names must therefore be unique per level.
    """
    __jit_unused_properties__ = ['return_layers']

    def __init__(self, model: nn.Module, out_indices=4, **kwargs):
        super().__init__(model, out_indices, **kwargs)
        self.num_levels = max(self.out_indices) + 1 if kwargs.get('prune', True) else len(self.feature_info.info)

    @property
    def return_layers(self) -> Dict[str, str]:
        return {self.feature_info.info[i]['module']: str(i) for i in self.out_indices}

    @return_layers.setter
    def return_layers(self, layers: Mapping[str, str]):
        modules = [info['module'] for info in self.feature_info.info[:self.num_levels]]
        self.out_indices = [i for i, m in enumerate(modules) if m in layers]


def feature_cfg(out_indices: Union[int, Tuple[int, ...]]) -> Dict:
    """The ``feature_cfg`` every zoo family builds with: its default ``out_indices`` and :class:`FeatureGetter`."""
    return dict(out_indices=out_indices, feature_cls=FeatureGetter)


def _pre_logits_width(head: nn.Module) -> int:
    """The width ``forward_head(pre_logits=True)`` returns: ``hidden_size`` of the zoo's heads, ``num_features`` of
    timm's ``NormMlpClassifierHead`` (whose ``hidden_size`` is its MLP's, None without one)."""
    width = getattr(head, 'num_features', None)
    return width if width is not None else head.hidden_size


class StageFeatureMixin:
    """timm's model contract for ``stem -> stages -> norm -> head`` networks (see module docstring)."""
    min_input_size: Final[int] = 1  # smallest input side
    stem_feature: Final[bool] = False  # the stem's output is feature level 0 (see the module docstring)
    # TorchScript reads these class-level values as constants; it finds them through __constants__ (looked up along
    # the MRO) also in a subclass that has annotations of its own (which hide these Final annotations from it)
    __constants__ = ['min_input_size', 'stem_feature']

    @torch.jit.ignore
    def init_model(self, name: str, in_chans: int, num_classes: int, drop_rate: float, input_divisor: int = 1):
        """The attributes the contract reads before anything is built: ``_model_name`` (error messages; TorchScript
        cannot read ``self.__class__``), ``in_chans``, ``num_classes``, ``drop_rate``, ``input_divisor``."""
        self._model_name = name
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.input_divisor = input_divisor
        self.grad_checkpointing = False

    @torch.jit.ignore
    def build_stages(
            self,
            make_stage: Callable[[int, int, int, StageStride], nn.Module],
            dims: Sequence[int],
            strides: Sequence[int],
            output_stride: Optional[int] = None,
            stem_reduction: int = 1,
            in_chs: Optional[int] = None,
            stem: Optional[Tuple[int, int]] = None,
    ) -> List[StageStride]:
        """``self.stages`` from ``make_stage(i, in_chs, out_chs, stride)`` for each stage ``i`` (``stride``: its
        :class:`~backbones.layers.StageStride` once ``output_stride`` is applied, :func:`stage_strides`), its
        ``feature_info`` (the stem's output first when ``stem_feature``) and ``num_features``; returns the strides.

        Args:
            make_stage: builds stage ``i`` (usually a :class:`~backbones.layers.Stage`) from ``in_chs`` channels.
            dims: output width of each stage.
            strides: stride of each stage as built.
            output_stride: timm's wanted total stride (None: the network's own).
            stem_reduction: total stride of what comes before the first stage.
            in_chs: width into the first stage (default: ``dims[0]``, a stem that ends at the first stage's width).
            stem: ``(num_chs, reduction)`` of the stem's feature level (``stem_feature`` models; default ``(in_chs,
                stem_reduction)``, unless something such as a pool sits between the stem and the first stage).
        """
        layout = stage_strides(strides, output_stride, stem_reduction, self._model_name)
        prev = dims[0] if in_chs is None else in_chs
        if not self.stem_feature:
            stem = None
        elif stem is None:
            stem = (prev, stem_reduction)
        stages = []
        for i, (dim, s) in enumerate(zip(dims, layout)):
            stages.append(make_stage(i, prev, dim, s))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.feature_info = stage_feature_info(dims, [s.reduction for s in layout], stem=stem)
        self.num_features = prev
        return layout

    @torch.jit.ignore
    def build_head(
            self,
            num_classes: int = 0,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            norm: Optional[nn.Module] = None,
            head_norm_layer: Optional[Callable[..., nn.Module]] = None,
            head: Optional[nn.Module] = None,
            device=None,
            dtype=None,
    ):
        """``self.norm`` (the final norm on the map; ``nn.Identity`` when None), ``self.head`` (``head``, or a
        :class:`~backbones.layers.Head` over ``num_features`` with ``head_norm_layer`` on the pooled vector) and
        ``head_hidden_size``."""
        self.norm = norm if norm is not None else nn.Identity()
        if head is None:
            head = Head(
                self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, norm_layer=head_norm_layer,
                device=device, dtype=dtype)
        self.head = head
        self.head_hidden_size = _pre_logits_width(head)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The relative position tables (``relative_position_bias_table``, timm's convention for MaxViT-style
        tables), if any; timm's optimizer factory already excludes the 1-D parameters (norms, biases, layer scales).
        A family with other position parameters names them."""
        return {n for n, _ in self.named_parameters() if n.endswith('relative_position_bias_table')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, **head_kwargs):
        """A new classifier (and pooling, when ``global_pool`` is given); ``head_kwargs`` go to the head's ``reset``
        (timm's ``NormMlpClassifierHead``: ``reset_other=True`` also drops its norm and pre-logits layer)."""
        check_num_classes(self._model_name, num_classes)
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, **head_kwargs, **get_device_dtype(self))
        self.head.train(self.training)
        self.head_hidden_size = _pre_logits_width(self.head)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of each level (``indices``: None = all, n = the last n, or a list; the stem's output is level 0
        when ``stem_feature``, then one per stage), and the final features.

        ``norm=True`` applies the final norm to the last stage's tap; ``stop_early`` skips the stages after the
        last requested tap.
        """
        assert output_fmt == 'NCHW', 'output_fmt must be NCHW for this model'
        self._check_input(x)
        intermediates = []
        first = 1 if self.stem_feature else 0  # level of stages[0]
        take_indices, max_index = check_feature_indices(len(self.stages) + first, indices, self._model_name)
        last_index = len(self.stages) + first - 1
        x = self.stem(x)
        if first == 1 and 0 in take_indices:
            intermediates.append(x)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1 - first]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i + first in take_indices:
                intermediates.append(self.norm(x) if norm and i + first == last_index else x)
        if intermediates_only:
            return intermediates
        if max_index == last_index or not stop_early:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last tap in ``indices``; returns the taps kept.

        ``prune_norm`` drops the final norm and ``prune_head`` the head's layers (``head.prune``: all but an empty
        pool); cutting any stage drops both, since they are sized for the last stage.
        """
        take_indices, max_index = self._prune_stages(indices)
        prune_end = max_index < len(self.feature_info) - 1
        if prune_norm or prune_end:  # the final norm is sized for the last stage
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:  # so is a head norm; the pruned model returns raw stage features
            self.num_classes = 0
            self.head.prune(self.num_features)
            self.head.train(self.training)
            self.head_hidden_size = _pre_logits_width(self.head)
        return take_indices

    @torch.jit.ignore
    def _prune_stages(self, indices: Union[int, List[int]]) -> Tuple[List[int], int]:
        """Drop the stages after the deepest level in ``indices`` (checked); returns the levels and the deepest."""
        first = 1 if self.stem_feature else 0
        take_indices, max_index = check_feature_indices(len(self.stages) + first, indices, self._model_name)
        self.stages = self.stages[:max_index + 1 - first]
        return take_indices, max_index

    def _input_weight(self) -> Optional[torch.Tensor]:
        """The first parameter (the input layer's weight), whose dtype ``check_input`` expects of the input
        (:func:`~backbones.layers.helpers.input_dtype_ref`: an FX graph reads it at run time, so it follows
        ``.half()``); None in TorchScript, which skips the dtype check."""
        weight: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():
            weight = input_dtype_ref(self)
        return weight

    def _check_input(self, x: torch.Tensor):
        check_input(
            x, self.in_chans, self.input_divisor, self._model_name, self.min_input_size, self._input_weight())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
