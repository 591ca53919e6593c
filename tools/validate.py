#!/usr/bin/env python
"""Top-1 / top-5 of zoo (or timm) models with their own eval transforms; the work is in ``backbones.train``.

    python tools/validate.py --checkpoint output/train/run1/model_best.pth.tar   # model, transforms: the checkpoint's
    python tools/validate.py --model local-dir:output/train/run1/best           # a save_for_hf export
    python tools/validate.py --model se_resnet50 --pretrained --data-dir /data/imagenet/val
    python tools/validate.py --model 'rednet*' --pretrained --data-dir /data/imagenet --results-file rednet.csv

Without --data-dir: the embedded shapes dataset (val split). --checkpoint uses the EMA weights when the checkpoint
holds them (--no-ema: the raw weights).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's backbones, whatever is installed
from backbones.train.validate import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
