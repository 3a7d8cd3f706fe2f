"""``python -m gjp.geometry.warm``: compile every numba kernel once, into the install's cache.

``make install`` runs this after pip, so that the first ``gjp simplify``, ``bbox`` and
``visibility`` load their kernels (≈ 1 s) instead of compiling them (10–30 s on 2 cores).
The kernels run on a tiny OSM extract through the real steps (tile → simplify → bbox →
visibility), so they are compiled for exactly the argument types production passes: one
specialisation each (``--check`` fails if any kernel has more).

The cache goes where :mod:`gjp.jit` puts it; ``NUMBA_CACHE_DIR`` is ignored here, so that
it is the install's own ``__pycache__`` whenever that is writable.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

# A few entities in one z16 tile of Monaco: a point, a line with a vertex within 0.3 m of
# its neighbours' segment (so that simplify drops it), a building with a courtyard (a
# multipolygon: two rings, so visibility has parts to join) and a closed line.
_OSM = """<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6" generator="gjp warm-up">
 <node id="1" version="1" lat="43.73010" lon="7.42010"><tag k="amenity" v="bench"/></node>
 <node id="2" version="1" lat="43.73020" lon="7.42020"/>
 <node id="3" version="1" lat="43.730300001" lon="7.42040"/>
 <node id="4" version="1" lat="43.73040" lon="7.42060"/>
 <node id="5" version="1" lat="43.73050" lon="7.42080"/>
 <node id="10" version="1" lat="43.73100" lon="7.42100"/>
 <node id="11" version="1" lat="43.73100" lon="7.42160"/>
 <node id="12" version="1" lat="43.73140" lon="7.42160"/>
 <node id="13" version="1" lat="43.73140" lon="7.42100"/>
 <node id="20" version="1" lat="43.73110" lon="7.42120"/>
 <node id="21" version="1" lat="43.73110" lon="7.42140"/>
 <node id="22" version="1" lat="43.73130" lon="7.42140"/>
 <node id="23" version="1" lat="43.73130" lon="7.42120"/>
 <node id="30" version="1" lat="43.73200" lon="7.42200"/>
 <node id="31" version="1" lat="43.73200" lon="7.42230"/>
 <node id="32" version="1" lat="43.73225" lon="7.42215"/>
 <way id="100" version="1"><nd ref="2"/><nd ref="3"/><nd ref="4"/><nd ref="5"/><tag k="highway" v="footway"/></way>
 <way id="101" version="1"><nd ref="10"/><nd ref="11"/><nd ref="12"/><nd ref="13"/><nd ref="10"/></way>
 <way id="102" version="1"><nd ref="20"/><nd ref="21"/><nd ref="22"/><nd ref="23"/><nd ref="20"/></way>
 <way id="103" version="1"><nd ref="30"/><nd ref="31"/><nd ref="32"/><nd ref="30"/>
  <tag k="junction" v="roundabout"/><tag k="highway" v="primary"/></way>
 <relation id="200" version="1">
  <member type="way" ref="101" role="outer"/><member type="way" ref="102" role="inner"/>
  <tag k="type" v="multipolygon"/><tag k="building" v="yes"/>
 </relation>
</osm>
"""


def kernels() -> dict[str, object]:
    """Every numba dispatcher of the geometry modules, by ``module.name``."""
    from numba.core.registry import CPUDispatcher

    from gjp.geometry import minbox, simplify, visibility, wkb

    found = {}
    for module in (wkb, simplify, minbox, visibility):
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and not obj.targetoptions.get("inline") == "always":
                found[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] = obj
    return found


def warm() -> dict[str, object]:
    """Run the OSM steps on the tiny extract; returns :func:`kernels`."""
    from gjp.geometry.minbox import bbox
    from gjp.geometry.simplify import simplify
    from gjp.geometry.visibility import visibility
    from gjp.osm.tiling import tile_osm

    with tempfile.TemporaryDirectory(prefix="gjp-warm-") as tmp:
        root = Path(tmp)
        (root / "warm.osm").write_text(_OSM)
        tile_osm([root / "warm.osm"], root / "tiles", min_entities=1)
        simplify(root / "tiles", root / "simplified")
        bbox(root / "simplified", root / "boxed")
        visibility(root / "boxed", root / "graphs")
    return kernels()


def main(argv: list[str]) -> int:
    check = "--check" in argv
    os.environ.pop("NUMBA_CACHE_DIR", None)  # before gjp.jit chooses: the install's cache
    start = time.perf_counter()
    found = warm()
    from gjp.jit import cache_dir

    where = cache_dir(os.path.dirname(os.path.abspath(__file__)))
    print(f"gjp: {len(found)} numba kernels warmed in {time.perf_counter() - start:.1f} s, "
          f"cache: {where.path or 'none'} ({where.source})", file=sys.stderr)
    # a kernel only ever called by another (visibility._sort_pairs) has none when its
    # caller came from the cache
    bad = {name: len(d.signatures) for name, d in found.items() if len(d.signatures) > 1}
    for name, count in sorted(bad.items()):
        print(f"gjp: kernel {name} has {count} specialisations, not 1", file=sys.stderr)
    return 1 if check and bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
