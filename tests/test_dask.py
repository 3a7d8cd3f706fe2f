"""Per-file steps on a Dask distributed cluster (``--scheduler``): a LocalCluster of two
worker processes stands in for a cluster, and every output must be byte for byte that of
a local run."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import osmium
import pytest
from dask.distributed import LocalCluster

from gjp import __version__
from gjp.errors import GjpError
from gjp.parallel import run_job

ND_TIF = Path(__file__).parents[1] / "examples" / "data" / "naip_nd_m_4709963_se_14_1_20200831_5m.tif"
UNREACHABLE = "tcp://127.0.0.1:1"


def _cluster(**kwargs) -> LocalCluster:
    return LocalCluster(n_workers=kwargs.pop("n_workers", 2), threads_per_worker=1, processes=True,
                        dashboard_address=":0", **kwargs)


@pytest.fixture(scope="module")
def scheduler():
    cluster = _cluster()
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def gjp(run_gjp):
    """``gjp(args, cwd)``: the CLI with ``sys.argv`` as a user would have typed it, so that
    the command recorded in the outputs is the real one (and must not name --scheduler)."""

    def run(args, cwd):
        saved = sys.argv
        sys.argv = ["gjp", *map(str, args)]
        try:
            return run_gjp(args, cwd)
        finally:
            sys.argv = saved

    return run


def _pipeline(gjp, boston, cwd: Path, *extra) -> None:
    cwd.mkdir()
    for args in (["tile", boston, "--min-entities", "1"], ["simplify"], ["bbox"], ["visibility"], ["tile", ND_TIF]):
        code, _, err = gjp(["-q", *args, *extra], cwd)
        assert code == 0, err


def _same_files(a: Path, b: Path) -> int:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return len(files)


@pytest.fixture(scope="module")
def local_run(gjp, boston, tmp_path_factory):
    """tile (OSM and raster), simplify, bbox, visibility on local threads."""
    root = tmp_path_factory.mktemp("local") / "run"
    _pipeline(gjp, boston, root, "--workers", "2")
    return root


def test_the_steps_on_a_cluster_write_what_a_local_run_writes(gjp, boston, scheduler, local_run, tmp_path):
    _pipeline(gjp, boston, tmp_path / "run", "--scheduler", scheduler)
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"tiles", "simplified", "boxed", "graphs", "images"}
    assert _same_files(local_run, tmp_path / "run") > 100  # the group files and the image chips


@pytest.fixture(scope="module")
def monaco_halves(monaco, tmp_path_factory) -> list[Path]:
    """Monaco as two overlapping regional extracts: the nodes west (east) of the median
    longitude, the ways and relations reaching them, and everything those reference."""
    root = tmp_path_factory.mktemp("halves")
    mid = statistics.median(n.location.lon for n in osmium.FileProcessor(str(monaco), osmium.osm.NODE))
    halves = []
    for name, west in (("west", True), ("east", False)):
        nodes, ways = set(), set()
        path = root / f"{name}.osm.pbf"
        with osmium.BackReferenceWriter(str(path), ref_src=str(monaco), remove_tags=False) as out:
            for obj in osmium.FileProcessor(str(monaco)):
                if obj.is_node():
                    if (obj.location.lon < mid) == west:
                        nodes.add(obj.id)
                        out.add_node(obj)
                elif obj.is_way():
                    if any(n.ref in nodes for n in obj.nodes):
                        ways.add(obj.id)
                        out.add_way(obj)
                elif any((m.type == "n" and m.ref in nodes) or (m.type == "w" and m.ref in ways)
                         for m in obj.members):
                    out.add_relation(obj)
        halves.append(path)
    return halves


def test_osm_extracts_read_on_the_cluster_give_the_bytes_of_a_local_run(gjp, monaco_halves, scheduler, tmp_path):
    # one read job per extract on the workers, then the buckets joined in input order
    args = ["-q", "tile", *monaco_halves, "--min-entities", "1"]
    for run, extra in (("local", ["--workers", "1"]), ("cluster", ["--scheduler", scheduler])):
        (tmp_path / run).mkdir()
        code, _, err = gjp([*args, *extra], tmp_path / run)
        assert code == 0, err
    assert _same_files(tmp_path / "local", tmp_path / "cluster") > 10
    assert {p.name for p in (tmp_path / "cluster").iterdir()} == {"tiles"}  # no spill files left


def test_a_corrupt_second_extract_on_the_cluster_is_todays_one_line_error(gjp, monaco, scheduler, tmp_path):
    cut = tmp_path / "cut.osm.pbf"
    cut.write_bytes(monaco.read_bytes()[:300_000])
    code, _, local_err = gjp(["tile", monaco, cut, "--workers", "2"], tmp_path)
    assert code == 1
    code, out, err = gjp(["tile", monaco, cut, "--scheduler", scheduler], tmp_path)
    assert code == 1 and out == ""
    assert err == local_err and err.count("\n") == 1 and f"{cut}: corrupt or truncated OSM file (" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["cut.osm.pbf"]


def test_the_scheduler_can_come_from_the_environment(gjp, scheduler, local_run, tmp_path, monkeypatch):
    shutil.copytree(local_run / "tiles", tmp_path / "tiles")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", scheduler)
    code, _, err = gjp(["-q", "simplify"], tmp_path)
    assert code == 0, err
    _same_files(local_run / "simplified", tmp_path / "simplified")
    # the variable is really read, and the option wins over it
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", UNREACHABLE)
    code, _, err = gjp(["-q", "bbox", "--scheduler", scheduler], tmp_path)
    assert code == 0, err
    _same_files(local_run / "boxed", tmp_path / "boxed")


def test_an_unreachable_scheduler_is_one_line_and_writes_nothing(gjp, local_run, tmp_path):
    import dask

    shutil.copytree(local_run / "tiles", tmp_path / "tiles")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code, out, err = gjp(["simplify", "--scheduler", UNREACHABLE], tmp_path)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith(f"gjp: error: --scheduler {UNREACHABLE}: cannot reach"), err
    # in a process of its own, where Dask's loggers would write to the real stderr
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": UNREACHABLE, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
    run = subprocess.run([sys.executable, "-m", "gjp", "tile", str(ND_TIF)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.startswith(f"gjp: error: --scheduler {UNREACHABLE}: cannot reach the Dask scheduler (")
    assert run.stderr.count("\n") == 1, run.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["tiles"]  # no output, no staging left


def test_a_bad_file_on_a_worker_is_todays_one_line_error(gjp, scheduler, local_run, tmp_path):
    tiles = tmp_path / "tiles"
    shutil.copytree(local_run / "tiles", tiles)
    bad = sorted(tiles.iterdir())[2]
    bad.write_bytes(b"not parquet")
    code, _, local_err = gjp(["simplify", "-i", tiles], tmp_path)
    assert code == 1
    code, out, err = gjp(["simplify", "-i", tiles, "--scheduler", scheduler], tmp_path)
    assert code == 1 and out == ""
    assert err == local_err and err.count("\n") == 1 and f"{bad}: not a readable Parquet file" in err
    assert [p.name for p in tmp_path.iterdir()] == ["tiles"]


def test_after_a_failure_the_jobs_already_on_workers_end_before_the_error_returns(scheduler, tmp_path):
    # the staging directory is removed once the error is back: no job may still be writing
    from functools import partial

    from gjp.parallel import executor

    marker = tmp_path / "written-late"
    jobs = [["false"], ["sh", "-c", f"sleep 1; touch {marker}"]]
    with executor(1, scheduler) as pool, pytest.raises(subprocess.CalledProcessError):
        list(pool.map(partial(subprocess.run, check=True), jobs))
    assert marker.exists()


@pytest.mark.parametrize("preload, says", [
    ("import sys\nsys.modules['gjp'] = None\n", "cannot run gjp (ModuleNotFoundError"),
    ("import gjp\ngjp.__version__ = '0.0.1-other'\n", "has gjp 0.0.1-other, this machine"),
])
def test_workers_without_this_gjp_are_refused(gjp, local_run, tmp_path, preload, says):
    (tmp_path / "worker_setup.py").write_text(preload)
    shutil.copytree(local_run / "tiles", tmp_path / "tiles")
    cluster = _cluster(n_workers=1, preload=[str(tmp_path / "worker_setup.py")])
    try:
        code, _, err = gjp(["simplify", "--scheduler", cluster.scheduler_address], tmp_path)
    finally:
        cluster.close()
    assert code == 1 and err.count("\n") == 1 and says in err, err
    assert "install" in err and not (tmp_path / "simplified").exists()


def test_a_scheduler_without_workers_is_one_line(gjp, local_run, tmp_path):
    import dask

    shutil.copytree(local_run / "tiles", tmp_path / "tiles")
    cluster = _cluster(n_workers=0)
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            code, _, err = gjp(["simplify", "--scheduler", cluster.scheduler_address], tmp_path)
    finally:
        cluster.close()
    assert code == 1 and err.count("\n") == 1 and "the scheduler has no workers after 1 s" in err, err
    assert not (tmp_path / "simplified").exists()


def test_a_worker_that_joined_later_with_another_gjp_refuses_its_jobs():
    assert run_job(len, "abc", __version__) == 3
    with pytest.raises(GjpError, match="a Dask worker has gjp .*, this machine 0.0.0"):
        run_job(len, "abc", "0.0.0")


def test_the_recorded_command_leaves_the_scheduler_out(monkeypatch):
    from gjp.io import command_line

    monkeypatch.setattr(sys, "argv", ["gjp", "simplify", "--scheduler", "tcp://h:8786", "--tolerance", "1"])
    assert command_line() == "gjp simplify --tolerance 1"
    monkeypatch.setattr(sys, "argv", ["gjp", "bbox", "--scheduler=tcp://h:8786", "--workers", "3"])
    assert command_line() == "gjp bbox"
