"""`ainode bench outputs` runs end to end on a small study and prints its ratios."""

from __future__ import annotations

import re

from node.cli import main


def test_bench_outputs_small_study(capsys):
    code = main(["bench", "outputs", "--slices", "12", "--size", "64", "--lesions", "3", "--repeat", "1",
                 "--limit", "1.0"])
    out = capsys.readouterr().out
    assert "Analyzer, four models, ONNX Runtime on CPU" in out or "models: not available" in out
    share = float(re.search(r"ratio outputs / total processing time: ([0-9.]+)", out).group(1))
    assert 0.0 < share < 1.0 and code == 0
    assert "3 lesions (0 left out)" in out
