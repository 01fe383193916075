"""scripts/benchmark.py (issue 13): its options and the rows of its table, on made-up
figures (nothing is measured here, no speed is asserted)."""

from __future__ import annotations

import importlib.util
import sys

from conftest import REPO_ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_script", REPO_ROOT / "scripts" / "benchmark.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_script"] = module
    spec.loader.exec_module(module)
    return module


def test_options_default_to_the_issue_case_and_take_a_quick_size(tmp_path):
    bench = load_script()
    default = bench.parse_args([])
    assert (default.slices, default.size, default.device, default.json) == (300, 512, "cpu", None)
    quick = bench.parse_args(["--slices", "60", "--size", "256", "--repeat", "1", "--json", str(tmp_path / "o.json")])
    assert (quick.slices, quick.size, quick.repeat, quick.json) == (60, 256, 1, tmp_path / "o.json")


def fake_case(total: float) -> dict:
    return {
        "receive_s": 1.0,
        "end_to_end_s": total + 2.0,
        "objects": ["sr", "seg", "sc", "sc"],
        "decision": "covid19",
        "timings_s": {"lung_segmentation": total / 2, "classification": total / 2, "total": total},
        "steps_s": {
            "to series complete": 0.01,
            "load series, chain": total + 0.5,
            "of which the chain": total,
            "build + write objects": 1.0,
            "deliver to storescp": 0.49,
        },
        "rss_steps_mib": {
            "to series complete": 500.0,
            "load series, chain": 1400.0,
            "build + write objects": 1200.0,
            "deliver to storescp": 900.0,
        },
        "rss_receive_mib": 500.0,
        "rss_analysis_mib": 1400.0,
        "vmhwm_mib": 1450.0,
    }


def test_table_has_every_row(capsys):
    bench = load_script()
    bench.print_receive(
        {"1": {"storescp": 600.0, "node": 300.0, "ratio": 0.5}, "8": {"storescp": 700.0, "node": 700.0, "ratio": 1.0}},
        300,
        512,
        3,
    )
    bench.print_end_to_end(
        {"rss_ready_mib": 450.0, "cold": fake_case(9.0), "warm": fake_case(8.0), "vmhwm_mib": 1450.0}
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.split()[:4] == ["1", "600", "300", "0.50"] for line in lines)
    assert any(line.split()[:5] == ["8", "(--fork)", "700", "700", "1.00"] for line in lines)
    assert any(line.split()[:5] == ["cold", "11.00", "9.00", "2.00", "1.00"] for line in lines)
    assert any(line.split()[:3] == ["warm", "10.00", "8.00"] for line in lines)
    assert any(line.split() == ["lung_segmentation", "4.50", "4.00"] for line in lines)
    assert any(line.split()[:3] == ["total", "9.00", "8.00"] for line in lines)
    assert any(line.split() == ["load", "series,", "chain", "9.50", "8.50", "1400", "1400"] for line in lines)
    assert any(line.split()[:4] == ["deliver", "to", "storescp", "0.49"] for line in lines)
    assert "peak RSS (VmHWM): 1450 MiB" in out and "reached in the step 'load series, chain'" in out
