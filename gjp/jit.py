"""``njit``: numba's ``njit`` with an on-disk cache that never stops gjp from running.

numba's own ``cache=True`` raises ``cannot cache function`` at decoration (so at import)
when neither the package's ``__pycache__`` nor the user's cache directory is writable: a
user with a read-only HOME could not run ``gjp tile``. Every kernel module decorates with
:func:`njit` instead, which picks, once per source directory, the first that works of:

1. ``$NUMBA_CACHE_DIR`` (under numba's own sub-path for the source directory), if writable;
2. the install's cache, the ``__pycache__`` beside the kernels (``make install`` fills it,
   see :mod:`gjp.geometry.warm`): if writable, or read-only but already warmed;
3. ``$XDG_CACHE_HOME/gjp/numba`` or ``~/.cache/gjp/numba``, if writable;
4. ``<tempdir>/gjp-numba-<uid>``, if this user owns it and no one else can write it;
5. no cache: the kernels are compiled in memory on every run.

A cache that turns out unreadable or unwritable later (a full disk, a corrupt file) is
treated as a miss: the kernel is compiled and the error is not raised.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numba


@dataclass(frozen=True)
class CacheDir:
    """Where a source directory's kernels are cached: ``path`` (None: not cached),
    whether new compilations may be saved there, and which rule chose it."""

    path: str | None
    writable: bool
    source: str


def _subpath(source_dir: str) -> str:
    # numba's layout under NUMBA_CACHE_DIR: one directory per source directory, so that
    # two installs (two checkouts) never overwrite each other's index files
    return f"{os.path.basename(source_dir)}_{hashlib.sha1(source_dir.encode()).hexdigest()}"


def _source_dir(py_file: str) -> str:
    return os.path.dirname(os.path.abspath(py_file))


def choose_cache_dir(source_dir: str, env: Mapping[str, str], uid: int, tempdir: str | None, *,
                     writable: Callable[[str], bool], warmed: Callable[[str], bool],
                     private: Callable[[str], bool]) -> CacheDir:
    """The cache rule chain of the module doc, as a pure function of its inputs.
    ``writable(path)``: path can be created and written; ``warmed(path)``: it is readable
    and holds cached kernels; ``private(path)``: it is owned by this user, writable by no
    one else (a shared temp directory must not let another user plant code)."""
    sub = _subpath(source_dir)
    if env.get("NUMBA_CACHE_DIR"):
        path = os.path.join(env["NUMBA_CACHE_DIR"], sub)
        if writable(path):
            return CacheDir(path, True, "NUMBA_CACHE_DIR")
    install = os.path.join(source_dir, "__pycache__")
    if writable(install):
        return CacheDir(install, True, "install")
    if warmed(install):
        return CacheDir(install, False, "install (read-only)")
    base = env.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # unset, or relative: the XDG spec says to ignore it
        base = os.path.join(env["HOME"], ".cache") if env.get("HOME") else ""
    if os.path.isabs(base):
        path = os.path.join(base, "gjp", "numba", sub)
        if writable(path):
            return CacheDir(path, True, "user")
    if tempdir:
        root = os.path.join(tempdir, f"gjp-numba-{uid}")
        if writable(root) and private(root):
            path = os.path.join(root, sub)
            if writable(path):
                return CacheDir(path, True, "temp")
    return CacheDir(None, False, "off")


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # as numba checks: access() misleads on NFS, ACLs
        return True
    except OSError:
        return False


def _warmed(path: str) -> bool:
    try:
        return any(name.endswith(".nbi") for name in os.listdir(path))  # not access(): it ignores capabilities
    except OSError:
        return False


def _private(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _tempdir() -> str | None:
    try:
        return tempfile.gettempdir()
    except OSError:  # no usable temp directory at all
        return None


@functools.cache
def cache_dir(source_dir: str) -> CacheDir:
    """The cache chosen for the kernels of ``source_dir`` (once per process)."""
    return choose_cache_dir(source_dir, os.environ, os.getuid(), _tempdir(),
                            writable=_writable, warmed=_warmed, private=_private)


def _cache_class():
    from numba.core import caching

    class Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """numba's locator, pointed at the chosen directory. Unlike numba's own it does not
        demand a writable directory up front: a warmed read-only one is fine."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_dir = cache_dir(_source_dir(py_file))

        def get_cache_path(self):
            return self._cache_dir.path

        def ensure_cache_path(self):  # called before each save
            if not self._cache_dir.writable:
                raise PermissionError(f"{self._cache_dir.path} is read-only")
            super().ensure_cache_path()

        @classmethod
        def from_function(cls, py_func, py_file):
            return cls(py_func, py_file)

    class Impl(caching.CompileResultCacheImpl):
        _locator_classes = [Locator]

    class Cache(caching.FunctionCache):
        _impl_class = Impl

        def load_overload(self, sig, target_context):
            try:
                return super().load_overload(sig, target_context)
            except Exception:  # unreadable or corrupt: compile instead
                return None

        def save_overload(self, sig, data):
            try:
                super().save_overload(sig, data)
            except Exception:  # read-only or full: the compiled kernel is used unsaved
                pass

    return Cache


_CACHE_CLASS = None


def njit(**options):
    """``numba.njit(**options)`` with the cache of the module doc (``cache`` is implied)."""

    def decorate(fn):
        global _CACHE_CLASS
        dispatcher = numba.njit(**options)(fn)
        if cache_dir(_source_dir(fn.__code__.co_filename)).path is None:
            return dispatcher
        try:
            if _CACHE_CLASS is None:
                _CACHE_CLASS = _cache_class()
            # what Dispatcher.enable_caching does, with the cache class above
            dispatcher._cache = _CACHE_CLASS(fn)
        except Exception:  # numba's internals moved: run uncached rather than not at all
            pass
        return dispatcher

    return decorate
