"""Reading a task directory (``tasks/NAME/`` from ``gjp mktask``), checked: its
``task.json``, its labels by split, the dataset a model may see for it; and the shared
``tasks/splits.csv``."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gjp.errors import GjpError
from gjp.io import check_format, read_json, read_parquet, read_text, require_columns

SPLITS = ("train", "val", "test")
#: ``task.json`` carries these.
FORMAT, FORMAT_VERSION = "gjp-task", 1
_INFO_KEYS = {"task": str, "masked": bool}


@dataclass
class Task:
    directory: Path
    info: dict
    splits: dict[str, tuple[list[str], np.ndarray]]   # split → (tiles, labels)

    @property
    def name(self) -> str:
        """``NAME`` or ``NAME-masked``."""
        return self.info["task"] + ("-masked" if self.info["masked"] else "")

    @property
    def clamp(self) -> tuple[float, float]:
        return tuple(self.info.get("clamp", (-math.inf, math.inf)))


def read_task_info(task_dir: str | Path) -> dict:
    task_dir = Path(task_dir)
    path = task_dir / "task.json"
    if not task_dir.is_dir() or not path.exists():
        raise GjpError(f"{task_dir}: not a task directory (no task.json; make one with `gjp mktask`)")
    info = read_json(path, "task description")
    check_format(info.get("format"), info.get("format_version"), path, FORMAT, FORMAT_VERSION, "task description",
                 "gjp mktask")
    for key, kind in _INFO_KEYS.items():
        if not isinstance(info.get(key), kind):
            raise GjpError(f"{path}: damaged task description (no {kind.__name__} {key!r})")
    clamp = info.get("clamp", [-math.inf, math.inf])
    if not (isinstance(clamp, list) and len(clamp) == 2 and all(isinstance(v, int | float) for v in clamp)):
        raise GjpError(f"{path}: damaged task description ('clamp' must be [low, high])")
    return info


def task_dataset(task_dir: str | Path) -> Path:
    """The dataset a model may see for a task (its masked inputs when masked)."""
    info = read_task_info(task_dir)
    if not isinstance(info.get("dataset"), str):
        raise GjpError(f"{Path(task_dir) / 'task.json'}: damaged task description (no 'dataset')")
    return (Path(task_dir) / info["dataset"]).resolve()


def read_task(task_dir: str | Path) -> Task:
    """The task with its labels; every label finite, every split known."""
    import pyarrow as pa

    task_dir = Path(task_dir)
    info = read_task_info(task_dir)
    path = task_dir / "labels.parquet"
    table = read_parquet(path, "label table")
    require_columns(table, path, "label table", {"tile": pa.types.is_string, "label": pa.types.is_floating,
                                                 "split": pa.types.is_string})
    tiles = table.column("tile").to_pylist()
    labels = table.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    split = np.asarray(table.column("split").to_pylist(), dtype=object)
    if not np.isfinite(labels).all():
        raise GjpError(f"{path}: {int((~np.isfinite(labels)).sum())} labels are not finite numbers")
    unknown = set(split.tolist()) - set(SPLITS)
    if unknown:
        raise GjpError(f"{path}: unknown split {sorted(unknown)[0]!r} (expected train, val or test)")
    splits = {}
    for name in SPLITS:
        rows = np.flatnonzero(split == name)
        splits[name] = ([tiles[i] for i in rows], labels[rows])
    return Task(task_dir, info, splits)


def read_splits(path: Path) -> dict[str, str]:
    """Group → split from a ``group,split`` table, checked."""
    reader = csv.DictReader(io.StringIO(read_text(path, "splits table"), newline=""))
    split_of = {}
    try:
        if reader.fieldnames != ["group", "split"]:
            raise GjpError(f"{path}: expected the columns group,split")
        for row in reader:
            if row["split"] not in SPLITS:
                raise GjpError(f"{path}: unknown split {row['split']!r} for group {row['group']}")
            split_of[row["group"]] = row["split"]
    except csv.Error as err:
        raise GjpError(f"{path}: not a CSV file ({err})") from None
    return split_of


def tile_split_names(dataset: str | Path, split_of: dict[str, str]) -> np.ndarray:
    """Each tile's split in a dataset file, by its group (``split_of``, from
    :func:`read_splits`); a group the table does not name is ``test``: held out, never
    trained on."""
    from gjp.dataset.format import decode, open_dataset

    with open_dataset(dataset) as f:
        groups = decode(f["tiles/group"][()])
    return np.array([split_of.get(g, "test") for g in groups], dtype=object)
