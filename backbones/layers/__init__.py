"""Blocks shared by several zoo families (timm.layers is used as is wherever it already has the piece)."""
from .bottleneck import Bottleneck, MixerFn
from .conv import ConvNormAct, LayerType, same_padding
from .head import Head
from .helpers import check_input
from .involution import Involution
from .res2 import Res2Split
from .se import SqueezeExcite
from .shortcut import Shortcut
from .sk import SelectiveKernel, SelectiveKernelAttn, sk_attn_chs
from .stage import Stage, drop_path_schedule
from .stem import ConvStem, stem_pool
