"""A local HTTP origin for Remote Asset tests and the benchmark: real sockets on loopback.

`Origin` serves `files` (path -> bytes) from a thread with http.server, plus a few behaviours a
download must survive: `/slow/...` waits before answering, `/chunked/...` sends a body without
Content-Length, `/redirect?to=URL` answers 302. It counts the requests it answered so tests can
tell a cache hit (no request) from a download.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import grpc

from granary._proto.build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2
from granary._proto.build.bazel.remote.asset.v1 import remote_asset_pb2_grpc as ra_grpc


def sri(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}-" + base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


class Origin:
    def __init__(self, files: dict[str, bytes] | None = None, slow_seconds: float = 5.0):
        self.files: dict[str, bytes] = dict(files or {})
        self.slow_seconds = slow_seconds
        self.requests: list[tuple[str, dict[str, str]]] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                origin.requests.append((self.path, dict(self.headers.items())))
                parts = urlsplit(self.path)
                path = parts.path
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path.startswith("/slow/"):
                    time.sleep(origin.slow_seconds)
                    path = path[len("/slow") :]
                chunked = path.startswith("/chunked/")
                if chunked:
                    path = path[len("/chunked") :]
                body = origin.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for off in range(0, len(body), 65536):
                            part = body[off : off + 65536]
                            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                        self.wfile.write(b"0\r\n\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    view = memoryview(body)
                    for off in range(0, len(body), 1 << 20):
                        self.wfile.write(view[off : off + (1 << 20)])
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Origin:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class AssetClient:
    def __init__(self, address: str, instance: str = ""):
        self.channel = grpc.insecure_channel(address)
        self.instance = instance
        self.fetch = ra_grpc.FetchStub(self.channel)
        self.push = ra_grpc.PushStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def qualifiers(pairs: dict[str, str] | list[tuple[str, str]] | None) -> list[ra_pb2.Qualifier]:
        items = pairs.items() if isinstance(pairs, dict) else (pairs or [])
        return [ra_pb2.Qualifier(name=n, value=v) for n, v in items]

    def fetch_blob(self, uris, qualifiers=None, timeout: float | None = None, oldest: float | None = None,
                   rpc_timeout: float = 60) -> ra_pb2.FetchBlobResponse:
        req = ra_pb2.FetchBlobRequest(instance_name=self.instance, uris=list(uris),
                                      qualifiers=self.qualifiers(qualifiers))
        if timeout is not None:
            req.timeout.FromNanoseconds(int(timeout * 1e9))
        if oldest is not None:
            req.oldest_content_accepted.FromNanoseconds(int(oldest * 1e9))
        return self.fetch.FetchBlob(req, timeout=rpc_timeout)

    def fetch_directory(self, uris, qualifiers=None) -> ra_pb2.FetchDirectoryResponse:
        req = ra_pb2.FetchDirectoryRequest(instance_name=self.instance, uris=list(uris),
                                           qualifiers=self.qualifiers(qualifiers))
        return self.fetch.FetchDirectory(req, timeout=60)
