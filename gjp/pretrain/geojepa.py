"""``gjp pretrain --modalities T,G``: self-supervised pretraining of GeoJEPA on
``dataset.h5`` (tags and geometry; images come with the image tokenizer).

One explicit loop, I-JEPA style: batches of similar length (the loader's sampler), masks
drawn by :class:`gjp.pretrain.masks.MaskingCollator` (seeded per batch, so the number of
workers changes nothing), the tokenizer (:class:`gjp.models.tokenizers.TileTokenizer`,
trained along: the target encoder reads the same tokens), the model
(:class:`gjp.models.geojepa.GeoJepa`), AdamW (β = 0.9, 0.95) with the learning rate,
weight decay and EMA momentum of :mod:`gjp.pretrain.schedules` set at every step, clipping,
and the target encoder's EMA update. Pretraining uses the **train** groups of
``tasks/splits.csv`` and reports a validation JEPA loss on the **val** groups after every
epoch: test groups never enter, so the probes stay honest (``--all-tiles`` overrides).
A collapse check stops the run with one line when the target encoder's outputs lose
their spread. After the last step, one pass over the train tiles measures the target
encoder's mean output token, the centre that ``gjp embed`` pools tile vectors around.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gjp import __version__
from gjp.errors import GjpError
from gjp.io import check_output_free, command_line, write_json
from gjp.pretrain.masks import MaskConfig
from gjp.pretrain.runs import FORMAT, FORMAT_VERSION, save_weights, write_run
from gjp.ui import QUIET, Reporter

MODALITIES = ("T", "G", "I")
IMAGE_TOKENS = ("patches", "patches+global")
#: The tokens the target encoder reads: a moving average of the tokenizer (clean), or the online one.
TARGET_TOKENIZERS = ("ema", "shared")
#: An entity as one token (tags and geometry fused by an MLP) or two (a tag and a geometry token).
ENTITY_TOKENS = ("fused", "split")
#: Train tiles (a seeded sample) whose outputs set the token centre of tile vectors after training …
CENTER_TILES = 4096
#: … read in batches of at most this many padded entity slots.
CENTER_BATCH_ENTITIES = 16384
#: A preset is a model size (gjp.models.geojepa.PRESETS) and these training settings, which
#: explicit ones override. ``cpu``, the default of `gjp pretrain`, is the configuration issue
#: 14's experiment chose on validation (docs/experiments/2026-12-03.md): T tokens balanced,
#: width 384, 64 epochs, tile vectors pooled after the first block. ``--epochs 32`` gives
#: the best score per hour, a little behind.
PRESET_TRAINING = {
    "cpu": {"balanced_tokens": True, "epochs": 64},
}


@dataclass
class GeoJepaTrainConfig:
    modalities: str = "T,G"
    preset: str = "tiny"
    registers: int = 0               # register tokens of the context and target encoders
    compile: bool = False            # torch.compile the model (CUDA)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    warmup: float = 0.1
    weight_decay: tuple = (0.04, 0.4)
    momentum: tuple = (0.996, 0.9999)
    grad_clip: float = 10.0
    accumulate: int = 1              # batches per optimiser step (and per process under torchrun)
    modality_dropout: float = 0.3
    position_noise: float = 5e-4
    max_entities: int = 256          # crop tiles of more entities to a window of this many (0: never)
    target_tokenizer: str = "shared" # the targets' tokens: shared (the online tokenizer's) or ema (a moving average, clean)
    balanced_tokens: bool = False    # entity tokens LayerNorm-ed, modality embedding started small (content ≈ conditioning in scale)
    entity_tokens: str = "fused"     # fused (one token per entity) or split (a tag and a geometry token each)
    tile_fraction: float = 1.0       # pretrain on this seeded share of the train tiles (the scaling study)
    collapse_std: float = 1e-3       # stop when the target outputs' spread falls below this
    seed: int = 0
    dataset: str = "dataset.h5"
    tag_embeddings: str = "tag-embeddings.parquet"
    geometry_encoder: str = "runs/polygnn-digits"
    splits: str = "tasks/splits.csv"
    all_tiles: bool = False
    image_backbone: str = "efficientnet_lite0"   # the frozen backbone of the I tokens
    image_weights: str = "default"               # its weights: default (the backbone's own), imagenet, a file
    image_tokens: str = "patches"                # patches, or patches+global (the global token sums up the image)
    mask: dict = field(default_factory=lambda: asdict(MaskConfig()))
    model: dict = field(default_factory=dict)    # GeoJepaConfig fields over the preset's (e.g. vicreg_beta)

    @classmethod
    def from_preset(cls, preset: str, **fields) -> GeoJepaTrainConfig:
        """The preset's training settings under ``fields`` (a ``None`` field: the preset's,
        or the default)."""
        given = {k: v for k, v in fields.items() if v is not None}
        return cls(preset=preset, **{**PRESET_TRAINING.get(preset, {}), **given})

    def modality_set(self) -> set[str]:
        chosen = {m.strip().upper() for m in self.modalities.split(",") if m.strip()}
        if not chosen or chosen - set(MODALITIES):
            raise GjpError(f"--modalities {self.modalities!r}: give a non-empty subset of T,G,I (e.g. T,G)")
        if self.image_tokens not in IMAGE_TOKENS:
            raise GjpError(f"--image-tokens {self.image_tokens!r}: choose one of {', '.join(IMAGE_TOKENS)}")
        if self.target_tokenizer not in TARGET_TOKENIZERS:
            raise GjpError(f"--set target_tokenizer={self.target_tokenizer}: choose one of "
                           f"{', '.join(TARGET_TOKENIZERS)}")
        if self.entity_tokens not in ENTITY_TOKENS:
            raise GjpError(f"--set entity_tokens={self.entity_tokens}: choose one of {', '.join(ENTITY_TOKENS)}")
        if not 0 < self.tile_fraction <= 1:
            raise GjpError(f"--set tile_fraction={self.tile_fraction}: give a share in (0, 1]")
        if self.max_entities < 0:
            raise GjpError(f"--set max_entities={self.max_entities}: give 0 (no crop) or more")
        try:  # the masks' settings (`--set mask.…`), before any data is read
            MaskConfig(**self.mask).probabilities()
        except (TypeError, ValueError) as err:
            raise GjpError(f"--set mask: {err}") from None
        return chosen


def with_settings(config: GeoJepaTrainConfig, settings: list[str]) -> GeoJepaTrainConfig:
    """``config`` with ``KEY=VALUE`` settings (``gjp pretrain --set``), for ablations: a
    field (``modality_dropout=0``), or one key of the ``mask`` or ``model`` dicts
    (``mask.strategies={"random": 1}``, ``model.vicreg_beta=0``). Values are JSON, or
    text when they do not parse; a field's value must have its default's type."""
    from dataclasses import replace

    changes: dict = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key:
            raise GjpError(f"--set {setting!r}: give KEY=VALUE (e.g. modality_dropout=0)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        head, _, sub = key.partition(".")
        if head not in GeoJepaTrainConfig.__dataclass_fields__:
            raise GjpError(f"--set {key}: not a pretraining setting (choose from "
                           f"{', '.join(GeoJepaTrainConfig.__dataclass_fields__)})")
        current = changes.get(head, getattr(config, head))
        if sub:
            if not isinstance(current, dict):
                raise GjpError(f"--set {key}: {head} has no keys")
            if head == "mask" and sub not in current:
                raise GjpError(f"--set {key}: not a mask setting (choose from {', '.join(current)})")
            changes[head] = {**current, sub: value}
        else:
            if isinstance(current, (tuple, list)) and isinstance(value, list):
                value = tuple(value)
            elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(current):
                raise GjpError(f"--set {key}: {value!r} is not of its default's type "
                               f"({type(current).__name__}, e.g. {current!r})")
            changes[head] = value
    return replace(config, **changes)


# --------------------------------------------------------------------------- building

def tile_splits(dataset: str | Path, splits: str | Path, all_tiles: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train tiles, val tiles) of one dataset file by the group splits; never a test group."""
    train, val = _shard_splits(dataset, _read_splits(splits, all_tiles))
    if not len(train):
        raise GjpError(f"{splits}: no tile of {dataset} is in a train group")
    return train, val


def _read_splits(splits: str | Path, all_tiles: bool) -> dict[str, str] | None:
    """Group → split (``None``: every tile is a train tile)."""
    from gjp.tasks.files import read_splits

    if all_tiles:
        return None
    path = Path(splits)
    if not path.exists():
        raise GjpError(f"{path}: no splits (make them with `gjp mktask`, or pretrain on every tile with --all-tiles)")
    return read_splits(path)


def _shard_splits(dataset: str | Path, split_of: dict[str, str] | None) -> tuple[np.ndarray, np.ndarray]:
    from gjp.dataset.format import open_dataset
    from gjp.tasks.files import tile_split_names

    if split_of is None:
        with open_dataset(dataset) as f:
            everything = np.arange(len(f["tiles/name"]))
        return everything, everything[:0]
    split = tile_split_names(dataset, split_of)
    return np.flatnonzero(split == "train"), np.flatnonzero(split == "val")


def build_model(config: GeoJepaTrainConfig, tag_table, geometry_encoder, image_dim=None, model_config=None):
    """The tokenizer and the model of a run (weights initialised from the seed):
    ``tag_table`` [vocabulary, D] when T is on, ``geometry_encoder`` (a PolygonEncoder)
    when G is on, ``image_dim`` (the backbone's token width) when I is on; ``model_config``
    (a GeoJepaConfig) instead of the preset's, when a saved run is rebuilt."""
    import torch

    from gjp.models.geojepa import GeoJepa, GeoJepaConfig
    from gjp.models.presets import UnknownPresetError
    from gjp.models.tokenizers import GeometryTokens, ImageTokens, TagTokens, TileTokenizer

    torch.manual_seed(config.seed)
    if model_config is None:
        try:
            model_config = GeoJepaConfig.preset(config.preset, **{"registers": config.registers, **config.model})
        except UnknownPresetError as err:
            raise GjpError(f"--preset: {err}") from None
        except ValueError as err:  # a known preset, with an override it refuses
            raise GjpError(f"--set model: {err}") from None
        except TypeError:
            unknown = sorted(set(config.model) - set(GeoJepaConfig.__dataclass_fields__))
            raise GjpError(f"--set model.{unknown[0]}: not a model setting (choose from "
                           f"{', '.join(GeoJepaConfig.__dataclass_fields__)})") from None
    modalities = config.modality_set()
    tags = TagTokens(torch.tensor(np.asarray(tag_table)), model_config.dim) if "T" in modalities else None
    geometry = GeometryTokens(geometry_encoder, model_config.dim) if "G" in modalities else None
    images = ImageTokens(image_dim, model_config.dim) if "I" in modalities else None
    tokenizer = TileTokenizer(model_config.dim, tags, geometry, images, config.modality_dropout,
                              config.position_noise, image_global=config.image_tokens == "patches+global",
                              balanced=config.balanced_tokens, split=config.entity_tokens == "split")
    return tokenizer, GeoJepa(model_config), model_config


def _tag_table(dataset, tag_embeddings) -> np.ndarray:
    from gjp.dataset.format import read_vocabulary
    from gjp.tag_embeddings import read_tag_embeddings

    tags, vectors, _ = read_tag_embeddings(tag_embeddings)
    if tags != read_vocabulary(dataset).entries:
        raise GjpError(f"{tag_embeddings}: made for another vocabulary than {dataset}'s (run `gjp embed-tags -i {dataset}`)")
    return vectors


def effective_rank(x) -> float:
    """exp of the entropy of the normalised singular values of ``x`` [N, D]."""
    import torch

    if x.shape[0] < 2:
        return 0.0
    s = torch.linalg.svdvals(x.float() - x.float().mean(dim=0))
    p = s / s.sum().clamp(min=1e-12)
    return float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum()))


# --------------------------------------------------------------------------- the loop

@dataclass
class JepaReport:
    output: Path
    epochs: int
    steps: int
    train_loss: float
    val_loss: float | None
    seconds: float

    def summary(self) -> str:
        val = f", val loss {self.val_loss:.4f}" if self.val_loss is not None else ""
        return (f"geojepa: {self.epochs} epochs, {self.steps} steps, train loss {self.train_loss:.4f}{val} "
                f"({self.seconds:.0f} s) -> {self.output}")


def pretrain_geojepa(output: str | Path, config: GeoJepaTrainConfig | None = None, *, device: str = "auto",
                     overwrite: bool = False, resume: bool = False, workers: int = 0,
                     reporter: Reporter = QUIET) -> JepaReport:
    """Train and write ``output``. After every epoch the state (weights, optimiser, step,
    RNG states, the metrics so far) is saved to ``.NAME.progress/`` beside the output;
    ``resume`` continues from there, and the run then goes on exactly as if it had never
    stopped. The progress directory is removed when the run is published. ``workers``
    loader processes change nothing but speed; under torchrun (:mod:`.distributed`) each
    process trains on its share of the batches and only rank 0 writes."""
    import torch

    from gjp.device import resolve_device
    from gjp.pretrain.distributed import from_environment

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # same seed, same weights on CPU
    ranks, device = from_environment(resolve_device(device))
    try:
        return _pretrain(Path(output), config or GeoJepaTrainConfig(), device, overwrite, resume, workers,
                         ranks, reporter if ranks.main else QUIET)
    finally:
        torch.use_deterministic_algorithms(previous)
        ranks.close()


def progress_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.progress"


def _save_progress(output: Path, run_config: dict, state: dict) -> None:
    from gjp.io import atomic_file

    directory = progress_dir(output)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "config.json", run_config, overwrite=True)
    with atomic_file(directory / "state.pt", overwrite=True) as tmp:
        save_weights(state, tmp)


def _load_progress(output: Path, run_config: dict) -> dict:
    from gjp.io import read_json
    from gjp.pretrain.runs import load_checkpoint

    directory = progress_dir(output)
    if not (directory / "state.pt").exists():
        raise GjpError(f"{output}: nothing to resume (no {directory.name}/ from an interrupted run)")
    saved = read_json(directory / "config.json", "run configuration")
    if saved.get("train") != json.loads(json.dumps(run_config["train"])):
        raise GjpError(f"{directory}: was made with other settings; resume with the same options, or start "
                       "afresh without --resume")
    return load_checkpoint(directory / "state.pt")


def batch_generator(seed: int, epoch: int, number: int, device):
    """The generator of a batch's modality dropout and position noise, seeded like its
    masks from (seed, epoch, batch number): nothing depends on which process or worker
    handled the batch, or on what ran before it (a resumed run needs no generator state)."""
    import torch

    word = np.random.SeedSequence([seed, epoch, number, 0x6E6F6973]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(word[0]) << 32 | int(word[1]))


def _rng_states() -> dict:
    import torch

    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    import torch

    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _pretrain(output: Path, config: GeoJepaTrainConfig, device, overwrite: bool, resume: bool, workers: int,
              ranks, reporter: Reporter) -> JepaReport:
    import contextlib

    import torch

    from gjp.dataset.loader import LengthGroupedBatchSampler
    from gjp.device import autocast, to_device
    from gjp.models.geojepa import TileJepa
    from gjp.pretrain.masks import MaskingCollator
    from gjp.pretrain.schedules import ema_momentum, learning_rate, weight_decay

    modalities = config.modality_set()
    check_output_free(output, overwrite, directory=True)
    started = time.perf_counter()
    data = _open_data(config, modalities, device, ranks, reporter)
    train_set, val_set, image_file, geometry_file = data.train, data.val, data.image_file, data.geometry_file
    table = _tag_table(data.files[0], config.tag_embeddings) if "T" in modalities else None
    tokenizer, model, model_config = build_model(config, table, data.encoder, image_file.dim if image_file else None)
    step_module = TileJepa(tokenizer, model, target_tokenizer=config.target_tokenizer == "ema").to(device)
    if config.compile:
        model.compile()  # in place: the state dict keeps its names
    trainer = step_module
    if ranks.active:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    collator = MaskingCollator(MaskConfig(**config.mask), seed=config.seed, images=image_file is not None,
                               image_global=config.image_tokens == "patches+global",
                               entities=bool(modalities & {"T", "G"}), max_entities=config.max_entities,
                               entity_copies=tokenizer.entity_copies)
    train_sampler = LengthGroupedBatchSampler(train_set.entity_counts, config.batch_size, seed=config.seed,
                                              rank=ranks.rank, world=ranks.world)
    val_sampler = LengthGroupedBatchSampler(val_set.entity_counts, config.batch_size, seed=config.seed + 1,
                                            rank=ranks.rank, world=ranks.world, even=False)
    if not len(train_sampler):
        raise GjpError(f"{config.dataset}: {len(train_set)} train tiles make no batch for each of "
                       f"{ranks.world} processes; use a smaller --batch-size")
    trainable = [p for p in step_module.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, 0.95))
    micro_per_epoch = len(train_sampler)
    steps_per_epoch = -(-micro_per_epoch // config.accumulate)
    total = steps_per_epoch * config.epochs
    run_config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": "geojepa",
                  "model_config": model_config.to_dict(), "preset": config.preset, "train": asdict(config),
                  "geometry_config": data.geometry_run["model_config"] if data.geometry_run else None,
                  "vocabulary": int(len(table)) if table is not None else None,
                  "tag_dim": int(table.shape[1]) if table is not None else None,
                  "data": _provenance(config, data.files, modalities, geometry_file),
                  "image": image_file.describe() if image_file is not None else None,
                  "geometry_tokens": geometry_file.describe() if geometry_file is not None else None,
                  "tiles": {"train": len(train_set), "val": len(val_set)}, "device": device.type,
                  "processes": ranks.world, "tiles_per_step": config.batch_size * config.accumulate * ranks.world,
                  "parameters": sum(p.numel() for p in trainable), "gjp_version": __version__,
                  "torch_version": torch.__version__, "command": command_line()}
    metrics, step, train_loss, val_loss, first_epoch = [], 0, float("nan"), None, 0
    if resume:
        state = _load_progress(output, run_config)
        try:
            tokenizer.load_state_dict(state["tokenizer"])
            model.load_state_dict(state["model"])
            if step_module.target_tokenizer is not None:
                step_module.target_tokenizer.load_state_dict(state["target_tokenizer"])
            optimiser.load_state_dict(state["optimizer"])
            _set_rng_states(state["rng"])
            step, first_epoch, val_loss = int(state["step"]), int(state["epoch"]), state["val_loss"]
            metrics = json.loads(state["metrics"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise GjpError(f"{progress_dir(output)}: damaged progress ({err}); start afresh without --resume") from None
        train_loss = metrics[-1]["loss"] if metrics else float("nan")
        reporter.info(f"resuming after epoch {first_epoch} (step {step})")
    bar = reporter.progress(total=total, initial=step, desc="geojepa", unit=" step")
    for epoch in range(first_epoch, config.epochs):
        train_sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=train_sampler, collate_fn=collator,
                                             num_workers=workers, persistent_workers=False)
        step_module.train()
        for i, batch in enumerate(loader):
            first = i % config.accumulate == 0
            in_step = min(config.accumulate, micro_per_epoch - i + i % config.accumulate)  # micro-batches of this step
            if first:
                lr = learning_rate(step, total, config.lr, warmup=config.warmup)
                wd = weight_decay(step, total, start=config.weight_decay[0], end=config.weight_decay[1])
                momentum = ema_momentum(step, total, start=config.momentum[0], end=config.momentum[1])
                for group in optimiser.param_groups:
                    group["lr"], group["weight_decay"] = lr, wd
                optimiser.zero_grad(set_to_none=True)
                parts, began = [], time.perf_counter()
            last = i % config.accumulate == in_step - 1
            batch = to_device(batch, device)
            generator = batch_generator(config.seed, batch["epoch"], batch["number"], device)
            sync = contextlib.nullcontext() if last or not ranks.active else trainer.no_sync()
            with sync:
                with autocast(device):
                    out = trainer(batch, generator)
                (out["loss"].float() / in_step).backward()
            targets = out["targets"][~out["padding"]].detach().float()
            parts.append([float(out["loss"].detach()), float(out["prediction"]), float(out["variance"]),
                          float(out["covariance"]), int(out["context_tokens"]), int(out["target_tokens"]),
                          float(targets.std(dim=0).mean()) if len(targets) > 1 else 0.0, len(batch["names"])])
            if not last:
                continue
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimiser.step()
            step_module.update_target(momentum)
            # one collective per step: the per-process means (averaged) and counts (summed)
            reduced = ranks.sum(np.mean(parts, axis=0)[[0, 1, 2, 3, 6]].tolist()
                                + np.sum(parts, axis=0)[[4, 5, 7]].tolist(), device)
            loss, prediction, variance, covariance, spread = (v / ranks.world for v in reduced[:5])
            context_tokens, target_tokens, tiles = reduced[5:]
            train_loss = loss
            if not np.isfinite(train_loss):
                raise GjpError(f"geojepa: the loss became {train_loss} at step {step}; try a smaller --lr")
            if spread < config.collapse_std and step >= steps_per_epoch:
                raise GjpError(f"geojepa: collapsed at step {step} (target outputs' spread {spread:.2e} < "
                               f"{config.collapse_std:g}); try a smaller --lr")
            metrics.append({"step": step, "epoch": epoch + 1, "loss": train_loss, "prediction": prediction,
                            "variance": variance, "covariance": covariance, "lr": lr, "weight_decay": wd,
                            "momentum": momentum, "context_tokens": int(context_tokens),
                            "target_tokens": int(target_tokens), "target_std": spread,
                            "target_rank": effective_rank(targets[:512]),
                            "tiles_per_s": round(tiles / max(time.perf_counter() - began, 1e-9), 1),
                            "peak_memory_mb": _peak_memory_mb(device)})
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{train_loss:.4f}", epoch=epoch + 1)
        if len(val_set):
            val_loss = _validation_loss(step_module, val_set, val_sampler, collator, epoch, device, ranks)
            metrics[-1]["val_loss"] = val_loss
        if epoch + 1 < config.epochs:
            if ranks.main:
                _save_progress(output, run_config, {
                    **_training_state(step_module, optimiser, step), "epoch": epoch + 1, "val_loss": val_loss,
                    "metrics": json.dumps(metrics)})
            ranks.barrier()
    bar.close()
    model.token_center.copy_(_token_center(step_module, train_set, config, device, ranks, reporter))
    seconds = time.perf_counter() - started
    report = JepaReport(output, config.epochs, step, train_loss, val_loss, seconds)
    if not ranks.main:
        ranks.barrier()  # rank 0 is publishing the run
        return report
    checkpoint = _training_state(step_module, optimiser, step)
    summary = {"epochs": config.epochs, "steps": step, "train_loss": train_loss, "val_loss": val_loss,
               "seconds": round(seconds, 1)}
    write_run(output, overwrite, run_config, ("checkpoint.pt", checkpoint), metrics, summary,
              (f"geojepa {config.modalities} ({config.preset})", "step",
               ["loss", "prediction", "val_loss", "variance", "covariance", "target_std", "target_rank", "lr",
                "weight_decay", "momentum", "tiles_per_s", "peak_memory_mb"]))
    shutil.rmtree(progress_dir(output), ignore_errors=True)
    ranks.barrier()
    return report


def _shared_cache(ensure, ranks, reporter) -> Path:
    """A cache every process reads (the frozen encoders' tokens): ``ensure(reporter)`` on
    rank 0 computes it when missing or stale, with its progress bar; the others wait, then
    find it fresh (``ensure(QUIET)``)."""
    if ranks.main:
        ensure(reporter)
    ranks.barrier()
    return ensure(QUIET)


def _provenance(config: GeoJepaTrainConfig, files: list[Path], modalities: set[str], geometry_file) -> dict:
    """What the run was trained on, beyond the paths in ``train``: the dataset's
    fingerprint (one per shard), the sha256 of the tag embeddings and of the geometry
    encoder's weights (the key of its token cache)."""
    import hashlib

    from gjp.dataset.image_tokens import dataset_fingerprint

    prints = [dataset_fingerprint(f) for f in files]
    data = {"dataset": prints[0] if len(prints) == 1 else prints}
    if "T" in modalities:
        data["tag_embeddings_sha256"] = hashlib.sha256(Path(config.tag_embeddings).read_bytes()).hexdigest()
    if geometry_file is not None:
        data["geometry_encoder_sha256"] = geometry_file.describe()["encoder_sha256"]
    return data


@dataclass
class _Data:
    """The train and val tiles of a run, over one dataset file or its shards."""

    files: list[Path]
    train: object                 # TileDataset, or TileShards over the shards
    val: object
    encoder: object = None        # the frozen geometry encoder (G)
    geometry_run: dict | None = None
    geometry_file: object = None  # the first shard's token caches: what they were made with
    image_file: object = None


def _open_data(config: GeoJepaTrainConfig, modalities: set[str], device, ranks, reporter) -> _Data:
    """Splits, frozen-encoder token caches (computed once, by rank 0) and datasets, shard
    by shard; a shard directory (``pack-h5 --shard-tiles``) gives one dataset over all."""
    from gjp.dataset.format import dataset_files, open_dataset, read_vocabulary
    from gjp.dataset.loader import TileDataset, TileShards

    files = dataset_files(config.dataset)
    if len(files) > 1 and "T" in modalities:
        first = read_vocabulary(files[0]).entries
        for other in files[1:]:
            if read_vocabulary(other).entries != first:
                raise GjpError(f"{other}: another vocabulary than {files[0]}'s: shards must share one")
    split_of = _read_splits(config.splits, config.all_tiles)
    data = _Data(files, [], [])
    if "G" in modalities:
        from gjp.embedders.geometry import load_polygnn

        data.encoder, data.geometry_run = load_polygnn(config.geometry_encoder)
    for path in files:
        train_tiles, val_tiles = _shard_splits(path, split_of)
        caches = {"image_tokens": None, "geometry_tokens": None}
        if "G" in modalities:
            from gjp.dataset.geometry_tokens import GeometryTokenFile, ensure_geometry_tokens
            from gjp.dataset.graphs import check_dataset_graphs

            with open_dataset(path) as f:
                check_dataset_graphs(f, path)
            geometry_file = GeometryTokenFile(_shared_cache(
                lambda r, p=path: ensure_geometry_tokens(p, config.geometry_encoder, device=device, reporter=r),
                ranks, reporter))
            data.geometry_file = data.geometry_file or geometry_file
            caches["geometry_tokens"] = geometry_file.path
        if "I" in modalities:
            from gjp.dataset.image_tokens import ImageTokenFile, ensure_image_tokens

            image_file = ImageTokenFile(_shared_cache(
                lambda r, p=path: ensure_image_tokens(p, config.image_backbone, config.image_weights,
                                                      device=device, reporter=r), ranks, reporter))
            data.image_file = data.image_file or image_file
            caches["image_tokens"] = image_file.path
            if not modalities & {"T", "G"}:  # images alone: tiles without one have no token
                train_tiles = train_tiles[image_file.rows[train_tiles] >= 0]
                val_tiles = val_tiles[image_file.rows[val_tiles] >= 0]
        if config.tile_fraction < 1:  # a seeded share, the same for every process and worker
            keep = max(1, round(config.tile_fraction * len(train_tiles)))
            rng = np.random.default_rng([config.seed, 0x7469_6C65])
            train_tiles = np.sort(rng.choice(train_tiles, keep, replace=False))
        data.train.append(TileDataset(path, train_tiles, **caches))
        data.val.append(TileDataset(path, val_tiles, **caches))
    if not sum(len(d) for d in data.train):
        if "I" in modalities and not modalities & {"T", "G"}:
            raise GjpError(f"{config.dataset}: no train tile has an image")
        raise GjpError(f"{config.splits}: no tile of {config.dataset} is in a train group")
    if len(files) == 1:
        data.train, data.val = data.train[0], data.val[0]
    else:
        data.train, data.val = TileShards(data.train), TileShards(data.val)
    return data


def _peak_memory_mb(device) -> float:
    """The process's peak resident memory so far (and the GPU's, on CUDA), in MiB."""
    import resource

    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _training_state(step_module, optimiser, step: int) -> dict:
    """What a checkpoint (and an epoch's progress) holds to go on training: the
    tokenizer, the model, the target tokenizer when there is one, the optimiser."""
    cpu = lambda state: {k: v.detach().cpu() for k, v in state.items()}  # noqa: E731
    state = {"tokenizer": cpu(step_module.tokenizer.state_dict()), "model": cpu(step_module.model.state_dict()),
             "optimizer": optimiser.state_dict(), "rng": _rng_states(), "step": step}
    if step_module.target_tokenizer is not None:
        state["target_tokenizer"] = cpu(step_module.target_tokenizer.state_dict())
    return state


def _token_center(step_module, dataset, config: GeoJepaTrainConfig, device, ranks, reporter: Reporter):
    """The mean pooled token (``GeoJepa.pooled_tokens``: the output, or the residual stream
    at ``pool_layer``) of the trained target encoder over the real tokens of the train
    tiles (a seeded sample of at most :data:`CENTER_TILES`, each process its share), read as
    ``gjp embed`` reads them: whole tiles, eval mode, no mask, crop or noise. Batches hold at
    most ``batch_size`` tiles and :data:`CENTER_BATCH_ENTITIES` entity slots, so memory is
    bounded by settings, not by the densest tile."""
    import torch

    from gjp.dataset.loader import collate_tiles
    from gjp.device import autocast, to_device

    rng = np.random.default_rng([config.seed, 0x63656E74])
    sample = rng.permutation(len(dataset))[:CENTER_TILES][ranks.rank::ranks.world]
    counts = np.maximum(dataset.entity_counts[sample], 1)
    sample, counts = sample[np.argsort(counts, kind="stable")], np.sort(counts, kind="stable")
    tokenizer = step_module.target_tokenizer if step_module.target_tokenizer is not None else step_module.tokenizer
    step_module.eval()
    total = torch.zeros(step_module.model.config.dim, dtype=torch.float64)
    tokens_seen, start = 0, 0
    bar = reporter.progress(total=len(sample), desc="token centre", unit=" tile")
    with torch.no_grad(), autocast(device):
        while start < len(sample):  # ascending sizes: the batch grows while its padded size fits
            stop = start + 1
            while (stop < len(sample) and stop - start < config.batch_size
                   and (stop + 1 - start) * counts[stop] <= CENTER_BATCH_ENTITIES):
                stop += 1
            batch = to_device(collate_tiles([dataset[int(i)] for i in sample[start:stop]]), device)
            tokens, _, padding = tokenizer(batch)
            out = step_module.model.pooled_tokens(tokens, padding)[0][~padding]
            total += out.double().sum(dim=0).cpu()
            tokens_seen += len(out)
            bar.update(stop - start)
            start = stop
    bar.close()
    reduced = ranks.sum(total.tolist() + [tokens_seen], device)
    return torch.tensor(reduced[:-1], dtype=torch.float64).div(max(reduced[-1], 1)).float()


def _validation_loss(step_module, dataset, sampler, collator, epoch, device, ranks) -> float:
    """The prediction loss over the val tiles (each process its share), weighted by
    target tokens; the model in eval mode (no dropout, no noise)."""
    import torch

    from gjp.device import to_device

    sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collator)
    step_module.eval()
    total, weight = 0.0, 0.0
    with torch.no_grad():
        for batch in loader:
            out = step_module(to_device(batch, device))
            total += float(out["prediction"]) * int(out["target_tokens"])
            weight += int(out["target_tokens"])
    total, weight = ranks.sum([total, weight], device)
    return total / weight if weight else float("nan")
