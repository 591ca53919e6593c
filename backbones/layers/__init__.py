"""Blocks shared by several zoo families (timm.layers is used as is wherever it already has the piece)."""
from .activation import InplaceGELU
from .attention import Attention, sdpa
from .bottleneck import Bottleneck, MixerFn, resnext_width
from .channel_attention import ChannelAttention
from .conv import (
    Conv2dSame,
    ConvNormAct,
    LayerType,
    PaddedConv2d,
    PointwiseConv2d,
    create_conv2d_same,
    pad_same,
    same_padding,
    strided_conv2d,
)
from .cross_attention import CrossAttention
from .downsample import PreNormDownsample, pad_nchw
from .fuse import fuse_conv_bn, scale_conv_
from .head import POOL_TYPES, DistilledConvHead, Head, NormMlpHead, check_pool_type
from .helpers import check_feature_indices, check_img_size, check_input, check_model_kwargs, refuse_img_size
from .init import init_weights_
from .involution import Involution
from .mbconv import MBConv, MBConvShortcut, avg_pool_same
from .mlp import Mlp
from .msa_conv import MSAConv2d, MSAConvAttention, msa_conv_av, msa_conv_qk
from .oversize_conv import OversizeConv2d, oversize_conv_matmul, toeplitz_taps
from .partition_attention import PartitionAttention
from .patch_embed import PatchEmbed
from .pos_conv import PosConv, RepCPE, identity_folded, residual_dwconv
from .pos_embed import pos_embed_for_grid, resize_pos_embed_in_state_dict
from .relpos import RelPosBias, rel_pos_index, resize_rel_pos_table
from .res2 import Res2Split
from .routing_attention import BiLevelRoutingAttention, masked_routed_attention, routed_attention
from .se import SqueezeExcite
from .shortcut import Shortcut
from .sk import SelectiveKernel, SelectiveKernelAttn, sk_attn_chs
from .stage import Stage, StageStride, check_output_stride, drop_path_schedule, stage_strides
from .stem import ConvStem, SameConvStem, stem_pool, stem_pool_min_input
from .subsampled_attention import GlobalSubsampledAttention, LocallyGroupedAttention
from .tracing import contiguous_for_export, eager_channels_last, is_exporting, is_tracing
from .transformer import TransformerBlock
from .window import (
    contiguous_reshape,
    crop,
    grid_partition,
    grid_reverse,
    pad_to_multiple,
    round_up,
    window_partition,
    window_reverse,
)
from .window_taps import window_dot, window_taps, window_weighted_sum
