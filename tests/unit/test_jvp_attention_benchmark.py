"""benchmarks/jvp_attention.py --quick on the CPU (Triton's interpreter): its code paths run, its JSON and
table come out, and the kernel agrees with the float64 reference there. The figures come from the GPU run."""
import json
import os

import pytest

pytest.importorskip("triton")

from benchmarks import jvp_attention  # noqa: E402


def test_quick_benchmark_writes_rows_that_agree_with_the_reference(tmp_path, capsys):
    out = tmp_path / "jvp_attention.json"
    interpret_before = os.environ.get("TRITON_INTERPRET")
    jvp_attention.main(["--quick", "--out", str(out), "--fresh"])
    result = json.loads(out.read_text())
    assert {row["shape"] for row in result["rows"]} == {name for name, _ in jvp_attention.SHAPES["quick"]}
    for row in result["rows"]:
        for impl in ("ours", "ours_dual", "math"):
            assert row[impl]["ms"] > 0, (row["shape"], impl)
            assert row[impl]["tangent_err"] < 3e-2 and row[impl]["primal_err"] < 3e-2, (row["shape"], impl)
        assert "skipped" in row["jvpfa"] and "skipped" in row["ours_autotuned"]  # CUDA only
    assert "| tiny cross d64" in capsys.readouterr().out
    assert os.environ.get("TRITON_INTERPRET") == interpret_before  # the smoke's setting does not leak
    # a second command merges into the same file: its rows replace re-measured ones, others stay
    out.write_text(json.dumps({"runs": [{"command": "earlier"}], "rows": [
        {"shape": "kept", "dtype": "bfloat16"}, {"shape": "tiny self d40", "dtype": "bfloat16", "old": True}]}))
    jvp_attention.main(["--quick", "--out", str(out)])
    merged = json.loads(out.read_text())
    assert [r["shape"] for r in merged["rows"]].count("tiny self d40") == 1
    assert {"kept", "tiny cross d64"} <= {r["shape"] for r in merged["rows"]}
    assert not any(r.get("old") for r in merged["rows"]) and len(merged["runs"]) == 2
    capsys.readouterr()
    jvp_attention.main(["--table", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| tiny self d40" in printed and "| kept" in printed
