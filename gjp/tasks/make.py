"""``gjp mktask``: per-tile labels from a task spec, splits, pruning, statistics, and (for
the masked variant) the inputs with the defining tags removed.

Labels are computed from the raw tags of ``dataset.h5`` (not the vocabulary, which may fold
rare values such as ``maxspeed=30 mph`` into ``maxspeed=*``). The train/val/test split is
by group tile (zoom − 2), 80/10/10, drawn once with the seed and stored in
``tasks/splits.csv``, which every task then reuses. Zero-label tiles are kept with the
spec's ``keep_zero`` probability, decided per tile by a hash of (seed, tile), so the masked
and unmasked variants of a task keep the same tiles.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gjp import __version__
from gjp.dataset.format import decode, open_dataset, read_vocabulary
from gjp.dataset.tags import RawTags, raw_tag_blocks
from gjp.errors import GjpError
from gjp.io import atomic_directory, atomic_file, check_output_free, command_line, write_json
from gjp.kinds import KINDS
from gjp.tasks.files import FORMAT as TASK_FORMAT
from gjp.tasks.files import FORMAT_VERSION as TASK_VERSION
from gjp.tasks.files import SPLITS, read_splits
from gjp.tasks.spec import TaskSpec
from gjp.tasks.speed import parse_number, parse_speed
from gjp.ui import QUIET, Reporter

FRACTIONS = (0.8, 0.1, 0.1)
LABELS_SCHEMA = pa.schema([("tile", pa.string()), ("group", pa.string()), ("label", pa.float64()),
                           ("split", pa.string())])


@dataclass
class TaskReport:
    name: str = ""
    tiles: int = 0
    labelled: int = 0
    dropped_unparsed: int = 0
    dropped_missing: int = 0
    pruned_zero: int = 0
    kept: int = 0
    masked_tags: int = 0
    dropped_entities: int = 0

    def summary(self) -> str:
        text = (f"{self.name}: {self.kept} tiles labelled ({self.pruned_zero} zero-label tiles pruned, "
                f"{self.dropped_unparsed + self.dropped_missing} without a label dropped, of {self.tiles})")
        if self.masked_tags:
            text += f"; masked {self.masked_tags} tags, dropping {self.dropped_entities} entities left without tags"
        return text


# --------------------------------------------------------------------------- reading

def matching_entities(spec: TaskSpec, tags: RawTags) -> np.ndarray:
    matched = np.zeros(len(tags.kind), dtype=bool)
    for alternative in spec.match:
        ok = np.ones(len(tags.kind), dtype=bool)
        for key, allowed in alternative.items():
            ok &= tags.entities_with(tags.tags_where(key, allowed))
        matched |= ok
    for key, allowed in spec.unless.items():
        matched &= ~tags.entities_with(tags.tags_where(key, allowed))
    if spec.kinds is not None:
        codes = [KINDS.index(k) for k in spec.kinds]
        matched &= np.isin(tags.kind, codes)
    return matched


def tile_labels(spec: TaskSpec, tags: RawTags) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(labels [N] float64, labelled [N] bool, counts)``: tiles without a label (rule
    ``max``: no readable value, or no match and no ``missing``) are not labelled."""
    n = len(tags.tile_names)
    matched = matching_entities(spec, tags)
    per_tile = np.bincount(tags.tile_of_entity[matched], minlength=n)
    counts = {"dropped_unparsed": 0, "dropped_missing": 0}
    if spec.rule == "count":
        return per_tile.astype(np.float64), np.ones(n, dtype=bool), counts
    if spec.rule == "any":
        return (per_tile > 0).astype(np.float64), np.ones(n, dtype=bool), counts
    number = tags.strings.numbers(parse_speed if spec.value_parse == "speed" else parse_number)
    value_tags = tags.tags_where(spec.value_key, None) & matched[tags.entity_of_tag]
    values = number[tags.value_ids[value_tags]]
    tiles = tags.tile_of_entity[tags.entity_of_tag[value_tags]]
    best = np.full(n, -np.inf)
    readable = ~np.isnan(values)
    np.maximum.at(best, tiles[readable], values[readable])
    labels = best.copy()
    labelled = np.isfinite(best)
    no_match = per_tile == 0
    if spec.missing is not None:
        labels[no_match] = spec.missing
        labelled |= no_match
    else:
        counts["dropped_missing"] = int(no_match.sum())
    unparsed = ~no_match & ~np.isfinite(best)
    if spec.drop_unparsed:
        counts["dropped_unparsed"] = int(unparsed.sum())
    elif spec.missing is not None:
        labels[unparsed] = spec.missing
        labelled |= unparsed
    return labels, labelled, counts


# --------------------------------------------------------------------------- splits

def load_or_make_splits(path: Path, groups: list[str], seed: int,
                        fractions: tuple[float, float, float] = FRACTIONS) -> tuple[dict[str, str], bool]:
    """Group → split, from ``path`` when it exists (groups it lacks are added by a seeded
    hash), else a seeded permutation of the groups cut at ``fractions`` (train, val, test;
    80/10/10 unless told); and whether ``path`` must be (re)written with
    :func:`write_splits` (the caller does so once its own output is safe)."""
    existing = read_splits(path) if path.exists() else {}
    unique = sorted(set(groups))
    missing = [g for g in unique if g not in existing]
    if not missing:
        return existing, False
    if not existing:
        order = np.random.default_rng(seed).permutation(len(unique))
        n_train = int(round(fractions[0] * len(unique)))
        n_val = int(round(fractions[1] * len(unique)))
        if len(unique) >= 3:
            n_train = min(n_train, len(unique) - 2)
            n_val = max(n_val, 1)
        for rank, i in enumerate(order):
            existing[unique[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    else:
        for g in missing:
            u = _unit(seed, "split", g)
            existing[g] = "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"
    return existing, True


def write_splits(path: Path, split_of: dict[str, str]) -> None:
    """The group → split table, replacing the one it extends."""
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "split"])
        for g in sorted(split_of):
            writer.writerow([g, split_of[g]])


def _unit(seed: int, purpose: str, name: str) -> float:
    """A reproducible number in [0, 1) for (seed, purpose, name)."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --------------------------------------------------------------------------- the step

def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.6,0.2,0.2"`` → the train, val and test shares of the groups (they sum to 1,
    and each split gets some)."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise GjpError(f"--fractions {text!r}: give three positive shares TRAIN,VAL,TEST that sum to 1 "
                       "(e.g. 0.6,0.2,0.2)")
    return parts


def make_task(spec: TaskSpec, dataset: str | Path = "dataset.h5", output: str | Path | None = None, *,
              masked: bool = False, seed: int = 0, splits: str | Path | None = None,
              fractions: tuple[float, float, float] = FRACTIONS,
              overwrite: bool = False, reporter: Reporter = QUIET) -> TaskReport:
    """``gjp mktask``: write ``tasks/NAME[-masked]/`` (see the module doc and
    docs/FORMATS.md). ``fractions`` (train, val, test) cut the groups when the splits
    table is made; an existing table is kept as it is (every task shares it)."""
    dataset = Path(dataset)
    name = spec.name + ("-masked" if masked else "")
    output = Path(output) if output is not None else Path("tasks") / name
    splits = Path(splits) if splits is not None else output.parent / "splits.csv"
    check_output_free(output, overwrite, directory=True)
    with open_dataset(dataset) as f:
        split_of, splits_changed = load_or_make_splits(splits, _groups(f), seed, fractions)
        report = TaskReport(name=name, tiles=len(f["tiles/name"]))
        task_info = {"format": TASK_FORMAT, "format_version": TASK_VERSION,
                     "task": spec.name, "masked": masked, "rule": spec.rule, "clamp": list(spec.clamp),
                     "seed": seed, "gjp_version": __version__, "command": command_line(),
                     "source_dataset": str(dataset.resolve()), "splits": str(splits)}
        previous_splits = splits.read_bytes() if splits_changed and splits.exists() else None
        splits_written = False
        try:
            with atomic_directory(output, overwrite) as staging:
                kept, labels, split = _write_labels(spec, f, staging / "labels.parquet", split_of, seed, report,
                                                    reporter)
                if report.kept == 0:
                    raise GjpError(f"{dataset}: task {spec.name}: no tile gets a label (nothing matches?)")
                distinct = np.unique(labels)
                if len(distinct) == 1:
                    raise GjpError(f"{dataset}: task {spec.name}: every tile gets the label {distinct[0]:g}, "
                                   "nothing to learn (does the spec match any entity here?)")
                stats = task_stats(spec, labels, split, report, masked, seed)
                if masked:
                    masked_counts = write_masked_dataset(spec, dataset, staging / "dataset.h5", kept, reporter)
                    report.masked_tags, report.dropped_entities = masked_counts
                    stats["masked"] = {"tags_removed": report.masked_tags,
                                       "entities_dropped": report.dropped_entities}
                    task_info["dataset"] = "dataset.h5"
                else:
                    task_info["dataset"] = os.path.relpath(dataset.resolve(), output.resolve().parent / output.name)
                (staging / "spec.toml").write_text(spec.source, encoding="utf-8")
                write_json(staging / "stats.json", stats)
                write_json(staging / "task.json", task_info)
                if splits_changed:  # the shared table last, and undone below if publishing fails
                    write_splits(splits, split_of)
                    splits_written = True
        except BaseException:
            if splits_written:
                _restore(splits, previous_splits)
            raise
    return report


def _groups(f, block: int = 1 << 20) -> list[str]:
    """The distinct groups of an open dataset, read a block at a time."""
    groups: set[bytes] = set()
    column = f["tiles/group"]
    for start in range(0, len(column), block):
        groups.update(np.unique(column[start:start + block]).tolist())
    return sorted(g.decode() for g in groups)


def _write_labels(spec: TaskSpec, f, path: Path, split_of: dict[str, str], seed: int, report: TaskReport,
                  reporter: Reporter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label the tiles a block at a time, prune zero labels, and write ``labels.parquet``
    as it goes. Returns the kept tiles' indices, labels and split codes (indices into
    :data:`SPLITS`): the 17 bytes a tile that the statistics and the masked inputs need."""
    kept, labels, splits = [], [], []
    code = {s: np.uint8(i) for i, s in enumerate(SPLITS)}
    bar = reporter.progress(total=report.tiles, desc=f"labelling {spec.name}", unit=" tile")
    with pq.ParquetWriter(path, LABELS_SCHEMA) as writer:
        for tags in raw_tag_blocks(f):
            block_labels, labelled, counts = tile_labels(spec, tags)
            report.dropped_unparsed += counts["dropped_unparsed"]
            report.dropped_missing += counts["dropped_missing"]
            block_labels = np.clip(block_labels, *spec.clamp)
            zero = labelled & (block_labels == 0)
            keep = labelled.copy()
            for i in np.flatnonzero(zero):
                keep[i] = _unit(seed, f"keep:{spec.name}", tags.tile_names[i]) < spec.keep_zero
            report.labelled += int(labelled.sum())
            report.pruned_zero += int((zero & ~keep).sum())
            rows = np.flatnonzero(keep)
            report.kept += len(rows)
            block_split = [split_of[tags.groups[i]] for i in rows]
            if len(rows):
                writer.write_table(pa.table({"tile": [tags.tile_names[i] for i in rows],
                                             "group": [tags.groups[i] for i in rows],
                                             "label": block_labels[rows], "split": block_split},
                                            schema=LABELS_SCHEMA))
            kept.append(rows + tags.start)
            labels.append(block_labels[rows])
            splits.append(np.array([code[s] for s in block_split], dtype=np.uint8))
            bar.update(len(tags.tile_names))
    bar.close()
    if not kept:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.uint8)
    return np.concatenate(kept), np.concatenate(labels), np.concatenate(splits)


def _restore(path: Path, content: bytes | None) -> None:
    """Put a file back as it was (``None``: absent)."""
    if content is None:
        path.unlink(missing_ok=True)
    else:
        with atomic_file(path, overwrite=True) as tmp:
            tmp.write_bytes(content)


def task_stats(spec: TaskSpec, labels: np.ndarray, split: np.ndarray, report: TaskReport, masked: bool,
               seed: int) -> dict:
    """``split`` holds indices into :data:`SPLITS`."""
    labels = np.asarray(labels, dtype=np.float64)
    train = labels[split == SPLITS.index("train")]
    median = float(np.median(train)) if len(train) else float(np.median(labels))
    per_split = {}
    for i, name in enumerate(SPLITS):
        y = labels[split == i]
        per_split[name] = {
            "n": int(len(y)),
            "mean": float(y.mean()) if len(y) else None, "std": float(y.std()) if len(y) else None,
            "min": float(y.min()) if len(y) else None, "max": float(y.max()) if len(y) else None,
            "zero_fraction": float((y == 0).mean()) if len(y) else None,
            "dummy_mae": float(np.abs(y - median).mean()) if len(y) else None,
        }
    distinct, counts = np.unique(labels, return_counts=True)
    if len(distinct) <= 30:
        distribution = {_label_text(k): int(v) for k, v in zip(distinct.tolist(), counts.tolist())}
    else:
        qs = (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)
        distribution = {f"q{int(q * 100)}": float(np.quantile(labels, q)) for q in qs}
    return {"task": spec.name, "masked": masked, "rule": spec.rule, "seed": seed,
            "tiles": {"in_dataset": report.tiles, "labelled": report.labelled,
                      "dropped_unparsed": report.dropped_unparsed, "dropped_missing": report.dropped_missing,
                      "pruned_zero": report.pruned_zero, "kept": report.kept},
            "dummy": {"prediction": median, "rule": "median of the train labels"},
            "splits": per_split, "distribution": distribution}


def _label_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- masked inputs

def write_masked_dataset(spec: TaskSpec, source: Path, output: Path, tiles: np.ndarray,
                         reporter: Reporter = QUIET) -> tuple[int, int]:
    """The task's tiles of ``source`` without the tags ``spec.mask`` names (relation tags
    too: they are entity tags like any other), dropping entities left without tags. Same
    format and vocabulary, so every later step reads it unchanged. Returns the tags
    removed and the entities dropped."""
    from gjp.dataset.subset import subset_dataset

    with open_dataset(source) as f:
        keys, values = decode(f["strings/keys"][()]), decode(f["strings/values"][()])
    removed_pair: dict[int, bool] = {}  # key id × values + value id → masked? (each pair asked once)

    def keep_tags(key_ids: np.ndarray, value_ids: np.ndarray) -> np.ndarray:
        pairs = key_ids.astype(np.int64) * len(values) + value_ids
        unique, inverse = np.unique(pairs, return_inverse=True)
        for p in unique.tolist():
            if p not in removed_pair:
                removed_pair[p] = spec.masks(keys[p // len(values)], values[p % len(values)])
        removed = np.array([removed_pair[p] for p in unique.tolist()], dtype=bool)
        return ~removed[inverse.reshape(-1)]

    vocab = read_vocabulary(source)
    extra = {"masked_task": spec.name, "mask": json.dumps(list(spec.mask))}
    return subset_dataset(source, output, tiles, keep_tags, vocab, extra, reporter)
