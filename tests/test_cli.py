"""The command line as users meet it: help, chaining with defaults, errors, atomicity,
determinism."""

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from gjp import stages
from gjp.geometry.simplify import simplify
from gjp.osm.tiling import tile_osm


def gjp(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "gjp", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env)


def assert_clean_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gjp: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def _all_commands():
    """Every command path of the CLI, from click's own tree (so a new command is covered)."""
    import click

    from gjp.cli import cli

    def walk(group, prefix):
        for name, command in group.commands.items():
            yield [*prefix, name]
            if isinstance(command, click.Group):
                yield from walk(command, [*prefix, name])

    return list(walk(cli, []))


def test_help_lists_the_steps_in_pipeline_order():
    from gjp.cli import PIPELINE

    result = gjp("--help")
    assert result.returncode == 0
    commands = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert commands == [c for c in PIPELINE if c in commands]
    assert set(commands) == {path[0] for path in _all_commands()}


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_help_ends_with_an_example(path):
    from click.testing import CliRunner

    from gjp.cli import cli

    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"gjp {' '.join(path)} --help has no example"
    example = result.output.split("Example")[-1]
    assert f"gjp {' '.join(path)}" in example


def test_the_steps_chain_with_default_paths(boston, tmp_path):
    assert gjp("-q", "tile", boston, "-o", "tiles/", cwd=tmp_path).returncode == 0
    for step, out in (("simplify", "simplified"), ("bbox", "boxed"), ("visibility", "graphs")):
        result = gjp(step, "-q", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == out  # the output path on stdout
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == sorted(
            p.name for p in (tmp_path / "tiles").iterdir())


def test_missing_input_file(tmp_path):
    assert_clean_error(gjp("tile", tmp_path / "nope.osm.pbf", "-o", tmp_path / "t"), "nope.osm.pbf", "no such file")
    assert not (tmp_path / "t").exists()


def test_text_file_named_pbf(tmp_path):
    bad = tmp_path / "notes.osm.pbf"
    bad.write_text("these are my notes, not OpenStreetMap data\n")
    assert_clean_error(gjp("tile", bad, "-o", tmp_path / "t"), "notes.osm.pbf", "neither an OSM file")
    assert not (tmp_path / "t").exists()


def test_truncated_pbf(monaco, tmp_path):
    cut = tmp_path / "cut.osm.pbf"
    cut.write_bytes(monaco.read_bytes()[: 300_000])
    assert_clean_error(gjp("tile", cut, "-o", tmp_path / "t"), "cut.osm.pbf", "truncated")
    assert sorted(os.listdir(tmp_path)) == ["cut.osm.pbf"]  # nothing left behind


def test_unreadable_or_missing_input_directories(tmp_path):
    assert_clean_error(gjp("simplify", "-i", tmp_path / "nope", "-o", tmp_path / "s"), "no such directory")
    (tmp_path / "file").write_text("x")
    assert_clean_error(gjp("simplify", "-i", tmp_path / "file", "-o", tmp_path / "s"), "not a directory")
    (tmp_path / "empty").mkdir()
    assert_clean_error(gjp("bbox", "-i", tmp_path / "empty", "-o", tmp_path / "s"), "no tile group files")
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked"
        locked.mkdir(mode=0)
        assert_clean_error(gjp("simplify", "-i", locked, "-o", tmp_path / "s"), "cannot read")
    assert not (tmp_path / "s").exists()


def test_steps_out_of_order(boston, tmp_path):
    tile_osm([boston], tmp_path / "tiles")
    assert_clean_error(gjp("visibility", "-i", tmp_path / "tiles", "-o", tmp_path / "g"),
                       "has no column", "run the steps in order")


def test_a_geometry_that_is_not_wkb(boston, tmp_path):
    import pyarrow as pa

    tile_osm([boston], tmp_path / "tiles")
    victim = sorted((tmp_path / "tiles").iterdir())[0]
    table = pq.read_table(victim)
    broken = pa.array([b"\x01\x03\x00\x00\x00\x09"] * table.num_rows, pa.binary())
    table = table.set_column(table.column_names.index("geometry"), "geometry", broken)
    pq.write_table(table, victim)
    assert_clean_error(gjp("simplify", "-i", tmp_path / "tiles", "-o", tmp_path / "s"),
                       victim.name, "not valid WKB")
    assert sorted(os.listdir(tmp_path)) == ["tiles"]


def test_existing_output_needs_overwrite(boston, tmp_path):
    out = tmp_path / "tiles"
    assert gjp("-q", "tile", boston, "-o", out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_clean_error(gjp("tile", boston, "-o", out), "already exists", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert gjp("-q", "tile", boston, "-o", out, "--overwrite").returncode == 0


def test_a_failure_midway_leaves_no_partial_output(boston, tmp_path, monkeypatch):
    tile_osm([boston], tmp_path / "tiles", min_entities=1)
    calls = []
    original = stages.write_group_file

    def fail_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kw)

    monkeypatch.setattr(stages, "write_group_file", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        simplify(tmp_path / "tiles", tmp_path / "simplified", workers=1)
    assert sorted(os.listdir(tmp_path)) == ["tiles"]


def test_outputs_are_byte_identical_across_runs_and_worker_counts(monaco, tmp_path):
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        ws = tmp_path / name
        ws.mkdir()
        assert gjp("-q", "tile", monaco, "-o", "tiles/", "--workers", workers, cwd=ws).returncode == 0
        for step in ("simplify", "bbox", "visibility"):
            assert gjp("-q", step, "--workers", workers, cwd=ws).returncode == 0
    for step in ("tiles", "simplified", "boxed", "graphs"):
        a, b, c = ({p.name: p for p in (tmp_path / ws / step).iterdir()} for ws in "abc")
        assert a.keys() == b.keys() == c.keys() and len(a) > 1
        for name in a:
            assert a[name].read_bytes() == b[name].read_bytes(), f"{step}/{name}"
            # --workers changes only the speed, so it is not recorded either
            assert a[name].read_bytes() == c[name].read_bytes(), f"{step}/{name}"


def test_bad_options_are_explained(tmp_path, boston):
    assert_clean_error(gjp("tile", boston, "-o", tmp_path / "t", "--node-index", "magic"), "--node-index")
    assert_clean_error(gjp("tile", boston, "-o", tmp_path / "t", "--min-entities", "9", "--max-entities", "3"),
                       "--min-entities")


def test_info(boston, tmp_path):
    tile_osm([boston], tmp_path / "tiles")
    result = gjp("info", tmp_path / "tiles")
    assert result.returncode == 0 and "tiles in" in result.stdout and "entities" in result.stdout
    assert_clean_error(gjp("info", tmp_path / "nope"), "no such file or directory")


def test_dataset_steps_from_the_command_line(boston, tmp_path, build_graphs):
    build_graphs(boston, tmp_path)
    result = gjp("-q", "pack-h5", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "dataset.h5"
    result = gjp("-q", "mktask", "building_count", "--masked", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "tasks/building_count-masked"
    assert sorted(p.name for p in (tmp_path / "tasks" / "building_count-masked").iterdir()) == [
        "dataset.h5", "labels.parquet", "spec.toml", "stats.json", "task.json"]
    assert (tmp_path / "tasks" / "splits.csv").exists()
    info = gjp("info", "tasks/building_count-masked", cwd=tmp_path)
    assert info.returncode == 0 and "task building_count (masked inputs)" in info.stdout
    assert_clean_error(gjp("mktask", "bridges", cwd=tmp_path), "unknown task 'bridges'")
    assert_clean_error(gjp("pack-h5", cwd=tmp_path), "dataset.h5: already exists")
    assert_clean_error(gjp("mktask", "bridge", "-i", "nope.h5", cwd=tmp_path), "nope.h5: no such file")
