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


def test_with_retrieval_split_the_choice_weighs_both_measures_on_validation(report):
    """Given validation and test retrieval (the validation and the test groups' tiles as
    queries), the configuration is chosen by the harmonic mean of its masked validation
    score and its validation retrieval over the best model's; the masked-only choice is
    named when it differs, and test retrieval is reported beside knn --eval's."""
    maes = {"tagpool": 2.0, "tagcount": 2.5, "geojepa-M": 1.0, "geojepa-M-seed1": 1.0,   # best masked
            "geojepa-R": 1.25, "geojepa-R-seed1": 1.25}                                  # best retrieval
    probes = [probe(m, t, mae, mae) for m, mae in maes.items() for t in ("a", "b")]
    retrieval = [{"model": m, "precision_mean": 0.4} for m in maes]
    split = {"tagpool": {"val": 0.4, "test": 0.41}, "tagcount": {"val": 0.5, "test": 0.52},
             "geojepa-M": {"val": 0.3, "test": 0.3}, "geojepa-M-seed1": {"val": 0.3, "test": 0.32},
             "geojepa-R": {"val": 0.6, "test": 0.61}, "geojepa-R-seed1": {"val": 0.6, "test": 0.63}}
    text = "\n".join(report._headline(probes, retrieval, split))
    # M: masked 1, retrieval 0.5 → 2/3; R: masked 0.8, retrieval 1 → 0.889
    assert "GeoJEPA is `geojepa-R` (2 pretraining seeds)" in text
    assert "the masked validation score alone the choice would be `geojepa-M`" in text
    assert "| geojepa-R | mlp | 2 | 0.800 ± 0.000 | 0.600 ± 0.000 | 0.889 ± 0.000 |" in text
    assert "| geojepa-M | mlp | 2 | 1.000 ± 0.000 | 0.300 ± 0.000 | 0.667 ± 0.000 |" in text
    assert "| geojepa-R (mlp) | 1.000 ± 0.000 | 0.620 ± 0.014 | 0.400 ± 0.000 | 2 |" in text  # test: relative to R
    assert "| tagcount (mlp) | 0.500 | 0.520 | 0.400 | 1 |" in text
    assert "GeoJEPA is `geojepa-M`" in "\n".join(report._headline(probes, retrieval))   # masked alone


def test_split_retrieval_reads_the_halves_knn_eval_split_wrote(report):
    """report.py takes validation and test retrieval from `knn --eval --split val|test`
    results; a model with one half only has no split retrieval."""
    results = [{"model": "a", "precision_mean": 0.5}, {"model": "a", "precision_mean": 0.4, "query_split": "val"},
               {"model": "a", "precision_mean": 0.6, "query_split": "test"},
               {"model": "b", "precision_mean": 0.3, "query_split": "val"}]
    assert report.split_retrieval(results) == {"a": {"val": 0.4, "test": 0.6}}
