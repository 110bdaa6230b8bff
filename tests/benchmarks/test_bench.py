"""The throughput benchmark runs end to end on the CPU in its tiny mode (not a timed test)."""

import dataclasses
import json

import pytest
import torch

from benchmarks.bench import TINY, BenchConfig, count_flops_per_pair, main, make_tiny_split, run_bench

pytestmark = pytest.mark.slow  # the benchmark itself


HEADLINE_KEYS = {
    "device",
    "torch",
    "date",
    "image_size",
    "reference_b1_pairs_per_s",
    "fast_b1_pairs_per_s",
    "fast_best_batch",
    "fast_best_pairs_per_s",
    "compile_seconds",
    "phases_ms",
    "flops_per_pair",
}


def test_tiny_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "reference (fp32, eager, DataLoader)" in table and "x ref" in table and "% peak" in table
    report = json.loads(out.read_text())
    assert set(report) >= HEADLINE_KEYS
    assert report["device"] == "cpu" and report["image_size"] == TINY.image_size
    measured = {m["key"]: m for m in report["modes"] if "pairs_per_s" in m}
    # On the CPU: no graphs, no bf16; every other mode runs, compile through aot_eager.
    assert {
        "reference_b1",
        "fast_b1",
        "fast_b4",
        "fast_compile_b4",
        "fast_compile_b2",
        "fast_compile_b1",
    } <= set(measured)
    assert measured["reference_b1"]["ratio_to_reference"] == 1.0
    assert report["fast_best_pairs_per_s"] == max(m["pairs_per_s"] for m in measured.values() if m["fast"])
    assert all(m["first_step_s"] is not None for m in measured.values() if m["fast"])
    assert set(report["phases_ms"]["fast_b1"]) == {"upload", "data", "G step", "pools", "D step"}


def test_budget_skips_the_remaining_modes(tmp_path):
    split = make_tiny_split(tmp_path / "split", size=TINY.load_size)
    cfg = dataclasses.replace(TINY, budget_s=0.0)
    report = run_bench(split, cfg, torch.device("cpu"), tmp_path / "b.json", echo=lambda _m: None)
    assert all("skipped" in m for m in report["modes"])
    assert (
        report["reference_b1_pairs_per_s"] is None and json.loads((tmp_path / "b.json").read_text())["modes"]
    )


def test_flops_per_pair_at_the_paper_settings():
    flops = count_flops_per_pair(BenchConfig())
    # The reference freezes D during the G step; the 236.8 GFLOP also counts D's weight
    # gradients there (2 x 1.51 GFLOP): 233.76 + 3.02 = 236.78.
    assert flops / 1e9 == pytest.approx(233.76, abs=0.01)
