"""A loopback stand-in for the Hugging Face Hub, for tests without internet.

Serves only the endpoints the unmodified ``huggingface_hub`` client (2.x, Xet disabled) uses for
``create_repo`` / ``upload_folder`` / ``hf_hub_download`` (see specs/hub.md §4 option C):

- ``POST /api/repos/create``
- ``POST /api/validate-yaml``
- ``POST /api/models/{repo}/preupload/{rev}``
- ``POST /{repo}.git/info/lfs/objects/batch`` and ``PUT /lfs/{oid}`` (basic transfer)
- ``POST /api/models/{repo}/commit/{rev}`` (NDJSON)
- ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``

Repositories live under a directory (one folder per commit, files by path); branches are kept in memory. Binds
127.0.0.1 on an ephemeral port, serves from a daemon thread, and every request is counted and logged so tests can
assert, for instance, that an offline reload made none.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

_REPO = r'(?P<repo>[\w.-]+/[\w.-]+)'
_LFS_EXTENSIONS = ('.safetensors', '.bin', '.pth', '.pt', '.ckpt', '.npz')


class FakeHub:
    """The server state: repos, branches, LFS objects, and a request log."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.branches: Dict[str, Dict[str, str]] = {}  # repo -> branch -> commit oid
        self.private: Dict[str, bool] = {}
        self.requests: List[Tuple[str, str]] = []
        self.errors: List[str] = []  # handler exceptions (answered with 400, so the client fails fast)
        self.lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}'

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass
        Handler.hub = hub
        self._server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=dict(poll_interval=0.05),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    # -- storage --------------------------------------------------------------------------------------------
    def _commit_dir(self, repo: str, oid: str) -> Path:
        return self.root / 'repos' / repo / oid

    def _lfs_path(self, oid: str) -> Path:
        return self.root / 'lfs' / oid

    def create_repo(self, repo: str, private: bool = False) -> None:
        with self.lock:
            if repo not in self.branches:
                oid = hashlib.sha1(f'init {repo}'.encode()).hexdigest()
                self._commit_dir(repo, oid).mkdir(parents=True)
                self.branches[repo] = {'main': oid}
                self.private[repo] = private

    def resolve_revision(self, repo: str, rev: str) -> Optional[str]:
        refs = self.branches.get(repo, {})
        if rev in refs:
            return refs[rev]
        if re.fullmatch(r'[0-9a-f]{40}', rev) and self._commit_dir(repo, rev).is_dir():
            return rev
        return None

    def file(self, repo: str, rev: str, path: str) -> Optional[Path]:
        oid = self.resolve_revision(repo, rev)
        f = self._commit_dir(repo, oid) / path if oid else None
        return f if f is not None and f.is_file() else None

    def put_files(self, repo: str, files: Dict[str, bytes], branch: str = 'main', message: str = 'upload') -> str:
        """Commit ``files`` directly (for tests that need a repo the client would not produce)."""
        self.create_repo(repo)
        return self._commit(repo, branch, message, files, deletes=())

    def _commit(self, repo: str, branch: str, message: str, files: Dict[str, bytes], deletes) -> str:
        with self.lock:
            parent = self.branches[repo][branch]
            oid = hashlib.sha1(f'{parent} {message} {len(self.requests)}'.encode()
                               + b''.join(hashlib.sha256(v).digest() for v in files.values())).hexdigest()
            src, dst = self._commit_dir(repo, parent), self._commit_dir(repo, oid)
            shutil.copytree(src, dst)
            for path in deletes:
                (dst / path).unlink(missing_ok=True)
            for path, data in files.items():
                (dst / path).parent.mkdir(parents=True, exist_ok=True)
                (dst / path).write_bytes(data)
            self.branches[repo][branch] = oid
            return oid

    # -- request handling -----------------------------------------------------------------------------------
    def handle(self, h: _Handler, method: str) -> None:
        path = unquote(urlsplit(h.path).path)
        with self.lock:
            self.requests.append((method, path))
        body = h.rfile.read(int(h.headers.get('Content-Length') or 0)) if method in ('POST', 'PUT') else b''
        routes = [
            ('POST', r'/api/repos/create', self._create),
            ('POST', r'/api/validate-yaml', lambda h, m, b: h.send_json({'warnings': [], 'errors': []})),
            ('POST', rf'/api/models/{_REPO}/preupload/(?P<rev>[^/]+)', self._preupload),
            ('POST', rf'/{_REPO}\.git/info/lfs/objects/batch', self._lfs_batch),
            ('PUT', r'/lfs/(?P<oid>[0-9a-f]{64})', self._lfs_put),
            ('POST', rf'/api/models/{_REPO}/commit/(?P<rev>[^/]+)', self._commit_endpoint),
            ('HEAD', rf'/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)', self._resolve),
            ('GET', rf'/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)', self._resolve),
        ]
        for m, pattern, fn in routes:
            match = re.fullmatch(pattern, path)
            if m == method and match:
                try:
                    return fn(h, match, body)
                except Exception as e:  # a 4xx, not a dropped connection: the client must not retry (5xx would)
                    self.errors.append(f'{method} {path}: {type(e).__name__}: {e}')
                    return h.send_json({'error': f'fake hub: {type(e).__name__}: {e}'}, status=400)
        h.send_json({'error': f'fake hub: no route for {method} {path}'}, status=404)

    def _create(self, h, m, body):
        payload = json.loads(body or b'{}')
        name = payload.get('name', '')
        repo = f"{payload.get('organization') or 'user'}/{name}" if '/' not in name else name
        if not re.fullmatch(_REPO, repo):
            return h.send_json({'error': f'invalid repo name {repo!r}'}, status=400)
        exists = repo in self.branches
        self.create_repo(repo, bool(payload.get('private')) or payload.get('visibility') == 'private')
        h.send_json({'url': f'{self.url}/{repo}', 'name': repo}, status=409 if exists else 200,
                    headers={'X-Error-Message': 'You already created this model repo'} if exists else None)

    def _repo_or_404(self, h, repo) -> bool:
        if repo not in self.branches:
            h.send_json({'error': 'Repository not found'}, status=404, headers={'X-Error-Code': 'RepoNotFound'})
            return False
        return True

    def _rev_or_404(self, h, repo, rev) -> Optional[str]:
        oid = self.resolve_revision(repo, rev)
        if oid is None:
            h.send_json({'error': f'Invalid rev id: {rev}'}, status=404, headers={'X-Error-Code': 'RevisionNotFound'})
        return oid

    def _preupload(self, h, m, body):
        repo, rev = m['repo'], unquote(m['rev'])
        if not self._repo_or_404(h, repo) or self._rev_or_404(h, repo, rev) is None:
            return
        files = json.loads(body)['files']
        out = [dict(path=f['path'], shouldIgnore=False,
                    uploadMode='lfs' if f['path'].endswith(_LFS_EXTENSIONS) or f['size'] > 10_000_000 else 'regular')
               for f in files]
        h.send_json({'files': out, 'commitOid': self.branches[repo].get(rev, rev)})

    def _lfs_batch(self, h, m, body):
        if not self._repo_or_404(h, m['repo']):
            return
        objects = []
        for obj in json.loads(body)['objects']:
            entry = dict(oid=obj['oid'], size=obj['size'], authenticated=True)
            if not self._lfs_path(obj['oid']).is_file():
                entry['actions'] = {'upload': {'href': f"{self.url}/lfs/{obj['oid']}"}}
            objects.append(entry)
        h.send_json({'transfer': 'basic', 'objects': objects, 'hash_algo': 'sha256'})

    def _lfs_put(self, h, m, body):
        if hashlib.sha256(body).hexdigest() != m['oid']:
            return h.send_json({'error': 'sha256 mismatch'}, status=400)
        self._lfs_path(m['oid']).parent.mkdir(parents=True, exist_ok=True)
        self._lfs_path(m['oid']).write_bytes(body)
        h.send_json({})

    def _commit_endpoint(self, h, m, body):
        repo, rev = m['repo'], unquote(m['rev'])
        if not self._repo_or_404(h, repo) or self._rev_or_404(h, repo, rev) is None:
            return
        if rev not in self.branches[repo]:
            return h.send_json({'error': 'can only commit to a branch'}, status=400)
        message, files, deletes = 'commit', {}, []
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item['key'], item['value']
            if key == 'header':
                message = value.get('summary', message)
            elif key == 'file':
                files[value['path']] = base64.b64decode(value['content'])
            elif key == 'lfsFile':
                blob = self._lfs_path(value['oid'])
                if not blob.is_file():
                    return h.send_json({'error': f"lfs object {value['oid']} not uploaded"}, status=400)
                files[value['path']] = blob.read_bytes()
            elif key in ('deletedFile', 'deletedFolder'):
                deletes.append(value['path'])
        oid = self._commit(repo, rev, message, files, deletes)
        h.send_json({'commitUrl': f'{self.url}/{repo}/commit/{oid}', 'commitOid': oid, 'pullRequestUrl': None})

    def _resolve(self, h, m, body):
        repo, rev, name = m['repo'], unquote(m['rev']), m['file']
        if not self._repo_or_404(h, repo):
            return
        oid = self._rev_or_404(h, repo, rev)
        if oid is None:
            return
        f = self.file(repo, oid, name)
        if f is None:
            return h.send_json({'error': 'Entry not found'}, status=404, headers={
                'X-Error-Code': 'EntryNotFound', 'X-Repo-Commit': oid})
        data = f.read_bytes()
        etag = hashlib.sha256(data).hexdigest() if name.endswith(_LFS_EXTENSIONS) else hashlib.sha1(data).hexdigest()
        h.send_bytes(data, headers={'ETag': f'"{etag}"', 'X-Repo-Commit': oid}, head=h.command == 'HEAD')


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = 'HTTP/1.1'

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def send_bytes(self, data: bytes, status: int = 200, content_type: str = 'application/octet-stream',
                   headers: Optional[dict] = None, head: bool = False):
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def send_json(self, obj, status: int = 200, headers: Optional[dict] = None):
        self.send_bytes(json.dumps(obj).encode(), status, 'application/json', headers, head=self.command == 'HEAD')

    def do_GET(self):
        self.hub.handle(self, 'GET')

    def do_HEAD(self):
        self.hub.handle(self, 'HEAD')

    def do_POST(self):
        self.hub.handle(self, 'POST')

    def do_PUT(self):
        self.hub.handle(self, 'PUT')
