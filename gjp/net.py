"""Downloads that survive real networks: streamed, resumed, verified, retried, atomic.

A download goes to ``NAME.part`` beside its destination, with ``NAME.part.json`` beside
it holding the server's validators (ETag, Last-Modified, total size) of what the part
holds. An interrupted download resumes from where it stopped (HTTP Range + If-Range) only
when those validators still match the server's; a part without them, or with ones that no
longer match, is started again from zero. A finished one is checked (its first bytes by an
optional content check, its MD5 when one is known) and only then renamed into place, so a
half, stale or wrong file never carries the final name. Transient failures (connection
drops, timeouts, HTTP 429 and 5xx) are retried with exponential back-off; anything else
is a clear one-line error.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from gjp import __version__
from gjp.errors import GjpError
from gjp.io import write_json
from gjp.ui import QUIET, Reporter

USER_AGENT = f"gjp/{__version__} (python-requests)"
CHUNK = 1 << 16  # a dropped connection loses at most one chunk
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
SNIFF_BYTES = 64  # what a content check sees of a body

#: A content check: ``check(first bytes, Content-Type or None)`` is ``None`` when the bytes
#: look like what is wanted, else a short description of the problem
#: (``"got an HTML page, not an OSM PBF"``).
Check = Callable[[bytes, "str | None"], "str | None"]


@dataclass
class Download:
    path: Path
    bytes: int        # bytes transferred by this call (0 when up to date)
    skipped: bool     # the file was already complete and up to date

    def summary(self) -> str:
        return f"{self.path}: " + ("already up to date" if self.skipped else f"downloaded {self.bytes / 1e6:.1f} MB")


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
             reporter: Reporter = QUIET, check: Check | None = None) -> Download:
    """Download ``url`` to ``dest`` (see the module doc).

    An existing ``dest`` is kept as is only when it passes ``check`` and either matches
    ``md5`` or, without one, has the server's size and Last-Modified date (stamped on it
    when it was downloaded); never merely because it exists. ``check`` is applied to the
    first bytes as soon as they arrive (so a wrong body is not downloaded in full) and
    again before the rename."""
    dest = Path(dest)
    http = http or session()
    part = dest.with_name(dest.name + ".part")
    job = _Job(url, part, part.with_name(part.name + ".json"), http, timeout, reporter, dest.name, check)
    if dest.exists() and _up_to_date(url, dest, md5, http, timeout, check):
        return Download(dest, 0, True)

    transferred, attempt, resume = 0, 0, True
    try:
        while True:
            try:
                transferred += _transfer(job, resume)
                break
            except _Restart:
                resume = False  # the part is not the start of what the server has now
            except _Transient as err:
                transferred += err.got
                resume = True
                if attempt >= retries:
                    raise _GaveUp(_gave_up(job, err, retries)) from None
                time.sleep(backoff * 2**attempt)
                attempt += 1
        state = _read_state(job.state) or {}
        size = part.stat().st_size
        if state.get("size") is not None and size != state["size"]:
            raise _Reject(f"{url}: received {size} bytes, the server announced {state['size']}; nothing kept")
        if check is not None and (problem := check(_head(part), None)):
            raise _Reject(f"{url}: {problem}; nothing kept")
        if md5 is not None:
            actual = md5_of(part)
            if actual != md5.lower():
                raise _Reject(f"{url}: checksum mismatch (MD5 {actual}, expected {md5}); nothing kept")
    except _Reject as err:
        _discard(job)
        raise GjpError(str(err)) from None
    except GjpError as err:
        if job.touched and not isinstance(err, _GaveUp):
            # a part this run wrote and cannot finish: leave the directory as it was
            _discard(job)
        raise
    os.replace(part, dest)
    job.state.unlink(missing_ok=True)
    modified = _http_date(state.get("last_modified"))
    if modified is not None:  # the up-to-date check of the next run compares it with the server's
        os.utime(dest, (modified, modified))
    return Download(dest, transferred, False)


@dataclass
class _Job:
    url: str
    part: Path
    state: Path              # NAME.part.json: the validators of what the part holds
    http: requests.Session
    timeout: float
    reporter: Reporter
    name: str
    check: Check | None
    touched: bool = False    # this run wrote to the part (so it may remove it on failure)
    made: tuple[Path, ...] = ()  # directories this run created for the part, deepest first


class _Transient(Exception):
    def __init__(self, reason: str, got: int = 0):
        super().__init__(reason)
        self.reason, self.got = reason, got


class _Restart(Exception):
    """The server's answer shows the part cannot be resumed: start again from zero."""


class _GaveUp(GjpError):
    """Retries are used up; ``_gave_up`` has kept or removed the part as it should."""


class _Reject(Exception):
    """What was downloaded is wrong: discard the part, whoever wrote it."""


def _transfer(job: _Job, resume: bool) -> int:
    """One attempt, resuming the part when ``resume`` and its validators allow. Returns
    the bytes received; raises ``_Transient`` for what a retry may cure and ``_Restart``
    when the part turns out to be stale."""
    have, state = _resume_point(job) if resume else (0, None)
    headers = {"Range": f"bytes={have}-", "If-Range": _if_range(state)} if have else {}
    try:
        response = job.http.get(job.url, headers=headers, stream=True, timeout=job.timeout)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Transient(_reason(err)) from None
    with response:
        code = response.status_code
        if code in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {code} {response.reason}")
        if code == 416 and have:
            # the part may hold everything already: only if size and validators say so
            _, total = _content_range(response)
            if total == have == state.get("size") and _same(state, _validators(response)):
                return 0
            raise _Restart
        if not response.ok:
            raise GjpError(f"{job.url}: HTTP {code} {response.reason}")
        if code == 206 and have:
            start, total = _content_range(response)
            # a server that ignores If-Range still shows its validators: compare them too
            size = state.get("size")
            if start != have or (size is not None and total != size) or not _same(state, _validators(response)):
                raise _Restart
            return _receive(job, response, have, total, None)
        if code != 200:
            raise GjpError(f"{job.url}: unexpected HTTP {code} {response.reason}")
        # the whole body: a fresh start, or the validators no longer matched (If-Range)
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.isdigit() else None
        fresh = {"url": _no_query(job.url), **_validators(response), "size": total}
        return _receive(job, response, 0, total, fresh)


def _receive(job: _Job, response, have: int, total: int | None, fresh: dict | None) -> int:
    """Stream the body into the part: appended to it, or with ``fresh`` (the new state) a
    new part, written only once the first bytes pass the content check."""
    blocks = response.iter_content(CHUNK)
    got = 0
    bar = job.reporter.progress(total=total, desc=job.name, unit="B")
    bar.unit_scale, bar.unit_divisor = True, 1024
    bar.update(have)
    try:
        if fresh is not None:
            head = b""
            for block in blocks:  # fail fast: look at the first bytes before keeping anything
                head += block
                if len(head) >= SNIFF_BYTES:
                    break
            if job.check is not None and (problem := job.check(head[:SNIFF_BYTES],
                                                              response.headers.get("Content-Type"))):
                raise GjpError(f"{job.url}: {problem}; nothing saved")
            _make_parent(job)
            # old state first, then the part, then the new state: a crash in between leaves
            # a part that does not resume, never one resumed under the wrong validators
            job.state.unlink(missing_ok=True)
        with open(job.part, "ab" if fresh is None else "wb") as out:
            job.touched = True
            if fresh is not None:
                _write_state(job.state, fresh)
                out.write(head)
                got += len(head)
                bar.update(len(head))
            for block in blocks:
                out.write(block)
                got += len(block)
                bar.update(len(block))
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
        raise _Transient(_reason(err), got) from None
    finally:
        bar.close()
    if total is not None and have + got < total:
        raise _Transient(f"connection closed after {have + got} of {total} bytes", got)
    return got


def _resume_point(job: _Job) -> tuple[int, dict | None]:
    """``(bytes to resume from, state)``, or ``(0, None)`` when the part must not be
    trusted: no state, another URL, no validator to resume against, bad first bytes."""
    try:
        have = job.part.stat().st_size
    except FileNotFoundError:
        return 0, None
    state = _read_state(job.state)
    if not state or state.get("url") != _no_query(job.url) or not _if_range(state):
        return 0, None
    size = state.get("size")
    if have == 0 or (size is not None and have > size):
        return 0, None
    if job.check is not None and (have < SNIFF_BYTES or job.check(_head(job.part), None)):
        return 0, None
    return have, state


def _gave_up(job: _Job, err: _Transient, retries: int) -> str:
    message = f"{job.url}: {err.reason} (after {retries + 1} attempts; "
    if _resume_point(job)[0]:
        return message + f"{job.part.name} kept, run again to resume)"
    if not job.touched:
        return message + "nothing saved)"
    state = _read_state(job.state) or {}
    _discard(job)
    if not _if_range(state):
        return message + "the server sends no ETag or Last-Modified to resume against; nothing kept)"
    return message + "nothing kept)"


def _discard(job: _Job) -> None:
    job.part.unlink(missing_ok=True)
    job.state.unlink(missing_ok=True)
    for directory in job.made:  # a failed run leaves no new empty directory behind either
        try:
            directory.rmdir()
        except OSError:
            break  # not empty (or gone): keep it and its parents


def _make_parent(job: _Job) -> None:
    missing = [d for d in [job.part.parent, *job.part.parent.parents] if not d.exists()]
    job.part.parent.mkdir(parents=True, exist_ok=True)
    job.made = job.made or tuple(missing)


def _up_to_date(url, dest: Path, md5, http, timeout, check) -> bool:
    if check is not None and check(_head(dest), None):
        return False  # e.g. an error page saved by an older version
    if md5 is not None:
        return md5_of(dest) == md5.lower()
    try:
        head = http.head(url, timeout=timeout, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout):
        return False
    if not head.ok:
        return False
    size = head.headers.get("Content-Length", "")
    modified = _last_modified(head)
    stat = dest.stat()
    # download() stamps the server's Last-Modified on the file: equal dates and sizes mean
    # this is the server's current file; no date, no way to tell, so download again
    return size.isdigit() and int(size) == stat.st_size and modified is not None \
        and abs(modified - stat.st_mtime) < 1


def _validators(response) -> dict:
    etag = response.headers.get("ETag")
    if etag and etag.startswith("W/"):
        etag = None  # a weak ETag cannot vouch for byte ranges
    return {"etag": etag or None, "last_modified": response.headers.get("Last-Modified") or None}


def _if_range(state: dict | None) -> str | None:
    return (state or {}).get("etag") or (state or {}).get("last_modified")


def _same(state: dict, validators: dict) -> bool:
    return all(state.get(k) is None or validators.get(k) is None or state[k] == validators[k]
               for k in ("etag", "last_modified"))


def _content_range(response) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` from ``Content-Range: bytes A-B/N`` (or ``*/N``)."""
    value = response.headers.get("Content-Range", "")
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    start = span.split("-")[0]
    return (int(start) if unit == "bytes" and start.isdigit() else None,
            int(total) if unit == "bytes" and total.isdigit() else None)


def _read_state(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(path: Path, state: dict) -> None:
    write_json(path, state, overwrite=True)  # atomic: a reader sees the old state or the new one


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(SNIFF_BYTES)


def _no_query(url: str) -> str:
    # signed URLs (NAIP) change their query on every run and carry tokens: keep neither
    return url.split("?")[0]


def _last_modified(response) -> float | None:
    return _http_date(response.headers.get("Last-Modified"))


def _http_date(value: str | None) -> float | None:
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
