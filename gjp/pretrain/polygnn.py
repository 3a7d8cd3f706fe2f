"""``gjp pretrain --model polygnn``: train the geometry encoder on a pretext task.

- ``digits``: classify Digits-P-2 multipolygons into the 90 numbers 10..99
  (:mod:`gjp.pretext.digits`);
- ``osm``: predict an entity's kind and shape descriptors from its graph
  (:mod:`gjp.pretext.osm`).

One explicit loop: AdamW, a learning rate that warms up linearly then follows a cosine
(a pure function of the step), gradient clipping, the PolygonGNN spanning-tree
augmentation on training batches (seeded per step), evaluation on the validation split
after every epoch, and the weights of the best validation epoch kept. The test split is
scored once, with those weights. Same seed, same data and same thread count on CPU give
the same weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gjp import __version__
from gjp.errors import GjpError
from gjp.io import check_output_free, command_line
from gjp.pretrain.runs import FORMAT, FORMAT_VERSION, write_run
from gjp.ui import QUIET, Reporter

PRETEXTS = ("digits", "osm")


@dataclass
class PolygnnTrainConfig:
    pretext: str = "digits"
    preset: str = "tiny"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    spanning_tree: bool = True      # the training-time augmentation (never at inference)
    seed: int = 0
    # digits
    n_per_class: int = 40
    # osm
    dataset: str = "dataset.h5"
    max_entities: int | None = 20000


def learning_rate(step: int, total: int, config: PolygnnTrainConfig) -> float:
    """Linear warm-up, then a cosine from ``lr`` down to ``min_lr`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - 1 - config.warmup_steps))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- pretexts

class DigitsPretext:
    """90-way classification; the metric is accuracy."""

    metric = "accuracy"

    def __init__(self, config: PolygnnTrainConfig):
        from gjp.pretext.digits import N_CLASSES, build_digits_p2, describe

        self.data = build_digits_p2(n_per_class=config.n_per_class, seed=config.seed)
        self.graphs, self.split, self.classes = self.data.graphs, self.data.split, N_CLASSES
        self.description = describe(self.data)
        self.params = self.data.params

    def head(self, dim: int):
        import torch

        return torch.nn.Linear(dim, self.classes)

    def loss(self, out, rows):
        import torch

        return torch.nn.functional.cross_entropy(out, torch.as_tensor(self.data.labels[rows], device=out.device))

    def metrics(self, out: np.ndarray, rows: np.ndarray) -> dict:
        labels = self.data.labels[rows]
        logits = out - out.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return {"loss": float(-log_p[np.arange(len(rows)), labels].mean()),
                "accuracy": float((out.argmax(axis=1) == labels).mean())}


class OsmPretext:
    """Kind (cross-entropy) and standardised shape descriptors (mean squared error); the
    metric is the mean of the kind accuracy and the targets' R²."""

    metric = "score"

    def __init__(self, config: PolygnnTrainConfig):
        from gjp.pretext.osm import REGRESSION_TARGETS, build_osm_shapes

        self.data = build_osm_shapes(config.dataset, seed=config.seed, max_entities=config.max_entities)
        self.graphs, self.split, self.names = self.data.graphs, self.data.split, REGRESSION_TARGETS
        train = self.data.targets[self.split == "train"]
        if len(train) == 0:
            raise GjpError(f"{config.dataset}: too few tile groups for a train split")
        self.mean, self.std = train.mean(axis=0), train.std(axis=0) + 1e-6
        self.scaled = ((self.data.targets - self.mean) / self.std).astype(np.float32)
        counts = {s: int((self.split == s).sum()) for s in ("train", "val", "test")}
        self.description = (f"osm shapes of {config.dataset}: {len(self.split)} entities "
                            f"({counts['train']}/{counts['val']}/{counts['test']} train/val/test)")
        self.params = self.data.params

    def head(self, dim: int):
        import torch

        from gjp.kinds import KINDS

        return torch.nn.Linear(dim, len(KINDS) + len(self.names))

    def loss(self, out, rows):
        import torch

        from gjp.kinds import KINDS

        k = len(KINDS)
        kind = torch.as_tensor(self.data.kind[rows], device=out.device)
        target = torch.as_tensor(self.scaled[rows], device=out.device)
        return torch.nn.functional.cross_entropy(out[:, :k], kind) + torch.nn.functional.mse_loss(out[:, k:], target)

    def metrics(self, out: np.ndarray, rows: np.ndarray) -> dict:
        from gjp.kinds import KINDS

        k = len(KINDS)
        target = self.scaled[rows]
        residual = ((out[:, k:] - target) ** 2).mean(axis=0)
        r2 = 1 - residual / np.maximum(target.var(axis=0), 1e-12)
        accuracy = float((out[:, :k].argmax(axis=1) == self.data.kind[rows]).mean())
        result = {"kind_accuracy": accuracy, **{f"r2_{n}": float(v) for n, v in zip(self.names, r2)}}
        result["score"] = float(np.mean([accuracy, *r2]))
        result["loss"] = float(residual.mean())
        return result


# --------------------------------------------------------------------------- the loop

@dataclass
class PretrainReport:
    output: Path
    best_epoch: int
    val: dict
    test: dict
    seconds: float
    metric: str

    def summary(self) -> str:
        return (f"polygnn: best epoch {self.best_epoch}, val {self.metric} {self.val[self.metric]:.3f}, "
                f"test {self.metric} {self.test[self.metric]:.3f} ({self.seconds:.0f} s) -> {self.output}")


def _outputs(encoder, head, graphs, rows: np.ndarray, device, batch_size: int = 512) -> np.ndarray:
    import torch

    from gjp.device import autocast

    encoder.eval()
    head.eval()
    parts = []
    with torch.no_grad(), autocast(device):
        for start in range(0, len(rows), batch_size):
            batch = graphs.batch(rows[start:start + batch_size]).to(device)
            parts.append(head(encoder(batch)).float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def pretrain_polygnn(output: str | Path, config: PolygnnTrainConfig | None = None, *, device: str = "auto",
                     overwrite: bool = False, reporter: Reporter = QUIET) -> PretrainReport:
    import torch

    # the backward of gathers (h[src]) accumulates with threads in any order: on CPU only
    # torch's deterministic mode makes the same seed give the same weights
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _pretrain(output, config, device, overwrite, reporter)
    finally:
        torch.use_deterministic_algorithms(previous)


def _pretrain(output, config, device, overwrite, reporter) -> PretrainReport:
    import torch

    from gjp.device import autocast, resolve_device
    from gjp.models.polygnn import PolygonEncoder, PolygonEncoderConfig
    from gjp.models.presets import UnknownPresetError

    config = config or PolygnnTrainConfig()
    output = Path(output)
    if config.pretext not in PRETEXTS:
        raise GjpError(f"--pretext {config.pretext!r}: choose one of {', '.join(PRETEXTS)}")
    check_output_free(output, overwrite, directory=True)
    try:  # before the data: a wrong preset should not wait for a dataset's read
        model_config = PolygonEncoderConfig.preset(config.preset)
    except UnknownPresetError as err:
        raise GjpError(f"--preset: {err}") from None
    device = resolve_device(device)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    data = DigitsPretext(config) if config.pretext == "digits" else OsmPretext(config)
    reporter.info(data.description)
    encoder = PolygonEncoder(model_config).to(device)
    head = data.head(encoder.dim).to(device)
    parameters = [p for m in (encoder, head) for p in m.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    train, val, test = (np.flatnonzero(data.split == s) for s in ("train", "val", "test"))
    if not len(train) or not len(val):
        raise GjpError(f"{config.pretext}: the pretext data has no train or no validation entities")
    steps = -(-len(train) // config.batch_size)
    total = steps * config.epochs
    run_config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": "polygnn",
                  "model_config": model_config.to_dict(), "preset": config.preset, "pretext": config.pretext,
                  "train": asdict(config), "pretext_params": data.params, "device": device.type,
                  "parameters": sum(p.numel() for p in encoder.parameters()),
                  "gjp_version": __version__, "torch_version": torch.__version__, "command": command_line()}
    metrics, best, best_state = [], None, None
    bar = reporter.progress(total=total, desc=f"polygnn on {config.pretext}", unit=" step")
    step = 0
    for epoch in range(config.epochs):
        encoder.train()
        head.train()
        epoch_start, losses = time.perf_counter(), []
        for rows in np.array_split(rng.permutation(train), steps):
            lr = learning_rate(step, total, config)
            for group in optimiser.param_groups:
                group["lr"] = lr
            tree_seed = (config.seed * 1_000_003 + step) if config.spanning_tree else None
            batch = data.graphs.batch(rows, spanning_tree_seed=tree_seed).to(device)
            with autocast(device):
                loss = data.loss(head(encoder(batch)).float(), rows)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimiser.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch + 1)
        val_metrics = data.metrics(_outputs(encoder, head, data.graphs, val, device), val)
        row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": float(np.mean(losses)),
               **{f"val_{k}": v for k, v in val_metrics.items()},
               "seconds": round(time.perf_counter() - epoch_start, 3)}
        metrics.append(row)
        if not np.isfinite(row["train_loss"]):
            raise GjpError(f"polygnn on {config.pretext}: the loss became {row['train_loss']} at epoch "
                           f"{epoch + 1}; try a smaller --lr")
        if best is None or val_metrics[data.metric] > best[1][data.metric]:
            best = (epoch + 1, val_metrics)
            best_state = copy.deepcopy(encoder.state_dict()), copy.deepcopy(head.state_dict())
    bar.close()
    encoder.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    test_metrics = data.metrics(_outputs(encoder, head, data.graphs, test, device), test) if len(test) else {}
    seconds = time.perf_counter() - started
    summary = {"best_epoch": best[0], **{f"val_{k}": v for k, v in best[1].items()},
               **{f"test_{k}": v for k, v in test_metrics.items()}, "seconds": round(seconds, 1),
               "train_entities": int(len(train)), "steps": step}
    keys = ["train_loss", *[k for k in metrics[0] if k.startswith("val_")], "lr", "seconds"]
    write_run(output, overwrite, run_config, ("model.pt", {k: v.detach().cpu() for k, v in encoder.state_dict().items()}),
              metrics, summary, (f"polygnn on {config.pretext} ({config.preset})", "epoch", keys))
    return PretrainReport(output, best[0], best[1], test_metrics or best[1], seconds, data.metric)
