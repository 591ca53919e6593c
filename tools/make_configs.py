#!/usr/bin/env python
"""Write configs/<family>/<model>.yaml for every registered zoo model from its family's recipe file,
configs/<family>.recipe.yaml (the values and their sources; format: configs/README.md, renderer: backbones.recipes).

    python tools/make_configs.py              # every family
    python tools/make_configs.py senet twins  # only these families' configs
    python tools/make_configs.py --check      # exit 1, naming them, if configs/ differs from the recipe files
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's backbones, whatever is installed

from backbones import _cli  # noqa: E402
from backbones.recipes import check_configs, write_configs  # noqa: E402


def main(argv=None) -> int:
    """0 when written (or current, with --check); 1 when out of date or on any error (one line on stderr)."""
    return _cli.run(_main, argv)


def _main(argv=None) -> int:
    ap = _cli.ArgumentParser(description=__doc__)
    ap.add_argument('families', nargs='*', help='families to write (default: all)')
    ap.add_argument('--check', action='store_true', help='exit 1 if configs/ differs from the recipe files')
    args = ap.parse_args(argv)
    if args.check:
        problems = check_configs()
        for p in problems:
            print(f'configs/{p} (run python tools/make_configs.py)', file=sys.stderr)
        return 1 if problems else 0
    for path in write_configs(args.families):
        print(f'configs/{path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
