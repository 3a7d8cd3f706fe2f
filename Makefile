# gjp: two commands do everything on a fresh machine.
#   make demo   set up .venv and run the pipeline on the bundled extract and raster
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_EXTRACTS := examples/data/li_liechtenstein_2015-07.osm.pbf examples/data/us_md_baltimore_2015-02.osm.pbf \
                 examples/data/pt_porto_2020-07.osm.pbf examples/data/fi_helsinki_2019-04.osm.pbf
DEMO_RASTER := examples/data/naip_nd_m_4709963_se_14_1_20200831_5m.tif
DEMO_DESCRIPTIONS := examples/data/geojepa_tag_descriptions.csv
DEMO_DIR := demo

.PHONY: install test demo bench clean

install: $(STAMP)

# torch/torchvision first, pinned to the builds this project is developed with (later
# issues' model steps need them); then gjp itself, editable, with the test tools; then its
# numba kernels compiled into the install's own cache, so that the first `gjp simplify`,
# `bbox` and `visibility` do not spend 10-30 s compiling (docs/PERFORMANCE.md, "Cold start").
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m gjp.geometry.warm
	touch $(STAMP)

test: install
	$(BIN)/ruff check gjp tests benchmarks examples
	$(BIN)/python -m pytest -q

demo: install
	PATH="$(abspath $(BIN)):$$PATH" DESCRIPTIONS=$(DEMO_DESCRIPTIONS) bash examples/pipeline.sh $(DEMO_DIR) $(DEMO_EXTRACTS)
	PATH="$(abspath $(BIN)):$$PATH" bash examples/imagery_pipeline.sh $(DEMO_RASTER) $(DEMO_DIR)

bench: install
	$(BIN)/python benchmarks/bench_osm.py
	$(BIN)/python benchmarks/bench_imagery.py
	$(BIN)/python benchmarks/bench_loader.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
