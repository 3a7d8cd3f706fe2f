"""How time and peak memory of each step grow with the input (issue 13).

Builds replicated inputs itself: N copies of one real extract side by side in one
.osm.pbf per size, every copy's node, way and relation ids offset so they never collide
(way refs and relation members too) and its coordinates shifted by whole z14 groups (east,
wrapping to new rows of groups southwards), so the data stays realistic and each copy
lands on tiles of its own. Then runs each step through the CLI, each in its own process,
in a workspace per size, and measures its wall seconds and peak memory (the maximum
resident set of the step's process tree as ``wait4`` reports it: the largest single
process, workers included, not their sum).

    python benchmarks/bench_scale.py [--extract X.osm.pbf] [--copies 1,8,32,128]
                                     [--steps tile,simplify,...] [--workers 2] [--keep DIR]

Prints one Markdown table: per step and size, seconds, peak MB, and the growth of both
against the previous size, plus the input's size in MB. A step that is not chosen but
that a chosen one needs still runs, unreported. ``bare-pass`` is a bare pyosmium pass
over the input (node locations + area assembly, touching no object), the floor of `tile`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import osmium

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXTRACT = ROOT / "examples" / "data" / "li_liechtenstein_2015-07.osm.pbf"
GROUP_ZOOM = 14
COPIES_PER_ROW = 16
GJP = [str(Path(sys.executable).with_name("gjp"))]
BARE_PASS = "import sys, osmium\nfor _ in osmium.FileProcessor(sys.argv[1]).with_locations().with_areas():\n    pass\n"


def steps_table(inp: Path, workers: int) -> dict[str, list[str]]:
    """Each step's command line, run in the size's workspace, in pipeline order."""
    w = ["--workers", str(workers)]
    return {
        "bare-pass": [sys.executable, "-c", BARE_PASS, str(inp)],
        "tile": [*GJP, "-q", "tile", str(inp), "-o", "tiles/"],
        "simplify": [*GJP, "-q", "simplify", *w],
        "bbox": [*GJP, "-q", "bbox", *w],
        "visibility": [*GJP, "-q", "visibility", *w],
        "pack-h5": [*GJP, "-q", "pack-h5"],
        "mktask": [*GJP, "-q", "mktask", "building_count", "--masked"],
        "embed-tags": [*GJP, "-q", "embed-tags", "--device", "cpu"],
        "embed": [*GJP, "-q", "embed", "--model", "tagpool"],
        "knn": [*GJP, "knn", "--eval"],
    }


# What each step reads that an earlier step writes.
NEEDS = {
    "bare-pass": [],
    "tile": [],
    "simplify": ["tile"],
    "bbox": ["simplify"],
    "visibility": ["bbox"],
    "pack-h5": ["visibility"],
    "mktask": ["pack-h5"],
    "embed-tags": ["pack-h5"],
    "embed": ["embed-tags"],
    "knn": ["embed"],
}


# --- the replicated inputs -------------------------------------------------------------


def merc(lon: float, lat: float, z: int) -> tuple[float, float]:
    """Fractional tile coordinates (x east, y south) at zoom ``z``."""
    n = 2.0**z
    x = (lon + 180.0) / 360.0 * n
    y = (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n
    return x, y


def unmerc(x: float, y: float, z: int) -> tuple[float, float]:
    n = 2.0**z
    lon = x / n * 360.0 - 180.0
    lat = math.degrees(math.atan(math.sinh(math.pi * (1.0 - 2.0 * y / n))))
    return lon, lat


def extent(path: Path) -> tuple[dict[str, int], tuple[float, float, float, float]]:
    """The largest id per type, and the nodes' extent in z14 tile coordinates."""
    max_id = {"n": 0, "w": 0, "r": 0}
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for obj in osmium.FileProcessor(str(path)):
        t = obj.type_str()
        if obj.id < 0:
            raise SystemExit(f"{path}: negative ids are not supported")
        max_id[t] = max(max_id[t], obj.id)
        if t == "n" and obj.location.valid():
            x, y = merc(obj.location.lon, obj.location.lat, GROUP_ZOOM)
            x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
    return max_id, (x0, y0, x1, y1)


def replicate(src: Path, copies: int, out: Path) -> None:
    """``copies`` copies of ``src`` side by side in ``out`` (see the module docstring)."""
    max_id, (x0, y0, x1, y1) = extent(src)
    stride = {t: 10 ** len(str(v + 1)) for t, v in max_id.items()}  # ids stay readable
    width = math.floor(x1) - math.floor(x0) + 1  # whole z14 groups, with a spare one
    height = math.floor(y1) - math.floor(y0) + 1
    offsets = [((c % COPIES_PER_ROW) * width, (c // COPIES_PER_ROW) * height) for c in range(copies)]
    if out.exists():
        out.unlink()
    writer = osmium.SimpleWriter(str(out))
    try:
        for c, (dx, dy) in enumerate(offsets):  # nodes of every copy first, then ways, then relations
            off = c * stride["n"]
            for n in osmium.FileProcessor(str(src), osmium.osm.NODE):
                loc = n.location
                if loc.valid():
                    x, y = merc(loc.lon, loc.lat, GROUP_ZOOM)
                    lon, lat = unmerc(x + dx, y + dy, GROUP_ZOOM)
                    writer.add_node(n.replace(id=n.id + off, location=osmium.osm.Location(lon, lat)))
                else:
                    writer.add_node(n.replace(id=n.id + off))
        for c in range(copies):
            off = c * stride["w"]
            noff = c * stride["n"]
            for w in osmium.FileProcessor(str(src), osmium.osm.WAY):
                writer.add_way(w.replace(id=w.id + off, nodes=[r.ref + noff for r in w.nodes]))
        for c in range(copies):
            moff = {t: c * stride[t] for t in stride}
            for r in osmium.FileProcessor(str(src), osmium.osm.RELATION):
                members = [(m.type, m.ref + moff[m.type], m.role) for m in r.members]
                writer.add_relation(r.replace(id=r.id + moff["r"], members=members))
    finally:
        writer.close()


# --- measuring -------------------------------------------------------------------------


def run_measured(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Wall seconds and peak resident MB of ``cmd``'s process tree."""
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}) in {cwd}; see {log}")
    return seconds, usage.ru_maxrss / 1024.0  # KiB on Linux


def ratio(a: float | None, b: float) -> str:
    return "–" if a is None or a <= 0 else f"{b / a:.2f}×"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extract", type=Path, default=DEFAULT_EXTRACT)
    ap.add_argument("--copies", default="1,8,32,128", help="comma-separated copy counts")
    ap.add_argument("--steps", default="bare-pass,tile,simplify,bbox,visibility,pack-h5,mktask,embed-tags,embed,knn")
    ap.add_argument("--workers", type=int, default=2, help="--workers of the per-file steps")
    ap.add_argument("--keep", type=Path, help="keep the workspace in DIR (default: a temporary one, removed)")
    args = ap.parse_args()

    copies = [int(c) for c in args.copies.split(",")]
    chosen = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in NEEDS]
    if unknown:
        ap.error(f"unknown steps {unknown}; choose from {list(NEEDS)}")
    needed: set[str] = set()
    todo = list(chosen)
    while todo:
        s = todo.pop()
        if s not in needed:
            needed.add(s)
            todo.extend(NEEDS[s])
    order = [s for s in NEEDS if s in needed]

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        base = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_scale_")
        base = Path(tmp.name)

    results: dict[str, dict[int, tuple[float, float]]] = {s: {} for s in chosen}
    sizes: dict[int, float] = {}
    try:
        for n in copies:
            ws = base / f"copies_{n}"
            if ws.exists():
                shutil.rmtree(ws)
            ws.mkdir()
            inp = ws / f"x{n}.osm.pbf"
            t = time.perf_counter()
            replicate(args.extract, n, inp)
            sizes[n] = inp.stat().st_size / 1e6
            print(f"# {n} copies: {sizes[n]:.1f} MB built in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            cmds = steps_table(inp.resolve(), args.workers)
            for s in order:
                sec, mb = run_measured(cmds[s], ws, ws / "steps.log")
                print(f"#   {s}: {sec:.1f} s, {mb:.0f} MB", file=sys.stderr)
                if s in results:
                    results[s][n] = (sec, mb)
    finally:
        if not args.keep:
            tmp.cleanup()

    print(f"\nextract: {args.extract.name}; copies: {', '.join(map(str, copies))}; workers: {args.workers}\n")
    print("| step | copies | input | seconds | peak memory | time growth | memory growth |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in chosen:
        prev = None
        for n in copies:
            if n not in results[s]:
                continue
            sec, mb = results[s][n]
            tr = ratio(prev[0] if prev else None, sec)
            mr = ratio(prev[1] if prev else None, mb)
            print(f"| {s} | {n} | {sizes[n]:.1f} MB | {sec:.1f} s | {mb:.0f} MB | {tr} | {mr} |")
            prev = (sec, mb)


if __name__ == "__main__":
    main()
