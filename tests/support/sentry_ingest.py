"""A local Sentry: a real threaded HTTP server taking sentry-sdk's envelopes, decoded, so a test
can read every byte the SDK sent (`SentryIngest().dsn` is the DSN to configure)."""

import gzip
import json
import re
import threading
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sentry_sdk

try:  # sentry-sdk compresses with brotli when it is installed, gzip otherwise.
    import brotli
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

_ENDPOINT = re.compile(r"^/api/(?P<project>\d+)/(?P<kind>envelope|store)/$")


class Envelope:
    """One request the SDK sent: its decoded bytes and its items as (header, payload)."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.items: list[tuple[dict, bytes]] = []
        lines = raw.split(b"\n")
        self.header = json.loads(lines[0] or b"{}")
        rest = raw[len(lines[0]) + 1 :]
        while rest.strip():
            item_line, _, rest = rest.partition(b"\n")
            item_header = json.loads(item_line)
            length = item_header.get("length")
            if length is None:
                payload, _, rest = rest.partition(b"\n")
            else:
                payload, rest = rest[:length], rest[length + 1 :]
            self.items.append((item_header, payload))

    def payloads(self, item_type: str) -> list[dict]:
        """The JSON payloads of this envelope's items of one type ("event", "transaction")."""
        return [json.loads(body) for header, body in self.items if header["type"] == item_type]


class SentryIngest:
    """The ingest server; `envelopes` holds what arrived, oldest first."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0):
        self.envelopes: list[Envelope] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.ingest = self
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "SentryIngest":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def dsn(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://public@{host}:{port}/1"

    def events(self) -> list[dict]:
        """Every error event received so far."""
        with self._lock:
            return [event for envelope in self.envelopes for event in envelope.payloads("event")]

    def raw(self) -> bytes:
        """Everything received, decoded, in one byte string (to search for what must not be)."""
        with self._lock:
            return b"\n".join(envelope.raw for envelope in self.envelopes)

    def _receive(self, raw: bytes, *, kind: str) -> None:
        if kind == "store":  # the pre-envelope endpoint: one event as JSON
            raw = b'{}\n{"type":"event"}\n' + raw
        with self._lock:
            self.envelopes.append(Envelope(raw))


@contextmanager
def reporting_to(ingest: SentryIngest, *, traces_sample_rate: float):
    """This process's SDK started as messages/settings.py starts it, with the ingest as DSN;
    flushed and closed after."""
    from messages.sentry import init_sentry

    init_sentry(dsn=ingest.dsn, environment="test", traces_sample_rate=traces_sample_rate)
    try:
        yield
    finally:
        client = sentry_sdk.get_client()
        client.flush(timeout=5)
        client.close()
        sentry_sdk.get_global_scope().set_client(None)


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        if brotli is None:
            raise ValueError("brotli-compressed envelope but brotli is not installed")
        return brotli.decompress(body)
    return body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = _ENDPOINT.match(self.path.split("?")[0])
        if match is None:
            self._answer(404, b"{}")
            return
        try:
            raw = _decoded(body, self.headers.get("Content-Encoding", "").strip().lower())
            self.server.ingest._receive(raw, kind=match["kind"])
        except (ValueError, OSError) as error:
            self._answer(400, json.dumps({"detail": str(error)}).encode())
            return
        self._answer(200, b'{"id": null}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass
