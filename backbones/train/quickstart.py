"""The quick start's values: what ``python tools/train.py`` with no data and no flags trains with.

Data only (no imports of the package), so that the flag parser (:mod:`.args`, whose ``--help`` lists them) and the
run defaults (:mod:`.defaults`, which apply them) both read it without importing each other.
"""
from typing import Dict

__all__ = ['EMBEDDED_DEFAULTS', 'MODEL_BOUND']

# The quick start: measured on a 2-core CPU, README "Quick start" states the wall time and the top-1 these reach.
EMBEDDED_DEFAULTS: Dict[str, object] = dict(
    model='se_resnet50',
    # SE-ResNet at one block per stage and a quarter of the width (0.56M params): plain convolutions train fast on a
    # CPU (measured, 1 thread: ~3.5x the images/s of the 0.47M-param quarter-width rednet26 this replaces)
    model_kwargs={'depths': [1, 1, 1, 1], 'widths': [64, 128, 256, 512]},
    channels_last=True,  # measured 1.4x faster training steps on the CPU for this model (applied with it only)
    img_size=64,  # the dataset's own size (measured: 32 px costs ~20 points of top-1 after 15 epochs)
    crop_pct=1.0,  # eval: the whole image (a shape may touch the border)
    scale=[0.75, 1.0],  # train: random-resized crops that keep most of the shape (0.5 cuts shapes off)
    color_jitter=0.0,  # colours are random in the dataset already
    batch_size=32,
    validation_batch_size=100,
    epochs=30,  # ~2.5 min on an idle 2-core CPU
    opt='adamw',
    lr=4e-3,  # measured at 30 epochs: 93.8 % top-1 (2e-3: 89.4 %)
    weight_decay=0.05,
    warmup_epochs=1,
    sched_on_updates=True,  # warm up (and decay) per step: a short run has no epoch to spare at warmup_lr
    # one data worker, the other core(s) compute (configure_cpu_threads): the worker needs ~1/5 of the compute
    # thread's CPU time (measured), so on 2 cores this beats 2 compute threads that also decode and augment
    workers=1,
    checkpoint_hist=1,  # one numbered checkpoint (plus last / model_best): no time or disk spent on ten
    log_interval=10,
)

# Quick-start values that belong to the default model: applied only when --model is not given either.
MODEL_BOUND = ('model_kwargs', 'channels_last')
