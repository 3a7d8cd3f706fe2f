"""The cost of writing HDF5 through gjp's guarded file object (``gjp.io.hdf5_output``)
against h5py's own file driver, on what ``pack-h5`` writes: large compressed arrays and
image chips one chunk at a time. Both flush to disk (fsync). Best of ``--repeat`` runs,
interleaved, in one process.

    python benchmarks/bench_hdf5_write.py [--work DIR] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from gjp.io import hdf5_output


def payload(f, arrays: dict, chips: np.ndarray) -> None:
    for name, values in arrays.items():
        f.create_dataset(name, data=values, chunks=(4096,), compression="lzf", shuffle=True)
    images = f.create_dataset("images", shape=chips.shape, dtype=np.uint8, chunks=(1, *chips.shape[1:]),
                              compression="lzf")
    for i in range(len(chips)):
        images[i] = chips[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="directory to write in (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    arrays = {f"a{i}": rng.integers(0, 1000, size=2_000_000, dtype=np.int64) for i in range(6)}
    chips = rng.integers(0, 255, size=(200, 224, 224, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        def guarded():
            with hdf5_output(Path(work) / "guarded.h5", overwrite=True) as f:
                payload(f, arrays, chips)

        def plain():
            path = Path(work) / "plain.h5"
            with h5py.File(path, "w") as f:
                payload(f, arrays, chips)
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)

        best = {"h5py driver": float("inf"), "guarded": float("inf")}
        for _ in range(args.repeat):
            for name, write in (("h5py driver", plain), ("guarded", guarded)):
                start = time.perf_counter()
                write()
                best[name] = min(best[name], time.perf_counter() - start)
        size = (Path(work) / "guarded.h5").stat().st_size / 1e6
    print(f"{size:.0f} MB file: h5py driver {best['h5py driver']:.3f} s, guarded {best['guarded']:.3f} s "
          f"({best['guarded'] / best['h5py driver']:.2f}×)")


if __name__ == "__main__":
    main()
