"""``gjp info``: what is in any gjp output, in a few lines: tile-group files or
directories, ``images/``, ``dataset.h5``, a task directory, a tag-embeddings file, an
embeddings file, a result file or a results directory. The kind is told by content (the
``format`` an HDF5 file records), not by name alone."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from gjp import grid
from gjp.errors import GjpError
from gjp.geoparquet import GROUP_FILE, check_group_file, list_group_files
from gjp.io import open_h5, parquet_schema, read_json, read_parquet

_COLUMNS = ["tile", "osm_type", "kind", "tags"]


def summarize_tiles(path: str | Path) -> dict:
    """Counts over a directory of group files (or one file): tiles, entities by kind,
    tags, tile sizes, and the graph when ``gjp visibility`` has run."""
    path = Path(path)
    if not path.exists():
        raise GjpError(f"{path}: no such file or directory")
    if path.is_file():
        if not GROUP_FILE.match(path.name):
            raise GjpError(f"{path}: not a tile group file (14_X_Y.parquet)")
        files = [path]
    else:
        files = list_group_files(path)
    meta = check_group_file(files[0])
    zoom = int(meta["zoom"])
    names = parquet_schema(files[0], "tile group file").names
    graph = "visibility_edges" in names
    kinds, types, keys = Counter(), Counter(), Counter()
    per_tile: Counter = Counter()
    n_tags = vertices = geometry_edges = visibility_edges = multipart = 0
    rows = 0
    for f in files:
        check_group_file(f)
        t = read_parquet(f, "tile group file",
                         _COLUMNS + (["vertex_part", "geometry_edges", "visibility_edges"] if graph else []))
        rows += t.num_rows
        kinds.update(t.column("kind").to_pylist())
        types.update(t.column("osm_type").to_pylist())
        per_tile.update(t.column("tile").to_pylist())
        tag_keys = t.column("tags").combine_chunks().keys
        n_tags += len(tag_keys)
        keys.update(tag_keys.to_pylist())
        if graph:
            vertices += len(pc.list_flatten(t.column("vertex_part")))
            geometry_edges += len(pc.list_flatten(t.column("geometry_edges")))
            visibility_edges += len(pc.list_flatten(t.column("visibility_edges")))
            multipart += sum(1 for parts in t.column("vertex_part").to_pylist() if len(set(parts)) > 1)
    counts = np.array(list(per_tile.values()))
    ys = np.array([grid.parse_tile_name(name)[2] for name in per_tile])
    widths = grid.tile_width_m(ys, zoom)
    summary = {
        "path": str(path), "zoom": zoom, "steps": [s["step"] for s in meta.get("steps", [])],
        "group_files": len(files), "tiles": len(per_tile), "entities": rows,
        "entities_per_tile": [int(counts.min()), float(np.median(counts)), int(counts.max())],
        "kinds": dict(sorted(kinds.items())), "osm_types": dict(sorted(types.items())),
        "tags": n_tags, "distinct_keys": len(keys), "top_keys": keys.most_common(8),
        "tile_width_m": [float(widths.min()), float(widths.max())],
    }
    if graph:
        summary.update(vertices=vertices, geometry_edges=geometry_edges,
                       visibility_edges=visibility_edges, multipart_entities=multipart)
    return summary


def format_summary(s: dict) -> str:
    lo, med, hi = s["entities_per_tile"]
    lines = [
        f"{s['path']}: gjp tile groups at zoom {s['zoom']} (steps: {', '.join(s['steps'])})",
        f"  {s['tiles']} tiles in {s['group_files']} group files; z{s['zoom']} tiles here are "
        f"{s['tile_width_m'][0]:.0f}–{s['tile_width_m'][1]:.0f} m wide",
        f"  {s['entities']} entities ({lo}/{med:g}/{hi} per tile, min/median/max): "
        + ", ".join(f"{n} {k}" for k, n in s["kinds"].items()),
        f"  {s['tags']} tags, {s['distinct_keys']} distinct keys; most common: "
        + ", ".join(f"{k} ({n})" for k, n in s["top_keys"]),
    ]
    if "vertices" in s:
        lines.append(f"  graphs: {s['vertices']} vertices, {s['geometry_edges']} geometry edges, "
                     f"{s['visibility_edges']} visibility edges in {s['multipart_entities']} multi-part entities")
    return "\n".join(lines)


def summarize(path: str | Path) -> tuple[str, dict]:
    """``(kind, summary)`` for any gjp output; :func:`format_any` prints it."""
    path = Path(path)
    if not path.exists():
        raise GjpError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "config.json").exists() and ((path / "model.pt").exists() or (path / "checkpoint.pt").exists()):
            from gjp.pretrain.runs import summarize_run

            return "run", summarize_run(path)
        if (path / "task.json").exists():
            return "task", summarize_task(path)
        if (path / "index.parquet").exists():
            return "images", summarize_images(path)
        if not any(GROUP_FILE.match(p.name) for p in path.iterdir()) and any(path.glob("*.json")):
            return "results", summarize_results(sorted(path.glob("*.json")), path)
        return "tiles", summarize_tiles(path)
    if path.suffix in (".h5", ".hdf5"):
        fmt = _hdf5_format(path)
        if fmt == "gjp-embeddings":
            return "embeddings", summarize_embeddings(path)
        if fmt == "gjp-image-tokens":
            return "image-tokens", summarize_image_tokens(path)
        if fmt == "gjp-geometry-tokens":
            from gjp.dataset.geometry_tokens import GeometryTokenFile

            tokens = GeometryTokenFile(path)  # checks the file
            return "geometry-tokens", {"path": str(path), "entities": tokens.entities, "dim": tokens.dim,
                                       "encoder": tokens.attrs.get("encoder"), "dataset": tokens.attrs.get("dataset"),
                                       "sha256": tokens.attrs.get("encoder_sha256")}
        return "dataset", summarize_dataset(path)
    if path.suffix == ".json":
        return "results", summarize_results([path], path)
    if path.name == "index.parquet":
        return "images", summarize_images(path.parent)
    if path.suffix == ".parquet" and not GROUP_FILE.match(path.name):
        return "tag-embeddings", summarize_tag_embeddings(path)
    return "tiles", summarize_tiles(path)


def _hdf5_format(path: Path) -> str | None:
    try:
        with open_h5(path, "r") as f:
            found = f.attrs.get("format")
    except OSError:
        return None  # the dataset reader says what is wrong with it
    return found.decode() if isinstance(found, bytes) else found


def format_any(kind: str, s: dict) -> str:
    if kind == "tiles":
        return format_summary(s)
    if kind == "embeddings":
        text = (f"{s['path']}: {s['tiles']} tile embeddings of {s['dim']} dims from {s['model']}"
                + (f" (inputs of task {s['task']})" if s["task"] else "") + f"; dataset {s['dataset']}")
        if s["entities"]:
            text += f"\n  {s['entities']} entity embeddings of {s['entity_dim']} dims"
        return text + f"\n  vector norms {s['norm'][0]:.3g}/{s['norm'][1]:.3g}/{s['norm'][2]:.3g} (min/median/max)"
    if kind == "image-tokens":
        return (f"{s['path']}: image tokens of {s['backbone']} ({s['grid']}×{s['grid']} patches + 1 global, "
                f"{s['dim']} dims) for {s['images']} of the {s['tiles']} tiles of {s['dataset']}; weights "
                f"{s['weights'][:16]}; {s['valid_patches']:.0%} of the patch tokens valid")
    if kind == "geometry-tokens":
        return (f"{s['path']}: geometry tokens ({s['dim']} dims) of the {s['entities']} entities of {s['dataset']}, "
                f"from the encoder of {s['encoder']} (model.pt sha256 {s['sha256'][:12]})")
    if kind == "run":
        from gjp.pretrain.runs import format_run

        return format_run(s)
    if kind == "results":
        return "\n".join([f"{s['path']}: {len(s['results'])} results"]
                         + [f"  {r['file']}: {r['text']}" for r in s["results"]])
    if kind == "images":
        return (f"{s['path']}: {s['chips']} image chips of {s['size']}×{s['size']} px at zoom {s['zoom']} "
                f"(≈ {s['resolution_m']:.2f} m/px); {s['full']} fully covered, mean coverage "
                f"{s['mean_valid']:.0%}; from {s['sources']} rasters; acquired {', '.join(s['acquired']) or 'unknown'}")
    if kind == "dataset":
        lines = [f"{s['path']}: gjp dataset (format {s['format_version']}, zoom {s['zoom']})"
                 + (f", inputs of masked task {s['masked_task']}" if s.get("masked_task") else ""),
                 f"  {s['tiles']} tiles in {s['groups']} groups; {s['entities']} entities "
                 f"({s['entities_per_tile'][0]}/{s['entities_per_tile'][1]:g}/{s['entities_per_tile'][2]} per tile)",
                 f"  modalities: tags ({s['tags']} tags, vocabulary {s['vocabulary']}, {s['unknown_tags']} unknown), "
                 f"geometry ({s['nodes']} nodes, {s['geometry_edges']} + {s['visibility_edges']} edges), "
                 f"images ({s['images']} tiles)",
                 "  most common tags: " + ", ".join(f"{t} ({n})" for t, n in s["top_tags"])]
        return "\n".join(lines)
    if kind == "task":
        lines = [f"{s['path']}: task {s['task']}{' (masked inputs)' if s['masked'] else ''}, rule {s['rule']}, "
                 f"{s['tiles']['kept']} tiles ({s['tiles']['pruned_zero']} zero-label pruned, "
                 f"{s['tiles']['dropped_unparsed'] + s['tiles']['dropped_missing']} unlabelled dropped)"]
        for name in ("train", "val", "test"):
            split = s["splits"][name]
            if split["n"]:
                lines.append(f"  {name}: {split['n']} tiles, label mean {split['mean']:.2f} ± {split['std']:.2f}, "
                             f"zero {split['zero_fraction']:.0%}, dummy MAE {split['dummy_mae']:.3f}")
        items = sorted(s["distribution"].items(), key=lambda kv: float(kv[0].lstrip("q")))
        lines.append("  labels: " + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}"
                                          for k, v in items))
        return "\n".join(lines)
    return (f"{s['path']}: {s['entries']} tag embeddings of {s['dim']} dims from {s['model']} "
            f"({s['described']} with a description)")


def summarize_images(directory: Path) -> dict:
    from gjp.imagery.chips import read_index_metadata

    meta = read_index_metadata(directory)
    rows = read_parquet(directory / "index.parquet", "image index").to_pylist()
    return {"path": str(directory), "zoom": meta.get("zoom"), "size": meta.get("size"), "chips": len(rows),
            "full": sum(r["valid_fraction"] == 1.0 for r in rows),
            "mean_valid": float(np.mean([r["valid_fraction"] for r in rows])) if rows else 0.0,
            "resolution_m": float(np.mean([r["resolution_m"] for r in rows])) if rows else 0.0,
            "sources": len({src for r in rows for src in r["sources"]}),
            "acquired": sorted({r["acquired"] for r in rows if r["acquired"]})}


def summarize_dataset(path: Path) -> dict:
    from gjp.dataset.format import decode, open_dataset

    with open_dataset(path) as f:
        offsets = f["tiles/entity_offsets"][()]
        counts = np.diff(offsets)
        tag_ids = f["entities/tag_ids"][()]
        vocab = decode(f["vocab/tags"][()])
        top = np.bincount(tag_ids, minlength=len(vocab))
        order = np.argsort(-top, kind="stable")[:8]
        return {"path": str(path), "format_version": int(f.attrs["format_version"]), "zoom": int(f.attrs["zoom"]),
                "masked_task": f.attrs.get("masked_task"),
                "tiles": int(len(counts)), "groups": int(len(set(f["tiles/group"][()]))),
                "entities": int(offsets[-1]),
                "entities_per_tile": [int(counts.min()), float(np.median(counts)), int(counts.max())] if len(counts) else [0, 0, 0],
                "tags": int(len(tag_ids)), "vocabulary": len(vocab), "unknown_tags": int((tag_ids == 0).sum()),
                "nodes": int(len(f["graph/nodes"])), "geometry_edges": int(len(f["graph/geometry_edges"])),
                "visibility_edges": int(len(f["graph/visibility_edges"])),
                "images": int(f["images/has_image"][()].sum()) if "images" in f else 0,
                "top_tags": [(vocab[i], int(top[i])) for i in order if top[i]]}


def summarize_task(directory: Path) -> dict:
    from gjp.tasks.files import read_task_info

    read_task_info(directory)
    path = directory / "stats.json"
    stats = read_json(path, "task statistics")
    # "masked" is a bool, or for masked inputs what the masking removed
    for key, kind in (("task", str), ("masked", bool | dict), ("rule", str), ("tiles", dict), ("splits", dict),
                      ("distribution", dict)):
        if not isinstance(stats.get(key), kind):
            raise GjpError(f"{path}: damaged task statistics (no {key!r})")
    return {"path": str(directory), **stats}


def summarize_embeddings(path: Path) -> dict:
    from gjp.embeddings import read_embeddings

    emb = read_embeddings(path)
    entities = None
    with contextlib.suppress(GjpError):
        entities = read_embeddings(path, entities=True).entity_vectors
    norms = np.linalg.norm(emb.vectors, axis=1)
    return {"path": str(path), "model": emb.model, "tiles": len(emb.names), "dim": int(emb.vectors.shape[1]),
            "task": emb.attrs.get("task") or None, "dataset": emb.attrs.get("dataset"),
            "entities": 0 if entities is None else int(len(entities)),
            "entity_dim": 0 if entities is None else int(entities.shape[1]),
            "norm": [float(norms.min()), float(np.median(norms)), float(norms.max())] if len(norms) else [0, 0, 0]}


def summarize_image_tokens(path: Path) -> dict:

    from gjp.dataset.image_tokens import ImageTokenFile

    tokens = ImageTokenFile(path)  # checks the file
    with open_h5(path, "r") as f:
        valid = f["valid"][()]
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return {"path": str(path), "backbone": tokens.backbone, "grid": tokens.grid, "dim": tokens.dim,
            "tiles": len(tokens), "images": int((tokens.rows >= 0).sum()), "dataset": str(attrs.get("dataset")),
            "weights": str(attrs.get("weights")),
            "valid_patches": float(valid[:, :-1].mean()) if valid.size else 0.0}


def summarize_results(paths: list[Path], where: Path) -> dict:
    from gjp.evaluate.score import load_results

    if not paths:
        raise GjpError(f"{where}: no result files")
    out = []
    for path in paths:
        probes, retrieval = load_results([path])
        if probes:
            p = probes[0]
            text = (f"{p['model']} on {p['task']} ({p['head']}): test MAE {p['test_mae_mean']:.4g} ± "
                    f"{p['test_mae_sd']:.2g} over {len(p.get('seeds', []))} seeds (dummy {p['dummy']['test_mae']:.4g})")
        else:
            r = retrieval[0]
            text = f"{r['model']} retrieval: precision@{r.get('k', '?')} {r['precision_mean']:.3f}"
        out.append({"file": path.name, "text": text})
    return {"path": str(where), "results": out}


def summarize_tag_embeddings(path: Path) -> dict:
    from gjp.tag_embeddings import read_tag_embeddings

    tags, vectors, meta = read_tag_embeddings(path)
    texts = read_parquet(path, "tag-embeddings file", ["text"]).column("text").to_pylist()
    return {"path": str(path), "entries": len(tags), "dim": int(vectors.shape[1]), "model": meta.get("model"),
            "described": sum(t.startswith(tag + ": ") for tag, t in zip(tags, texts))}
