"""Contracts between parts that are built separately: they must agree."""

from __future__ import annotations

import re
from pathlib import Path

from node.store.db import MIGRATIONS_DIR
from node.store.lesions import EMBEDDING_DIM

REPO = Path(__file__).resolve().parents[2]


def test_embedding_dimension_matches_model_and_schema() -> None:
    config = (REPO / "triton_models" / "cpu" / "lesion_embedder" / "config.pbtxt").read_text()
    output = config[config.index("output"):]
    block = output[output.index('name: "embedding"'):]
    dims = re.search(r"dims:\s*\[\s*([\d\s,]+)\]", block).group(1)
    assert [int(d) for d in dims.split(",")] == [EMBEDDING_DIM]
    latest = [p.read_text() for p in sorted(MIGRATIONS_DIR.glob("*.sql")) if "vector(" in p.read_text()][-1]
    assert f"vector({EMBEDDING_DIM})" in latest


def test_every_command_module_registers() -> None:
    from node.cli import build_parser

    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    for name in ("up", "down", "status", "send", "worker", "jobs", "rerun", "db", "demo", "viewer", "analyze",
                 "inspect", "synth", "train", "eval", "tracks", "similar", "bench"):
        assert name in choices, name
