"""The demo's pipeline (examples/pipeline.sh) end to end, on the smallest extract it
works on: every step, through the command line, as a user runs it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_pipeline_script_runs_end_to_end(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DESCRIPTIONS": str(ROOT / "examples/data/geojepa_tag_descriptions.csv")}
    run = subprocess.run(["bash", str(ROOT / "examples/pipeline.sh"), str(tmp_path / "ws"),
                          str(ROOT / "examples/data/li_liechtenstein_2015-07.osm.pbf")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | bridge-masked | building_count-masked | car_bridge-masked")
    assert {line.split(" | ")[0] for line in table[1:]} == {"| tagpool (mlp)", "| tagcount (mlp)",
                                                          "| geojepa-TG (mlp)", "| Dummy (train median)"}
    ws = tmp_path / "ws"
    assert len(list((ws / "results").glob("*__mlp.json"))) == 15  # 3 models × 5 tasks
    for model in ("tagcount", "tagpool", "geojepa-TG"):
        assert (ws / "results" / f"{model}__knn.json").exists()
    # the tiny GeoJEPA: pretrained on the geometry encoder's run, then embedded like a baseline
    jepa = ws / "runs" / "geojepa-TG"
    assert (jepa / "config.json").exists() and (jepa / "checkpoint.pt").exists()
    summary = json.loads((jepa / "summary.json").read_text())
    assert summary["epochs"] == 8 and math.isfinite(summary["val_loss"])
    assert len(list((ws / "embeddings").glob("geojepa-TG__*-masked.h5"))) == 5
    assert (ws / "embeddings" / "geojepa-TG.h5").exists()
    gallery = (ws / "gallery.html").read_text()
    assert gallery.count("class='card") == 9 and "<svg" in gallery  # the query and 8 neighbours
    # tile neighbours are rank, tile, distance; entity neighbours add the OSM id
    neighbours = [line for line in out.splitlines() if line[:1].isdigit() and "\t16_" in line]
    assert sum(line.count("\t") == 2 for line in neighbours) == 8
    assert sum(line.count("\t") == 3 for line in neighbours) == 8
    # the geometry encoder's part: a run (trained first: GeoJEPA's G tokens need it), entity
    # embeddings, a gallery of 9 shapes
    assert (ws / "runs" / "polygnn-osm" / "model.pt").exists()
    shapes = (ws / "shapes-gallery.html").read_text()
    assert shapes.count("<svg") == 9 and "building" in shapes
