#!/usr/bin/env python
"""Write model_cards/<model>.md for every zoo variant (and model_cards/measured.json, the cached measured figures).

``--check``: exit 1, listing the missing / out-of-date / extra cards, if model_cards/ is not current (measures only
models whose fingerprint changed; ``--recount`` measures every model again).
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's backbones, whatever is installed

import backbones  # noqa: E402,F401  (registers the zoo)
from backbones import _cli  # noqa: E402
from backbones.cards import check_cards, write_cards  # noqa: E402

CARDS = ROOT / 'model_cards'


def main(argv=None) -> int:
    """0 when done (or current, with --check); 1 when out of date or on any error (one line on stderr)."""
    return _cli.run(_main, argv)


def _main(argv=None) -> int:
    ap = _cli.ArgumentParser(description=__doc__)
    ap.add_argument('--check', action='store_true', help='exit 1 if model_cards/ is not current')
    ap.add_argument('--recount', action='store_true', help='measure every model again (ignore the cache)')
    ap.add_argument('--dir', type=pathlib.Path, default=CARDS, help='cards directory (default: model_cards/)')
    args = ap.parse_args(argv)
    if args.check:
        problems = check_cards(args.dir, recount=args.recount)
        if problems:
            print('model cards are out of date (run python tools/make_cards.py):', file=sys.stderr)
            for p in problems:
                print(f'  {p}', file=sys.stderr)
            return 1
        return 0
    changed = write_cards(args.dir, recount=args.recount, log=lambda m: print(m, file=sys.stderr))
    for c in changed:
        print(f'wrote {args.dir.name}/{c}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
