# The node's two everyday commands: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
AINODE := $(VENV)/bin/ainode

.PHONY: install install-train demo test test-fast lint train eval bench clean down

install:
	@deploy/install.sh

install-train:
	@AINODE_EXTRAS=test,train deploy/install.sh

demo: install
	$(AINODE) demo

# The model tests train and export with torch (CPU, pinned), so the tests install it.
test: install-train
	$(VENV)/bin/pytest -q

test-fast: install-train
	$(VENV)/bin/pytest -q -m "not integration"

lint: install
	$(VENV)/bin/ruff check .

train: install-train
	$(AINODE) train all

eval: install
	$(AINODE) eval

bench: install
	$(AINODE) bench all

down:
	-$(AINODE) down

clean: down
	rm -rf .ainode
