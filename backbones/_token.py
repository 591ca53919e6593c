"""The token-model skeleton: what :mod:`backbones._features` is for stage-based CNNs, this is for ViT-style models.

A token model runs ``patch_embed -> (+ pos_embed) -> blocks -> norm -> pool -> head``:

- ``patch_embed`` (:class:`backbones.layers.PatchEmbed`) turns the image into a channels-last grid of patch tokens
  ``[B, gh, gw, D]``, to which the patch part of the absolute position embedding is added, resampled to the actual
  grid (:func:`backbones.layers.pos_embed_for_grid`), so any input whose sides are multiples of the patch size works;
- the blocks run on that grid until block ``prefix_at``, where the grid is flattened to ``[B, N, D]`` and the prefix
  (class) tokens are put in front: ``[B, P + N, D]``. ViT-style models insert them at the input (``prefix_at = 0``);
  ConViT inserts its class token after the last GPSA block, whose attention reads the grid size off the tensor;
- ``forward_features`` returns the tokens ``[B, P + N, D]`` after the final norm (the grid, flattened, when the model
  has no prefix tokens); ``forward_head`` pools them with timm's ``global_pool_nlc`` (``'token'``: the class token,
  ``'avg'`` / ``'max'`` / ``'avgmax'``: over the patch tokens, ``''``: none) and applies ``head_drop`` and ``head``
  (an ``nn.Linear``; timm's ViT key layout).

:class:`TokenFeatureMixin` gives such a model timm's contract (``forward_intermediates`` per block with
``output_fmt`` NCHW / NLC and ``return_prefix_tokens``, ``prune_intermediate_layers``, ``set_input_size``,
``reset_classifier``, ``group_matcher``, ``no_weight_decay``, grad checkpointing) from these attributes:

- ``patch_embed``, ``patch_size`` (int), ``input_divisor`` (= ``patch_size``: input sides must be multiples of it),
  ``grid_size`` (the grid ``pos_embed`` is sized for), ``img_size``;
- ``pos_embed`` (``[1, pos_embed_prefix + gh * gw, D]`` or ``None``) and ``pos_embed_prefix`` (its prefix slots);
- ``cls_token`` (``[1, 1, D]`` or ``None``), ``num_prefix_tokens``, ``prefix_at``, ``pos_drop``;
- ``blocks`` (``nn.Sequential``), ``norm``, ``head_drop``, ``head``, ``global_pool``;
- ``feature_info`` (:func:`token_feature_info`: one entry per block), ``num_features``, ``head_hidden_size``,
  ``in_chans``, ``_model_name``, ``grad_checkpointing``.

:class:`MultiBranchTokenMixin` is the same contract for models whose branches run side by side and exchange
information inside their blocks (CrossViT): every branch has its own patch embedding, class token, position table,
norm and head; ``forward_features`` returns the list of the branches' tokens; features are indexed branch-major
(:func:`branch_feature_info`). It is built from the same functions: :func:`join_prefix`, :func:`tap_to_grid`,
:func:`format_taps` and :func:`backbones.layers.pos_embed_for_grid` /
:func:`backbones.layers.resize_pos_embed_in_state_dict`.
"""
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype, global_pool_nlc, resample_abs_pos_embed, to_2tuple
from timm.models import checkpoint

from ._timm import update_model_input_size
from .layers.helpers import check_feature_indices, check_img_size, check_input, check_num_classes, input_dtype_ref
from .layers.pos_embed import pos_embed_for_grid

__all__ = [
    'TokenFeatureMixin', 'MultiBranchTokenMixin', 'token_feature_info', 'branch_feature_info', 'branch_take_indices',
    'check_global_pool', 'join_prefix', 'tap_to_grid', 'format_taps', 'POOL_TYPES', 'BRANCH_POOL_TYPES',
]

POOL_TYPES = ('', 'token', 'avg', 'max', 'avgmax')
# multi-branch models always pool: the branches differ in width and token count (no '')
BRANCH_POOL_TYPES = POOL_TYPES[1:]

# call_function leaves for every FX tracer (plain ``torch.fx.symbolic_trace``, torchvision's feature extraction,
# ``torch.ao``'s ``prepare_fx``), not only timm's: ``torch.fx.wrap`` patches the globals of the module it is called in
torch.fx.wrap('check_input')
torch.fx.wrap('pos_embed_for_grid')


def token_feature_info(depth: int, dim: int, reduction: int) -> List[Dict]:
    """One feature per block (``blocks.<i>``), all of width ``dim`` at the patch stride ``reduction``."""
    return [dict(num_chs=dim, reduction=reduction, module=f'blocks.{i}') for i in range(depth)]


def branch_feature_info(num_blocks: int, dims: Sequence[int], reductions: Sequence[int]) -> List[Dict]:
    """Features of a multi-branch model, branch-major: index ``b * num_blocks + i`` is branch ``b``'s patch tokens
    after block ``i`` (module ``blocks.<i>.blocks.<b>``, the branch's part of that block, which computes them:
    a name per level, as tools that pick levels by module name need). List the branches by non-decreasing
    reduction (timm's ``FeatureInfo`` requires it)."""
    return [dict(num_chs=d, reduction=r, module=f'blocks.{i}.blocks.{b}')
            for b, (d, r) in enumerate(zip(dims, reductions)) for i in range(num_blocks)]


def branch_take_indices(
        num_branches: int, num_blocks: int, indices: Optional[Union[int, List[int]]],
        model: str = 'model') -> Tuple[List[int], int]:
    """:func:`backbones.layers.check_feature_indices` over branch-major features (None = all, n = the last n, or a
    list; a clear ``ValueError`` for a bad set), and the last block that a tap needs."""
    take_indices, _ = check_feature_indices(num_branches * num_blocks, indices, model)
    return take_indices, max(i % num_blocks for i in take_indices)


def check_global_pool(global_pool: str, num_prefix_tokens: int, pool_types: Sequence[str] = POOL_TYPES):
    """Pool types of token models, one ``ValueError`` listing the valid ones (``pool_types``: the model's, by
    default :data:`POOL_TYPES`); ``'token'`` needs a class token."""
    if not isinstance(global_pool, str):
        raise TypeError(f'global_pool must be a string, one of {tuple(pool_types)}; got {global_pool!r}')
    if global_pool not in pool_types:
        valid = ', '.join(repr(p) for p in pool_types if p)
        raise ValueError(f"unknown global_pool {global_pool!r}: valid are {valid}"
                         + (" ('' = no pooling)" if '' in pool_types else ''))
    if global_pool == 'token' and num_prefix_tokens == 0:
        raise ValueError("global_pool 'token' needs a class token, and this model has none")


def join_prefix(x: torch.Tensor, prefix: Optional[torch.Tensor]) -> torch.Tensor:
    """Grid ``[B, gh, gw, D]`` -> tokens ``[B, P + gh * gw, D]`` with ``prefix`` ``[B, P, D]`` (or none) in front."""
    x = x.flatten(1, 2)
    return x if prefix is None else torch.cat((prefix, x), dim=1)


def tap_to_grid(x: torch.Tensor, grid: Tuple[int, int], num_prefix_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[B, P + gh * gw, D]`` -> (patch grid ``[B, gh, gw, D]``, prefix tokens ``[B, P, D]``)."""
    return x[:, num_prefix_tokens:].reshape(x.shape[0], grid[0], grid[1], x.shape[-1]), x[:, :num_prefix_tokens]


def format_taps(taps: List[torch.Tensor], output_fmt: str) -> List[torch.Tensor]:
    """Channels-last grids ``[B, gh, gw, D]`` -> ``'NCHW'`` maps (contiguous) or ``'NLC'`` tokens ``[B, N, D]``."""
    if output_fmt == 'NCHW':
        return [t.permute(0, 3, 1, 2).contiguous() for t in taps]
    return [t.flatten(1, 2) for t in taps]


class _TokenContract:
    """What both token mixins share: timm's parameter groups (tokens and embeddings, then each block, the final
    norm last), grad checkpointing and the classifier getter."""

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^cls_token|^pos_embed|^patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def _check_input(self, x: torch.Tensor):
        """``check_input`` with the dtype of the patch embedding (the input layer) and the model's ``input_divisor``."""
        weight: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():  # TorchScript cannot read the autocast state; torch's own error applies
            weight = input_dtype_ref(self.patch_embed)  # the input layer's dtype is the one the input must have
        check_input(x, self.in_chans, self.input_divisor, self._model_name, weight=weight)


class TokenFeatureMixin(_TokenContract):
    """timm's model contract for ``patch_embed -> blocks -> norm -> head`` token models (see module docstring)."""

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed', 'cls_token'}

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        check_num_classes(self._model_name, num_classes)
        self.num_classes = num_classes
        if global_pool is not None:
            check_global_pool(global_pool, self.num_prefix_tokens)
            self.global_pool = global_pool
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)
        self.head_hidden_size = self.num_features

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None, patch_size=None):
        """Re-size the position embedding table to ``img_size`` (sides: multiples of the patch size) in place.

        Any input size already works without this (the table is resampled on the fly); after it, ``img_size`` is
        the size that needs no resampling, and hub exports record it. The patch size cannot change.
        """
        if patch_size is not None and to_2tuple(patch_size) != to_2tuple(self.patch_size):
            raise ValueError(f'{self._model_name}: the patch size ({self.patch_size}) cannot be changed')
        if img_size is None:
            return
        img_size = check_img_size(img_size, self._model_name, divisor=self.patch_size)  # before any resampling
        grid = (img_size[0] // self.patch_size, img_size[1] // self.patch_size)
        if self.pos_embed is not None and grid != tuple(self.grid_size):
            with torch.no_grad():
                pos = resample_abs_pos_embed(
                    self.pos_embed, new_size=list(grid), old_size=list(self.grid_size),
                    num_prefix_tokens=self.pos_embed_prefix)
            self.pos_embed = nn.Parameter(pos, requires_grad=self.pos_embed.requires_grad)
        self.grid_size = grid
        self.img_size = img_size
        update_model_input_size(self, img_size)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Image -> (patch grid ``[B, gh, gw, D]`` with its position embedding, prefix tokens ``[B, P, D]`` or None)."""
        self._check_input(x)
        x = self.patch_embed(x)
        prefix_pos: Optional[torch.Tensor] = None
        if self.pos_embed is not None:
            prefix_pos, pos = pos_embed_for_grid(
                self.pos_embed, (x.shape[1], x.shape[2]), self.grid_size, self.pos_embed_prefix)
            x = x + pos
        prefix: Optional[torch.Tensor] = None
        if self.cls_token is not None:
            prefix = self.cls_token.expand(x.shape[0], -1, -1)
            if prefix_pos is not None and self.pos_embed_prefix > 0:  # the class token has a position slot (ViT)
                prefix = self.pos_drop(prefix + prefix_pos)
        return self.pos_drop(x), prefix

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The patch tokens after each block in ``indices`` (None = all, n = last n, or a list), and the final
        features (``forward_features``).

        Taps are ``'NCHW'`` maps ``[B, D, gh, gw]`` or ``'NLC'`` tokens ``[B, gh * gw, D]``, prefix tokens removed;
        ``return_prefix_tokens`` makes each tap a ``(patches, prefix [B, P, D])`` pair (``P = 0`` for blocks before
        the prefix tokens are inserted). ``norm`` applies the final norm to every tap (all blocks share its width,
        as in timm's ViTs); ``stop_early`` runs no block after the last tap.
        """
        assert output_fmt in ('NCHW', 'NLC'), 'output_fmt must be NCHW or NLC'
        take_indices, max_index = check_feature_indices(len(self.blocks), indices, self._model_name)
        x, prefix = self._embed(x)
        grid = (x.shape[1], x.shape[2])
        if torch.jit.is_scripting() or not stop_early:  # TorchScript cannot slice a Sequential
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_index + 1]
        taps: List[torch.Tensor] = []
        prefixes: List[torch.Tensor] = []
        num_blocks = 0
        for i, block in enumerate(blocks):
            if i == self.prefix_at:
                x = join_prefix(x, prefix)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            num_blocks += 1
            if i in take_indices:
                y = self.norm(x) if norm else x
                if i < self.prefix_at:  # still the grid, no prefix tokens yet
                    taps.append(y)
                    prefixes.append(y[:, 0, :0])  # [B, 0, D]
                else:
                    patches, prefix_tokens = tap_to_grid(y, grid, self.num_prefix_tokens)
                    taps.append(patches)
                    prefixes.append(prefix_tokens)
        taps = format_taps(taps, output_fmt)
        if return_prefix_tokens and not torch.jit.is_scripting():
            taps = list(zip(taps, prefixes))
        if intermediates_only:
            return taps
        if num_blocks <= self.prefix_at:
            x = x.flatten(1, 2)
        return self.norm(x), taps

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last tap in ``indices``; returns the taps kept.

        When the class token would be inserted after the kept blocks it is dropped (and with it a ``'token'``
        head); ``prune_norm`` drops the final norm, ``prune_head`` the pooling and classifier.
        """
        take_indices, max_index = check_feature_indices(len(self.blocks), indices, self._model_name)
        self.blocks = self.blocks[:max_index + 1]
        if max_index < self.prefix_at and self.num_prefix_tokens > 0:
            self.cls_token = None
            self.num_prefix_tokens = 0
            prune_head = prune_head or self.global_pool == 'token'
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, prefix = self._embed(x)
        for i, block in enumerate(self.blocks):
            if i == self.prefix_at:
                x = join_prefix(x, prefix)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
        if len(self.blocks) <= self.prefix_at:  # pruned before the class token: flatten the grid
            x = x.flatten(1, 2)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = global_pool_nlc(x, pool_type=self.global_pool, num_prefix_tokens=self.num_prefix_tokens)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MultiBranchTokenMixin(_TokenContract):
    """timm's model contract for token models with parallel branches (CrossViT), given by the model:

    - ``_embed(x) -> (tokens, grids)``: per branch, the tokens ``[B, 1 + gh * gw, D_b]`` (class token first, position
      embedding added) and the patch grid ``(gh, gw)``;
    - ``branch_grid_sizes(img_size)``: the patch grid of every branch for an ``(H, W)`` input;
    - ``blocks`` (``nn.ModuleList``: each block maps the list of branch tokens to a new list) and
      ``num_feature_blocks`` (``len(blocks)`` as built: feature indices keep their meaning after pruning);
    - per branch, in ``nn.ModuleList`` / ``nn.ParameterList``: ``patch_embed``, ``cls_token``, ``pos_embed`` (one
      class-token slot, then the ``grid_size[b]`` patch table), ``norm``, ``head``; ``embed_dim`` and ``patch_size``
      (tuples), ``grid_size`` (list of grids), ``img_size``;
    - ``num_branches``, ``in_chans``, ``input_divisor`` (input sides must be multiples of it), ``head_drop``,
      ``global_pool``, ``num_classes``, ``num_features`` = ``head_hidden_size`` (the branch widths summed),
      ``feature_info`` (:func:`branch_feature_info`), ``_model_name``, ``grad_checkpointing``.

    ``forward_features`` returns the list of the branches' tokens after their norms; ``forward_head`` pools each
    branch (``'token'``, ``'avg'``, ``'max'``, ``'avgmax'``; ``''`` does not exist, the branches differ in width and
    token count), ``pre_logits`` concatenates the pooled vectors, the logits are the mean of the branch heads.
    """

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {f'{name}.{b}' for name in ('cls_token', 'pos_embed') for b in range(self.num_branches)}

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        check_num_classes(self._model_name, num_classes)
        self.num_classes = num_classes
        if global_pool is not None:
            check_global_pool(global_pool, 1, BRANCH_POOL_TYPES)
            self.global_pool = global_pool
        dd = get_device_dtype(self)
        self.head = nn.ModuleList([
            nn.Linear(d, num_classes, **dd) if num_classes > 0 else nn.Identity() for d in self.embed_dim])
        self.head.train(self.training)

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None, patch_size=None):
        """Re-size every branch's position table to its grid at ``img_size`` (sides: multiples of
        ``input_divisor``) in place; any input size already works without this (see ``TokenFeatureMixin``)."""
        if patch_size is not None:
            raise ValueError(f'{self._model_name}: the patch sizes ({self.patch_size}) cannot be changed')
        if img_size is None:
            return
        img_size = check_img_size(img_size, self._model_name, divisor=self.input_divisor)  # before any resampling
        grids = self.branch_grid_sizes(img_size)
        for b, grid in enumerate(grids):
            if grid != tuple(self.grid_size[b]):
                with torch.no_grad():
                    pos = resample_abs_pos_embed(
                        self.pos_embed[b], new_size=list(grid), old_size=list(self.grid_size[b]), num_prefix_tokens=1)
                self.pos_embed[b] = nn.Parameter(pos, requires_grad=self.pos_embed[b].requires_grad)
        self.grid_size = grids
        self.img_size = img_size
        update_model_input_size(self, img_size)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[List[torch.Tensor], List[torch.Tensor]]]:
        """The patch tokens of each branch after each block in ``indices`` (branch-major: index ``b * K + i`` is
        branch ``b`` after block ``i``, ``K = num_feature_blocks``; None = all, n = the last n, or a list), and the
        final features (``forward_features``).

        Taps are ``'NCHW'`` maps ``[B, D_b, gh, gw]`` or ``'NLC'`` tokens ``[B, gh * gw, D_b]``, class token removed
        (``return_prefix_tokens``: ``(patches, class token [B, 1, D_b])`` pairs), in index order. ``norm`` applies
        the branch's final norm to its taps; ``stop_early`` runs no block after the last tap.
        """
        assert output_fmt in ('NCHW', 'NLC'), 'output_fmt must be NCHW or NLC'
        num_blocks = self.num_feature_blocks
        take_indices, max_block = branch_take_indices(self.num_branches, num_blocks, indices, self._model_name)
        xs, grids = self._embed(x)
        if torch.jit.is_scripting() or not stop_early:  # TorchScript cannot slice a ModuleList
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_block + 1]
        taps: List[List[torch.Tensor]] = [[] for _ in range(self.num_branches)]
        prefixes: List[List[torch.Tensor]] = [[] for _ in range(self.num_branches)]
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                xs = checkpoint(block, xs)
            else:
                xs = block(xs)
            for b, branch_norm in enumerate(self.norm):
                if b * num_blocks + i in take_indices:
                    patches, prefix = tap_to_grid(branch_norm(xs[b]) if norm else xs[b], grids[b], 1)
                    taps[b].append(patches)
                    prefixes[b].append(prefix)
        intermediates: List[torch.Tensor] = []
        for branch_taps in taps:  # branch-major, as the indices
            intermediates.extend(format_taps(branch_taps, output_fmt))
        if return_prefix_tokens and not torch.jit.is_scripting():
            intermediates = list(zip(intermediates, sum(prefixes, [])))
        if intermediates_only:
            return intermediates
        final: List[torch.Tensor] = []
        for b, final_norm in enumerate(self.norm):
            final.append(final_norm(xs[b]))
        return final, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last one a tap in ``indices`` needs; returns the taps kept (their indices keep
        their meaning). The fusion into a branch that no kept tap reads stays, unused (as in timm's CrossViT);
        ``prune_norm`` drops the final norms, ``prune_head`` the classifiers (pooled features remain)."""
        take_indices, max_block = branch_take_indices(
            self.num_branches, self.num_feature_blocks, indices, self._model_name)
        self.blocks = self.blocks[:max_block + 1]
        if prune_norm:
            self.norm = nn.ModuleList([nn.Identity() for _ in range(self.num_branches)])
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        xs, _ = self._embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                xs = checkpoint(block, xs)
            else:
                xs = block(xs)
        return [branch_norm(xs[b]) for b, branch_norm in enumerate(self.norm)]

    def forward_head(self, xs: List[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        pooled: List[torch.Tensor] = []
        for x in xs:
            pooled.append(self.head_drop(global_pool_nlc(x, pool_type=self.global_pool, num_prefix_tokens=1)))
        if pre_logits or self.num_classes == 0:
            return torch.cat(pooled, dim=1)
        logits: List[torch.Tensor] = []
        for b, head in enumerate(self.head):
            logits.append(head(pooled[b]))
        return torch.stack(logits).mean(dim=0)  # the mean of the branch heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
