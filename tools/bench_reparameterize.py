#!/usr/bin/env python
"""Eager inference speed of a model before and after ``backbones.optimize_for_inference`` (RapidNet's
re-parameterisation, BatchNorm folding), on the same random non-trivial weights, with the largest logit difference.

    python tools/bench_reparameterize.py --model rapidnet_ti
    python tools/bench_reparameterize.py --model rapidnet_b --batch 8 --size 224 --threads 4 --rounds 9

A shortcut for ``python tools/benchmark.py --models <model> --ref none`` (see that tool for every option).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='rapidnet_ti')
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--rounds', type=int, default=7)
    ap.add_argument('--channels-last', action='store_true')
    args = ap.parse_args(argv)
    return benchmark.main([
        '--models', args.model, '--ref', 'none', '--batch', str(args.batch), '--img-size', str(args.size),
        '--threads', str(args.threads), '--rounds', str(args.rounds), '--no-flops', '--no-memory',
        *(['--channels-last'] if args.channels_last else [])])


if __name__ == '__main__':
    raise SystemExit(main())
