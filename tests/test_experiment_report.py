"""examples/experiments/report.py's headline: GeoJEPA is the configuration (its
pretraining seeds averaged) with the best validation score among complete runs with the
most seeds, and its test numbers are reported over those seeds."""


import pytest


@pytest.fixture(scope="module")
def report(script_module):
    return script_module("examples/experiments/report.py")


def probe(model, task, val, test):
    return {"model": model, "task": task, "head": "mlp", "val_mae_mean": val, "val_mae_sd": 0.0,
            "test_mae_mean": test, "test_mae_sd": 0.0, "dummy": {"val_mae": 10.0, "test_mae": 10.0}}


def test_the_headline_averages_seeds_and_ignores_incomplete_runs(report):
    # val MAE per model (lower is better) on two tasks; test MAE alike
    maes = {"tagpool": (2.0, 2.0), "tagcount": (2.2, 1.9),
            "geojepa-A": (1.0, 3.0), "geojepa-A-seed1": (6.0, 3.2),    # best single val, worse mean
            "geojepa-B": (1.5, 1.5), "geojepa-B-seed1": (1.6, 1.7), "geojepa-B-seed2": (1.7, 1.6)}
    probes = [probe(m, t, val, test) for m, (val, test) in maes.items() for t in ("a", "b")]
    probes.append(probe("geojepa-C", "a", 0.5, 0.5))                  # one task only: never chosen
    probes += [probe("geojepa-D", t, 1.2, 1.2) for t in ("a", "b")]   # the best mean, but one seed only
    retrieval = [{"model": m, "precision_mean": p} for m, p in
                 (("tagpool", 0.4), ("tagcount", 0.5), ("geojepa-B", 0.3), ("geojepa-B-seed1", 0.2),
                  ("geojepa-B-seed2", 0.4))]
    assert report.configuration("geojepa-B-seed12") == "geojepa-B" and report.configuration("geojepa-B") == "geojepa-B"
    lines = report._headline(probes, retrieval)
    text = "\n".join(lines)
    assert "GeoJEPA is `geojepa-B` (3 pretraining seeds)" in text and "geojepa-C" not in text
    assert "| geojepa-D | mlp | 1 |" in text                          # listed, not chosen
    row = next(line for line in lines if line.startswith("| geojepa-B (mlp) |"))
    # test scores relative to the best test MAE of these rows (1.5): 1, 1.5/1.7, 1.5/1.6
    scores = [1.0, 1.5 / 1.7, 1.5 / 1.6]
    mean = sum(scores) / 3
    sd = (sum((s - mean) ** 2 for s in scores) / 2) ** 0.5
    assert row == f"| geojepa-B (mlp) | {mean:.3f} ± {sd:.3f} | 0.300 ± 0.100 | 3 |"
    assert "| geojepa-A | mlp | 2 |" in text            # every configuration's validation is listed
    assert "| tagcount (mlp) | 0.789 | 0.500 | 1 |" in text  # 1.5 / 1.9
    from gjp.evaluate.score import score_table

    table = report._configurations(probes, retrieval, score_table(probes, retrieval)[1])
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in table if line.startswith("| geojepa")}
    assert rows["geojepa-B"][:2] == ["3", "2"] and rows["geojepa-C"][:2] == ["1", "1"]
    assert rows["geojepa-B"][-1] == "0.300 ± 0.100 |"          # precision@k over the three seeds


def test_tasks_no_model_beats_the_dummy_on_are_named(report):
    probes = [probe("tagpool", "a", 1.0, 11.0), probe("geojepa-A", "a", 2.0, 12.0),   # dummy wins test only
              probe("tagpool", "b", 10.0, 10.0), probe("geojepa-A", "b", 12.0, 13.0),  # ties or wins both
              probe("tagpool", "c", 1.0, 1.0), probe("geojepa-A", "c", 11.0, 1.0),     # a model wins both
              probe("tagpool", "d", 9.9, 10.0), probe("geojepa-A", "d", 10.0, 10.0)]   # one beats it on val
    assert report.dummy_wins(probes) == {"a": ["test"], "b": ["val", "test"], "d": ["test"]}
    text = "\n".join(report._per_task(["a", "b", "c"], probes))
    assert "`a` (test); `b` (val and test)" in text
