"""``gjp score``: one table of every probe and retrieval result.

One row per model and probe head, one column per task (test MAE, mean ± sd over seeds),
the harmonic mean over tasks of best MAE / MAE (1.0 = the best row on every task; a row
missing a task is scored on the tasks it has, and says so), a Dummy row (the train-median
predictor, from each task's statistics), and the retrieval precision@k of `gjp knn --eval`
when present (with ``--split val``, the validation half's ``knn --eval --split val`` where
it exists). Rows are sorted by the harmonic mean.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from gjp.errors import GjpError
from gjp.io import check_format, read_json

#: Every result file (``gjp probe``, ``gjp knn --eval``) carries these.
FORMAT, FORMAT_VERSION = "gjp-result", 1


def load_results(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """Probe and retrieval results, each checked; two results for the same model, task and
    head (or two retrieval results of one model) are an error, never one silently kept."""
    probes, retrieval, seen = [], [], {}
    for path in paths:
        data = read_json(path, "results file")
        check_format(data.get("format"), data.get("format_version"), path, FORMAT, FORMAT_VERSION, "results file",
                     "gjp probe` or `gjp knn --eval")
        if data.get("kind") == "retrieval":
            _require(path, data, {"model": str, "precision_mean": float})
            key = (data["model"], "knn", data.get("query_split") or "every query")
            retrieval.append(data)
        elif "test_mae_mean" in data:
            _require(path, data, {"model": str, "task": str, "head": str, "test_mae_mean": float,
                                  "test_mae_sd": float, "dummy": dict})
            _require(path, data["dummy"], {"test_mae": float}, "dummy.")
            key = (data["model"], data["task"], data["head"])
            probes.append(data)
        else:
            raise GjpError(f"{path}: not a gjp probe or retrieval result (no test_mae_mean, no kind)")
        if key in seen:
            raise GjpError(f"{path}: a second result for {' / '.join(key)} (the other is {seen[key]}); "
                           "give one of them")
        seen[key] = path
    if not probes and not retrieval:
        raise GjpError("no probe or retrieval results found (run `gjp probe` and `gjp knn --eval` first)")
    return probes, retrieval


def _require(path, data: dict, fields: dict, prefix: str = "") -> None:
    for name, kind in fields.items():
        value = data.get(name)
        ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
              if kind is float else isinstance(value, kind))
        if not ok:
            what = "a finite number" if kind is float else f"a {kind.__name__}"
            raise GjpError(f"{path}: damaged results file: {prefix}{name} is not {what} ({value!r})")


#: The splits a table can be made of: ``val`` to choose settings, ``test`` to report them.
SPLITS = ("test", "val")


def score_table(probes: list[dict], retrieval: list[dict], split: str = "test") -> tuple[list[str], list[dict]]:
    """``(tasks, rows)``; each row has ``name``, ``model``, ``head``, ``mae`` {task: (mean,
    sd)}, ``score``, ``tasks_scored`` and ``precision``. ``split`` is the probes' split the
    MAEs come from: ``test`` to report, ``val`` to choose among settings without looking
    at the test split."""
    if split not in SPLITS:
        raise GjpError(f"no split {split!r}: choose one of {', '.join(SPLITS)}")
    for p in probes:
        if not isinstance(p.get(f"{split}_mae_mean"), int | float) or f"{split}_mae" not in p["dummy"]:
            raise GjpError(f"{p['model']} / {p['task']} / {p['head']}: its results file has no {split} MAE")
    tasks = sorted({p["task"] for p in probes})
    rows: dict[str, dict] = {}
    for p in probes:
        name = f"{p['model']} ({p['head']})"
        rows.setdefault(name, {"name": name, "model": p["model"], "head": p["head"], "mae": {}})["mae"][p["task"]] = (
            p[f"{split}_mae_mean"], p[f"{split}_mae_sd"])
    dummy = {"name": "Dummy (train median)", "model": "dummy", "head": None, "mae": {}}
    for p in probes:
        dummy["mae"].setdefault(p["task"], (p["dummy"][f"{split}_mae"], 0.0))
    if probes:
        rows[dummy["name"]] = dummy
    best = {t: min(r["mae"][t][0] for r in rows.values() if t in r["mae"]) for t in tasks}
    # a task whose best MAE is 0 (e.g. a test split of all-zero labels that the dummy gets
    # exactly right) would send every other row's score to 0: it cannot rank, so it is
    # shown but not scored
    scored = [t for t in tasks if best[t] > 0]
    precision = retrieval_precision(retrieval, split)
    for row in rows.values():
        ratios = [_ratio(best[t], row["mae"][t][0]) for t in scored if t in row["mae"]]
        row["score"] = len(ratios) / sum(1 / r for r in ratios) if ratios and all(r > 0 for r in ratios) else 0.0
        row["tasks_scored"] = len(ratios)
        row["precision"] = precision.get(row["model"])
    for model, value in precision.items():
        if not any(r["model"] == model for r in rows.values()):
            rows[model] = {"name": model, "model": model, "head": None, "mae": {}, "score": None, "tasks_scored": 0,
                           "precision": value}
    ordered = sorted(rows.values(), key=lambda r: (-(r["score"] or 0), r["name"]))
    for r in ordered:
        r["unscored"] = [t for t in tasks if t not in scored]
    return tasks, ordered


def retrieval_precision(retrieval: list[dict], split: str) -> dict[str, float]:
    """Model → the precision@k a table of ``split`` shows: of the retrieval result whose
    queries came from that split's groups (``knn --eval --split``) where there is one,
    else of the one over every query."""
    found = {r["model"]: r["precision_mean"] for r in retrieval if not r.get("query_split")}
    found.update({r["model"]: r["precision_mean"] for r in retrieval if r.get("query_split") == split})
    return found


def _ratio(best: float, mae: float) -> float:
    if mae <= 0:
        return 1.0  # a perfect score (only possible when the best is perfect too)
    return best / mae


def render(tasks: list[str], rows: list[dict], as_csv: bool = False) -> str:
    has_precision = any(r["precision"] is not None for r in rows)
    header = ["model", *tasks, "score"] + (["precision@k"] if has_precision else [])
    table = []
    for r in rows:
        cells = [r["name"]]
        for t in tasks:
            if t in r["mae"]:
                mean, sd = r["mae"][t]
                cells.append(f"{mean:.4g}" if as_csv else f"{mean:.3g} ± {sd:.2g}")
            else:
                cells.append("")
        if r["score"] is None:
            cells.append("")
        else:
            n_scorable = len(tasks) - len(r.get("unscored", []))
            cells.append(f"{r['score']:.3f}" + ("" if r["tasks_scored"] == n_scorable or as_csv
                                                 else f" ({r['tasks_scored']}/{n_scorable} tasks)"))
        if has_precision:
            cells.append("" if r["precision"] is None else f"{r['precision']:.3f}")
        table.append(cells)
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(table)
        return out.getvalue().rstrip("\n")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    unscored = rows[0].get("unscored", []) if rows else []
    if unscored:
        lines.append(f"\nNot in the score (best test MAE is 0, so they cannot rank): {', '.join(unscored)}")
    return "\n".join(lines)
