from gjp.tagfilter import TagFilter, read_filter_file


def test_default_filter_drops_noise_keeps_meaning():
    f = TagFilter()
    tags = [("building", "yes"), ("source", "bing"), ("source:geometry", "survey"),
            ("tiger:county", "X"), ("name", "Main St"), ("name:fr", "Rue"), ("FIXME", "check"),
            ("wikidata", "Q1"), ("brand:wikidata", "Q2"), ("alt_name", "B"), ("created_by", "JOSM"),
            ("highway", "residential"), ("note", "x"), ("old_name:1990", "y")]
    assert f.apply(tags) == {"building": "yes", "name": "Main St", "highway": "residential"}


def test_exceptions_and_files(tmp_path):
    path = tmp_path / "filter.txt"
    path.write_text("# my filter\nname:*\n!name:en   # keep English\naddr:*\n")
    f = TagFilter.from_options(path)
    assert read_filter_file(path) == ["name:*", "!name:en", "addr:*"]
    assert f.apply([("name:en", "A"), ("name:de", "B"), ("addr:street", "C"), ("source", "D")]) == {
        "name:en": "A", "source": "D"}


def test_cli_style_additions():
    f = TagFilter.from_options(None, drop=["building:levels"], keep=["source"])
    assert f.apply([("building:levels", "3"), ("source", "x"), ("source:date", "y")]) == {"source": "x"}
