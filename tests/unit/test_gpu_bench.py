"""The GPU benchmark script (bench/gpu_speed.py) checked on the CPU: its model shapes are the ~1B and
~8B Llama configs it claims, its FLOP count matches the layers transformers builds, and a tiny run
prints a row per tool with real figures."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_speed.py"


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("size,billions", [("1b", 1.24), ("8b", 8.03)])
def test_the_configs_are_the_sizes_named_and_the_flop_count_counts_their_layers(size, billions):
    from transformers import AutoModelForCausalLM, LlamaConfig

    bench = _bench()
    config = bench.CONFIGS[size]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config))
    total = sum(p.numel() for p in model.parameters())
    assert total / 1e9 == pytest.approx(billions, abs=0.01)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = config["num_hidden_layers"] * config["hidden_size"] * 1000 / 2
    assert bench.model_flops_per_token(config, "full", 1000) == 6 * linear + 6 * attention
    assert bench.model_flops_per_token(config, "lora", 1000) == 4 * linear + 4 * attention


def test_a_tiny_run_on_the_cpu_prints_each_row_with_its_figures(tmp_path):
    out = tmp_path / "gpu_speed.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--rows", "8b-lora-tunery,8b-full-tunery",
                           "--steps", "2", "--batch", "2", "--tokens", "96", "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["tiny-lora-tunery", "tiny-full-tunery"]  # --tiny maps every size
    for r in rows:
        assert r["steps"] == 2 and 4 * 80 <= r["tokens"] <= 4 * 200  # 4 examples of about 96 tokens
        assert r["tok_s"] > 0 and 0 < r["mfu"] < 1 and math.isfinite(r["final_loss"]) and r["peak_mb"] > 0
        assert r["final_loss"] == pytest.approx(math.log(4096), rel=0.1)  # random weights: about uniform
        assert f"{r['row']:<18}{r['tok_s']:>10.0f}" in proc.stdout
