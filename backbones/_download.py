"""Download one file into a cache folder the way huggingface_hub does: locked, resumable, atomic, offline-aware.

The transfer is huggingface_hub's own ``http_get`` (retries a dropped connection a few times, resuming with a
``Range`` request; progress bar); around it, huggingface_hub's conventions: a ``WeakFileLock`` under ``.locks/`` so
two processes never download the same file at once, the bytes go to ``<name>.incomplete`` and are renamed into place
only when complete, a transfer that breaks off for good leaves that partial file for the next call to resume, and
``HF_HUB_OFFLINE=1`` makes no request at all. Every failure is one :class:`DownloadError` line naming the URL.
"""
from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import WeakFileLock

__all__ = ['DownloadError', 'download', 'offline', 'partial_path']


class DownloadError(RuntimeError):
    """A file could not be downloaded (HTTP error, no network, offline mode, interrupted transfer)."""


def offline() -> bool:
    """``HF_HUB_OFFLINE=1`` (read by huggingface_hub when it is imported, as for every Hub download)."""
    return bool(constants.HF_HUB_OFFLINE)


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + '.incomplete')


def _get(url: str, part: Path, name: str) -> None:
    """Append the rest of ``url`` to ``part`` (restarting from zero when the server ignores the range)."""
    resume = part.stat().st_size if part.exists() else 0
    with open(part, 'ab') as f:
        http_get(url, f, resume_size=resume, displayed_filename=name)


def download(url: str, dest: Path) -> Path:
    """``dest``, downloading ``url`` into it first unless it is already there."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    if offline():
        raise DownloadError(f'{dest.name} is not in the cache ({dest.parent}) and HF_HUB_OFFLINE=1 forbids '
                            f'downloading it from {url}')
    dest.parent.mkdir(parents=True, exist_ok=True)
    locks = dest.parent / '.locks'
    locks.mkdir(exist_ok=True)
    part = partial_path(dest)
    with WeakFileLock(locks / f'{dest.name}.lock'):
        if dest.is_file():  # another process finished it while we waited
            return dest
        try:
            _get(url, part, dest.name)
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status == 416 and part.exists():  # the partial file is not a prefix of the file any more: restart
                part.unlink()
                return download(url, dest)
            part.unlink(missing_ok=True)  # an error page, not the file
            raise DownloadError(f'cannot download {url}: HTTP {status} '
                                f'{e.response.reason_phrase if e.response is not None else ""}'.rstrip()) from e
        except OfflineModeIsEnabled as e:
            raise DownloadError(f'{dest.name} is not in the cache and HF_HUB_OFFLINE=1 forbids downloading {url}') \
                from e
        except Exception as e:  # noqa: BLE001 - connection refused / reset, timeout, disk full: one line, resumable
            have = part.stat().st_size if part.exists() else 0
            if not have:
                part.unlink(missing_ok=True)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            kept = (f'; the {have} bytes received are kept in {part.name} and the next attempt resumes from there'
                    if have else '')
            raise DownloadError(f'download of {url} failed ({type(e).__name__}: {first}){kept}') from e
        os.replace(part, dest)
    return dest
