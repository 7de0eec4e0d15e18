# The two commands of the README: `make demo` and `make test`. Both start with `make setup`.
# `make demo ROWS=3000` runs the demo on the first 3,000 rows of the sample (default 10,000).
ROWS ?= 10000
SECONDS ?= 180
.PHONY: setup demo test stack-down

setup:
	bash ops/setup.sh

demo: setup
	.venv/bin/streamrank demo --rows $(ROWS) --seconds $(SECONDS)

test: setup
	.venv/bin/python -m pytest -q

stack-down:
	.venv/bin/streamrank stack down
