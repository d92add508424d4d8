import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import plot

ROOT = Path(__file__).resolve().parent.parent
# the command line with matplotlib hidden, as on a machine without it
WITHOUT_MATPLOTLIB = "import runpy, sys; sys.modules['matplotlib'] = None; sys.argv[0] = {script!r}; " \
                     "runpy.run_{kind}({target!r}, run_name='__main__')"

PPO_LINES = [
    {"step": 0, "eval/sft_gold": -0.5, "eval/sft_kl": 0.0},
    {"step": 1, "loss/policy": 0.2, "loss/value": 1.5, "objective/kl": 0.1, "objective/beta": 0.1},
    {"step": 2, "loss/policy": 0.1, "loss/value": 0.9, "objective/kl": 0.3, "objective/beta": 0.12,
     "eval/gold": 1.25, "eval/kl": 0.4, "eval/arith/gold": 2.0},
    {"step": 2, "final/gold": 1.25, "final/sft_gold": -0.5, "final/sft_length": 11.0},
]


def write_metrics(d, lines):
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))


def test_read_curves_keeps_the_series_and_the_sft_values(tmp_path):
    write_metrics(tmp_path / "ppo", PPO_LINES)
    curves, sft = plot.read_curves(tmp_path / "ppo" / "metrics.jsonl")
    assert curves == {"loss/policy": ([1, 2], [0.2, 0.1]), "loss/value": ([1, 2], [1.5, 0.9]),
                      "objective/kl": ([1, 2], [0.1, 0.3]), "objective/beta": ([1, 2], [0.1, 0.12]),
                      "eval/gold": ([2], [1.25]), "eval/kl": ([2], [0.4]), "eval/arith/gold": ([2], [2.0])}
    # the SFT values, keyed by the policy's metric they compare with; the final/ numbers repeat the last evaluation
    assert sft == {"eval/gold": -0.5, "eval/kl": 0.0, "eval/length": 11.0}
    found = plot.panels(curves, sft)
    assert [title for title, _, _ in found] == ["PPO losses", "gold score, held-out", "KL to SFT (nats)",
                                               "beta (KL coefficient)"]
    assert found[1] == ("gold score, held-out", {"eval/gold": ([2], [1.25])}, {"eval/gold": -0.5})
    assert found[2][1] == {"objective/kl": ([1, 2], [0.1, 0.3]), "eval/kl": ([2], [0.4])}


def test_without_matplotlib_it_says_how_to_install_it(tmp_path):
    write_metrics(tmp_path / "sft", [{"step": 1, "loss": 2.0}])
    code = WITHOUT_MATPLOTLIB.format(script="plot.py", kind="path", target=str(ROOT / "plot.py"))
    out = subprocess.run([sys.executable, "-c", code, "--out_dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    assert "pip install matplotlib" in out.stderr
    assert not (tmp_path / "plots").exists()


def test_draws_a_png_per_stage(tmp_path):
    pytest.importorskip("matplotlib")
    write_metrics(tmp_path / "ppo", PPO_LINES)
    write_metrics(tmp_path / "sft", [{"step": s, "loss": 3.0 / s} for s in range(1, 30)] +
                  [{"step": 30, "val_loss": 0.2, "final/val_loss": 0.2}])
    (tmp_path / "data").mkdir()  # a directory without metrics.jsonl is no stage
    out = subprocess.run([sys.executable, str(ROOT / "plot.py"), "--out_dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["ppo.png", "sft.png"]
    for png in (tmp_path / "plots").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_stage_no_plot(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        plot.main(["--out_dir", str(tmp_path)])
