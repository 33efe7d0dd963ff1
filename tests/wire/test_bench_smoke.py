"""The benchmark runs: ``python -m bench.bench --quick --only say1`` produces figures and its JSON.

Only that it measures, not what: the timing targets belong to the benchmark, not to a unit test.
The benchmark starts the real bot (``python -m bot run``) against the local fakes on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_say_benchmark_produces_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench", "--quick", "--only", "say1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "/say overhead median, concurrency 1" in proc.stdout  # the printed table

    result = json.loads(out.read_text())
    assert result["mode"] == "quick"
    assert result["scenarios"] == ["say1"]
    assert result["not_measured"] == {}
    assert result["problems"] == []
    figures = {f["name"]: f for f in result["figures"]}
    for name in ("/say overhead median, concurrency 1", "/say overhead p99, concurrency 1",
                 "start-up to ready (on_ready)", "resident memory, idle after start"):
        value = figures[name]["value"]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (name, figures[name])
    say1 = result["details"]["say1"]
    assert say1["overhead"]["n"] == 5
    assert say1["failures"] == 0
    assert result["machine"]["cpus"] >= 1


def test_quick_benchmark_with_two_processes_on_postgres_spreads_the_guilds_over_both(tmp_path: Path) -> None:
    """``--processes 2 --guilds 4``: two bot processes (one shard each) on a throwaway PostgreSQL the
    benchmark starts itself; both answer /say, and the PostgreSQL server's CPU is measured."""
    if os.environ.get("NANOVOICE_SKIP_POSTGRES") == "1":
        pytest.skip("PostgreSQL tests skipped (NANOVOICE_SKIP_POSTGRES=1)")
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench", "--quick", "--processes", "2", "--guilds", "4",
         "--only", "say64,saturation", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "/say throughput, 32 members in 4 guild(s)" in proc.stdout

    result = json.loads(out.read_text())
    assert (result["processes"], result["guilds"], result["postgres_server"]) == (2, 4, "throwaway")
    assert result["not_measured"] == {}
    assert result["problems"] == []
    delivered = result["details"]["delivered_to_shards"]
    assert set(delivered) == {"0", "1"} and min(delivered.values()) > 0, delivered  # both processes served
    saturation = result["details"]["saturation"]
    assert saturation["failures"] == 0 and saturation["replies_in_window"] > 0
    for key in ("requests_per_s", "bot_cpu_ms_per_say", "postgres_cpu_ms_per_say"):
        assert isinstance(saturation[key], int | float) and saturation[key] > 0, (key, saturation)
    assert result["details"]["say64"]["failures"] == 0
