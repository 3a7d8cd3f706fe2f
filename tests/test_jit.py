"""gjp.jit: where the numba kernels are cached, and that gjp runs whatever is writable.

Tests run as root in CI, where chmod stops no write: the rule chain is tested as a pure
function, and the end-to-end test switches to uid 65534 (nobody) with setpriv or runuser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import gjp
from gjp import jit
from gjp.jit import CacheDir, choose_cache_dir

PACKAGE = Path(gjp.__file__).parent
SRC = "/opt/gjp/geometry"


def chain(env, writable=(), warmed=(), private=True, tempdir="/tmp"):
    """choose_cache_dir with the given paths (prefixes) writable or warmed."""
    return choose_cache_dir(SRC, env, 1000, tempdir,
                            writable=lambda p: any(p.startswith(w) for w in writable),
                            warmed=lambda p: any(p.startswith(w) for w in warmed),
                            private=lambda p: private)


def test_the_chain_in_order():
    sub = "geometry_" + __import__("hashlib").sha1(SRC.encode()).hexdigest()
    home = {"HOME": "/home/u"}
    everything = ("/nc", SRC, "/home/u", "/xdg", "/tmp")
    assert chain({"NUMBA_CACHE_DIR": "/nc", **home}, everything) == CacheDir(f"/nc/{sub}", True, "NUMBA_CACHE_DIR")
    # a NUMBA_CACHE_DIR that cannot be written is passed over
    assert chain({"NUMBA_CACHE_DIR": "/nc", **home}, everything[1:]) == CacheDir(f"{SRC}/__pycache__", True, "install")
    assert chain(home, everything) == CacheDir(f"{SRC}/__pycache__", True, "install")
    # a read-only install: used if warmed, else the user's cache
    assert chain(home, everything[2:], warmed=(SRC,)) == CacheDir(f"{SRC}/__pycache__", False, "install (read-only)")
    assert chain(home, everything[2:]) == CacheDir(f"/home/u/.cache/gjp/numba/{sub}", True, "user")
    assert chain({"XDG_CACHE_HOME": "/xdg", **home}, everything[2:]) == CacheDir(f"/xdg/gjp/numba/{sub}", True, "user")
    assert chain({"XDG_CACHE_HOME": "relative", **home}, everything[2:]).source == "user"  # ignored, as XDG says
    # no writable home: a private directory per uid in the temp directory
    assert chain({"HOME": "/nonexistent"}, ("/tmp",)) == CacheDir(f"/tmp/gjp-numba-1000/{sub}", True, "temp")
    assert chain({}, ("/tmp",)).source == "temp"
    # one another user could write to is refused; then no cache at all
    assert chain({"HOME": "/nonexistent"}, ("/tmp",), private=False) == CacheDir(None, False, "off")
    assert chain({"HOME": "/nonexistent"}, ("/tmp",), tempdir=None) == CacheDir(None, False, "off")
    assert chain({"NUMBA_CACHE_DIR": "/nc", "HOME": "/h"}) == CacheDir(None, False, "off")


def test_a_shared_temp_directory_is_private_only_if_ours(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    assert jit._private(str(mine))
    mine.chmod(0o777)
    assert not jit._private(str(mine))
    if os.getuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        assert not jit._private(str(theirs))
    assert not jit._private(str(tmp_path / "missing"))


def _add(a, b):
    return a + b


def compiled(monkeypatch, where: CacheDir):
    monkeypatch.setattr(jit, "cache_dir", lambda source_dir: where)
    return jit.njit()(_add)


def test_no_cache_still_compiles(monkeypatch):
    assert compiled(monkeypatch, CacheDir(None, False, "off"))(2, 3) == 5


def test_a_cache_that_cannot_be_written_is_a_miss(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")  # nothing, not even root, makes a directory below a file
    assert compiled(monkeypatch, CacheDir(str(tmp_path / "file" / "sub"), True, "user"))(2, 3) == 5


def test_a_read_only_cache_is_loaded_and_never_written(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    kernel = compiled(monkeypatch, CacheDir(str(cache), True, "install"))
    assert kernel(2, 3) == 5 and kernel.stats.cache_misses
    saved = sorted(p.name for p in cache.iterdir())
    assert any(name.endswith(".nbi") for name in saved)
    again = compiled(monkeypatch, CacheDir(str(cache), False, "install (read-only)"))
    assert again(2, 3) == 5 and again.stats.cache_hits
    assert again(2.5, 3.0) == 5.5  # a new type: compiled, not saved
    assert sorted(p.name for p in cache.iterdir()) == saved


@pytest.mark.slow
def test_the_pipeline_compiles_each_kernel_once(tmp_path, monaco):
    # warm-up first, then the real steps (2 workers) on a real extract: a kernel the steps
    # call with other argument types than the warm-up's would show a second specialisation
    code = f"""if True:
        import json
        from gjp.geometry import warm
        from gjp.geometry.minbox import bbox
        from gjp.geometry.simplify import simplify
        from gjp.geometry.visibility import visibility
        from gjp.osm.tiling import tile_osm
        warm.warm()
        root = {str(tmp_path)!r}
        tile_osm([{str(monaco)!r}], root + "/tiles", workers=2)
        simplify(root + "/tiles", root + "/s", workers=2)
        bbox(root + "/s", root + "/b", workers=2)
        visibility(root + "/b", root + "/g", workers=2)
        print(json.dumps({{n: len(d.signatures) for n, d in warm.kernels().items()}}))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)}, cwd=tmp_path)
    counts = json.loads(out.stdout.splitlines()[-1])
    assert len(counts) == 11  # every kernel of wkb, simplify, minbox and visibility
    # _sort_pairs is only called from visibility_kernel: none when that came from the cache
    assert {n: c for n, c in counts.items() if c != 1} in ({}, {"visibility._sort_pairs": 0})


# --------------------------------------------------------------------------- as another user

def _nobody_prefix(env) -> list[str]:
    """A command prefix that runs as uid 65534 and can start this Python, or skip."""
    if os.getuid() != 0:
        pytest.skip("switching to uid 65534 needs root (not root: chmod would do, but CI is root)")
    tries = []
    if shutil.which("setpriv"):
        base = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        # this interpreter may live under /root: let nobody read and search, never write
        tries += [base + ["--inh-caps", "+dac_read_search", "--ambient-caps", "+dac_read_search"], base]
    if shutil.which("runuser"):
        tries.append(["runuser", "-u", "nobody", "--"])
    if not tries:
        pytest.skip("neither setpriv nor runuser (util-linux) is installed: cannot run as another uid")
    for prefix in tries:
        probe = subprocess.run(prefix + [sys.executable, "-c", "import os, numba; assert os.getuid() == 65534"],
                               env=env, capture_output=True)
        if probe.returncode == 0:
            return prefix
    pytest.skip(f"uid 65534 cannot start {sys.executable} (tried {', '.join(p[0] for p in tries)})")


def _local_column(directory: Path) -> list:
    return [pq.read_table(f, columns=["local"]).column("local").to_pylist() for f in sorted(directory.glob("*.parquet"))]


@pytest.mark.slow
def test_nobody_with_no_home_and_a_read_only_install_runs_simplify(tmp_path):
    from gjp.geometry.warm import _OSM
    from gjp.osm.tiling import tile_osm

    work = tmp_path / "work"  # nobody's: the input (readable to all), outputs, TMPDIR
    (tmp_path / "warm.osm").write_text(_OSM)
    tile_osm([tmp_path / "warm.osm"], work / "tiles", min_entities=1)
    os.chown(work, 65534, 65534)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_"))}
    # two installs nobody cannot write: one never warmed, one warmed by its owner (root)
    cold, warmed = tmp_path / "cold", tmp_path / "warmed"
    shutil.copytree(PACKAGE, cold / "gjp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PACKAGE, warmed / "gjp", ignore=shutil.ignore_patterns("*.pyc"))
    subprocess.run([sys.executable, "-m", "gjp", "-q", "simplify", "-i", "work/tiles", "-o", "by-root"],
                   check=True, cwd=tmp_path, env={**clean, "PYTHONPATH": str(warmed)})
    env = {**clean, "HOME": "/nonexistent", "TMPDIR": str(work)}
    prefix = _nobody_prefix(env)

    def simplify_as_nobody(install, output):
        return subprocess.run(prefix + [sys.executable, "-m", "gjp", "-q", "simplify", "-i", "tiles", "-o", output],
                              cwd=work, capture_output=True, text=True, env={**env, "PYTHONPATH": str(install), "NUMBA_DEBUG_CACHE": "1"})

    # never warmed: compiled into a private cache in TMPDIR
    run = simplify_as_nobody(cold, "cold-out")
    assert run.returncode == 0, run.stderr
    assert list((work / "gjp-numba-65534").glob("geometry_*/simplify.plan_rows-*.nbi"))
    assert not list((cold / "gjp" / "geometry").glob("__pycache__/*.nbi"))
    assert _local_column(work / "cold-out") == _local_column(tmp_path / "by-root")
    # warmed by root: loaded from the install's read-only cache, nothing written elsewhere
    shutil.rmtree(work / "gjp-numba-65534")
    run = simplify_as_nobody(warmed, "warm-out")
    assert run.returncode == 0, run.stderr
    assert f"data loaded from '{warmed / 'gjp' / 'geometry' / '__pycache__'}" in run.stdout + run.stderr
    assert not (work / "gjp-numba-65534").exists()
    assert _local_column(work / "warm-out") == _local_column(tmp_path / "by-root")
    np.testing.assert_equal(len(_local_column(work / "warm-out")), 1)


def test_every_kernel_uses_the_gjp_cache():
    """gjp.jit plugs its cache class into numba's dispatcher (numba has no public hook for a
    read-only warmed cache). If a numba release moves those internals, gjp still runs,
    uncached; this test is what notices, naming the numba version."""
    import numba

    from gjp import jit
    from gjp.geometry import warm

    kernels = warm.kernels()
    assert kernels
    for name, dispatcher in kernels.items():
        assert jit._CACHE_CLASS is not None and isinstance(dispatcher._cache, jit._CACHE_CLASS), (
            f"{name}: numba {numba.__version__} no longer takes gjp's cache class; gjp.jit needs updating")
