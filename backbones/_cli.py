"""What every ``tools/*.py`` script shares: bad input is ONE line on stderr (``error: ...``) and a non-zero exit.

:class:`ArgumentParser` is argparse's, with errors printed as one line (no usage block, exit status 2);
:func:`run` calls a script's ``main`` and turns any exception into that line (exit status 1; 130 for Ctrl-C).
``BACKBONES_TRACEBACK=1`` re-raises instead, for a bug report. :func:`setup_logging` is the scripts' logging.
"""
import argparse
import logging
import os
import sys
from typing import Callable, Optional, Sequence

__all__ = ['ArgumentParser', 'one_line', 'run', 'setup_logging']

_LIMIT = 1000  # characters: a long key listing is cut, the line stays readable


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line: ``error: <message> (see <prog> --help)``, exit 2."""

    def error(self, message: str):
        self.exit(2, f'error: {message} (see {self.prog} --help)\n')


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line.

    An error raised in a DataLoader worker arrives wrapped ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."): its last line holds the original message, after the exception's qualified name. A multi-line
    message (a key listing) is joined with '; '.
    """
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if 'Original Traceback' in text:
        last = lines[-1]
        name = last.split(':', 1)[0]
        return last[len(name) + 1:].strip() if ':' in last and ' ' not in name else last
    line = lines[0] + (' ' + '; '.join(lines[1:]) if len(lines) > 1 else '')
    return line if len(line) <= _LIMIT else line[:_LIMIT - 4] + ' ...'


def run(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)``, with every exception reported as one ``error:`` line: exit 1, or 130 after Ctrl-C."""
    if os.environ.get('BACKBONES_TRACEBACK'):
        return main(argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        print('error: interrupted (Ctrl-C)', file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place where any failure becomes one line
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 1


def setup_logging() -> None:
    """timm's default logging (INFO to stderr), once per process."""
    if not logging.getLogger().handlers:
        from timm.utils import setup_default_logging
        setup_default_logging()
