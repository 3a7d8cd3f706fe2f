"""Downloads that survive real networks: streamed, resumed, verified, retried, atomic.

A download goes to ``NAME.part`` beside its destination. An interrupted one resumes from
where it stopped (HTTP Range); a finished one is checked against an MD5 when one is known
and only then renamed into place, so a half or corrupt file never carries the final name.
Transient failures (connection drops, timeouts, HTTP 429 and 5xx) are retried with
exponential back-off; anything else is a clear error.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from gjp import __version__
from gjp.errors import GjpError
from gjp.ui import QUIET, Reporter

USER_AGENT = f"gjp/{__version__} (python-requests)"
CHUNK = 1 << 16  # a dropped connection loses at most one chunk
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class Download:
    path: Path
    bytes: int        # bytes transferred by this call (0 when up to date)
    skipped: bool     # the file was already complete and up to date


def session() -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    return s


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_text(url: str, *, http: requests.Session | None = None, retries: int = 4, backoff: float = 0.5,
               timeout: float = 60, missing_ok: bool = False) -> str | None:
    """The body of a small text resource; ``None`` for a 404 when ``missing_ok``."""
    http = http or session()
    for attempt in range(retries + 1):
        try:
            response = http.get(url, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as err:
            if attempt == retries:
                raise GjpError(f"{url}: {_reason(err)} (after {retries + 1} attempts)") from err
        else:
            if response.status_code == 404 and missing_ok:
                return None
            if response.ok:
                return response.text
            if response.status_code not in TRANSIENT_STATUS or attempt == retries:
                raise GjpError(f"{url}: HTTP {response.status_code} {response.reason}")
        time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def download(url: str, dest: str | Path, *, md5: str | None = None, http: requests.Session | None = None,
             retries: int = 5, backoff: float = 0.5, timeout: float = 60,
             reporter: Reporter = QUIET) -> Download:
    """Download ``url`` to ``dest`` (see the module doc). With ``md5`` an existing file
    that matches is kept as is; without, one whose size and date match the server's is."""
    dest = Path(dest)
    http = http or session()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.exists() and _up_to_date(url, dest, md5, http, timeout):
        return Download(dest, 0, True)

    transferred, attempt = 0, 0
    while True:
        try:
            done, got, modified = _transfer(url, part, http, timeout, reporter, dest.name)
            transferred += got
            if done:
                break
        except _Transient as err:
            transferred += err.got
            if attempt >= retries:
                raise GjpError(f"{url}: {err.reason} (after {retries + 1} attempts; "
                               f"{part.name} kept, run again to resume)") from None
            time.sleep(backoff * 2**attempt)
            attempt += 1
    if md5 is not None:
        actual = md5_of(part)
        if actual != md5.lower():
            part.unlink()
            raise GjpError(f"{url}: checksum mismatch (MD5 {actual}, expected {md5}); nothing kept")
    os.replace(part, dest)
    if modified is not None:
        os.utime(dest, (modified, modified))
    return Download(dest, transferred, False)


class _Transient(Exception):
    def __init__(self, reason: str, got: int = 0):
        super().__init__(reason)
        self.reason, self.got = reason, got


def _transfer(url, part: Path, http, timeout, reporter: Reporter, name: str):
    """One attempt: resume ``part`` from its current size. Returns ``(complete, bytes,
    last-modified)``; raises ``_Transient`` for what a retry may cure."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = http.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Transient(_reason(err)) from None
    with response:
        if response.status_code == 416 and have:
            return True, 0, _last_modified(response)  # the part already holds everything
        if response.status_code in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {response.status_code} {response.reason}")
        if not response.ok:
            raise GjpError(f"{url}: HTTP {response.status_code} {response.reason}")
        if response.status_code == 200 and have:
            have = 0  # the server ignored the range: start again
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        got = 0
        bar = reporter.progress(total=total, desc=name, unit="B")
        bar.unit_scale, bar.unit_divisor = True, 1024
        bar.update(have)
        try:
            with open(part, "ab" if have else "wb") as out:
                for block in response.iter_content(CHUNK):
                    out.write(block)
                    got += len(block)
                    bar.update(len(block))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            raise _Transient(_reason(err), got) from None
        finally:
            bar.close()
        if total is not None and have + got < total:
            raise _Transient(f"connection closed after {have + got} of {total} bytes", got)
        return True, got, _last_modified(response)


def _up_to_date(url, dest: Path, md5, http, timeout) -> bool:
    if md5 is not None:
        return md5_of(dest) == md5.lower()
    try:
        head = http.head(url, timeout=timeout, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout):
        return False
    if not head.ok:
        return False
    size = head.headers.get("Content-Length")
    modified = _last_modified(head)
    stat = dest.stat()
    return (size is not None and int(size) == stat.st_size
            and (modified is None or modified <= stat.st_mtime + 1))


def _last_modified(response) -> float | None:
    value = response.headers.get("Last-Modified")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _reason(err: Exception) -> str:
    text = str(err) or type(err).__name__
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(err, requests.Timeout):
        return "timed out"
    return text.splitlines()[0][:200]
