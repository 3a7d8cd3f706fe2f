"""``gjp fetch osm``: OSM extracts from Geofabrik's download server, by region name.

Regions come from Geofabrik's published JSON index (every extract with its id, parent and
download URLs), cached in the workspace for a week once it has parsed (a cached copy that
does not parse is fetched again). A region is named by its id (``monaco``,
``california``), by its path (``us/california``, ``north-america/us/california``) or by its
display name (``"Baden-Württemberg"``). What is downloaded must look like the OSM format
its name promises (checked on the first bytes and again before it is kept), and its name
must be a plain file name inside the output directory.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from gjp.errors import GjpError
from gjp.io import write_text
from gjp.net import Check, Download, download, fetch_text, session
from gjp.ui import QUIET, Reporter

INDEX_URL = "https://download.geofabrik.de/index-v1-nogeom.json"
INDEX_MAX_AGE_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Region:
    id: str
    name: str
    parent: str | None
    pbf: str

    @property
    def path(self) -> str:
        """The region's place in Geofabrik's tree, e.g. ``north-america/us/california``."""
        parsed = urlparse(self.pbf).path.lstrip("/")
        return parsed.removesuffix("-latest.osm.pbf")


def load_index(index_url: str = INDEX_URL, cache: Path | None = None, refresh: bool = False) -> list[Region]:
    """Geofabrik's regions, from ``cache`` when it is fresh and parses, else from
    ``index_url``; a fetched index is cached only once it has parsed."""
    regions, fetched = _read_index(index_url, cache, refresh)
    if fetched is not None:
        _cache_index(cache, fetched)
    return regions


def _read_index(index_url: str, cache: Path | None, refresh: bool) -> tuple[list[Region], str | None]:
    """The regions, and the index text when it was fetched (for the caller to cache)."""
    if cache is not None and cache.exists() and not refresh and time.time() - cache.stat().st_mtime < INDEX_MAX_AGE_S:
        try:
            return parse_index(cache.read_text(encoding="utf-8"), str(cache)), None
        except (GjpError, OSError, UnicodeDecodeError):
            pass  # a damaged cache is no reason to fail: fetch the index again
    text = fetch_text(index_url)
    return parse_index(text, index_url), text


def _cache_index(cache: Path | None, text: str) -> None:
    if cache is None:
        return
    write_text(cache, text, overwrite=True)  # a refreshed index replaces the old one


def parse_index(text: str, source: str) -> list[Region]:
    """The regions of a Geofabrik index, or an error naming ``source`` and what is wrong."""
    def bad(problem: str) -> GjpError:
        return GjpError(f"{source}: not a Geofabrik index ({problem})")

    try:
        data = json.loads(text)
    except ValueError as err:
        got = describe(text[:64].encode())
        if got == "JSON":  # e.g. cut short by a dropped connection
            raise bad(f"invalid JSON: {err}") from None
        raise bad(f"got {got}, not JSON") from None
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        raise bad("no 'features' list")
    regions = []
    for i, feature in enumerate(features):
        props = feature.get("properties") if isinstance(feature, dict) else None
        if not isinstance(props, dict) or not isinstance(props.get("id"), str) or not props["id"]:
            raise bad(f"feature {i} has no properties.id")
        urls = props.get("urls", {})
        pbf = urls.get("pbf") if isinstance(urls, dict) else None
        if pbf is None:
            continue  # a grouping without an extract of its own
        if not isinstance(pbf, str) or urlparse(pbf).scheme not in ("http", "https"):
            raise bad(f"region {props['id']!r}: urls.pbf is not an http(s) URL")
        name = props.get("name")
        regions.append(Region(props["id"], name if isinstance(name, str) else props["id"],
                              props.get("parent") if isinstance(props.get("parent"), str) else None, pbf))
    if not regions:
        raise bad("no region with a .osm.pbf URL")
    return regions


def find_region(regions: list[Region], query: str) -> Region:
    """The region ``query`` names, or an error that suggests close names."""
    q = query.strip().strip("/").lower()
    by_id = {r.id.lower(): r for r in regions}
    if q in by_id:
        return by_id[q]
    for r in regions:
        if r.path.lower() == q or r.path.lower().endswith("/" + q) or r.name.lower() == q:
            return r
    if "/" in q:  # parent/child ids, e.g. us/california
        *parents, leaf = q.split("/")
        r = by_id.get(leaf)
        if r is not None and _ancestors(r, by_id)[-len(parents):] == parents:
            return r
    names = sorted({r.id for r in regions} | {r.path for r in regions})
    close = difflib.get_close_matches(q, names, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise GjpError(f"unknown Geofabrik region {query!r}{hint} (`gjp fetch osm --list` lists them)")


def _ancestors(region: Region, by_id: dict[str, Region]) -> list[str]:
    chain, parent = [], region.parent
    while parent and parent.lower() in by_id and len(chain) < 10:
        chain.insert(0, parent.lower())
        parent = by_id[parent.lower()].parent
    return chain


def fetch_osm(target: str, out_dir: str | Path = "raw", *, index_url: str = INDEX_URL,
              refresh_index: bool = False, retries: int = 5, reporter: Reporter = QUIET) -> Download:
    """Download a Geofabrik region (by name) or any URL of an OSM file into ``out_dir``,
    verified against the ``.md5`` published beside it when there is one. On failure
    ``out_dir`` is left as it was, but for a ``.part`` that a rerun resumes."""
    out_dir = Path(out_dir)
    http = session()
    fetched = None
    if "://" in target:
        url = target
        name = unquote(PurePosixPath(urlparse(url).path).name) or "download.osm.pbf"
        check_file_name(name, f"{url}: the file name")
    else:
        regions, fetched = _read_index(index_url, out_dir / "geofabrik-index.json", refresh_index)
        region = find_region(regions, target)
        url, name = region.pbf, f"{region.id}.osm.pbf"
        check_file_name(region.id, f"{index_url}: region id")
    md5_text = fetch_text(url + ".md5", http=http, missing_ok=True, retries=retries)
    md5 = md5_text.split()[0] if md5_text and md5_text.split() else None
    if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        md5 = None  # e.g. an HTML page served for a missing .md5: not a checksum to check against
    reporter.info(f"{url} -> {out_dir / name}" + ("" if md5 else " (no .md5 published: not verified)"))
    result = download(url, out_dir / name, md5=md5, http=http, retries=retries, reporter=reporter,
                      check=osm_check(name))
    if fetched is not None:  # cached only now, so that a failed run changes nothing
        _cache_index(out_dir / "geofabrik-index.json", fetched)
    return result


def check_file_name(name: str, what: str) -> None:
    """Refuse a name that is not a plain file name: it would write outside the output
    directory (``../x``, ``a/b``, an absolute path), hide (``.x``) or garble a terminal."""
    if (not name or "/" in name or "\\" in name or ".." in name or name.startswith(".")
            or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode()) > 240):
        raise GjpError(f"{what} {name!r} is not a plain file name (no path separators, '..', leading dot or "
                       "control characters); nothing downloaded")


# What each file name promises, by suffix (longest first), and how the bytes are named in messages.
_SUFFIXES = ((".osm.pbf", "pbf"), (".osm.bz2", "bz2"), (".osm.gz", "gz"), (".pbf", "pbf"), (".osm", "xml"))
_KIND_NAMES = {"pbf": "an OSM PBF", "xml": "OSM XML", "bz2": "a bzip2 file", "gz": "a gzip file"}
_WANTED = {"pbf": "an OSM PBF", "xml": "OSM XML", "bz2": "a bzip2-compressed OSM file",
           "gz": "a gzip-compressed OSM file", None: "an OSM file"}


def osm_check(name: str) -> Check:
    """The content check for a download named ``name``: its first bytes must be the OSM
    format the suffix promises (any OSM format for another suffix)."""
    wanted = next((kind for suffix, kind in _SUFFIXES if name.lower().endswith(suffix)), None)

    def check(head: bytes, content_type: str | None) -> str | None:
        kind = osm_kind(head)
        if kind is not None and (wanted is None or kind == wanted):
            return None
        return f"got {describe(head, content_type)}, not {_WANTED[wanted]}"

    return check


def osm_kind(head: bytes) -> str | None:
    """``"pbf"``, ``"xml"``, ``"bz2"``, ``"gz"`` from a file's first bytes, or ``None``."""
    # PBF: a 4-byte big-endian BlobHeader length (at most 64 KiB), then the BlobHeader,
    # whose field 1 (tag 0x0A, length 9) is the type "OSMHeader"
    if (len(head) >= 15 and 0 < int.from_bytes(head[:4], "big") <= 64 * 1024
            and head[4:6] == b"\x0a\x09" and head[6:15] == b"OSMHeader"):
        return "pbf"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bz2"
    if head[:2] == b"\x1f\x8b":
        return "gz"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if (text.startswith(b"<?xml") and b"<html" not in text.lower()) or text.startswith(b"<osm"):
        return "xml"
    return None


def describe(head: bytes, content_type: str | None = None) -> str:
    """What a body that starts with ``head`` looks like, for an error message."""
    if not head:
        return "an empty response"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text \
            or (content_type or "").lower().startswith(("text/html", "application/xhtml")):
        return "an HTML page"
    kind = osm_kind(head)
    if kind is not None:
        return _KIND_NAMES[kind]
    if text[:1] in (b"{", b"["):
        return "JSON"
    if text.startswith(b"<"):
        return "XML"
    if head[:4] == b"PK\x03\x04":
        return "a ZIP archive"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"text ({head[:40].decode().strip()!r})"
    return f"unrecognised binary data ({head[:8].hex()}…)"
