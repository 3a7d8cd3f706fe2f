"""``gjp merge``: two overlapping regions cut from one real extract, each tiled on its own
and merged, give the rows of tiling the whole extract; whatever the order of the inputs."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import osmium
import pyarrow.parquet as pq
import pytest
import shapely

from gjp.geoparquet import write_group_file
from gjp.osm.merge import merge_tiles
from gjp.osm.tiling import tile_osm

#: Regions tiled without entity limits (tiles near the cut have few rows in each region);
#: the limits are applied by the merge, as by the tiling of the whole file.
NO_LIMITS = {"min_entities": 0, "max_entities": 10**6}
LIMITS = {"min_entities": 5, "max_entities": 1250}


def cut_extract(src: Path, dst: Path, inside) -> set[int]:
    """Cut ``src`` like a Geofabrik extract (osmium's ``complete_ways`` strategy): the nodes
    for which ``inside(lon, lat)``, every way with a node among them (with all its nodes,
    also those outside), the relations with a member among those nodes and ways, and the
    relations above them. Returns the ids of the ways kept."""
    nodes_in, ways, members = set(), {}, {}
    for obj in osmium.FileProcessor(str(src)):
        if obj.is_node():
            if obj.location.valid() and inside(obj.location.lon, obj.location.lat):
                nodes_in.add(obj.id)
        elif obj.is_way():
            refs = [n.ref for n in obj.nodes]
            if any(r in nodes_in for r in refs):
                ways[obj.id] = refs
        elif obj.is_relation():
            members[obj.id] = [(m.type, m.ref) for m in obj.members]
    nodes = set(nodes_in).union(*ways.values())
    relations = {r for r, ms in members.items()
                 if any((t == "n" and ref in nodes) or (t == "w" and ref in ways) for t, ref in ms)}
    while True:
        parents = {r for r, ms in members.items()
                   if r not in relations and any(t == "r" and ref in relations for t, ref in ms)}
        if not parents:
            break
        relations |= parents
    with osmium.SimpleWriter(str(dst)) as writer:
        for obj in osmium.FileProcessor(str(src)):
            if obj.is_node() and obj.id in nodes:
                writer.add_node(obj)
            elif obj.is_way() and obj.id in ways:
                writer.add_way(obj)
            elif obj.is_relation() and obj.id in relations:
                writer.add_relation(obj)
    return set(ways)


def area_relation_ways(src: Path) -> dict[int, set[int]]:
    """The member ways of every multipolygon/boundary relation of ``src``."""
    out = {}
    for rel in osmium.FileProcessor(str(src), osmium.osm.RELATION):
        if rel.tags.get("type") in ("multipolygon", "boundary"):
            out[rel.id] = {m.ref for m in rel.members if m.type == "w"}
    return out


def rows_of(directory: Path) -> dict[tuple, dict]:
    rows = {}
    for f in sorted(directory.glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            key = (row["tile"], row["osm_type"], row["osm_id"])
            assert key not in rows, f"{key} twice"
            rows[key] = row
    return rows


def parts(row: dict) -> Counter:
    return Counter(shapely.to_wkb(p) for p in shapely.get_parts(shapely.from_wkb(row["geometry"])))


@pytest.fixture(scope="module")
def regions(tmp_path_factory, monaco):
    """Monaco cut in two at its median node longitude (ways across the cut are in both),
    each half tiled without limits, the whole file tiled with the default limits."""
    root = tmp_path_factory.mktemp("merge")
    lons = sorted(n.location.lon for n in osmium.FileProcessor(str(monaco), osmium.osm.NODE))
    mid = lons[len(lons) // 2]
    ways = {"west": cut_extract(monaco, root / "west.osm.pbf", lambda lon, lat: lon < mid),
            "east": cut_extract(monaco, root / "east.osm.pbf", lambda lon, lat: lon >= mid)}
    for name in ways:
        tile_osm([root / f"{name}.osm.pbf"], root / f"tiles-{name}", **NO_LIMITS, workers=2)
    tile_osm([monaco], root / "whole", **LIMITS, workers=2)
    report = merge_tiles([root / "tiles-west", root / "tiles-east"], root / "merged", **LIMITS, workers=2)
    return root, ways, report


def test_merged_rows_are_the_rows_of_tiling_the_whole_file(regions, monaco):
    root, ways, report = regions
    whole, merged = rows_of(root / "whole"), rows_of(root / "merged")
    west, east = rows_of(root / "tiles-west"), rows_of(root / "tiles-east")
    assert report.duplicates > 500  # the regions really overlap
    assert not set(merged) - set(whole)

    # Missing: only multipolygon/boundary relations complete in neither region (libosmium
    # assembles an area relation only with all its member ways, so no region has them).
    missing = set(whole) - set(merged)
    area_ways = area_relation_ways(monaco)
    for key in missing:
        assert (key[1], whole[key]["kind"]) == ("relation", "multipolygon"), key
        members = area_ways[key[2]]
        assert not members <= ways["west"] and not members <= ways["east"], key
    assert len({key[2] for key in missing}) <= 5

    # Every node, way and assembled area relation is exactly as in the whole file's tiling;
    # so is every other relation where one region holds all its members in the tile: the
    # most complete copy is chosen (checked on the rows where the two copies differ).
    chosen = 0
    unmatched = []
    for key, row in merged.items():
        copies = [r[key] for r in (west, east) if key in r]
        if len(copies) == 2 and copies[0] != copies[1] and row == whole[key]:
            chosen += 1
        if row != whole[key]:
            unmatched.append(key)
    assert chosen > 50

    # What cannot match: relations (routes, sites…) with members on both sides of the cut
    # in the same tile, where each region lacks some. The kept copy is the larger part of
    # the truth: its pieces are a subset of the whole file's, tags and kind the same.
    for key in unmatched:
        row, truth = merged[key], whole[key]
        assert row["kind"] == "relation", key
        assert (row["tags"], row["kind"]) == (truth["tags"], truth["kind"])
        assert not parts(row) - parts(truth) and parts(row) != parts(truth), key
        assert all(r[key] != truth for r in (west, east) if key in r), "a complete copy was not chosen"
    assert len(unmatched) < 0.01 * len(merged)

    # Group files without such rows are the whole file's tiling, data and geo metadata alike.
    bad_groups = {whole[key]["group"] for key in missing | set(unmatched)}
    same = 0
    for f in sorted((root / "whole").glob("*.parquet")):
        if f.stem in bad_groups:
            continue
        ours, theirs = pq.read_table(root / "merged" / f.name), pq.read_table(f)
        assert ours.schema.metadata[b"geo"] == theirs.schema.metadata[b"geo"]
        assert ours.replace_schema_metadata(None).equals(theirs.replace_schema_metadata(None))
        same += 1
    assert same >= 10


def test_the_order_of_the_inputs_and_workers_change_no_byte(regions, tmp_path):
    root, _, _ = regions
    merge_tiles([root / "tiles-east", root / "tiles-west"], tmp_path / "reversed", **LIMITS, workers=1)
    names = sorted(p.name for p in (root / "merged").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "reversed").iterdir())
    for name in names:
        assert (root / "merged" / name).read_bytes() == (tmp_path / "reversed" / name).read_bytes(), name


def test_the_command_line(regions, tmp_path, run_gjp):
    root, _, _ = regions
    out = tmp_path / "tiles"
    code, stdout, stderr = run_gjp(["merge", root / "tiles-west", root / "tiles-east", "-o", out,
                                    "--min-entities", "5", "--max-entities", "1250"])
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    for f in sorted((root / "merged").glob("*.parquet")):  # the same rows as the library's
        assert pq.read_table(out / f.name).replace_schema_metadata(None).equals(
            pq.read_table(f).replace_schema_metadata(None))
    steps = pq.read_table(next(out.glob("*.parquet"))).schema.metadata[b"gjp"].decode()
    assert '"step": "merge"' in steps and "west.osm.pbf" in steps

    # a stricter limit than the inputs' is applied; a looser one is refused
    code, _, stderr = run_gjp(["merge", root / "tiles-west", root / "tiles-east", "-o", tmp_path / "few",
                               "--max-entities", "200", "-q"])
    assert code == 0, stderr
    counts = Counter(r["tile"] for r in rows_of(tmp_path / "few").values())
    assert counts and max(counts.values()) <= 200
    assert_error(run_gjp(["merge", root / "merged", "-o", tmp_path / "x", "--min-entities", "2"]),
                 "--min-entities 2 is below the inputs' 5")
    assert not (tmp_path / "x").exists()


def assert_error(result, *fragments):
    code, stdout, stderr = result
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gjp: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_refusals_write_nothing(regions, tmp_path, run_gjp):
    root, _, _ = regions
    west, east = root / "tiles-west", root / "tiles-east"
    out = tmp_path / "out"

    # another zoom, and other entity limits: one line naming the directory that differs
    tile_osm([root / "east.osm.pbf"], tmp_path / "z17-east", zoom=17, **NO_LIMITS)
    assert_error(run_gjp(["merge", west, tmp_path / "z17-east", "-o", out]),
                 f"{tmp_path / 'z17-east'}: tiled with --zoom 17, but {west} with --zoom 16")
    assert_error(run_gjp(["merge", west, root / "whole", "-o", out]),
                 f"{root / 'whole'}: tiled with --min-entities 5, but {west} with --min-entities 0")

    # a missing input, an input that is not a tile directory, the same one twice
    assert_error(run_gjp(["merge", west, tmp_path / "nowhere", "-o", out]), f"{tmp_path / 'nowhere'}: no such directory")
    (tmp_path / "empty").mkdir()
    assert_error(run_gjp(["merge", west, tmp_path / "empty", "-o", out]), f"{tmp_path / 'empty'}: no tile group files")
    assert_error(run_gjp(["merge", west, west, "-o", out]), f"{west}: given twice")

    # a damaged group file (found when its group is merged): named, and nothing written
    damaged = tmp_path / "damaged"
    shutil.copytree(east, damaged)
    victim = sorted(damaged.glob("*.parquet"))[-1]
    victim.write_bytes(victim.read_bytes()[:200])
    assert_error(run_gjp(["merge", west, damaged, "-o", out]), f"{victim}: not a readable Parquet file")

    # files of a later step (with its columns) are refused: merge comes before simplify
    later = tmp_path / "simplified"
    later.mkdir()
    for f in sorted(east.glob("*.parquet")):
        table = pq.read_table(f)
        meta = json.loads(table.schema.metadata[b"gjp"])
        meta["steps"].append({"step": "simplify", "params": {}})
        write_group_file(table.append_column("local", table.column("geometry")), later / f.name, meta)
    assert_error(run_gjp(["merge", west, later, "-o", out]), "made by `gjp simplify`")

    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left behind

    # an existing output is replaced only with --overwrite
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_error(run_gjp(["merge", west, east, "-o", out]), f"{out}: already exists (use --overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code, _, stderr = run_gjp(["merge", west, east, "-o", out, "--overwrite", "-q"])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (root / "merged").iterdir())


def test_merged_tiles_merge_again_and_complete_copies_win(regions, tmp_path):
    """A merge's output is a merge input; merged with the whole file's tiling, every row
    kept is the whole file's (its copies are the complete ones)."""
    root, _, _ = regions
    merge_tiles([root / "merged", root / "whole"], tmp_path / "again", workers=2)
    for f in sorted((root / "whole").glob("*.parquet")):
        ours, theirs = pq.read_table(tmp_path / "again" / f.name), pq.read_table(f)
        assert ours.replace_schema_metadata(None).equals(theirs.replace_schema_metadata(None)), f.name
    steps = json.loads(pq.read_schema(next((tmp_path / "again").glob("*.parquet"))).metadata[b"gjp"])["steps"]
    assert [s["step"] for s in steps] == ["merge"]
    assert [[s["step"] for s in m] for m in steps[0]["params"]["merged"]] == [["merge"], ["tile"]]
