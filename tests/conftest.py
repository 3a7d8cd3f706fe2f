"""Shared test helpers: OSM fixtures from inline OPL text, and the real extracts."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import osmium
import pytest

DATA = Path(__file__).parent / "data"


def opl_to_pbf(text: str, path: Path) -> Path:
    """Write OPL text (pyosmium's one-object-per-line format) as an .osm.pbf file."""
    text = textwrap.dedent(text).strip() + "\n"
    buffer = osmium.io.FileBuffer(text.encode(), "opl")
    objects = []
    with osmium.SimpleWriter(str(path)) as writer:
        for obj in osmium.FileProcessor(buffer):
            objects.append(obj)
            if obj.is_node():
                writer.add_node(obj)
            elif obj.is_way():
                writer.add_way(obj)
            elif obj.is_relation():
                writer.add_relation(obj)
    return path


@pytest.fixture(scope="session")
def opl_pbf():
    """:func:`opl_to_pbf` for fixtures of any scope (tests never import conftest)."""
    return opl_to_pbf


@pytest.fixture
def opl(tmp_path):
    """``opl(text) -> Path`` of a fresh .osm.pbf holding the OPL objects."""
    counter = iter(range(1000))

    def make(text: str) -> Path:
        return opl_to_pbf(text, tmp_path / f"case{next(counter)}.osm.pbf")

    return make


@pytest.fixture(scope="session")
def boston():
    return DATA / "us_ma_boston_2020-08.osm.pbf"


@pytest.fixture(scope="session")
def kotka():
    return DATA / "fi_kotka_karhula_2019-04.osm.pbf"


@pytest.fixture(scope="session")
def monaco():
    return DATA / "mc_monaco_2023-12.osm.pbf"


@pytest.fixture(scope="session")
def columbus_circle():
    return DATA / "us_ny_columbus_circle_2023-03.osm.pbf"


@pytest.fixture(scope="session")
def west_oakland():
    return DATA / "us_ca_west_oakland_2016.osm.bz2"


def _build_graphs(pbf, root, min_entities=1):
    """tile → simplify → bbox → visibility into ``root/graphs``."""
    from gjp.geometry.minbox import bbox
    from gjp.geometry.simplify import simplify
    from gjp.geometry.visibility import visibility
    from gjp.osm.tiling import tile_osm

    tile_osm([pbf], root / "tiles", min_entities=min_entities, workers=2)
    simplify(root / "tiles", root / "simplified", workers=2)
    bbox(root / "simplified", root / "boxed", workers=2)
    visibility(root / "boxed", root / "graphs", workers=2)
    return root / "graphs"


@pytest.fixture(scope="session")
def build_graphs():
    """``build_graphs(pbf, root, min_entities=1)``: tile → simplify → bbox → visibility into
    ``root/graphs``; returns that directory."""
    return _build_graphs


@pytest.fixture(scope="session")
def monaco_dataset(tmp_path_factory, monaco):
    """Monaco through the OSM steps and pack-h5: ``(root, graphs dir, dataset.h5)``."""
    from gjp.dataset.pack import pack_dataset

    root = tmp_path_factory.mktemp("monaco-dataset")
    graphs = _build_graphs(monaco, root)
    pack_dataset(graphs, root / "dataset.h5")
    return root, graphs, root / "dataset.h5"


def _run_gjp(args, cwd=None) -> tuple[int, str, str]:
    """``gjp ARGS`` in this process, in ``cwd``: (exit code, stdout, stderr). The signal
    handlers gjp installs are put back, so pytest's Ctrl-C still works."""
    import contextlib
    import io
    import os
    import signal

    from gjp.cli import main

    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(old)
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def run_gjp():
    """``run_gjp(args, cwd=None) -> (code, stdout, stderr)``: the CLI in this process."""
    return _run_gjp


@pytest.fixture(scope="session")
def script_module():
    """Loads a script of the repository that is not part of the package (a benchmark, an
    example) as a module: ``script_module("benchmarks/bench_scale.py")``."""
    root = Path(__file__).resolve().parents[1]

    def load(relative: str):
        path = root / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
