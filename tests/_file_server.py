"""A loopback HTTP file server with the failures of real downloads, for tests without internet.

Serves ``files`` (URL path -> bytes) on 127.0.0.1 with ``Content-Length`` and single ``Range: bytes=N-`` requests
(206), and, on demand, the ways a download goes wrong: a path that is not there (404), and connections that drop:
the next GETs of ``path`` send only ``cuts[path][0]``, ``cuts[path][1]``, ... bytes of what their headers promise, then
close. Every request is logged as ``(method, path, range header)``.
"""
from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple


class FileServer:
    def __init__(self):
        self.files: Dict[str, bytes] = {}
        self.cuts: Dict[str, List[int]] = {}  # path -> bytes each of the next GETs sends before it drops
        self.requests: List[Tuple[str, str, Optional[str]]] = []
        self._server: Optional[ThreadingHTTPServer] = None

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}{path}'

    def start(self) -> FileServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                rng = self.headers.get('Range')
                server.requests.append((self.command, self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header('Content-Length', '0')
                    self.end_headers()
                    return
                start = 0
                m = re.fullmatch(r'bytes=(\d+)-', rng or '')
                if m:
                    start = int(m[1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header('Content-Range', f'bytes */{len(data)}')
                        self.send_header('Content-Length', '0')
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                else:
                    self.send_response(200)
                part = data[start:]
                self.send_header('Content-Length', str(len(part)))
                self.send_header('Content-Type', 'application/octet-stream')
                self.end_headers()
                if not body:
                    return
                cuts = server.cuts.get(self.path)
                if cuts:
                    self.wfile.write(part[:cuts.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the rest never comes: the client sees a cut body
                    return
                self.wfile.write(part)

        self._server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def gets(self, path: str) -> List[Optional[str]]:
        """The Range header of every GET of ``path`` so far (None: from the start)."""
        return [r for m, p, r in self.requests if m == 'GET' and p == path]
