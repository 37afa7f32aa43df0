# `make demo` runs the main job, `make test` the test suite; both set up .venv first.
.PHONY: setup browser demo test lint reliability

setup: .venv/.installed

.venv/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

# Chromium renders the run report in a test; installed when missing (root with apt-get).
browser:
	bash scripts/setup-browser.sh

demo: setup
	.venv/bin/lofipipe demo

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: setup browser
	.venv/bin/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The bad inputs and injected faults, with their outcomes written to docs/reliability.md.
reliability: setup browser
	LOFIPIPE_RELIABILITY_DOC=docs/reliability.md .venv/bin/python -m pytest -m reliability

# Formatting, lint and types, as CI and the pre-commit hooks check them.
lint: setup
	.venv/bin/ruff format --check lofipipe tests bench
	.venv/bin/ruff check lofipipe tests bench
	.venv/bin/mypy
