"""Run directories (``runs/NAME/``), what ``gjp pretrain`` writes and later steps read:

- ``config.json``: ``format`` = ``gjp-run``, ``format_version``, ``model`` (e.g.
  ``polygnn``), the model's config, every training hyper-parameter, the pretext, the
  command, gjp's and torch's versions;
- ``model.pt``: the trained weights, a plain state dict, loaded with
  ``torch.load(weights_only=True)``;
- ``metrics.jsonl``: one JSON object per epoch: losses, metrics, seconds;
- ``summary.json``: the final numbers (best epoch, its validation metrics, the test
  metrics, the run's time).
- ``report.html``: the curves of ``metrics.jsonl`` as inline SVG.

A run is written into a staging directory and renamed into place when training ends, like
every gjp output: an interrupted run leaves nothing.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from gjp.errors import GjpError
from gjp.io import atomic_directory, check_format, first_line, read_json, read_text, write_json, write_jsonl
from gjp.pretrain.report import report_html

FORMAT, FORMAT_VERSION = "gjp-run", 1
MADE_BY = "gjp pretrain"


class _Recorder(io.RawIOBase):
    """A file that remembers why a write failed: torch.save reports any failure of its
    writer as a ``RuntimeError`` with an internal message, losing the ``OSError`` (a full
    disk) that caused it."""

    def __init__(self, raw):
        self.raw, self.error = raw, None

    def writable(self):
        return True

    def write(self, data):
        try:
            return self.raw.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.raw.flush()


def save_weights(obj, path: Path) -> None:
    """``torch.save(obj, path)``; a failed write raises its own ``OSError``, so the output
    staging reports it under the output's name."""
    import torch

    with open(path, "wb") as raw:
        sink = _Recorder(raw)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def write_run(output: Path, overwrite: bool, config: dict, weights: tuple[str, dict], metrics: list[dict],
              summary: dict, report: tuple[str, str, list[str]]) -> None:
    """Publish a run directory in one go: ``config.json``, the weights (``(file name,
    object for torch.save)``), ``metrics.jsonl``, ``summary.json`` and ``report.html``
    (``(title, x key, keys to chart)``)."""
    title, x, keys = report
    with atomic_directory(output, overwrite) as staging:
        write_json(staging / "config.json", config)
        save_weights(weights[1], staging / weights[0])
        write_jsonl(staging / "metrics.jsonl", metrics)
        write_json(staging / "summary.json", summary)
        (staging / "report.html").write_text(report_html(title, metrics, x, keys, summary), encoding="utf-8")


def read_run_config(run_dir: str | Path, model: str | None = None) -> dict:
    """A run's ``config.json``, checked (format, version and, when given, the model)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir() or not path.exists():
        raise GjpError(f"{run_dir}: not a run directory (no config.json; make one with `gjp pretrain`)")
    config = read_json(path, "run configuration")
    check_format(config.get("format"), config.get("format_version"), path, FORMAT, FORMAT_VERSION,
                 "run configuration", MADE_BY)
    if model is not None and config.get("model") != model:
        raise GjpError(f"{run_dir}: a run of model {config.get('model')!r}, not {model!r}")
    return config


def load_checkpoint(path: str | Path):
    """``torch.load(path, weights_only=True)`` on the CPU, or a one-line error: a damaged
    file makes torch raise anything from ``EOFError`` to ``struct.error``."""
    import torch

    path = Path(path)
    if not path.exists():
        raise GjpError(f"{path}: no such file (the run did not finish?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (every way a damaged file fails is the same problem)
        raise GjpError(f"{path}: not a readable checkpoint ({first_line(err)[:120]})") from None


def load_weights(module, state, path: str | Path) -> None:
    """``module.load_state_dict(state, strict=True)``, or one line naming ``path`` and the
    first mismatch torch reports."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        mismatch = lines[1] if len(lines) > 1 else first_line(err)  # line 0 only names the class
        raise GjpError(f"{path}: the weights do not fit the run's model ({mismatch[:160]})") from None


def load_state_dict(run_dir: str | Path, model) -> None:
    """Load ``model.pt`` into ``model`` (an ``nn.Module`` built from the run's config):
    weights only, every key present and of the right shape, or a one-line error."""
    import torch

    path = Path(run_dir) / "model.pt"
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GjpError(f"{path}: not a state dict")
    load_weights(model, state, path)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(read_text(path, "metrics file").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise GjpError(f"{path}: line {n} is not JSON") from None
    return rows


def summarize_run(run_dir: str | Path) -> dict:
    """What ``gjp info runs/NAME/`` shows."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    summary = read_json(run_dir / "summary.json", "run summary") if (run_dir / "summary.json").exists() else {}
    metrics = read_metrics(run_dir)
    epochs = len({m.get("epoch") for m in metrics})  # polygnn logs epochs, geojepa steps
    train = config.get("train", {})
    return {"path": str(run_dir), "model": config.get("model"), "pretext": config.get("pretext"),
            "modalities": train.get("modalities") if config.get("model") == "geojepa" else None,
            "preset": config.get("preset"), "model_config": config.get("model_config", {}),
            "epochs": epochs, "parameters": config.get("parameters"), "summary": summary,
            "command": config.get("command")}


def format_run(s: dict) -> str:
    mc = s["model_config"]
    lines = [f"{s['path']}: gjp run of {s['model']} ({s['preset']} preset: "
             + ", ".join(f"{k} {v}" for k, v in mc.items()) + f"; {s['parameters']} parameters)",
             f"  {'modalities ' + s['modalities'] if s.get('modalities') else 'pretext ' + str(s['pretext'])}, "
             f"{s['epochs']} epochs"]
    summary = s["summary"]
    if summary:
        lines.append("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in summary.items() if not isinstance(v, dict | list)))
    return "\n".join(lines)
