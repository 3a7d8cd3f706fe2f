"""``gjp embed``: run an embedding model over a dataset (or a task's inputs) and write
``embeddings/NAME.h5``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gjp.embedders.baselines import EMBEDDERS
from gjp.embeddings import EmbeddingsWriter
from gjp.errors import GjpError
from gjp.io import check_output_free, hdf5_output
from gjp.tasks.files import task_dataset
from gjp.ui import QUIET, Reporter


@dataclass
class EmbedStepReport:
    tiles: int
    dim: int
    skipped: int
    output: Path
    model: str = ""

    def summary(self) -> str:
        text = f"{self.model}: {self.tiles} tile embeddings of {self.dim} dims -> {self.output}"
        return text + (f" ({self.skipped} tiles without an image skipped)" if self.skipped else "")


def task_inputs(task_dir: str | Path) -> tuple[Path, str]:
    """The dataset a task lets a model see, and the task directory's name."""
    return task_dataset(task_dir), Path(task_dir).name


def default_output(model: str, task: str | None) -> Path:
    return Path("embeddings") / (f"{model}__{task}.h5" if task else f"{model}.h5")


def embed(model: str, dataset: str | Path = "dataset.h5", output: str | Path | None = None, *,
          task: str | Path | None = None, overwrite: bool = False, reporter: Reporter = QUIET,
          **options) -> EmbedStepReport:
    """Embed every tile of ``dataset`` (or of ``task``'s inputs) with ``model``: a name of
    :data:`EMBEDDERS`, or a GeoJEPA run directory (``runs/NAME/``). The dataset is read
    and the vectors written block by block (``block_tiles`` tiles at a time, default
    :data:`gjp.embedders.baselines.BLOCK_TILES`), so memory does not grow with it."""
    embedder = EMBEDDERS.get(model)
    if embedder is None and (Path(model) / "config.json").exists():
        from gjp.embedders.geojepa import geojepa_embeddings

        options["checkpoint"] = Path(model)
        model, embedder = Path(model).name, geojepa_embeddings
    if embedder is None:
        raise GjpError(f"unknown model {model!r}: choose one of {', '.join(EMBEDDERS)}, or a run directory "
                       "of `gjp pretrain` (runs/NAME/)")
    task_name = None
    if task is not None:
        dataset, task_name = task_inputs(task)
    output = Path(output) if output is not None else default_output(model, task_name)
    check_output_free(output, overwrite)
    result = embedder(Path(dataset), reporter=reporter, **options)
    if len(result.names) == 0:
        raise GjpError(f"{dataset}: {model} has nothing to embed (no tile has its input)")
    # block by block into the file: a failure, or Ctrl-C, leaves no partial output
    with hdf5_output(output, overwrite) as f:
        writer = EmbeddingsWriter(f, output, result.names, model=model, dataset=str(dataset), task=task_name,
                                  params=result.params, entities=result.entities)
        for block in result.blocks():
            writer.append(block.vectors, block.entity_counts, block.entity_vectors, block.entity_osm_type,
                          block.entity_osm_id)
        writer.finish()
    return EmbedStepReport(len(result.names), int(writer.dim), result.skipped, output, model)
