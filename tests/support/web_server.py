"""The project's WSGI application on a real local HTTP server, in a thread of the test process
(so the current settings apply; the test needs a committed database: transactional_db)."""

import threading
from wsgiref.simple_server import WSGIRequestHandler

from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:
        pass


class WebServer:
    """`with WebServer() as server:` serves Django's WSGIHandler (built now, with the
    middleware the settings name now) on `server.url`."""

    def __init__(self, *, host: str = "127.0.0.1"):
        # Django's threaded server closes each request thread's database connections.
        self._server = ThreadedWSGIServer((host, 0), _QuietHandler, allow_reuse_address=False)
        self._server.daemon_threads = True
        self._server.set_app(WSGIHandler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "WebServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
