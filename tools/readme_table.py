#!/usr/bin/env python
"""Regenerate README.md's model table from the registry (``--check``: fail if it is out of date)."""
import argparse
import pathlib
import sys

import backbones  # noqa: F401  (registers the zoo)
from backbones.docs import render_readme

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--check', action='store_true', help='exit 1 if README.md is not current')
    args = ap.parse_args(argv)
    text = README.read_text()
    new = render_readme(text)
    if args.check:
        if new != text:
            print('README.md model table is out of date: run python tools/readme_table.py', file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == '__main__':
    sys.exit(main())
