"""Peak memory of the pipeline's steps is bounded by their settings, not by the input's
size: the check of docs/PERFORMANCE.md's "Bounded memory" table that runs in CI. It builds
1 and 8 copies of the bundled Liechtenstein extract with benchmarks/bench_scale.py (its
inputs and its measuring, reused: each step through the CLI in its own process, peak RSS of
the process tree from ``wait4``) and asserts that, while the input grows 8×, the per-file
steps' peak memory stays flat and `tile`'s grows no faster than a bare pyosmium pass's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"

SMALL, LARGE = 1, 8
#: In pipeline order; each reads what the one before it wrote (bench_scale.NEEDS).
STEPS = ["bare-pass", "tile", "simplify", "bbox", "visibility", "pack-h5"]
PER_FILE = ["simplify", "bbox", "visibility", "pack-h5"]

#: Runs the steps with bench_scale's own ``run_measured``, from a small process of its own:
#: a child's ``ru_maxrss`` starts at its parent's resident set when it is forked (Linux
#: keeps the old memory's high-water mark at ``exec``), and pytest's process, with the
#: rest of the suite loaded, can hold more than any step.
MEASURE = """
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("bench_scale", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
cmds, cwd = json.loads(sys.argv[2]), Path(sys.argv[3])
print(json.dumps({s: bench.run_measured(c, cwd, cwd / "steps.log")[1] for s, c in cmds.items()}))
"""

#: What a per-file step's peak may grow, in MB per MB of .osm.pbf input added (74 MB from 1
#: to 8 copies). Measured: −19 to +39 MB (page cache and worker scheduling move a peak by
#: ±20 MB), while a step holding its whole input grows by at least 12 MB per MB (its input
#: files as Arrow tables: simplify +110 MB, bbox +186, visibility +220, pack-h5 +335; as
#: Python objects +460 to +1,270). Absolute, not a ratio: 180–300 MB of each peak is the
#: interpreter and its imports, which would hide a growing part in a ratio.
PER_FILE_MB_PER_INPUT_MB = 8.0
#: `tile`'s growth factor may exceed the bare pass's by this much (measured 0.76 of it).
TILE_MARGIN = 1.15


@pytest.fixture(scope="module")
def bench(script_module):
    return script_module("benchmarks/bench_scale.py")


@pytest.fixture(scope="module")
def peaks(bench, tmp_path_factory) -> dict[str, dict[int, float]]:
    """Peak MB per step and number of copies, and the inputs' sizes under ``"input"``."""
    gjp = Path(bench.GJP[0])
    if not gjp.exists():
        pytest.fail(f"{gjp}: no gjp script next to this interpreter (install the package)")
    base = tmp_path_factory.mktemp("memory_bounds")
    out: dict[str, dict[int, float]] = {s: {} for s in [*STEPS, "input"]}
    for n in (SMALL, LARGE):
        ws = base / f"copies_{n}"
        ws.mkdir()
        inp = ws / f"x{n}.osm.pbf"
        bench.replicate(bench.DEFAULT_EXTRACT, n, inp)
        out["input"][n] = inp.stat().st_size / 1e6
        table = bench.steps_table(inp.resolve(), workers=2)
        cmds = json.dumps({s: table[s] for s in STEPS})
        done = subprocess.run([sys.executable, "-c", MEASURE, str(BENCH), cmds, str(ws)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            log = ws / "steps.log"
            pytest.fail(f"{done.stderr}\n{log.read_text()[-4000:] if log.exists() else ''}")
        for s, mb in json.loads(done.stdout).items():
            out[s][n] = mb
    for s in out:  # shown on failure, or with -s
        print(f"{s}: " + ", ".join(f"{n} copies {mb:.1f} MB" for n, mb in out[s].items()))
    return out


def growth(peaks, step: str) -> float:
    return peaks[step][LARGE] / peaks[step][SMALL]


def numbers(peaks, step: str) -> str:
    return f"{step}: {peaks[step][SMALL]:.0f} → {peaks[step][LARGE]:.0f} MB ({growth(peaks, step):.2f}×)"


def added(peaks, step: str) -> float:
    return peaks[step][LARGE] - peaks[step][SMALL]


@pytest.mark.slow
def test_the_input_grows_with_the_copies(peaks):
    assert growth(peaks, "input") > 0.9 * LARGE / SMALL


@pytest.mark.slow
@pytest.mark.parametrize("step", PER_FILE)
def test_per_file_steps_do_not_grow_with_the_input(peaks, step):
    """simplify, bbox, visibility and pack-h5 hold one group file per worker (pack-h5 also a
    fixed block of entities, and the vocabulary: the data's variety, not its size), so 8×
    the input must leave their peak flat, up to noise. A step that kept its whole input
    would not: before memory was bounded, pack-h5 grew by 596 MB over these same inputs;
    see PER_FILE_MB_PER_INPUT_MB for the growth of steps made to hold their input."""
    allowed = PER_FILE_MB_PER_INPUT_MB * (peaks["input"][LARGE] - peaks["input"][SMALL])
    assert added(peaks, step) <= allowed, f"{numbers(peaks, step)}, more than +{allowed:.0f} MB"


@pytest.mark.slow
def test_tile_grows_no_faster_than_a_bare_osmium_pass(peaks):
    """Besides settings-bounded buffers (which 1 copy does not fill, so `tile` does grow
    here), `tile` holds only the node-location index and pyosmium's area assembly, which
    grow with the input; a bare pyosmium pass with locations and areas holds just those,
    on a far smaller base, so its growth factor (2.4× here; `tile` 1.8×) bounds `tile`'s.
    Keeping its entities in memory breaks it: before memory was bounded, `tile` grew 3.9×
    over these same inputs, and one made to keep them all as Python objects grew 3.2×."""
    assert growth(peaks, "tile") <= growth(peaks, "bare-pass") * TILE_MARGIN, (
        f"{numbers(peaks, 'tile')}; {numbers(peaks, 'bare-pass')}")
