"""``gjp fetch osm``: OSM extracts from Geofabrik's download server, by region name.

Regions come from Geofabrik's published JSON index (every extract with its id, parent and
download URLs), cached in the workspace for a week. A region is named by its id
(``monaco``, ``california``), by its path (``us/california``,
``north-america/us/california``) or by its display name (``"Baden-Württemberg"``).
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from gjp.errors import GjpError
from gjp.net import Download, download, fetch_text, session
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
    """Geofabrik's regions, from ``cache`` when it is fresh, else from ``index_url``."""
    text = None
    if cache is not None and cache.exists() and not refresh and time.time() - cache.stat().st_mtime < INDEX_MAX_AGE_S:
        text = cache.read_text(encoding="utf-8")
    if text is None:
        text = fetch_text(index_url)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".part")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(cache)
    try:
        features = json.loads(text)["features"]
        regions = []
        for feature in features:
            props = feature["properties"]
            pbf = props.get("urls", {}).get("pbf")
            if pbf:
                regions.append(Region(props["id"], props.get("name", props["id"]), props.get("parent"), pbf))
    except (ValueError, KeyError, TypeError) as err:
        raise GjpError(f"{index_url}: not a Geofabrik index ({err})") from err
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
    verified against the ``.md5`` published beside it when there is one."""
    out_dir = Path(out_dir)
    http = session()
    if "://" in target:
        url = target
        name = Path(urlparse(url).path).name or "download.osm.pbf"
    else:
        regions = load_index(index_url, out_dir / "geofabrik-index.json", refresh_index)
        region = find_region(regions, target)
        url, name = region.pbf, f"{region.id}.osm.pbf"
    md5_text = fetch_text(url + ".md5", http=http, missing_ok=True, retries=retries)
    md5 = md5_text.split()[0] if md5_text and md5_text.split() else None
    reporter.info(f"{url} -> {out_dir / name}" + ("" if md5 else " (no .md5 published: not verified)"))
    return download(url, out_dir / name, md5=md5, http=http, retries=retries, reporter=reporter)
