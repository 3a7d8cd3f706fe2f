"""Local stand-ins for the services gjp talks to, on 127.0.0.1: a file server with HTTP
Range support and scripted faults (it also plays Geofabrik's download server), and a
small STAC API (landing page, conformance, the ``naip`` collection, ``/search`` with
paging by GET and POST)."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


class Server:
    """``Server(root)``: serves files under ``root``; ``faults[path]`` is a list of
    behaviours used up one per request: ``"500"``, ``"404"``, ``"drop:N"`` (send N bytes of
    the body, then cut the connection), ``"norange"`` (ignore Range), ``"ignore-if-range"``
    (honour Range even when If-Range does not match, as some servers do), ``"html"`` (status
    200 with a large HTML error page instead of the file; ``sent[path]`` counts the bytes
    the client took before it hung up). Files carry a strong ETag (from their content) and a
    fixed Last-Modified, and Range honours If-Range; ``headers_off`` names validators
    (``"ETag"``, ``"Last-Modified"``) to leave out. ``stac_items`` turns on the STAC API."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.stac_items: list[dict] | None = None
        self.headers_off: set[str] = set()
        self.sent: dict[str, int] = {}
        self.html_size = 32 << 20  # far more than a client should read to spot it
        self.page_size = 2
        self.httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # a client that hangs up early (as gjp does on a wrong body) is no server error
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(server: Server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._serve(head=True)

        def do_GET(self):
            self._serve(head=False)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            server.requests.append(("POST", self.path, None))
            script = server.faults.get(urlparse(self.path).path)
            if script:
                return self._status(int(script.pop(0)))
            if urlparse(self.path).path == "/search" and server.stac_items is not None:
                return self._json(_search_page(server, body, post=True))
            self._status(404)

        def _serve(self, head: bool):
            parsed = urlparse(self.path)
            path = parsed.path
            server.requests.append(("HEAD" if head else "GET", path, self.headers.get("Range")))
            script = server.faults.get(path)
            fault = script.pop(0) if script else None
            if fault in ("500", "404", "503"):
                return self._status(int(fault))
            if server.stac_items is not None and not head:
                if path in ("/", ""):
                    return self._json(_landing(server))
                if path == "/conformance":
                    return self._json({"conformsTo": _CONFORMANCE})
                if path == "/collections/naip":
                    return self._json(_collection(server))
                if path == "/search":
                    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                    return self._json(_search_page(server, query, post=False))
            if fault == "html":
                return self._html_page(path, head)
            file = server.root / path.lstrip("/")
            if not file.is_file():
                return self._status(404)
            data = file.read_bytes()
            validators = {"ETag": f'"{hashlib.md5(data).hexdigest()[:16]}"', "Last-Modified": LAST_MODIFIED}
            validators = {k: v for k, v in validators.items() if k not in server.headers_off}
            start = 0
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if if_range is not None and if_range not in validators.values() and fault != "ignore-if-range":
                rng = None  # the client's copy is of another version: send the whole file
            if rng and fault != "norange":
                start = int(rng.split("=")[1].split("-")[0])
                end = rng.split("=")[1].split("-")[1]
                stop = int(end) + 1 if end else len(data)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    for k, v in validators.items():
                        self.send_header(k, v)
                    self.end_headers()
                    return
                body = data[start:stop]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            for k, v in validators.items():
                self.send_header(k, v)
            self.end_headers()
            if head:
                return
            if fault and fault.startswith("drop:"):
                self.wfile.write(body[: int(fault.split(":")[1])])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

        def _html_page(self, path: str, head: bool):
            page = b"<!DOCTYPE html>\n<html><head><title>Service unavailable</title></head><body>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(server.html_size))
            self.end_headers()
            if head:
                return
            body = page + b" " * (server.html_size - len(page))
            sent = 0
            try:
                for i in range(0, len(body), 1 << 16):
                    self.wfile.write(body[i:i + (1 << 16)])
                    sent += len(body[i:i + (1 << 16)])
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            server.sent[path] = sent

        def _status(self, code: int):
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _json(self, data: dict):
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


LAST_MODIFIED = "Tue, 01 Dec 2026 00:00:00 GMT"

_CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/collections",
]


def _landing(server: Server) -> dict:
    return {
        "type": "Catalog", "stac_version": "1.0.0", "id": "test-stac", "description": "local test STAC API",
        "conformsTo": _CONFORMANCE,
        "links": [
            {"rel": "self", "href": server.url + "/", "type": "application/json"},
            {"rel": "root", "href": server.url + "/", "type": "application/json"},
            {"rel": "conformance", "href": server.url + "/conformance", "type": "application/json"},
            {"rel": "data", "href": server.url + "/collections", "type": "application/json"},
            {"rel": "search", "href": server.url + "/search", "type": "application/geo+json", "method": "GET"},
            {"rel": "search", "href": server.url + "/search", "type": "application/geo+json", "method": "POST"},
        ],
    }


def _collection(server: Server) -> dict:
    return {"type": "Collection", "stac_version": "1.0.0", "id": "naip", "description": "test NAIP",
            "license": "proprietary", "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                                 "temporal": {"interval": [[None, None]]}},
            "links": [{"rel": "self", "href": server.url + "/collections/naip"}]}


def _search_page(server: Server, params: dict, post: bool) -> dict:
    bbox = params.get("bbox")
    if isinstance(bbox, str):
        bbox = [float(v) for v in bbox.split(",")]
    collections = params.get("collections")
    if isinstance(collections, str):
        collections = collections.split(",")
    when = params.get("datetime")
    items = [i for i in server.stac_items if not collections or i["collection"] in collections]
    if bbox:
        w, s, e, n = bbox
        items = [i for i in items if i["bbox"][0] < e and i["bbox"][2] > w and i["bbox"][1] < n and i["bbox"][3] > s]
    if when:
        lo, _, hi = when.partition("/")
        lo = None if lo in ("", "..") else lo
        hi = None if hi in ("", "..") else hi
        day = lambda i: i["properties"]["datetime"][:10]  # noqa: E731
        items = [i for i in items if (lo is None or day(i) >= lo[:10]) and (hi is None or day(i) <= hi[:10])]
    start = int(params.get("token") or 0)
    limit = min(int(params.get("limit") or server.page_size), server.page_size)
    page = items[start:start + limit]
    links = []
    if start + limit < len(items):
        if post:
            body = {k: v for k, v in params.items() if k != "token"}
            body["token"] = str(start + limit)
            links.append({"rel": "next", "href": server.url + "/search", "method": "POST", "body": body})
        else:
            query = "&".join(f"{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
                             for k, v in params.items() if k != "token")
            links.append({"rel": "next", "href": f"{server.url}/search?{query}&token={start + limit}",
                          "method": "GET"})
    return {"type": "FeatureCollection", "features": page, "links": links, "numberMatched": len(items)}
