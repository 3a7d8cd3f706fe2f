"""Run a per-file step over a directory of tile-group files (``simplify``, ``bbox``,
``visibility``): each group file is read, given new columns, and written under the same
name into the output directory, in parallel over files, atomically as a whole."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from gjp.errors import GjpError
from gjp.geoparquet import list_group_files, read_group_file, write_group_file
from gjp.io import atomic_directory, provenance
from gjp.parallel import executor
from gjp.ui import QUIET, Reporter

#: ``transform(table, zoom, **params) -> table`` with the step's columns added.
Transform = Callable[..., pa.Table]


@dataclass
class StageReport:
    step: str = ""
    files: int = 0
    rows: int = 0

    def summary(self) -> str:
        return f"{self.step}: {self.rows} entities in {self.files} files"


def run_stage(step: str, transform: Transform, input_dir: str | Path, output_dir: str | Path, *,
              require: tuple[str, ...], params: dict, workers: int = 1, scheduler: str | None = None,
              overwrite: bool = False, reporter: Reporter = QUIET) -> StageReport:
    """``transform`` over every group file of ``input_dir`` on ``workers`` threads, or on
    the Dask cluster at ``scheduler`` (:func:`gjp.parallel.executor`)."""
    files = list_group_files(input_dir)
    # Each file is checked as it is read; a bad one fails the step and, the output being
    # staged, leaves nothing behind.
    report = StageReport(step=step, files=len(files))
    # the step's record is made here, not in the jobs: a job may run on another machine,
    # whose command line is not this one
    record = provenance(step, params)
    with executor(workers, scheduler) as pool, atomic_directory(output_dir, overwrite) as staging:
        jobs = [(step, record, transform, pool.path(path), pool.path(staging / path.name), require, params)
                for path in files]
        bar = reporter.progress(total=len(jobs), desc=step, unit=" file")
        report.rows = sum(pool.map(_run_one, jobs, bar))
        bar.close()
    return report


def _run_one(job) -> int:
    step, record, transform, src, dst, require, params = job
    table, meta = read_group_file(src, require)
    zoom = int(meta["zoom"])
    try:
        out = transform(table, zoom, **params)
    except GjpError as err:  # bad content (a geometry that is not WKB): name the file
        raise GjpError(f"{src}: {err}") from None
    assert out.num_rows == table.num_rows, f"{step} must keep every row"
    meta = dict(meta)
    meta["steps"] = [*meta.get("steps", []), record]
    write_group_file(out, dst, meta)
    return out.num_rows


def add_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """``table`` with ``columns`` appended (replacing same-named ones from an earlier run,
    whose GeoParquet description is then dropped so that it is made anew)."""
    present = set(table.column_names)
    replaced = [name for name in columns if name in present]
    if replaced:
        meta = dict(table.schema.metadata or {})
        if b"geo" in meta:
            geo = json.loads(meta[b"geo"])
            for name in replaced:
                geo.get("columns", {}).pop(name, None)
            meta[b"geo"] = json.dumps(geo).encode()
        table = table.drop_columns(replaced).replace_schema_metadata(meta)
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table
