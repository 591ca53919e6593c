#!/usr/bin/env python
"""Train a zoo (or timm) model with timm train.py's flags; the loop lives in ``backbones.train``.

    python tools/train.py                                   # embedded shapes dataset, quick-start defaults, CPU ok
    python tools/train.py --model sknet50 --data-dir /data/imagenet -b 64 --amp
    python tools/train.py -c configs/involution/rednet26.yaml --data-dir /data/imagenet
    torchrun --nproc_per_node=8 tools/train.py -c configs/senet/se_resnet50.yaml --data-dir /data/imagenet
    python tools/train.py --experiment run1 --resume auto   # continue <output>/run1 from last.pth.tar
    python tools/train.py --model rednet26 --pretrained-path out/best --num-classes 5 --data-dir pets/  # fine-tune

Writes into --output/--experiment: args.yaml, summary.csv, summary.png, checkpoint-<epoch>.pth.tar (best
--checkpoint-hist), last.pth.tar, model_best.pth.tar and best/ (save_for_hf: config.json + model.safetensors).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's backbones, whatever is installed
from backbones.train import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
