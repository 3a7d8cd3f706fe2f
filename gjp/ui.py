"""Talking to the user: logs and progress bars on stderr, silenced by ``-q``.

Library functions take an optional :class:`Reporter`; from Python the default one is quiet.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass
class Reporter:
    quiet: bool = True

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def progress(self, iterable=None, *, total=None, desc: str = "", unit: str = "it", initial: int = 0):
        from tqdm import tqdm

        # disable=None: no bars when stderr is not a terminal (logs stay free of \r junk)
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True if self.quiet else None,
                    file=sys.stderr, leave=False, dynamic_ncols=True, initial=initial)


QUIET = Reporter(quiet=True)
