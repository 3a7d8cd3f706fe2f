"""``gjp probe``: how well a frozen embedding predicts a task's labels.

A linear or MLP head is trained on the train split (features standardised with the
train statistics, targets scaled by the train spread) with an L1 loss — the reported
metric is the MAE — by AdamW with ReduceLROnPlateau, **early-stopped on the validation
MAE**, and the best epoch's weights (a real copy) are restored before the test split is
scored once. Predictions are clamped to the task's label range. Every seed is a separate
run; results are the mean ± sd of the test MAE over seeds (never the best seed). 0/1 tasks
also report accuracy and F1 at 0.5.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gjp import __version__
from gjp.embeddings import read_embeddings
from gjp.errors import GjpError
from gjp.evaluate.score import FORMAT as RESULT_FORMAT
from gjp.evaluate.score import FORMAT_VERSION as RESULT_VERSION
from gjp.io import check_output_free, command_line, write_json
from gjp.tasks.files import read_task
from gjp.ui import QUIET, Reporter

HEADS = ("linear", "mlp")


@dataclass
class ProbeConfig:
    head: str = "mlp"
    seeds: int = 5
    hidden: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 500
    patience: int = 40         # epochs without a better val MAE before stopping
    batch_size: int = 4096     # full batch below this many train tiles
    from_dummy: bool = True    # the head starts as the dummy (output layer zero) and is kept only if it beats it on val
    device: str = "cpu"


def _head(kind: str, dim: int, hidden: int):
    import torch

    if kind == "linear":
        return torch.nn.Linear(dim, 1)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Dropout(0.1),
                               torch.nn.Linear(hidden, 1))


def fit_head(x: dict, y: dict, clamp: tuple[float, float], config: ProbeConfig, seed: int) -> dict:
    """Train one head; returns val/test predictions of the best-val epoch and its number."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mu, sigma = x["train"].mean(axis=0), x["train"].std(axis=0)
    sigma = np.where(sigma > 1e-6, sigma, 1.0)  # a feature constant in train stays unscaled
    y_mu, y_sigma = float(np.median(y["train"])), float(y["train"].std()) or 1.0
    t = {k: torch.from_numpy(((v - mu) / sigma).astype(np.float32)) for k, v in x.items()}
    target = torch.from_numpy(((y["train"] - y_mu) / y_sigma).astype(np.float32))
    model = _head(config.head, x["train"].shape[1], config.hidden)
    if config.from_dummy:  # output 0 = the train median = the dummy's prediction, exactly
        last = model if config.head == "linear" else model[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=config.patience // 4)
    lo, hi = clamp

    def predict(split):
        model.eval()
        with torch.no_grad():
            out = model(t[split]).squeeze(1).numpy().astype(np.float64) * y_sigma + y_mu
        return np.clip(out, lo, hi)

    def val_mae() -> float:
        return float(np.abs(predict("val") - y["val"]).mean())

    best_mae, best_state, best_epoch, stale = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    first = 0
    if config.from_dummy:  # epoch 0 is the untrained head: a trained one must beat the dummy on val
        best_mae, first = val_mae(), 1
    n = len(target)
    for epoch in range(first, first + config.max_epochs):
        model.train()
        order = rng.permutation(n) if n > config.batch_size else np.arange(n)
        for start in range(0, n, config.batch_size):
            idx = torch.from_numpy(order[start:start + config.batch_size])
            loss = torch.nn.functional.l1_loss(model(t["train"][idx]).squeeze(1), target[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        mae = val_mae()
        scheduler.step(mae)
        if mae < best_mae - 1e-9:
            best_mae, best_state, best_epoch, stale = mae, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    return {"val": predict("val"), "test": predict("test"), "best_epoch": best_epoch, "epochs": epoch + 1,
            "best_val_mae": best_mae}


def metrics(pred: np.ndarray, truth: np.ndarray, binary: bool) -> dict:
    out = {"mae": float(np.abs(pred - truth).mean())}
    if binary:
        p, t = pred >= 0.5, truth >= 0.5
        tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
        out["accuracy"] = float((p == t).mean())
        out["f1"] = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 1.0
    return out


@dataclass
class ProbeReport:
    path: Path      # the result file
    result: dict    # what it holds

    def summary(self) -> str:
        r, n = self.result, self.result["n"]
        return (f"{r['model']} on {r['task']} ({r['head']}): test MAE {r['test_mae_mean']:.4g} ± "
                f"{r['test_mae_sd']:.2g} (dummy {r['dummy']['test_mae']:.4g}; n = {n['train']}/{n['val']}/{n['test']})")


def probe(embeddings: str | Path, task_dir: str | Path, output_dir: str | Path = "results", *,
          config: ProbeConfig | None = None, overwrite: bool = False,
          reporter: Reporter = QUIET) -> ProbeReport:
    """Run the probe over ``config.seeds`` seeds and write ``results/MODEL__TASK__HEAD.json``."""

    config = config or ProbeConfig()
    if config.head not in HEADS:
        raise GjpError(f"unknown head {config.head!r}: choose one of {', '.join(HEADS)}")
    emb = read_embeddings(embeddings)
    task = read_task(task_dir)
    splits, task_name = task.splits, task.name
    path = Path(output_dir) / f"{emb.model}__{task_name}__{config.head}.json"
    check_output_free(path, overwrite)
    where = emb.index()
    x, y, n_missing = {}, {}, 0
    for name, (tiles, labels) in splits.items():
        have = [i for i, t in enumerate(tiles) if t in where]
        n_missing += len(tiles) - len(have)
        x[name] = emb.vectors[[where[tiles[i]] for i in have]].astype(np.float64)
        y[name] = labels[have]
    for name in ("train", "val", "test"):
        if len(splits[name][0]) == 0:
            raise GjpError(f"{task_dir}: the task has no {name} tiles (too few tiles or groups for a "
                           "train/val/test split; make the task on a larger area)")
        if len(y[name]) == 0:
            raise GjpError(f"{task_dir}: no {name} tile has an embedding in {embeddings}")
    binary = set(np.unique(np.concatenate(list(y.values())))) <= {0.0, 1.0}
    clamp = task.clamp
    runs = []
    bar = reporter.progress(total=config.seeds, desc=f"probe {emb.model} on {Path(task_dir).name}", unit=" seed")
    for seed in range(config.seeds):
        fit = fit_head(x, y, clamp, config, seed)
        runs.append({"seed": seed, "best_epoch": fit["best_epoch"], "epochs": fit["epochs"],
                     "val": metrics(fit["val"], y["val"], binary), "test": metrics(fit["test"], y["test"], binary)})
        bar.update()
    bar.close()
    dummy = float(np.median(y["train"]))
    summary = {}
    for split in ("val", "test"):
        for key in runs[0][split]:
            values = np.array([r[split][key] for r in runs])
            summary[f"{split}_{key}_mean"] = float(values.mean())
            summary[f"{split}_{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    result = {
        "format": RESULT_FORMAT, "format_version": RESULT_VERSION,
        "model": emb.model, "embeddings": str(embeddings), "task": task_name,
        "task_dir": str(task_dir), "head": config.head, "seeds": list(range(config.seeds)),
        "config": config.__dict__, "binary": binary,
        "n": {k: int(len(v)) for k, v in y.items()}, "missing_embeddings": n_missing,
        "dummy": {"prediction": dummy, "val_mae": float(np.abs(y["val"] - dummy).mean()),
                  "test_mae": float(np.abs(y["test"] - dummy).mean())},
        **summary, "runs": runs,
        "gjp_version": __version__, "command": command_line(),
    }
    write_json(path, result, overwrite)
    return ProbeReport(path, result)
