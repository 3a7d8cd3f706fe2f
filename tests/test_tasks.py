"""`gjp mktask`: labels by known answers, masking, splits, statistics, the spec language."""

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from gjp import grid
from gjp.dataset.format import decode, open_dataset
from gjp.dataset.pack import pack_dataset
from gjp.errors import GjpError
from gjp.tasks.make import make_task
from gjp.tasks.spec import BUILTIN, load_spec, parse_spec
from gjp.tasks.speed import parse_speed

TX, TY = 18048, 25957  # Charlotte, NC


def tile_point(dx, dy, fx=0.5, fy=0.5):
    w, s, e, n = grid.tile_bounds(TX + dx, TY + dy, 16)
    return w + fx * (e - w), n - fy * (n - s)


def node(i, dx, dy, fx, fy, tags=""):
    lon, lat = tile_point(dx, dy, fx, fy)
    return f"n{i} v1 x{lon:.7f} y{lat:.7f}" + (f" T{tags}" if tags else "")


@pytest.fixture
def fixture_dataset(opl, tmp_path, build_graphs):
    """Four tiles with known labels:
    (0,0) 3 traffic signals, a signalled crossing, a 30 mph residential road;
    (1,0) a footbridge (bridge=yes on a footway) and a road without maxspeed;
    (2,0) a bridge carrying a primary road with maxspeed=DE:zone30 (relation-tagged too);
    (3,0) benches only (no road)."""
    lines = [node(1, 0, 0, .2, .2, "highway=traffic_signals"), node(2, 0, 0, .4, .2, "highway=traffic_signals"),
             node(3, 0, 0, .6, .2, "highway=traffic_signals"), node(4, 0, 0, .8, .2, "crossing=traffic_signals"),
             node(5, 0, 0, .1, .5), node(6, 0, 0, .9, .5),
             "w10 v1 Thighway=residential,maxspeed=30%20%mph Nn5,n6",
             node(11, 1, 0, .1, .5), node(12, 1, 0, .9, .5), node(13, 1, 0, .1, .7), node(14, 1, 0, .9, .7),
             "w20 v1 Thighway=footway,bridge=yes,layer=1 Nn11,n12", "w21 v1 Thighway=service Nn13,n14",
             node(21, 2, 0, .1, .5), node(22, 2, 0, .9, .5),
             "w30 v1 Thighway=primary,bridge=yes,maxspeed=DE:zone30 Nn21,n22",
             "r40 v1 Ttype=bridge,man_made=bridge,name=Big%20%Bridge Mw30@outer",
             node(31, 3, 0, .2, .5, "amenity=bench"), node(32, 3, 0, .5, .5, "amenity=bench")]
    graphs = build_graphs(opl("\n".join(lines)), tmp_path)
    pack_dataset(graphs, tmp_path / "dataset.h5", min_tag_count=1)
    return tmp_path / "dataset.h5"


def labels_of(task_dir):
    return {r["tile"]: r["label"] for r in pq.read_table(task_dir / "labels.parquet").to_pylist()}


def keep_all(name):
    return dataclasses.replace(load_spec(name), keep_zero=1.0)


def test_labels_by_known_answers(fixture_dataset, tmp_path):
    t = [grid.tile_name(16, TX + dx, TY) for dx in range(4)]
    out = tmp_path / "tasks"
    make_task(keep_all("traffic_signals"), fixture_dataset, out / "ts")
    assert labels_of(out / "ts") == {t[0]: 3, t[1]: 0, t[2]: 0, t[3]: 0}
    make_task(keep_all("bridge"), fixture_dataset, out / "bridge")
    assert labels_of(out / "bridge") == {t[0]: 0, t[1]: 1, t[2]: 1, t[3]: 0}
    make_task(keep_all("car_bridge"), fixture_dataset, out / "car")
    assert labels_of(out / "car") == {t[0]: 0, t[1]: 0, t[2]: 1, t[3]: 0}  # a footbridge carries no car
    report = make_task(keep_all("max_speed"), fixture_dataset, out / "speed")
    labels = labels_of(out / "speed")
    assert labels[t[0]] == pytest.approx(30 * 1.609) and labels[t[2]] == 30 and labels[t[3]] == -100
    assert t[1] not in labels and report.dropped_unparsed == 1  # roads, but no speed


def test_masked_inputs_hide_the_label(fixture_dataset, tmp_path):
    spec = keep_all("bridge")
    make_task(spec, fixture_dataset, tmp_path / "bridge-masked", masked=True)
    with open_dataset(tmp_path / "bridge-masked" / "dataset.h5") as f:
        keys, values = decode(f["strings/keys"][()]), decode(f["strings/values"][()])
        pairs = {(keys[k], values[v]) for k, v in zip(f["entities/tag_key_ids"][()], f["entities/tag_value_ids"][()])}
        vocab = decode(f["vocab/tags"][()])
        ids = f["entities/tag_ids"][()]
        assert np.all(np.diff(f["entities/tag_offsets"][()]) > 0)  # no entity without tags
        assert f.attrs["masked_task"] == "bridge"
    assert not [p for p in pairs if spec.masks(*p)]
    assert ("highway", "footway") in pairs and ("name", "Big Bridge") in pairs  # the relation stays, unmasked part
    assert not any(vocab[i].startswith(("bridge", "layer", "man_made=bridge")) for i in ids)
    # the unmasked variant points at the full dataset instead
    make_task(spec, fixture_dataset, tmp_path / "bridge")
    info = json.loads((tmp_path / "bridge" / "task.json").read_text())
    assert (tmp_path / "bridge" / info["dataset"]).resolve() == fixture_dataset.resolve()


def test_masking_drops_entities_left_without_tags(fixture_dataset, tmp_path):
    report = make_task(keep_all("traffic_signals"), fixture_dataset, tmp_path / "ts-masked", masked=True)
    assert report.dropped_entities == 4  # three signals and the crossing had nothing else
    with open_dataset(tmp_path / "ts-masked" / "dataset.h5") as masked, open_dataset(fixture_dataset) as full:
        assert len(masked["entities/kind"]) == len(full["entities/kind"]) - 4
        assert len(masked["graph/node_offsets"]) == len(masked["entities/kind"]) + 1


def test_real_extract_labels_match_an_independent_count(monaco_dataset, tmp_path):
    _, graphs, path = monaco_dataset
    expected = {}
    for f in graphs.glob("*.parquet"):
        for r in pq.read_table(f, columns=["tile", "tags"]).to_pylist():
            tags = dict(r["tags"])
            expected.setdefault(r["tile"], 0)
            expected[r["tile"]] += "building" in tags and tags["building"] != "no"
    make_task(keep_all("building_count"), path, tmp_path / "b")
    assert labels_of(tmp_path / "b") == expected
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    labels = pq.read_table(tmp_path / "b" / "labels.parquet").to_pylist()
    train = [r["label"] for r in labels if r["split"] == "train"]
    test = [r["label"] for r in labels if r["split"] == "test"]
    assert stats["dummy"]["prediction"] == np.median(train)
    assert stats["splits"]["test"]["dummy_mae"] == pytest.approx(np.mean(np.abs(np.array(test) - np.median(train))))


def test_splits_are_by_group_shared_and_seeded(monaco_dataset, tmp_path):
    _, _, path = monaco_dataset
    tasks = tmp_path / "tasks"
    for name in BUILTIN:
        make_task(load_spec(name), path, tasks / name)
    splits = dict(line.split(",") for line in (tasks / "splits.csv").read_text().split()[1:])
    assert set(splits.values()) == {"train", "val", "test"}
    for name in BUILTIN:
        for r in pq.read_table(tasks / name / "labels.parquet").to_pylist():
            assert r["split"] == splits[r["group"]]  # one split per group, for every task
    # same seed → same files; another seed → other splits and pruning
    make_task(load_spec("bridge"), path, tmp_path / "again" / "bridge")
    assert (tasks / "splits.csv").read_bytes() == (tmp_path / "again" / "splits.csv").read_bytes()
    assert (tasks / "bridge" / "labels.parquet").read_bytes() == \
        (tmp_path / "again" / "bridge" / "labels.parquet").read_bytes()
    make_task(load_spec("bridge"), path, tmp_path / "seed1" / "bridge", seed=1)
    assert (tasks / "splits.csv").read_bytes() != (tmp_path / "seed1" / "splits.csv").read_bytes()


def test_split_fractions_cut_the_groups_when_the_table_is_made_and_never_after(monaco_dataset, tmp_path):
    from gjp.tasks.make import parse_fractions

    _, _, path = monaco_dataset
    make_task(load_spec("bridge"), path, tmp_path / "wide" / "bridge", fractions=(0.5, 0.25, 0.25))
    make_task(load_spec("bridge"), path, tmp_path / "default" / "bridge")
    def counts(directory):
        splits = [line.split(",")[1] for line in (directory / "splits.csv").read_text().split()[1:]]
        return {s: splits.count(s) for s in ("train", "val", "test")}
    wide, default = counts(tmp_path / "wide"), counts(tmp_path / "default")
    groups = sum(wide.values())
    assert wide["train"] == round(0.5 * groups) and wide["val"] == round(0.25 * groups)
    assert wide["val"] > default["val"] and wide["test"] > default["test"]
    before = (tmp_path / "wide" / "splits.csv").read_bytes()  # a second task shares the table as it is
    make_task(load_spec("building_count"), path, tmp_path / "wide" / "building_count", fractions=(0.8, 0.1, 0.1))
    assert (tmp_path / "wide" / "splits.csv").read_bytes() == before
    assert parse_fractions("0.6,0.2,0.2") == (0.6, 0.2, 0.2)
    for bad in ("0.6,0.2", "0.5,0.5,0", "a,b,c", "0.6,0.3,0.3"):
        with pytest.raises(GjpError, match="three positive shares"):
            parse_fractions(bad)


def test_zero_label_pruning_is_seeded_and_shared_by_the_masked_variant(monaco_dataset, tmp_path):
    _, _, path = monaco_dataset
    spec = load_spec("traffic_signals")
    a = make_task(spec, path, tmp_path / "t" / "traffic_signals")
    b = make_task(spec, path, tmp_path / "t" / "traffic_signals-masked", masked=True)
    assert a.pruned_zero > 0 and a.kept == b.kept
    assert labels_of(tmp_path / "t" / "traffic_signals") == labels_of(tmp_path / "t" / "traffic_signals-masked")


@pytest.mark.parametrize("value, kmh", [("50", 50), ("30 mph", 48.27), ("DE:zone30", 30), ("DE:zone:20", 20),
                                        ("DE:urban", 50), ("RU:urban", 60), ("FR:rural", 80), ("50;70", 70),
                                        ("80 km/h", 80), ("none", None), ("signals", None), ("walk", None)])
def test_speed_parsing(value, kmh):
    assert parse_speed(value) == (pytest.approx(kmh) if kmh is not None else None)


@pytest.mark.parametrize("text, message", [
    ('name = "x"\nrule = "median"\nmatch = [{a = "*"}]', "unknown rule 'median'"),
    ('name = "x"\nrule = "count"\nmatch = [{a = "*"}]\ncolour = "red"', "unknown field colour"),
    ('name = "x"\nrule = "count"', "'match' must be"),
    ('name = "x"\nrule = "max"\nmatch = [{a = "*"}]', "rule 'max' needs value"),
    ('name = "x"\nrule = "count"\nmatch = [{a = "*"}]\nkeep_zero = 2', "'keep_zero'"),
    ('name = "x"\nrule = "count"\nmatch = [{a = 3}]', "condition on 'a'"),
    ('name = "x" rule', "not valid TOML"),
])
def test_bad_specs_are_explained(text, message, tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(GjpError, match=message):
        load_spec(str(path))


def test_a_user_spec_and_unknown_names(fixture_dataset, tmp_path):
    spec = parse_spec('name = "benches"\nrule = "count"\nmatch = [{ amenity = "bench" }]\n'
                      'kinds = ["point"]\nmask = ["amenity=bench"]\n')
    make_task(spec, fixture_dataset, tmp_path / "benches")
    assert sorted(labels_of(tmp_path / "benches").values()) == [0, 0, 0, 2]
    with pytest.raises(GjpError, match="unknown task 'bridges'"):
        load_spec("bridges")


def test_builtin_specs_parse():
    for name in BUILTIN:
        spec = load_spec(name)
        assert spec.name == name and spec.mask
    assert load_spec("max_speed").missing == -100


@pytest.mark.parametrize("task", ["building_count", "max_speed"])
def test_mktask_in_tiny_blocks_gives_the_same_task(monaco_dataset, tmp_path, monkeypatch, task):
    """mktask reads and writes a block of tiles at a time: blocks of 3 tiles give the same
    labels, statistics and masked inputs as one block (Monaco has ~100 tiles), and so
    does reading the value table 5 rows at a time."""
    from gjp.dataset import tags as raw_tags

    dataset = monaco_dataset[2]
    spec = load_spec(task)
    make_task(spec, dataset, tmp_path / "one" / task, masked=True, splits=tmp_path / "splits.csv")
    monkeypatch.setattr(raw_tags, "TILES_PER_BLOCK", 3)
    monkeypatch.setattr(raw_tags, "STRING_ROWS", 5)
    make_task(spec, dataset, tmp_path / "many" / task, masked=True, splits=tmp_path / "splits.csv")
    a, b = tmp_path / "one" / task, tmp_path / "many" / task
    assert pq.read_table(a / "labels.parquet").equals(pq.read_table(b / "labels.parquet"))
    assert json.loads((a / "stats.json").read_text()) == json.loads((b / "stats.json").read_text())
    with open_dataset(a / "dataset.h5") as fa, open_dataset(b / "dataset.h5") as fb:
        names = []
        fa.visit(lambda n: names.append(n) if hasattr(fa[n], "dtype") else None)
        for name in names:
            assert np.array_equal(fa[name][()], fb[name][()]), name
