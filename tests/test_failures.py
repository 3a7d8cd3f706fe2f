"""Failure is part of the contract (docs/GUARANTEES.md): for bad input to every step, one
line ``gjp: error: <file>: <problem>``, a non-zero exit, no traceback, and the workspace
exactly as it was: same files, same bytes, no staging left behind.

The cases run ``gjp`` in-process on a copy of a real workspace (Monaco through every step),
damaged in one way each. Full disks, signals and concurrent runs need a process of their
own and are at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parent.parent / "examples" / "data"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory below ``root`` (hidden ones too) with a digest of its bytes."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        state[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert code != 0, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gjp: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


# --------------------------------------------------------------------------- the workspace

@pytest.fixture(scope="module")
def pristine(tmp_path_factory, run_gjp):
    """Monaco through every step, as a user's workspace: tiles/ … graphs/, dataset.h5, a
    task, tag embeddings, TagCount embeddings of the task, a probe result."""
    ws = tmp_path_factory.mktemp("workspace")
    shutil.copy(DATA / "mc_monaco_2023-12.osm.pbf", ws / "monaco.osm.pbf")
    for args in (["tile", "monaco.osm.pbf", "-o", "tiles/"], ["simplify"], ["bbox"], ["visibility"],
                 ["pack-h5"], ["mktask", "building_count"], ["embed-tags"],
                 ["embed", "--model", "tagcount", "--task", "tasks/building_count"],
                 ["embed", "--model", "tagcount"],
                 ["probe", "-e", "embeddings/tagcount__building_count.h5", "--task", "tasks/building_count",
                  "--head", "linear", "--seeds", "2"]):
        code, _, err = run_gjp(["-q", *args], ws)
        assert code == 0, (args, err)
    return ws


@pytest.fixture
def ws(pristine, tmp_path):
    copy = tmp_path / "ws"
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


# --------------------------------------------------------------------------- damage

def _copy(ws: Path, src: str, dst: str) -> None:
    (ws / dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ws / src, ws / dst)


def write(rel: str, data: bytes | str):
    def damage(ws: Path):
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return damage


def truncate(rel: str, keep: float = 0.5):
    def damage(ws: Path):
        path = ws / rel
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])
    return damage


def first_group(ws: Path, directory: str) -> Path:
    return sorted((ws / directory).glob("14_*.parquet"))[0]


def truncate_group(directory: str):
    def damage(ws: Path):
        path = first_group(ws, directory)
        path.write_bytes(path.read_bytes()[:3000])
    return damage


def h5_edit(rel: str, edit):
    def damage(ws: Path):
        with h5py.File(ws / rel, "r+") as f:
            edit(f)
    return damage


def drop(name: str):
    def edit(f):
        del f[name]
    return edit


def nan_vectors(f):
    v = f["tiles/vectors"][()]
    v[3] = np.nan
    del f["tiles/vectors"]
    f["tiles/vectors"] = v


def fewer_vectors(f):
    v = f["tiles/vectors"][()]
    del f["tiles/vectors"]
    f["tiles/vectors"] = v[:-5]


def bad_offsets(f):
    o = f["tiles/entity_offsets"][()]
    o[-1] += 7
    f["tiles/entity_offsets"][...] = o


def json_edit(rel: str, edit):
    def damage(ws: Path):
        path = ws / rel
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return damage


def result_copy(ws: Path):
    src = next((ws / "results").glob("*.json"))
    shutil.copy(src, ws / "results" / "copy.json")


def images_of_zoom(zoom: int):
    """images/ with an index of another zoom than the graphs (made by the real writer)."""
    def damage(ws: Path):
        from gjp.imagery.chips import write_index

        (ws / "images").mkdir()
        write_index(ws / "images", [{"tile": "17_1_1", "sources": ["x.tif"], "valid_fraction": 1.0,
                                     "acquired": None, "resolution_m": 1.0, "source_resolution_m": 1.0}],
                    {"zoom": zoom, "size": 224}, {"step": "tile"})
    return damage


NOT_UTF8 = b"name = \"x\"\nrule = \"count\"\nmatch = [{ building = \"*\" }]\n# caf\xe9\n"
SPEC_NO_MATCH = 'name = "nothing"\nrule = "any"\nmatch = [{ nosuchkey = "*" }]\n'


@dataclass
class Case:
    id: str
    args: list
    fragments: tuple = ()
    damage: object = None
    expect_code: int | None = None
    extra: dict = field(default_factory=dict)


T, R, E = "tasks/building_count", "results", "embeddings/tagcount.h5"
ET = "embeddings/tagcount__building_count.h5"

CASES = [
    # fetch
    Case("fetch-osm-no-region", ["fetch", "osm"], ("REGION", "--help")),
    Case("fetch-naip-bad-bbox", ["fetch", "naip", "--bbox", "1,2,3"], ("1,2,3",)),
    Case("fetch-naip-no-area", ["fetch", "naip"], ("--bbox",)),
    # tile
    Case("tile-missing-input", ["tile", "nosuch.osm.pbf", "-o", "t2/"], ("nosuch.osm.pbf",)),
    Case("tile-text-named-pbf", ["tile", "fake.osm.pbf", "-o", "t2/"], ("fake.osm.pbf",),
         write("fake.osm.pbf", "hello, not OSM\n")),
    Case("tile-truncated-pbf", ["tile", "cut.osm.pbf", "-o", "t2/"], ("cut.osm.pbf",),
         lambda ws: (ws / "cut.osm.pbf").write_bytes((ws / "monaco.osm.pbf").read_bytes()[:40000])),
    Case("tile-output-empty-name", ["tile", "monaco.osm.pbf", "-o", ""], ("not an output name",)),
    Case("tile-output-dot", ["tile", "monaco.osm.pbf", "-o", "."], ("not an output name",)),
    Case("tile-output-cwd", ["tile", "monaco.osm.pbf", "-o", "../ws"], ("current directory",)),
    Case("tile-output-exists", ["tile", "monaco.osm.pbf", "-o", "tiles/"], ("tiles", "--overwrite")),
    Case("tile-output-is-a-file", ["tile", "monaco.osm.pbf", "-o", "dataset.h5", "--overwrite"],
         ("dataset.h5", "not a directory")),
    Case("tile-node-index-bad-path", ["tile", "monaco.osm.pbf", "-o", "t2/", "--node-index",
                                      "dense_file_array,nodir/nodes.idx"], ("nodir", "--node-index")),
    Case("tile-node-index-unknown", ["tile", "monaco.osm.pbf", "-o", "t2/", "--node-index", "magic"],
         ("--node-index",)),
    Case("tile-zoom-out-of-range", ["tile", "monaco.osm.pbf", "-o", "t2/", "--zoom", "30"], ("--zoom",)),
    Case("tile-min-above-max", ["tile", "monaco.osm.pbf", "-o", "t2/", "--min-entities", "9",
                                "--max-entities", "3"], ("--min-entities",)),
    Case("tile-tag-filter-not-utf8", ["tile", "monaco.osm.pbf", "-o", "t2/", "--tag-filter", "filter.txt"],
         ("filter.txt", "UTF-8"), write("filter.txt", b"source*\nnot\xff\n")),
    Case("tile-tag-filter-missing", ["tile", "monaco.osm.pbf", "-o", "t2/", "--tag-filter", "nofilter.txt"],
         ("nofilter.txt",)),
    Case("tile-input-name-not-utf8", ["tile", os.fsdecode(b"m\xff.osm.pbf"), "-o", "t2/"], ("UTF-8",),
         lambda ws: shutil.copy(ws / "monaco.osm.pbf", os.path.join(os.fsencode(ws), b"m\xff.osm.pbf"))),
    Case("tile-corrupt-geotiff", ["tile", "bad.tif", "-o", "i2/"], ("bad.tif", "damaged or truncated raster"),
         lambda ws: (ws / "bad.tif").write_bytes(
             (EXAMPLES / "naip_nd_m_4709963_se_14_1_20200831_5m.tif").read_bytes()[:300000])),
    Case("tile-min-coverage-nan", ["tile", "x.tif", "-o", "i2/", "--min-coverage", "nan"], ("--min-coverage",)),
    Case("tile-bands-two", ["tile", "bad.tif", "-o", "i2/", "--bands", "1,2"], ("--bands",),
         lambda ws: shutil.copy(EXAMPLES / "naip_nd_m_4709963_se_14_1_20200831_5m.tif", ws / "bad.tif")),
    # simplify, bbox, visibility
    Case("simplify-tolerance-nan", ["simplify", "-o", "s2/", "--tolerance", "nan"], ("--tolerance", "finite")),
    Case("simplify-tolerance-negative", ["simplify", "-o", "s2/", "--tolerance", "-1"], ("--tolerance",)),
    Case("simplify-missing-input", ["simplify", "-i", "nosuch/", "-o", "s2/"], ("nosuch",)),
    Case("simplify-no-group-files", ["simplify", "-i", "empty/", "-o", "s2/"], ("empty", "no tile group files"),
         lambda ws: (ws / "empty").mkdir()),
    Case("simplify-truncated-group", ["simplify", "-o", "s2/"], ("tiles/14_", "Parquet"), truncate_group("tiles")),
    Case("simplify-output-exists", ["simplify"], ("simplified", "--overwrite")),
    Case("bbox-min-side-inf", ["bbox", "-o", "b2/", "--min-side", "inf"], ("--min-side", "finite")),
    Case("bbox-min-side-zero", ["bbox", "-o", "b2/", "--min-side", "0"], ("--min-side",)),
    Case("bbox-steps-out-of-order", ["bbox", "-i", "tiles/", "-o", "b2/"], ("tiles/14_", "local")),
    Case("visibility-steps-out-of-order", ["visibility", "-i", "simplified/", "-o", "g2/"],
         ("simplified/14_", "min_box")),
    Case("visibility-k-zero", ["visibility", "-o", "g2/", "--k", "0"], ("--k",)),
    Case("visibility-bad-group-metadata", ["visibility", "-o", "g2/"], ("boxed/14_", "metadata"),
         lambda ws: _bad_group_metadata(first_group(ws, "boxed"))),
    # pack-h5
    Case("pack-output-exists", ["pack-h5"], ("dataset.h5", "--overwrite")),
    Case("pack-output-is-a-directory", ["pack-h5", "-o", "outdir"], ("outdir", "is a directory"),
         lambda ws: (ws / "outdir").mkdir()),
    Case("pack-truncated-graph", ["pack-h5", "-o", "d2.h5"], ("graphs/14_", "Parquet"), truncate_group("graphs")),
    Case("pack-images-without-index", ["pack-h5", "-o", "d2.h5", "--images", "imgs/"], ("imgs", "index.parquet"),
         lambda ws: (ws / "imgs").mkdir()),
    Case("pack-images-of-another-zoom", ["pack-h5", "-o", "d2.h5", "--images", "images/"], ("images", "zoom"),
         images_of_zoom(17)),
    Case("pack-vocab-not-a-dataset", ["pack-h5", "-o", "d2.h5", "--vocab", "monaco.osm.pbf"],
         ("monaco.osm.pbf", "HDF5")),
    Case("pack-shards-exist", ["pack-h5", "-o", "shards/", "--shard-tiles", "20"], ("shards", "--overwrite"),
         write("shards/dataset-00000.h5", "mine")),
    Case("pack-shards-into-a-file", ["pack-h5", "-o", "dataset.h5", "--shard-tiles", "20", "--overwrite"],
         ("dataset.h5", "not a directory")),
    Case("pretrain-not-a-shard", ["pretrain", "--modalities", "T", "-i", "shards/", "-o", "runs/s"],
         ("dataset-00001.h5", "not a shard"), lambda ws: _copy(ws, "dataset.h5", "shards/dataset-00001.h5")),
    Case("pretrain-no-shards", ["pretrain", "--modalities", "T", "-i", "shards/", "-o", "runs/s"],
         ("shards", "without dataset shards"), lambda ws: (ws / "shards").mkdir()),
    Case("pretrain-negative-crop", ["pretrain", "--modalities", "T", "--set", "max_entities=-1", "-o", "runs/s"],
         ("max_entities=-1", "no crop")),
    Case("pretrain-no-tile-share", ["pretrain", "--modalities", "T", "--set", "tile_fraction=0", "-o", "runs/s"],
         ("tile_fraction", "(0, 1]")),
    Case("pretrain-unknown-entity-tokens",
         ["pretrain", "--modalities", "T,G", "--set", "entity_tokens=mixed", "-o", "runs/s"],
         ("entity_tokens=mixed", "fused, split")),
    Case("pretrain-unknown-mask-strategy",
         ["pretrain", "--modalities", "T", "--set", 'mask.strategies={"nope": 1}', "-o", "runs/s"],
         ("--set mask", "nope")),
    # mktask
    Case("mktask-unknown-task", ["mktask", "nosuchtask"], ("nosuchtask",)),
    Case("mktask-bad-fractions", ["mktask", "bridge", "--fractions", "0.6,0.2"], ("--fractions", "sum to 1")),
    Case("mktask-spec-not-utf8", ["mktask", "--spec", "x.toml"], ("x.toml", "UTF-8"), write("x.toml", NOT_UTF8)),
    Case("mktask-spec-not-toml", ["mktask", "--spec", "x.toml"], ("x.toml", "TOML"), write("x.toml", "name = [\n")),
    Case("mktask-spec-matches-nothing", ["mktask", "--spec", "x.toml"], ("dataset.h5", "nothing to learn"),
         write("x.toml", SPEC_NO_MATCH)),
    Case("mktask-splits-not-utf8", ["mktask", "bridge", "--splits", "s.csv"], ("s.csv", "UTF-8"),
         write("s.csv", b"group,split\n14_1_1,tr\xffin\n")),
    Case("mktask-splits-bad-columns", ["mktask", "bridge", "--splits", "s.csv"], ("s.csv", "group,split"),
         write("s.csv", "a,b\n1,2\n")),
    Case("mktask-dataset-missing-array", ["mktask", "bridge"], ("dataset.h5", "entities/tag_ids"),
         h5_edit("dataset.h5", drop("entities/tag_ids"))),
    Case("mktask-dataset-bad-offsets", ["mktask", "bridge"], ("dataset.h5", "tiles/entity_offsets"),
         h5_edit("dataset.h5", bad_offsets)),
    Case("mktask-dataset-not-hdf5", ["mktask", "bridge"], ("dataset.h5", "HDF5"), write("dataset.h5", "junk")),
    Case("mktask-output-exists", ["mktask", "building_count"], ("building_count", "--overwrite")),
    # embed-tags
    Case("embed-tags-descriptions-not-utf8", ["embed-tags", "-o", "t2.parquet", "--descriptions", "d.csv"],
         ("d.csv", "UTF-8"), write("d.csv", b"key,value,description\nbuilding,yes,caf\xe9\n")),
    Case("embed-tags-descriptions-columns", ["embed-tags", "-o", "t2.parquet", "--descriptions", "d.csv"],
         ("d.csv", "columns"), write("d.csv", "a,b\n1,2\n")),
    Case("embed-tags-truncated-cache", ["embed-tags"], ("tag-embeddings.parquet", "truncated"),
         truncate("tag-embeddings.parquet")),
    Case("embed-tags-no-dataset", ["embed-tags", "-i", "none.h5", "-o", "t2.parquet"], ("none.h5", "pack-h5")),
    # embed
    Case("embed-unknown-model", ["embed", "--model", "nosuchmodel"], ("nosuchmodel",)),
    Case("embed-task-without-task-json", ["embed", "--model", "tagcount", "--task", "tiles/"],
         ("tiles", "task")),
    Case("embed-task-json-broken", ["embed", "--model", "tagcount", "--task", T], ("task.json", "JSON"),
         write(f"{T}/task.json", "{ broken")),
    Case("embed-tagpool-truncated-tag-embeddings", ["embed", "--model", "tagpool", "-o", "e2.h5"],
         ("tag-embeddings.parquet", "truncated"), truncate("tag-embeddings.parquet")),
    Case("embed-output-exists", ["embed", "--model", "tagcount"], ("tagcount.h5", "--overwrite")),
    Case("embed-dataset-missing-vocabulary", ["embed", "--model", "tagcount", "-o", "e2.h5"],
         ("dataset.h5", "vocab/tags"), h5_edit("dataset.h5", drop("vocab/tags"))),
    # probe
    Case("probe-nan-embeddings", ["probe", "-e", ET, "--task", T, "-o", "r2/"], (ET, "not finite"),
         h5_edit(ET, nan_vectors)),
    Case("probe-fewer-vectors-than-names", ["probe", "-e", ET, "--task", T, "-o", "r2/"], (ET, "rows"),
         h5_edit(ET, fewer_vectors)),
    Case("probe-truncated-labels", ["probe", "-e", ET, "--task", T, "-o", "r2/"], ("labels.parquet", "truncated"),
         truncate(f"{T}/labels.parquet")),
    Case("probe-task-json-broken", ["probe", "-e", ET, "--task", T, "-o", "r2/"], ("task.json", "JSON"),
         write(f"{T}/task.json", "[1, 2")),
    Case("probe-result-exists", ["probe", "-e", ET, "--task", T, "--head", "linear"], ("results/", "--overwrite")),
    Case("probe-embeddings-not-hdf5", ["probe", "-e", "monaco.osm.pbf", "--task", T, "-o", "r2/"],
         ("monaco.osm.pbf", "HDF5")),
    # knn
    Case("knn-nan-query", ["knn", "-e", E, "--query", "QUERY"], (E, "not finite"),
         h5_edit(E, nan_vectors)),
    Case("knn-unknown-tile", ["knn", "-e", E, "--query", "16_1_1"], ("16_1_1",)),
    Case("knn-html-exists", ["knn", "-e", E, "--query", "QUERY", "--html", "g.html"], ("g.html", "--overwrite"),
         write("g.html", "<p>mine</p>")),
    Case("knn-eval-result-exists", ["knn", "-e", E, "--eval"], ("tagcount__knn.json", "--overwrite"),
         write("results/tagcount__knn.json", "{}")),
    Case("knn-categories-not-utf8", ["knn", "-e", E, "--eval", "-o", "r2/", "--categories", "c.toml"],
         ("c.toml", "UTF-8"), write("c.toml", b"park = { leisure = \"p\xe4rk\" }\n")),
    Case("knn-embeddings-missing-vectors", ["knn", "-e", E, "--query", "QUERY"], (E, "tiles/vectors"),
         h5_edit(E, drop("tiles/vectors"))),
    # score
    Case("score-broken-json", ["score", "results/bad.json"], ("bad.json", "JSON"), write("results/bad.json", "{")),
    Case("score-two-results-for-one-row", ["score"], ("second result",), result_copy),
    Case("score-nan-mae", ["score"], ("test_mae_mean", "finite"),
         lambda ws: json_edit(str(next((ws / "results").glob("*.json")).relative_to(ws)),
                              lambda d: d.update(test_mae_mean=float("nan")))(ws)),
    Case("score-no-results", ["score"], ("no result files",), lambda ws: shutil.rmtree(ws / "results")),
    # info
    Case("info-broken-stats", ["info", T], ("stats.json", "JSON"), write(f"{T}/stats.json", "{")),
    Case("info-truncated-group", ["info", "graphs/"], ("graphs/14_", "Parquet"), truncate_group("graphs")),
    Case("info-missing", ["info", "nothing/"], ("nothing",)),
    Case("info-embeddings-damaged", ["info", E], (E, "tiles/name"), h5_edit(E, drop("tiles/name"))),
]


def _bad_group_metadata(path: Path) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    meta[b"gjp"] = b"{not json"
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_there_are_enough_cases_over_every_step():
    steps = {c.args[0] for c in CASES}
    assert len(CASES) >= 60
    assert steps >= {"fetch", "tile", "simplify", "bbox", "visibility", "pack-h5", "mktask", "embed-tags", "embed",
                     "probe", "knn", "score", "info"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, ws, run_gjp):
    args = [a.replace("QUERY", _a_tile(ws)) if isinstance(a, str) else a for a in case.args]
    if case.damage is not None:
        case.damage(ws)
    before = snapshot(ws)
    code, _, err = run_gjp(["-q", *args], ws)
    assert_one_line_error(code, err, *case.fragments)
    assert snapshot(ws) == before


def _a_tile(ws: Path) -> str:
    with h5py.File(ws / "dataset.h5", "r") as f:
        return f["tiles/name"][0].decode()


# --------------------------------------------------------------------------- processes

def gjp_process(args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "gjp", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, **kw)


def _file_size_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("args, output, like", [
    (["pack-h5", "-o", "d2.h5"], "d2.h5", "dataset.h5"),
    (["mktask", "bridge", "--masked", "-o", "tasks/b2"], "tasks/b2/dataset.h5", "dataset.h5"),
    (["embed", "--model", "tagcount", "-o", "e2.h5"], "e2.h5", "embeddings/tagcount.h5"),
    (["simplify", "-o", "s2/"], "s2", "simplified/" + "*"),
    (["pretrain", "--model", "polygnn", "--pretext", "digits", "--epochs", "1", "--n-per-class", "2", "-o", "runs/p"],
     "runs/p", None),
], ids=["pack-h5", "mktask-masked", "embed", "simplify", "pretrain"])
def test_a_full_disk_is_one_line_naming_the_output(args, output, like, ws):
    """RLIMIT_FSIZE (at a third of what the output needs) makes the writes fail with
    EFBIG, as a full disk does with ENOSPC: both used to crash inside HDF5's clean-up."""
    # a third of the output's size, or of a tiny encoder's weights (about 200 kB) for a run
    size = max(p.stat().st_size for p in ws.glob(like)) if like else 150_000
    before = snapshot(ws)
    proc = gjp_process(["-q", *args], ws, preexec_fn=_file_size_limit(size // 3))
    _, err = proc.communicate(timeout=300)
    assert_one_line_error(proc.returncode, err, output, "nothing was written")
    assert snapshot(ws) == before


SIGNAL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    import gjp.dataset.format as fmt
    from gjp.cli import main

    real = fmt.check_pending
    calls = []

    def check_pending(f):
        # the signal arrives while the HDF5 file is open and half written
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        real(f)

    fmt.check_pending = check_pending
    main(sys.argv[2:])
""")


@pytest.mark.parametrize("signame, code, word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_signal_during_an_hdf5_write_stops_it_and_leaves_nothing(signame, code, word, ws, run_gjp):
    """Ctrl-C used to be swallowed by h5py ("Exception ignored …", then exit 0)."""
    chips = ws / "chips"
    shutil.copytree(DATA / "naip_z16", chips)
    assert run_gjp(["-q", "tile", "chips/", "-o", "images/"], ws)[0] == 0
    before = snapshot(ws)
    proc = subprocess.run([sys.executable, "-c", SIGNAL_DURING_WRITE, signame, "pack-h5", "--images", "images/",
                           "--images-only", "-o", "chips.h5"], cwd=ws, capture_output=True, text=True)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip() == f"gjp: {word}; outputs left as they were"
    assert snapshot(ws) == before


def test_two_runs_into_one_output_one_fails_clearly_and_nothing_is_lost(ws, run_gjp):
    """The first run holds the output's staging name; the second fails at once, and the
    first finishes with its whole output."""
    shutil.copy(EXAMPLES / "pt_porto_2020-07.osm.pbf", ws / "porto.osm.pbf")
    first = gjp_process(["-q", "tile", "porto.osm.pbf", "-o", "t2/"], ws)
    deadline = time.time() + 60
    while not list(ws.glob(".t2.partial-*")) and time.time() < deadline:
        time.sleep(0.02)
    second = gjp_process(["-q", "tile", "monaco.osm.pbf", "-o", "t2/"], ws)
    _, err2 = second.communicate(timeout=300)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert_one_line_error(second.returncode, err2, "t2", "another gjp run")
    reference = ws / "porto-alone"
    assert run_gjp(["-q", "tile", "porto.osm.pbf", "-o", reference], ws)[0] == 0
    assert sorted(p.name for p in (ws / "t2").iterdir()) == sorted(p.name for p in reference.iterdir())
    assert not list(ws.glob(".t2.*"))


def test_publishing_never_replaces_what_appeared_meanwhile(tmp_path):
    """The race the lock cannot see (a run that started first publishes in between): the
    rename cannot replace, so the later publisher fails and the first output stays."""
    from gjp.errors import GjpError
    from gjp.io import atomic_directory, atomic_file

    with pytest.raises(GjpError, match="appeared while this run was writing it"):
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "mine").write_text("b")
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / "theirs").write_text("a")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["theirs"]
    with pytest.raises(GjpError, match="appeared while this run was writing it"):
        with atomic_file(tmp_path / "f.json") as tmp:
            tmp.write_text("b")
            (tmp_path / "f.json").write_text("a")
    assert (tmp_path / "f.json").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "out"]


def test_later_steps_are_byte_identical_across_runs(pristine, tmp_path, run_gjp):
    """The HDF5 and JSON outputs too: no clock time, no speed option in their provenance."""
    outputs = {}
    for name in ("a", "b"):
        ws = tmp_path / name
        ws.mkdir()
        for rel in ("graphs", "dataset.h5", "tasks"):
            src = pristine / rel
            (shutil.copytree if src.is_dir() else shutil.copy)(src, ws / rel)
        for args in (["pack-h5", "-o", "d.h5"], ["mktask", "bridge", "--masked", "-i", "d.h5"],
                     ["embed", "--model", "tagcount", "-i", "d.h5"],
                     ["probe", "-e", "embeddings/tagcount.h5", "--task", "tasks/building_count", "--seeds", "1",
                      "--head", "linear"]):
            code, _, err = run_gjp(["-q", *args], ws)
            assert code == 0, (args, err)
        outputs[name] = {p.relative_to(ws): p.read_bytes() for p in
                         [ws / "d.h5", ws / "tasks/bridge-masked/dataset.h5", ws / "embeddings/tagcount.h5",
                          *sorted((ws / "results").glob("*.json"))]}
    assert outputs["a"].keys() == outputs["b"].keys() and len(outputs["a"]) == 4
    for rel in outputs["a"]:
        assert outputs["a"][rel] == outputs["b"][rel], rel


def test_a_failed_mktask_leaves_no_splits_and_no_tasks_directory(ws, run_gjp):
    """splits.csv is written last, and the directories made for the outputs go too."""
    shutil.rmtree(ws / "tasks")
    before = snapshot(ws)
    proc = gjp_process(["-q", "mktask", "bridge", "--masked"], ws,
                       preexec_fn=_file_size_limit((ws / "dataset.h5").stat().st_size // 3))
    _, err = proc.communicate(timeout=300)
    assert_one_line_error(proc.returncode, err, "tasks/bridge-masked/dataset.h5", "nothing was written")
    assert snapshot(ws) == before
    assert run_gjp(["-q", "mktask", "bridge", "--masked"], ws)[0] == 0  # and the same run works with room
    assert (ws / "tasks" / "splits.csv").exists()


def test_info_works_on_every_output(pristine, run_gjp):
    """`gjp info` on each kind of file the pipeline writes, told apart by content."""
    result = next((pristine / "results").glob("*.json")).relative_to(pristine)
    expect = {"graphs/": "gjp tile groups", "tiles/": "gjp tile groups", "dataset.h5": "gjp dataset",
              "tasks/building_count": "task building_count", "tag-embeddings.parquet": "tag embeddings",
              "embeddings/tagcount.h5": "tile embeddings of", "results/": "1 results",
              str(result): "test MAE"}
    for path, words in expect.items():
        code, out, err = run_gjp(["info", path], pristine)
        assert code == 0, (path, err)
        assert words in out, (path, out)
        code, out, _ = run_gjp(["info", path, "--json"], pristine)
        assert code == 0 and json.loads(out)
