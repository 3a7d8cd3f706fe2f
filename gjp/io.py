"""Outputs that are atomic, never silently overwritten, and carry their provenance."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from gjp import __version__
from gjp.errors import GjpError


def command_line() -> str:
    """The command that is running, as a user would retype it."""
    argv = list(sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def provenance(step: str, params: dict) -> dict:
    """What every output records about how it was made (no clock time: outputs of the same
    inputs and parameters must be byte-identical)."""
    return {"step": step, "gjp_version": __version__, "command": command_line(), "params": params}


def check_output_free(path: Path, overwrite: bool) -> None:
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    if not overwrite:
        raise GjpError(f"{path}: already exists (use --overwrite to replace it)")


@contextlib.contextmanager
def atomic_directory(final: str | Path, overwrite: bool = False):
    """Yield a staging directory that becomes ``final`` only when the block succeeds.

    A crash or Ctrl-C leaves ``final`` as it was (absent, or the previous run's output), so a
    later step never reads half a directory.
    """
    final = Path(final)
    check_output_free(final, overwrite)
    parent = final.parent if str(final.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GjpError(f"{parent}: cannot create output directory ({err.strerror or err})") from err
    staging = parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        old = parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        staging.rename(final)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        staging.rename(final)


@contextlib.contextmanager
def atomic_file(final: str | Path):
    """Yield a temporary path beside ``final`` that becomes ``final`` only when the block
    succeeds; on any error (or Ctrl-C) the temporary file is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (sorted keys, indented: diffable and deterministic)."""
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def open_hdf5(path: str | Path, fmt: str, version: int, what: str, made_by: str):
    """Open a gjp HDF5 file read-only, checking that it exists, is HDF5, and carries the
    ``format`` and ``format_version`` attributes this gjp reads; clear errors otherwise."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise GjpError(f"{path}: no such file (make it with `{made_by}`)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise GjpError(f"{path}: not an HDF5 file ({err})") from err
    found, found_version = f.attrs.get("format"), f.attrs.get("format_version")
    if found != fmt:
        f.close()
        raise GjpError(f"{path}: not a gjp {what} (format {found!r})")
    if found_version is None or int(found_version) != version:
        f.close()
        raise GjpError(f"{path}: {what} format version {found_version}, this gjp reads {version}; "
                       f"make it again with `{made_by}`")
    return f
