"""`gjp fetch` against local servers: Geofabrik downloads and a STAC API for NAIP."""

import email.utils
import hashlib
import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.warp import transform_bounds
from rasters import utm_naip
from servers import LAST_MODIFIED, Server

from gjp import grid, net
from gjp.cli import main
from gjp.errors import GjpError
from gjp.fetch import naip
from gjp.fetch.geofabrik import fetch_osm, find_region
from gjp.fetch.naip import fetch_naip, quarter_quad
from gjp.imagery.chips import tile_rasters
from gjp.osm.tiling import tile_osm

MONACO_PATH = "/europe/monaco-latest.osm.pbf"


@pytest.fixture
def geofabrik(tmp_path, monaco):
    root = tmp_path / "www"
    (root / "europe").mkdir(parents=True)
    data = monaco.read_bytes()
    (root / MONACO_PATH.lstrip("/")).write_bytes(data)
    (root / (MONACO_PATH.lstrip("/") + ".md5")).write_text(f"{hashlib.md5(data).hexdigest()}  monaco-latest.osm.pbf\n")
    with Server(root) as server:
        features = [
            {"type": "Feature", "properties": {"id": "europe", "name": "Europe", "urls": {
                "pbf": server.url + "/europe-latest.osm.pbf"}}},
            {"type": "Feature", "properties": {"id": "monaco", "parent": "europe", "name": "Monaco", "urls": {
                "pbf": server.url + MONACO_PATH}}},
            {"type": "Feature", "properties": {"id": "north-america", "name": "North America", "urls": {
                "pbf": server.url + "/north-america-latest.osm.pbf"}}},
            {"type": "Feature", "properties": {"id": "us", "parent": "north-america", "name": "United States",
                                               "urls": {"pbf": server.url + "/north-america/us-latest.osm.pbf"}}},
            {"type": "Feature", "properties": {"id": "california", "parent": "us", "name": "California", "urls": {
                "pbf": server.url + "/north-america/us/california-latest.osm.pbf"}}},
        ]
        (root / "index-v1-nogeom.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        server.index_url = server.url + "/index-v1-nogeom.json"
        server.data = data
        yield server


def pbf_gets(server):
    return [r for r in server.requests if r[0] == "GET" and r[1] == MONACO_PATH]


def test_fetch_a_region_by_name(geofabrik, tmp_path):
    out = tmp_path / "raw"
    result = fetch_osm("monaco", out, index_url=geofabrik.index_url)
    assert result.path == out / "monaco.osm.pbf" and result.path.read_bytes() == geofabrik.data
    assert (out / "geofabrik-index.json").exists()  # the index is cached in the workspace
    assert sorted(os.listdir(out)) == ["geofabrik-index.json", "monaco.osm.pbf"]
    # up to date: verified against the .md5, not downloaded again
    again = fetch_osm("monaco", out, index_url=geofabrik.index_url)
    assert again.skipped and len(pbf_gets(geofabrik)) == 1


def test_region_names():
    from gjp.fetch.geofabrik import Region

    index = [Region("north-america", "North America", None, "https://d/north-america-latest.osm.pbf"),
             Region("us", "United States", "north-america", "https://d/north-america/us-latest.osm.pbf"),
             Region("california", "California", "us", "https://d/north-america/us/california-latest.osm.pbf"),
             Region("monaco", "Monaco", "europe", "https://d/europe/monaco-latest.osm.pbf")]
    for query in ("california", "us/california", "north-america/us/california", "California", "US/California/"):
        assert find_region(index, query).id == "california"
    with pytest.raises(GjpError, match="did you mean.*california"):
        find_region(index, "califronia")
    with pytest.raises(GjpError, match="unknown Geofabrik region 'atlantis'"):
        find_region(index, "atlantis")


def test_resume_after_a_dropped_connection(geofabrik, tmp_path):
    geofabrik.faults[MONACO_PATH] = ["drop:200000"]
    result = fetch_osm("monaco", tmp_path / "raw", index_url=geofabrik.index_url)
    assert result.path.read_bytes() == geofabrik.data
    first, second = [r[2] for r in pbf_gets(geofabrik)]
    assert first is None and 100_000 < int(second.split("=")[1].rstrip("-")) <= 200_000  # resumed


def test_an_interrupted_download_resumes_on_the_next_run(geofabrik, tmp_path):
    out = tmp_path / "raw"
    geofabrik.faults[MONACO_PATH] = ["drop:100000"] * 2
    with pytest.raises(GjpError, match="run again to resume"):
        fetch_osm("monaco", out, index_url=geofabrik.index_url, retries=1)
    assert not (out / "monaco.osm.pbf").exists() and (out / "monaco.osm.pbf.part").exists()
    result = fetch_osm("monaco", out, index_url=geofabrik.index_url)
    assert result.path.read_bytes() == geofabrik.data and not (out / "monaco.osm.pbf.part").exists()
    assert pbf_gets(geofabrik)[-1][2] is not None  # resumed, not restarted


def test_checksum_mismatch_leaves_nothing(geofabrik, tmp_path):
    (geofabrik.root / (MONACO_PATH.lstrip("/") + ".md5")).write_text("0" * 32 + "  monaco-latest.osm.pbf\n")
    out = tmp_path / "raw"
    with pytest.raises(GjpError, match="checksum mismatch"):
        fetch_osm("monaco", out, index_url=geofabrik.index_url)
    assert not out.exists()  # nothing kept, not even the index: a failed run changes nothing


def test_server_error_then_success_is_retried(geofabrik, tmp_path):
    geofabrik.faults[MONACO_PATH] = ["500", "503"]
    result = fetch_osm("monaco", tmp_path / "raw", index_url=geofabrik.index_url)
    assert result.path.read_bytes() == geofabrik.data and len(pbf_gets(geofabrik)) == 3


def test_not_found_is_a_clear_error(geofabrik, tmp_path):
    with pytest.raises(GjpError, match="HTTP 404"):
        fetch_osm(geofabrik.url + "/nowhere/atlantis-latest.osm.pbf", tmp_path / "raw")
    assert not list((tmp_path / "raw").glob("*.part")) if (tmp_path / "raw").exists() else True


def test_fetch_by_url_and_the_cli(geofabrik, tmp_path):
    result = fetch_osm(geofabrik.url + MONACO_PATH, tmp_path / "raw")
    assert result.path.name == "monaco-latest.osm.pbf" and result.path.read_bytes() == geofabrik.data
    cli = subprocess.run([sys.executable, "-m", "gjp", "fetch", "osm", "monaco", "-o", str(tmp_path / "w"),
                          "--index-url", geofabrik.index_url], capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip() == str(tmp_path / "w" / "monaco.osm.pbf")
    bad = subprocess.run([sys.executable, "-m", "gjp", "fetch", "osm", "monacco", "-o", str(tmp_path / "w"),
                          "--index-url", geofabrik.index_url], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("gjp: error: unknown Geofabrik region 'monacco'")
    assert "monaco" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------- failures leave the directory as it was

SERVER_DATE = email.utils.parsedate_to_datetime(LAST_MODIFIED).timestamp()  # the test server's Last-Modified


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(net, "time", types.SimpleNamespace(sleep=lambda s: None))


def gjp_fetch(capsys, *args):
    """``gjp fetch osm -q ARGS`` in-process, as the console script runs it: (exit code, stdout, stderr)."""
    try:
        main(["fetch", "osm", "-q", *map(str, args)])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root):
    """Every file under ``root`` with its bytes, and each directory's sorted listing."""
    if not root.exists():
        return None
    return ({str(p.relative_to(root)): sorted(os.listdir(p)) for p in [root, *root.rglob("*")] if p.is_dir()},
            {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()})


def assert_one_line_error(result, *phrases):
    code, out, err = result
    assert code == 1 and out == "" and "Traceback" not in err, err
    assert err.startswith("gjp: error: ") and err.count("\n") == 1, err
    for phrase in phrases:
        assert phrase in err, (phrase, err)


def test_a_stale_part_is_restarted_not_trusted(geofabrik, tmp_path, capsys):
    (geofabrik.root / (MONACO_PATH.lstrip("/") + ".md5")).unlink()  # nothing to catch a bad part afterwards
    url, size = geofabrik.url + MONACO_PATH, len(geofabrik.data)
    junk = np.random.default_rng(1).bytes(size)
    cases = {  # a .part of random bytes, and what its state says
        "no state": (junk[:100_000], None, []),
        "state of another url": (junk[:100_000], {"url": url + "x", "etag": '"a"', "size": size}, []),
        "no validators": (junk[:100_000], {"url": url, "etag": None, "last_modified": None, "size": size}, []),
        "changed on the server": (junk[:100_000], {"url": url, "etag": '"old"', "size": size}, []),
        "If-Range ignored": (junk[:100_000], {"url": url, "etag": '"old"', "size": size}, ["ignore-if-range"]),
        "longer than the file": (junk + b"x", {"url": url, "etag": '"old"', "size": size}, []),
        "complete but stale": (junk, {"url": url, "etag": '"old"', "size": size}, ["ignore-if-range"]),
    }
    for case, (part, state, faults) in cases.items():
        out = tmp_path / case / "raw"
        out.mkdir(parents=True)
        (out / "monaco.osm.pbf.part").write_bytes(part)
        if state is not None:
            (out / "monaco.osm.pbf.part.json").write_text(json.dumps(state))
        geofabrik.faults[MONACO_PATH] = list(faults)
        code, _, err = gjp_fetch(capsys, "monaco", "-o", out, "--index-url", geofabrik.index_url)
        assert code == 0 and err == "", (case, err)
        assert (out / "monaco.osm.pbf").read_bytes() == geofabrik.data, case
        assert sorted(os.listdir(out)) == ["geofabrik-index.json", "monaco.osm.pbf"], case
        assert pbf_gets(geofabrik)[-1][2] is None, case  # the last request started from zero
        # and the next run finds it up to date from the server's size and date: no GET
        gets = len(pbf_gets(geofabrik))
        assert fetch_osm("monaco", out, index_url=geofabrik.index_url).skipped, case
        assert len(pbf_gets(geofabrik)) == gets, case


@pytest.mark.parametrize("case, bytes_, mtime, off, skipped", [
    ("the server's file, size and date", "data", SERVER_DATE, (), True),
    ("random bytes of the right size and date", "junk", SERVER_DATE, (), False),
    ("an HTML page of the right size and date", "html", SERVER_DATE, (), False),
    ("another date", "data", SERVER_DATE - 3600, (), False),
    ("a shorter file", "short", SERVER_DATE, (), False),
    ("server without Last-Modified", "data", SERVER_DATE, ("Last-Modified",), False),
])
def test_up_to_date_only_when_the_validators_say_so(geofabrik, tmp_path, case, bytes_, mtime, off, skipped):
    (geofabrik.root / (MONACO_PATH.lstrip("/") + ".md5")).unlink()
    geofabrik.headers_off = set(off)
    data = geofabrik.data
    content = {"data": data, "junk": np.random.default_rng(2).bytes(len(data)), "short": data[:-1],
               "html": (b"<!DOCTYPE html><html>" + b" " * len(data))[:len(data)]}[bytes_]
    out = tmp_path / "raw"
    out.mkdir()
    (out / "monaco.osm.pbf").write_bytes(content)
    os.utime(out / "monaco.osm.pbf", (mtime, mtime))
    result = fetch_osm("monaco", out, index_url=geofabrik.index_url)
    assert result.skipped == skipped and result.path.read_bytes() == data
    assert len(pbf_gets(geofabrik)) == (0 if skipped else 1)


def test_an_md5_that_is_not_a_checksum_is_ignored(geofabrik, tmp_path):
    (geofabrik.root / (MONACO_PATH.lstrip("/") + ".md5")).write_text("<!DOCTYPE html><html>not found</html>")
    result = fetch_osm("monaco", tmp_path / "raw", index_url=geofabrik.index_url)
    assert result.path.read_bytes() == geofabrik.data


def test_a_dropped_download_resumes_or_leaves_nothing(geofabrik, tmp_path, capsys, no_backoff):
    """With validators the .part (and its state) stays and the next run resumes it; without,
    nothing is kept and the directory is as it was."""
    (geofabrik.root / (MONACO_PATH.lstrip("/") + ".md5")).unlink()
    url = geofabrik.url + MONACO_PATH
    work = tmp_path / "work"
    out = work / "raw"
    assert gjp_fetch(capsys, "--list", "-o", out, "--index-url", geofabrik.index_url)[0] == 0  # caches the index
    before = snapshot(work)

    geofabrik.faults[MONACO_PATH] = ["drop:100000"] * 6
    assert_one_line_error(gjp_fetch(capsys, "monaco", "-o", out, "--index-url", geofabrik.index_url),
                          url, "after 6 attempts", "monaco.osm.pbf.part kept, run again to resume")
    assert sorted(os.listdir(out)) == ["geofabrik-index.json", "monaco.osm.pbf.part", "monaco.osm.pbf.part.json"]
    kept = (out / "monaco.osm.pbf.part").stat().st_size
    assert gjp_fetch(capsys, "monaco", "-o", out, "--index-url", geofabrik.index_url)[0] == 0
    assert pbf_gets(geofabrik)[-1][2] == f"bytes={kept}-"  # resumed
    assert (out / "monaco.osm.pbf").read_bytes() == geofabrik.data
    (out / "monaco.osm.pbf").unlink()

    geofabrik.headers_off = {"ETag", "Last-Modified"}
    geofabrik.faults[MONACO_PATH] = ["drop:100000"] * 6
    assert_one_line_error(gjp_fetch(capsys, "monaco", "-o", out, "--index-url", geofabrik.index_url),
                          url, "no ETag or Last-Modified", "nothing kept")
    assert snapshot(work) == before
    assert all(r[2] is None for r in pbf_gets(geofabrik)[-6:])  # never resumed without a validator


BAD_INDEXES = {
    "an HTML page": ("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "got an HTML page, not JSON"),
    "truncated JSON": ('{"type": "FeatureCollection", "features": [{"type": "Feat',
                       "invalid JSON: Unterminated string starting at: line 1"),
    "no features": ('{"type": "FeatureCollection"}', "no 'features' list"),
    "features not a list": ('{"features": {"monaco": {}}}', "no 'features' list"),
    "no regions": ('{"features": []}', "no region with a .osm.pbf URL"),
    "a feature without an id": ('{"features": [{"properties": {"name": "x"}}]}', "feature 0 has no properties.id"),
    "a non-http URL": ('{"features": [{"properties": {"id": "monaco", "urls": {"pbf": "file:///etc/passwd"}}}]}',
                       "region 'monaco': urls.pbf is not an http(s) URL"),
}


@pytest.mark.parametrize("case", BAD_INDEXES)
def test_a_bad_index_is_an_error_and_not_cached(geofabrik, tmp_path, capsys, case):
    body, problem = BAD_INDEXES[case]
    index = geofabrik.root / "index-v1-nogeom.json"
    good = index.read_text()
    index.write_text(body)
    work = tmp_path / "work"
    (work / "raw").mkdir(parents=True)
    (work / "raw" / "notes.txt").write_text("mine\n")
    before = snapshot(work)
    assert_one_line_error(gjp_fetch(capsys, "monaco", "-o", work / "raw", "--index-url", geofabrik.index_url),
                          f"{geofabrik.index_url}: not a Geofabrik index ({problem}")
    assert snapshot(work) == before
    # once the server is fixed the next run works: the bad index was not cached
    index.write_text(good)
    assert gjp_fetch(capsys, "monaco", "-o", work / "raw", "--index-url", geofabrik.index_url)[0] == 0
    assert (work / "raw" / "geofabrik-index.json").read_text() == good


def test_a_cached_index_that_does_not_parse_is_fetched_again(geofabrik, tmp_path, capsys):
    out = tmp_path / "raw"
    out.mkdir()
    cache = out / "geofabrik-index.json"
    cache.write_text('{"features": [')  # fresh, but broken
    assert fetch_osm("monaco", out, index_url=geofabrik.index_url).path.read_bytes() == geofabrik.data
    assert cache.read_text() == (geofabrik.root / "index-v1-nogeom.json").read_text()
    # a broken cache and a broken server: an error about the server, the cache left alone
    cache.write_text('{"features": [')
    (out / "monaco.osm.pbf").unlink()
    (geofabrik.root / "index-v1-nogeom.json").write_text("<html>maintenance</html>")
    before = snapshot(out)
    assert_one_line_error(gjp_fetch(capsys, "monaco", "-o", out, "--index-url", geofabrik.index_url),
                          geofabrik.index_url, "got an HTML page")
    assert snapshot(out) == before


@pytest.mark.parametrize("region_id", ["../../x", "..", ".hidden", "a\\b", "x\x1b[2Jy", "new\nline"])
def test_region_ids_must_be_plain_file_names(geofabrik, tmp_path, capsys, region_id):
    index = geofabrik.root / "index-v1-nogeom.json"
    features = json.loads(index.read_text())["features"]
    features.append({"type": "Feature", "properties": {"id": region_id, "urls": {"pbf": geofabrik.url + MONACO_PATH}}})
    index.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    work = tmp_path / "work"
    out = work / "a" / "raw"
    out.mkdir(parents=True)
    before = snapshot(work)
    assert_one_line_error(gjp_fetch(capsys, region_id, "-o", out, "--index-url", geofabrik.index_url),
                          f"{geofabrik.index_url}: region id {region_id!r} is not a plain file name")
    assert snapshot(work) == before and pbf_gets(geofabrik) == []


@pytest.mark.parametrize("path, name", [
    ("/%2E%2E%2F%2E%2E%2Fx.osm.pbf", "../../x.osm.pbf"),
    ("/europe/%2E%2E", ".."),
    ("/europe/.monaco.osm.pbf", ".monaco.osm.pbf"),
    ("/europe/a%5Cb.osm.pbf", "a\\b.osm.pbf"),
    ("/europe/a%0Ab.osm.pbf", "a\nb.osm.pbf"),
])
def test_names_from_urls_must_be_plain_file_names(geofabrik, tmp_path, capsys, path, name):
    work = tmp_path / "work"
    out = work / "a" / "raw"
    out.mkdir(parents=True)
    before = snapshot(work)
    assert_one_line_error(gjp_fetch(capsys, geofabrik.url + path, "-o", out),
                          f"{geofabrik.url + path}: the file name {name!r} is not a plain file name")
    assert snapshot(work) == before and geofabrik.requests == []


WRONG_CONTENT = [  # (served as, body, the message)
    ("/x.osm.pbf", b"", "got an empty response, not an OSM PBF"),
    ("/x.osm.pbf", b"Access denied\n", "got text ('Access denied'), not an OSM PBF"),
    ("/x.osm.pbf", b"<?xml version='1.0'?>\n<osm version='0.6'></osm>\n", "got OSM XML, not an OSM PBF"),
    ("/x.osm.pbf", bytes(range(256)), "got unrecognised binary data (0001020304050607…), not an OSM PBF"),
    ("/x.osm", b'{"error": "rate limited"}', "got JSON, not OSM XML"),
    ("/x.osm", b"<?xml version='1.0'?><html><body>Not here</body></html>", "got an HTML page, not OSM XML"),
    ("/x.osm.bz2", "monaco", "got an OSM PBF, not a bzip2-compressed OSM file"),
    ("/x.pbf", b"BZh91AY&SY", "got a bzip2 file, not an OSM PBF"),
]


@pytest.mark.parametrize("path, body, problem", WRONG_CONTENT)
def test_the_wrong_content_is_not_kept(geofabrik, tmp_path, capsys, path, body, problem):
    (geofabrik.root / path.lstrip("/")).write_bytes(geofabrik.data if body == "monaco" else body)
    work = tmp_path / "work"
    (work / "raw").mkdir(parents=True)
    (work / "raw" / "notes.txt").write_text("mine\n")
    before = snapshot(work)
    assert_one_line_error(gjp_fetch(capsys, geofabrik.url + path, "-o", work / "raw"),
                          f"{geofabrik.url + path}: {problem}; nothing saved")
    assert snapshot(work) == before


def test_an_html_page_is_spotted_on_its_first_bytes(geofabrik, tmp_path, capsys, boston):
    """Status 200 and a 32 MB HTML page where the extract should be: an error after the first
    bytes, and an older extract in the directory stays as it was."""
    out = tmp_path / "raw"
    assert gjp_fetch(capsys, "--list", "-o", out, "--index-url", geofabrik.index_url)[0] == 0
    (out / "monaco.osm.pbf").write_bytes(boston.read_bytes())  # an older extract (its MD5 differs)
    before = snapshot(out)
    geofabrik.faults[MONACO_PATH] = ["html"]
    assert_one_line_error(gjp_fetch(capsys, "monaco", "-o", out, "--index-url", geofabrik.index_url),
                          f"{geofabrik.url + MONACO_PATH}: got an HTML page, not an OSM PBF; nothing saved")
    assert snapshot(out) == before
    for _ in range(100):  # the server notices the hang-up when its next write fails
        if MONACO_PATH in geofabrik.sent:
            break
        time.sleep(0.05)
    assert geofabrik.sent[MONACO_PATH] < geofabrik.html_size / 4


# --------------------------------------------------------------------------- NAIP

LON, LAT = -99.155, 47.02  # North Dakota, as the real fixture


def _item(server, item_id, path, when):
    with rasterio.open(path) as src:
        bbox = list(transform_bounds(src.crs, "EPSG:4326", *src.bounds))
    w, s, e, n = bbox
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": "naip", "bbox": bbox,
            "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
            "properties": {"datetime": when, "naip:year": when[:4], "gsd": 2.0},
            "assets": {"image": {"href": f"{server.url}/naip/{item_id}.tif",
                                 "type": "image/tiff; application=geotiff; profile=cloud-optimized"}},
            "links": []}


@pytest.fixture
def stac(tmp_path):
    root = tmp_path / "www"
    (root / "naip").mkdir(parents=True)
    images = {  # two flights of quarter quad m_4709963_se, one of its neighbour to the west
        "nd_m_4709963_se_14_060_20180701": (LON, LAT, "2018-07-01T16:00:00Z", (60, 60, 60, 60)),
        "nd_m_4709963_se_14_060_20200831": (LON, LAT, "2020-08-31T16:00:00Z", (90, 120, 80, 200)),
        "nd_m_4709963_sw_14_060_20200831": (LON - 0.06, LAT, "2020-08-31T17:00:00Z", (100, 100, 100, 100)),
    }
    with Server(root) as server:
        items = []
        for item_id, (lon, lat, when, fill) in images.items():
            path = utm_naip(root / "naip" / f"{item_id}.tif", lon, lat, 1600, 1400, res=4.0, fill=fill)
            items.append(_item(server, item_id, path, when))
        server.stac_items = items
        yield server


def test_quarter_quads():
    assert quarter_quad("ca_m_3712213_ne_10_060_20220519") == "m_3712213_ne"
    assert quarter_quad("some-other-id") == "some-other-id"


def test_fetch_naip_newest_per_quarter_quad_with_paging(stac, tmp_path):
    out = tmp_path / "raw" / "naip"
    report = fetch_naip(out, bbox=(LON - 0.1, LAT - 0.02, LON + 0.02, LAT + 0.02), stac_url=stac.url)
    assert report.found == 3 and report.quarter_quads == 2 and report.downloaded == 2  # 3 items, 2 pages
    assert sorted(p.name for p in out.iterdir()) == [
        "nd_m_4709963_se_14_060_20200831.json", "nd_m_4709963_se_14_060_20200831.tif",
        "nd_m_4709963_sw_14_060_20200831.json", "nd_m_4709963_sw_14_060_20200831.tif"]
    tif = out / "nd_m_4709963_se_14_060_20200831.tif"
    assert tif.read_bytes() == (stac.root / "naip" / tif.name).read_bytes()
    item = json.loads((out / "nd_m_4709963_se_14_060_20200831.json").read_text())
    assert item["id"] == "nd_m_4709963_se_14_060_20200831" and item["properties"]["datetime"].startswith("2020")
    assert sum(1 for r in stac.requests if r[1] == "/search") == 2
    # the fetched images tile straight away, with their acquisition date from the item
    images = tile_rasters(sorted(out.glob("*.tif")), tmp_path / "images", min_coverage=0.5)
    assert images.chips_written > 10
    rows = pq.read_table(tmp_path / "images" / "index.parquet").to_pylist()
    assert {r["acquired"] for r in rows} == {"2020-08-31"}


def test_year_filter_and_empty_search(stac, tmp_path):
    report = fetch_naip(tmp_path / "n", bbox=(LON - 0.01, LAT - 0.01, LON + 0.01, LAT + 0.01), stac_url=stac.url,
                        year=2018)
    assert report.found == 1 and [p.name for p in report.files] == ["nd_m_4709963_se_14_060_20180701.tif"]
    with pytest.raises(GjpError, match="no NAIP imagery"):
        fetch_naip(tmp_path / "m", bbox=(-80.0, 35.0, -79.99, 35.01), stac_url=stac.url)


def test_signing_is_skipped_with_no_sign(stac, tmp_path, monkeypatch):
    signed = []
    monkeypatch.setattr(naip, "_sign", lambda item: signed.append(item.id) or item)
    bbox = (LON - 0.01, LAT - 0.01, LON + 0.01, LAT + 0.01)
    fetch_naip(tmp_path / "a", bbox=bbox, stac_url=stac.url, sign=False)
    assert signed == []
    fetch_naip(tmp_path / "b", bbox=bbox, stac_url=stac.url)
    assert signed == ["nd_m_4709963_se_14_060_20200831"]


def test_area_from_tiles_and_clipped_reads(stac, tmp_path, opl):
    # a tiles/ directory from `gjp tile`, with a few benches in two tiles of the area
    x, y = grid.tile_of(LON, LAT, 16)
    benches = []
    for i, (dx, dy) in enumerate([(0, 0), (1, 0)]):
        w, s, e, n = grid.tile_bounds(int(x) + dx, int(y) + dy, 16)
        benches.append(f"n{i + 1} v1 x{(w + e) / 2:.7f} y{(s + n) / 2:.7f} Tamenity=bench")
    tile_osm([opl("\n".join(benches))], tmp_path / "tiles", min_entities=1)
    out = tmp_path / "clipped"
    report = fetch_naip(out, tiles_dir=tmp_path / "tiles", stac_url=stac.url, clip=True)
    assert report.quarter_quads == 1  # only the south-east quarter quad covers those tiles
    (tif,) = out.glob("*.tif")
    full = stac.root / "naip" / tif.name
    assert tif.stat().st_size < full.stat().st_size / 3  # only the window was read
    with rasterio.open(tif) as small, rasterio.open(full) as big:
        covered = transform_bounds(small.crs, "EPSG:4326", *small.bounds)
        for dx in (0, 1):
            w, s, e, n = grid.tile_bounds(int(x) + dx, int(y), 16)
            assert covered[0] <= w and covered[2] >= e and covered[1] <= s and covered[3] >= n
        window = rasterio.windows.from_bounds(*small.bounds, big.transform)
        col, row = round(window.col_off), round(window.row_off)
        np.testing.assert_array_equal(small.read(), big.read(window=rasterio.windows.Window(col, row, small.width, small.height)))
    assert any(r[2] for r in stac.requests if r[1].endswith(".tif"))  # HTTP range reads


def test_stac_failures_are_retried_then_reported(stac, tmp_path, monkeypatch):
    monkeypatch.setattr(naip, "STAC_BACKOFF", 0.0)
    bbox = (LON - 0.01, LAT - 0.01, LON + 0.01, LAT + 0.01)
    stac.faults["/search"] = ["500", "503"]  # two failures, then the search works
    assert fetch_naip(tmp_path / "a", bbox=bbox, stac_url=stac.url).downloaded == 1
    stac.faults["/search"] = ["500"] * 10
    with pytest.raises(GjpError, match=stac.url):
        fetch_naip(tmp_path / "b", bbox=bbox, stac_url=stac.url)
    with pytest.raises(GjpError, match="cannot reach|STAC"):
        fetch_naip(tmp_path / "c", bbox=bbox, stac_url="http://127.0.0.1:9/")
