#!/usr/bin/env python
"""Speed of zoo models side by side with a reference, interleaved in one process (library: backbones.bench).

    python tools/benchmark.py --models se_resnet50 sknet50                 # vs their timm twins, same weights
    python tools/benchmark.py --models rednet26 --ref official             # vs the official unfold involution
    python tools/benchmark.py --models biformer_tiny --ref resnet50        # vs any timm model (no parity)
    python tools/benchmark.py --models rapidnet_ti --ref none              # optimize_for_inference vs eager
    python tools/benchmark.py --models davit_t --mode train --threads 2
    python tools/benchmark.py --models maxvit_tiny --device cuda --amp bf16 --channels-last --compile
    python tools/benchmark.py --markdown --mode both                       # regenerate README's speed table
    python tools/benchmark.py --markdown --mode both --update --models sknet50   # re-measure one group of it

Each model runs with its reference and (inference) its optimize_for_inference copy, in alternating rounds; the
speed-up is the median over rounds of reference time / model time from the same round, so a busy machine slows
all contenders alike. On the CPU, times are process CPU time (all threads) by default (--clock). The parity column
is the largest output difference against the reference on the same input (same weights).

--markdown also stores every row in benchmarks/speed.json (--store), the data behind README's table; --update
re-measures only --models and merges them into the stored rows before writing README.
"""
import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backbones  # noqa: E402, F401  (registers the zoo)
from backbones import _cli  # noqa: E402
from backbones.bench import (  # noqa: E402
    README_SUITE,
    SPEED_END,
    SPEED_START,
    BenchConfig,
    benchmark,
    check_benchmark,
    machine_summary,
    merge_rows,
    official_notes,
    readme_speed_block,
    render_readme_speed,
    rows_from_dicts,
    rows_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
STORE = ROOT / 'benchmarks' / 'speed.json'


def build_parser() -> _cli.ArgumentParser:
    ap = _cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', help='zoo model names (default with --markdown: the README suite)')
    ap.add_argument('--ref', default='auto',
                    help="reference: auto (timm twin, else official operator, else none), twin, official, none, "
                         "or any timm model name")
    ap.add_argument('--mode', choices=['infer', 'train', 'both'], default='infer')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--img-size', type=int, default=None, help='input side (default: each model\'s default)')
    ap.add_argument('--threads', type=int, nargs='+', default=[1], help='CPU thread counts, one table each')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--channels-last', action='store_true')
    ap.add_argument('--amp', choices=['bf16'], default=None, help='autocast dtype')
    ap.add_argument('--compile', action='store_true', help='torch.compile every contender')
    ap.add_argument('--rounds', type=int, default=9)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--clock', choices=['auto', 'cpu', 'wall'], default='auto')
    ap.add_argument('--no-optimized', action='store_true', help='leave out the optimize_for_inference rows')
    ap.add_argument('--no-memory', action='store_true', help='skip the peak-memory pass')
    ap.add_argument('--no-flops', action='store_true', help='skip counting GMACs')
    ap.add_argument('--json', type=Path, help='also write every row (with per-round times) to this file')
    ap.add_argument('--markdown', action='store_true', help="write the tables into README.md's speed section")
    ap.add_argument('--readme', type=Path, default=README)
    ap.add_argument('--store', type=Path, default=STORE, help='with --markdown: where the rows are kept')
    ap.add_argument('--update', action='store_true',
                    help='with --markdown: re-measure --models only, keep the other stored rows')
    ap.add_argument('--rows', type=Path,
                    help='take the rows from this --json file (written on this machine) instead of measuring')
    return ap


def parse_args(argv=None):
    """The arguments, every one checked before anything is measured: a bad one is one ``error:`` line, exit 2."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.update and not (args.markdown and (args.models or args.rows)):
        ap.error('--update needs --markdown and --models (or --rows)')
    if not (args.models or args.markdown or args.rows):
        ap.error('give --models (or --markdown for the README suite)')
    for flag, values, lowest in (('--threads', args.threads, 1), ('--batch', [args.batch], 1),
                                 ('--rounds', [args.rounds], 1), ('--warmup', [args.warmup], 0),
                                 ('--img-size', [args.img_size] if args.img_size is not None else [], 1)):
        bad = [v for v in values if v < lowest]
        if bad:
            ap.error(f'{flag} {bad[0]}: expected a whole number >= {lowest}')
    for flag, path in (('--rows', args.rows), ('--store', args.store if args.update else None),
                       ('--readme', args.readme if args.markdown else None)):
        if path is not None and not path.is_file():
            ap.error(f'{flag} {path}: no such file')
    if args.rows:
        try:
            args.loaded_rows = rows_from_dicts(json.loads(args.rows.read_text()))
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            ap.error(f'--rows {args.rows}: not rows written by --json ({_cli.one_line(e)})')
    if args.markdown and not all(m in args.readme.read_text() for m in (SPEED_START, SPEED_END)):
        ap.error(f'--readme {args.readme}: no speed section (the lines {SPEED_START} and {SPEED_END})')
    if args.json is not None and not args.json.parent.is_dir():
        ap.error(f'--json {args.json}: the folder {args.json.parent} does not exist')
    args.names, args.refs = _names_and_refs(args)
    try:
        check_benchmark(args.names, args.refs, device=args.device, img_size=args.img_size)
    except ValueError as e:  # the message names the model, reference, device or size
        ap.error(str(e))
    return args


def _names_and_refs(args):
    if args.rows:
        return [], []
    if args.models:
        suite = dict(README_SUITE) if args.markdown and args.ref == 'auto' else {}  # README's rows keep their refs
        return args.models, [suite.get(n, args.ref) for n in args.models]
    return [n for n, _ in README_SUITE], [r for _, r in README_SUITE]


def main(argv=None) -> int:
    """0 on success; any error is one line on stderr (exit 2 for bad arguments, 1 for anything else)."""
    return _cli.run(_main, argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # parallel work has started (a second call in one process): keep what is set
            pass
    names, refs = args.names, args.refs
    load = os.getloadavg() if hasattr(os, 'getloadavg') else None
    modes = ['infer', 'train'] if args.mode == 'both' else [args.mode]
    rows = list(args.loaded_rows) if args.rows else []
    for mode in modes if names else []:
        for threads in args.threads:
            cfg = BenchConfig(
                mode=mode, batch=args.batch, img_size=args.img_size, threads=threads, device=args.device,
                channels_last=args.channels_last, amp=args.amp, compile=args.compile, rounds=args.rounds,
                warmup=args.warmup, clock=args.clock, memory=not args.no_memory, flops=not args.no_flops)
            rows += benchmark(names, cfg, references=refs, optimized=not args.no_optimized)
            print(rows_markdown([r for r in rows if r.mode == mode and r.threads == threads]), flush=True)
    notes = official_notes(rows)
    for n in notes:
        print(n)
    summary = machine_summary(load if names else None)  # --rows: this process measured nothing
    print(summary)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.markdown and args.update:
        rows = merge_rows(rows_from_dicts(json.loads(args.store.read_text())), rows,
                          order=[name for name, _ in README_SUITE])
        notes = official_notes(rows)
    if args.markdown:
        args.store.parent.mkdir(parents=True, exist_ok=True)
        args.store.write_text(json.dumps([asdict(r) for r in rows], indent=1) + '\n')
        cmd = 'python tools/benchmark.py --markdown ' + ' '.join(argv if argv is not None else sys.argv[1:]).replace(
            '--markdown', '').strip()
        text = readme_speed_block(rows, ' '.join(cmd.split()), summary, notes)
        args.readme.write_text(render_readme_speed(args.readme.read_text(), text))
        print(f'wrote the speed table into {args.readme}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
