#!/usr/bin/env python
"""Params and GMACs (one multiply-add = one, the papers' "FLOPs") of zoo models beside the official figures.

    python tools/flops.py                          # every zoo model
    python tools/flops.py se_resnet50 'res2net*'   # names and fnmatch patterns (a timm name works too)
    python tools/flops.py rednet26 --input-size 3 256 256
    python tools/flops.py --per-module rednet26 --depth 4
    python tools/flops.py --markdown               # or --csv

Columns: params (M), official params (M), their difference (count), GMACs, paper / official GMACs (only at the
default input size) and the difference in %. The counting lives in ``backbones.flops``.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's backbones, whatever is installed
import backbones  # noqa: E402,F401  (registers the zoo)
from backbones import _cli  # noqa: E402
from backbones.flops import compare, count, format_rows, resolve_names  # noqa: E402


def main(argv=None) -> int:
    """0 on success; any error is one line on stderr, exit status 1 (2 for bad arguments)."""
    return _cli.run(_main, argv)


def _main(argv=None) -> int:
    ap = _cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('models', nargs='*', help='zoo names or fnmatch patterns (default: every zoo model)')
    ap.add_argument('--input-size', type=int, nargs='+', metavar='N',
                    help='C H W, H W or one side (default: each model\'s pretrained_cfg input_size)')
    ap.add_argument('--per-module', metavar='NAME', help='print the per-module table of one model')
    ap.add_argument('--depth', type=int, default=3, help='module depth of the --per-module table (default 3)')
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument('--csv', action='store_const', const='csv', dest='fmt', help='CSV output')
    fmt.add_argument('--markdown', action='store_const', const='markdown', dest='fmt', help='markdown table')
    args = ap.parse_args(argv)

    size = None
    if args.depth < 1:
        ap.error(f'--depth {args.depth}: expected 1 or more')
    if args.input_size:
        if len(args.input_size) not in (1, 2, 3):
            ap.error('--input-size takes C H W, H W or one side')
        if any(v < 1 for v in args.input_size):
            ap.error(f'--input-size {" ".join(map(str, args.input_size))}: every value must be 1 or more')
        size = args.input_size[0] if len(args.input_size) == 1 else tuple(args.input_size)

    if args.per_module:
        res = count(args.per_module, input_size=size, per_module=True, table_depth=args.depth)
        print(res)
        print(res.table)
        if res.skipped_ops:
            print('not counted (paper convention):', ', '.join(sorted(res.skipped_ops)))
        if not args.models:
            return 0
        print()

    try:
        names = resolve_names(args.models)
    except ValueError as e:
        ap.error(str(e))
    print(format_rows(compare(names, input_size=size), args.fmt or 'text'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
