"""Outputs that are atomic, never silently overwritten, and carry their provenance.

Every step writes through the context managers here, so one place keeps the promises of
``docs/GUARANTEES.md``:

- an output is written under a temporary name beside it (``.NAME.partial-PID``) and only
  renamed into place when complete, so a crash, Ctrl-C or SIGTERM leaves the old state;
- publishing never replaces what appeared meanwhile (a concurrent run): the loser fails;
- a second run into the same output while the first is still writing fails at once (the
  staging name is locked with ``flock``, which the kernel releases when a process dies);
- HDF5 files are written through a guarded file object, so a full disk becomes one clear
  error instead of a crash inside the HDF5 library, and signals during the write are held
  until the library is out of its callbacks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

from gjp import __version__
from gjp.errors import GjpError

#: Options that change how fast or how loudly a step runs, never what it writes; left out
#: of the recorded command so that outputs are byte-identical whatever they are.
_UNRECORDED_OPTIONS = {"--workers": True, "--scheduler": True, "-q": False, "--quiet": False,
                       "--overwrite": False, "--debug": False}


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM. A ``BaseException`` like ``KeyboardInterrupt``, so every
    ``finally`` and staging clean-up runs, but not one (click would turn that into its own
    abort with a blank line)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def command_line() -> str:
    """The command that is running, as a user would retype it, without the options that do
    not change outputs (``--workers``, ``--scheduler``, ``-q``, ``--overwrite``)."""
    argv = list(sys.argv)
    if not argv:
        return ""
    kept, skip = [Path(argv[0]).name], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _UNRECORDED_OPTIONS:
            skip = _UNRECORDED_OPTIONS[name] and "=" not in arg
            continue
        kept.append(arg)
    return shlex.join(kept)


def provenance(step: str, params: dict) -> dict:
    """What every output records about how it was made (no clock time: outputs of the same
    inputs and parameters must be byte-identical)."""
    return {"step": step, "gjp_version": __version__, "command": command_line(), "params": params}


def reason(err: OSError) -> str:
    """An OS error in a few words (``no space left on device``)."""
    if err.errno == errno.EFBIG:
        return "file too large for the file-size limit (ulimit -f)"
    text = err.strerror or str(err)
    return text[:1].lower() + text[1:]


# --------------------------------------------------------------------------- output paths

def check_output_free(path: str | Path, overwrite: bool, directory: bool = False) -> Path:
    """Fail early, before any work, if ``path`` cannot be the output: no name (``-o ''``,
    ``-o .``), the current directory or one above it, a directory where a file is meant (or
    the reverse), or an existing output without ``overwrite``. Returns the path."""
    path = Path(path)
    text = str(path)
    if text in ("", ".") or path.name in ("", ".", ".."):
        raise GjpError(f"{text or repr(text)}: not an output name; give a new "
                       + ("directory (e.g. -o out/)" if directory else "file (e.g. -o out.h5)"))
    try:
        cwd = Path.cwd().resolve()
        resolved = path.resolve()
    except OSError:
        resolved = cwd = None
    if resolved is not None and (resolved == cwd or resolved in cwd.parents):
        raise GjpError(f"{path}: is the current directory or contains it; give a new output")
    if directory and path.exists() and not path.is_dir():
        raise GjpError(f"{path}: exists and is not a directory")
    if not directory and path.is_dir():
        raise GjpError(f"{path}: is a directory; give a file name (e.g. {path / 'out'}"
                       f"{''.join(path.suffixes) or ''})")
    if path.exists() and not overwrite and not (path.is_dir() and not any(path.iterdir())):
        raise GjpError(f"{path}: already exists (use --overwrite to replace it)")
    return path


def _make_parent(path: Path) -> tuple[Path, Path | None]:
    """Create the output's parent directory; returns it and the topmost directory this
    created (None if it existed), so that a failed run can take them away again."""
    parent = path.parent if str(path.parent) else Path(".")
    created = None
    probe = parent
    while not probe.exists() and probe != probe.parent:
        created, probe = probe, probe.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GjpError(f"{parent}: cannot create output directory ({reason(err)})") from err
    return parent, created


class _Staging:
    """The locked temporary name of an output: ``.NAME.partial-PID`` beside it."""

    def __init__(self, final: Path, directory: bool):
        self.final = final
        self.parent, self._created = _make_parent(final)
        self.path = self.parent / f".{final.name}.partial-{os.getpid()}"
        self.directory = directory
        self._fd: int | None = None

    def create(self) -> Path:
        try:
            self._refuse_concurrent_run()
        except GjpError:
            self.abandon()
            raise
        self.remove()
        try:
            if self.directory:
                self.path.mkdir()
                self._fd = os.open(self.path, os.O_RDONLY)
            else:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self.abandon()
            raise GjpError(f"{self.final}: cannot write here ({reason(err)})") from err
        return self.path

    def _refuse_concurrent_run(self) -> None:
        """Another process staging the same output holds its lock: fail now, not after the
        work. Stale staging left by a killed run (no lock) is removed."""
        prefix = f".{self.final.name}.partial-"
        try:
            siblings = [p for p in self.parent.iterdir() if p.name.startswith(prefix)]
        except OSError:
            return
        for other in siblings:
            if other == self.path:
                continue
            try:
                fd = os.open(other, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = other.name[len(prefix):]
                raise GjpError(f"{self.final}: another gjp run (pid {pid}) is writing it; "
                               "wait for it to finish or stop it") from None
            else:
                _remove(other)
            finally:
                os.close(fd)

    def remove(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        _remove(self.path)

    def abandon(self) -> None:
        """After a failure: the staging, and the directories made for it if still empty."""
        self.remove()
        if self._created is None:
            return
        directory = self.parent
        while True:
            try:
                directory.rmdir()
            except OSError:
                return
            if directory == self._created:
                return
            directory = directory.parent

    def publish(self, overwrite: bool) -> None:
        """Rename into place; without ``overwrite`` never replace what appeared meanwhile."""
        try:
            if self.directory:
                _publish_directory(self.path, self.final, overwrite)
            else:
                _publish_file(self.path, self.final, overwrite)
        except FileExistsError:
            self.abandon()
            raise GjpError(f"{self.final}: appeared while this run was writing it (another run?); "
                           "it was left as it is and this run's output discarded") from None
        except OSError as err:
            self.abandon()
            raise GjpError(f"{self.final}: cannot publish the output ({reason(err)})") from err
        self.remove()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _publish_file(tmp: Path, final: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # fails if final exists: a rename that cannot replace
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # file systems without hard links: check, then rename (a small race remains)
        if final.exists():
            raise FileExistsError(final) from None
        os.replace(tmp, final)


def _publish_directory(staging: Path, final: Path, overwrite: bool) -> None:
    if not (overwrite and final.exists()):
        try:
            os.rename(staging, final)  # replaces only an empty directory
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise FileExistsError(final) from None
            raise
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.rename(final, old)
    try:
        os.rename(staging, final)
    except OSError:
        with contextlib.suppress(OSError):
            os.rename(old, final)
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_directory(final: str | Path, overwrite: bool = False):
    """Yield a staging directory that becomes ``final`` only when the block succeeds.

    A crash, Ctrl-C or SIGTERM leaves ``final`` as it was (absent, or the previous run's
    output), so a later step never reads half a directory.
    """
    with _staged(final, overwrite, directory=True) as path:
        yield path


@contextlib.contextmanager
def atomic_file(final: str | Path, overwrite: bool = False):
    """Yield a temporary path beside ``final`` that becomes ``final`` only when the block
    succeeds; on any error, Ctrl-C or SIGTERM the temporary file is removed. An existing
    ``final`` is replaced only with ``overwrite``."""
    with _staged(final, overwrite, directory=False) as path:
        yield path


#: Errors that mean the output's file system is full (or the process may write no more).
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@contextlib.contextmanager
def _staged(final: str | Path, overwrite: bool, directory: bool):
    """The body of :func:`atomic_directory` and :func:`atomic_file`: check, stage, lock,
    and publish or abandon. A failed write is reported under the output's own name: a full
    disk always, and any OS error of the staging itself or without a file name (pyarrow's
    write errors carry none)."""
    final = check_output_free(final, overwrite, directory)
    staging = _Staging(final, directory)
    path = staging.create()
    try:
        yield path
    except OSError as err:
        staging.abandon()
        where = Path(os.fsdecode(err.filename)) if err.filename is not None else None
        if err.errno in _FULL or where is None or where == path or path in where.parents:
            raise GjpError(f"{final}: cannot write: {reason(err)}; nothing was written") from None
        raise
    except GjpError as err:  # name the output as the user knows it, not its staging name
        staging.abandon()
        raise GjpError(str(err).replace(str(path), str(final))) from None
    except BaseException:
        staging.abandon()
        raise
    staging.publish(overwrite)


def write_json(path: str | Path, data, overwrite: bool = False) -> None:
    """Write JSON atomically (sorted keys, indented: diffable and deterministic)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True), overwrite)


def write_jsonl(path: str | Path, rows, overwrite: bool = False) -> None:
    """Write one JSON object per line (sorted keys), atomically."""
    write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), overwrite)


def write_text(path: str | Path, text: str, overwrite: bool = False) -> None:
    with atomic_file(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- signals

@contextlib.contextmanager
def held_signals():
    """Hold SIGINT and SIGTERM for the block: they are recorded, not raised, so that no
    exception is thrown inside a C library's callbacks (where h5py would swallow it), and
    raised when the block ends. ``pending()`` says whether one arrived, for loops that want
    to stop early (they then raise through :func:`check_pending`)."""
    state = _HeldSignals()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {s: signal.signal(s, state.record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    except _Stop:
        if not state.pending():
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    state.raise_pending()


class _HeldSignals:
    def __init__(self):
        self.signum: int | None = None

    def record(self, signum, frame) -> None:
        self.signum = self.signum or signum

    def pending(self) -> bool:
        return self.signum is not None

    def raise_pending(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


def raise_on_signals() -> None:
    """Ctrl-C and SIGTERM raise :class:`Interrupted` (clean-up runs, then one line)."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. SIGINT of a background job
                signal.signal(s, _interrupt)


def _interrupt(signum, frame):
    raise Interrupted(signum)


# --------------------------------------------------------------------------- HDF5

class _GuardedFile(io.RawIOBase):
    """The file object HDF5 writes through (h5py's ``fileobj`` driver).

    The first failed write (a full disk, a file-size limit) is recorded and every later
    write becomes a no-op, as does every write once a signal is pending: the HDF5 library
    then finishes and closes cleanly, where a failing ``write(2)`` would make it crash in
    its clean-up, and the recorded error is raised afterwards.
    """

    def __init__(self, raw, signals: _HeldSignals):
        self.raw, self.signals = raw, signals
        self.error: OSError | None = None

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        return self.raw.seek(pos, whence)

    def tell(self):
        return self.raw.tell()

    def readinto(self, buffer):
        return self.raw.readinto(buffer)

    def _live(self) -> bool:
        return self.error is None and not self.signals.pending()

    def write(self, data):
        if self._live():
            try:
                return self.raw.write(data)
            except OSError as err:
                self.error = err
        return len(data)

    def truncate(self, size=None):
        if self._live():
            try:
                return self.raw.truncate(size)
            except OSError as err:
                self.error = err
        return size

    def flush(self):
        if self._live():
            try:
                self.raw.flush()
            except OSError as err:
                self.error = err


#: The size of HDF5's metadata cache (chunk-index B-tree nodes, object headers) in every
#: file gjp opens. Left adaptive, it grows with how much of a file is read or written, up
#: to 32 MiB of entries that take several times that in memory: mktask gained about 3 MB
#: every 8,192 tiles that way (docs/PERFORMANCE.md). Fixed, memory stays bounded; a
#: block-by-block pass touches few index nodes at a time, so it is not slower.
METADATA_CACHE_BYTES = 2 << 20


def bound_metadata_cache(f) -> None:
    """Fix the metadata cache of an open ``h5py.File`` at :data:`METADATA_CACHE_BYTES`."""
    config = f.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = config.min_size = config.max_size = METADATA_CACHE_BYTES
    config.incr_mode = config.flash_incr_mode = config.decr_mode = 0   # the *__off modes
    f.id.set_mdc_config(config)


def open_h5(path, mode: str = "r", **kwargs):
    """``h5py.File(path, mode, **kwargs)`` with its metadata cache bounded: how every
    HDF5 file in gjp is opened."""
    import h5py

    f = h5py.File(path, mode, **kwargs)
    try:
        bound_metadata_cache(f)
    except BaseException:
        f.close()
        raise
    return f


@contextlib.contextmanager
def hdf5_output(final: str | Path, overwrite: bool = False, **kwargs):
    """Yield an ``h5py.File`` open for writing that becomes ``final`` when the block
    succeeds (see :func:`atomic_file`). A full disk or a file-size limit fails with one
    line naming ``final``; Ctrl-C and SIGTERM stop the write and leave nothing behind.
    Loops writing many pieces should call ``check_pending(f)`` now and then."""
    final = Path(final)
    with atomic_file(final, overwrite) as tmp, held_signals() as signals:
        with open(tmp, "r+b", buffering=0) as raw:
            sink = _GuardedFile(raw, signals)
            with open_h5(sink, "w", **kwargs) as f:
                f._gjp_signals = signals  # for check_pending
                yield f
            if sink.error is None and not signals.pending():
                try:
                    os.fsync(raw.fileno())
                except OSError as err:
                    sink.error = err
        if sink.error is not None and not signals.pending():
            raise GjpError(f"{final}: cannot write: {reason(sink.error)}; nothing was written")


def check_pending(f) -> None:
    """Inside :func:`hdf5_output`: stop now if Ctrl-C or SIGTERM arrived."""
    signals = getattr(f, "_gjp_signals", None)
    if signals is not None and signals.pending():
        raise _Stop()


class _Stop(Exception):
    """Unwinds an HDF5 write after a signal; ``held_signals`` then raises the signal."""


# --------------------------------------------------------------------------- reading
# Every input file is read through these, so that a missing, unreadable, non-UTF-8,
# truncated or malformed one is one line naming it, never a traceback.

def read_text(path: str | Path, what: str = "text file") -> str:
    """A UTF-8 text file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise GjpError(f"{path}: is a directory, not a {what}") from None
    except OSError as err:
        raise GjpError(f"{path}: cannot read the {what} ({reason(err)})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise GjpError(f"{path}: the {what} is not UTF-8 text (byte {err.start})") from None


def read_json(path: str | Path, what: str = "JSON file") -> dict:
    """A JSON document whose top level is an object."""
    return _json_object(read_text(path, what), lambda problem: f"{path}: the {what} is {problem}")


def json_metadata(raw: bytes | str | None, where: str | Path, what: str) -> dict:
    """JSON kept inside another file (Parquet key-value metadata, HDF5 attributes)."""
    if raw is None:
        return {}
    return _json_object(raw, lambda problem: f"{where}: damaged {what} metadata ({problem})")


def _json_object(text: bytes | str, message) -> dict:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise GjpError(message(f"not valid JSON: {err}")) from None
    if not isinstance(data, dict):
        raise GjpError(message("not a JSON object"))
    return data


def read_parquet(path: str | Path, what: str = "Parquet file", columns: list[str] | None = None):
    """A whole Parquet table (or some of its columns)."""
    return _parquet(path, what, lambda pq: pq.read_table(path, columns=columns))


def parquet_schema(path: str | Path, what: str = "Parquet file"):
    """The schema (with its key-value metadata) from a Parquet file's footer."""
    return _parquet(path, what, lambda pq: pq.read_schema(path))


def _parquet(path: str | Path, what: str, read):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise GjpError(f"{path}: no such file")
    try:
        return read(pq)
    except (OSError, pa.ArrowException) as err:
        raise GjpError(f"{path}: not a readable {what} (truncated or not Parquet: {first_line(err)})") from None


def first_line(err: BaseException) -> str:
    """An exception's message as one line (libraries often put a page in it)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def require_columns(table, path: str | Path, what: str, columns: dict) -> None:
    """Check that ``table`` has ``columns`` (name → predicate on its pyarrow type, or None)."""
    for name, accept in columns.items():
        if name not in table.column_names:
            raise GjpError(f"{path}: not a {what} (no column {name!r})")
        if accept is not None and not accept(table.schema.field(name).type):
            raise GjpError(f"{path}: not a {what} (column {name!r} has type {table.schema.field(name).type})")


def require_datasets(f, path: str | Path, what: str, names) -> None:
    """Check that an open HDF5 file has the datasets ``names``."""
    import h5py

    for name in names:
        if not isinstance(f.get(name), h5py.Dataset):
            raise GjpError(f"{path}: damaged {what}: no dataset {name!r} (make it again)")

def check_format(found_format, found_version, path: str | Path, fmt: str, version: int, what: str,
                 made_by: str) -> None:
    """The check every gjp file gets on read: its ``format`` and ``format_version``."""
    if isinstance(found_format, bytes):
        found_format = found_format.decode("utf-8", "replace")
    if found_format != fmt:
        raise GjpError(f"{path}: not a gjp {what} (format {found_format!r})")
    try:
        same = found_version is not None and int(found_version) == version
    except (TypeError, ValueError):
        same = False
    if not same:
        raise GjpError(f"{path}: {what} format version {found_version}, this gjp reads {version}; "
                       f"make it again with `{made_by}`")


def open_hdf5(path: str | Path, fmt: str, version: int, what: str, made_by: str):
    """Open a gjp HDF5 file read-only, checking that it exists, is HDF5, and carries the
    ``format`` and ``format_version`` attributes this gjp reads; clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise GjpError(f"{path}: no such file (make it with `{made_by}`)")
    if path.is_dir():
        raise GjpError(f"{path}: is a directory, not a {what}")
    try:
        f = open_h5(path, "r")
    except OSError as err:
        raise GjpError(f"{path}: not an HDF5 file, or a damaged one") from err
    try:
        check_format(f.attrs.get("format"), f.attrs.get("format_version"), path, fmt, version, what, made_by)
    except GjpError:
        f.close()
        raise
    return f


def hdf5_attr(f, key):
    """An HDF5 attribute as a plain Python value (bytes decoded, numpy scalars unwrapped);
    ``None`` when absent."""
    value = f.attrs.get(key)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value.item() if hasattr(value, "item") and getattr(value, "shape", None) == () else value
