import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bench
import common
import ppo
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent


def test_quick_small_through_the_command_line():
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, str(ROOT / "bench.py"), "small", "--quick"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    chosen = re.search(r"cpu threads: (\d+) \(\d+ cores, [\d.]+ busy\)", out.stderr)  # common.set_cpu_threads
    estimators = ["gae", "rloo", "grpo", "dr_grpo", "reinforce_pp"]
    assert [r["name"] for r in records] == ["matmul", "sft_step", "sampling", "dpo_step", "dpo_step_ref_each_step",
                                            "reward_step", "ppo_iteration", "ppo_generation", "ppo_scoring",
                                            "ppo_update", *(f"iteration_{a}" for a in estimators)]
    for r in records:
        assert r["value"] > 0 and r["unit"] and r["workload"] == "small --quick"
        assert set(r["machine"]) == {"cpu", "cores", "torch", "threads", "device"}
        assert r["machine"]["threads"] == int(chosen[1]) and r["machine"]["device"] == "cpu"
    steps = [r for r in records if "matmul_share" in r]
    assert [r["name"] for r in steps] == ["sft_step", "dpo_step", "dpo_step_ref_each_step", "reward_step", "ppo_update"]
    assert all(r["matmul_share"] > 0 and r["model_gflop_per_s"] > 0 for r in steps)
    parts = {r["name"]: r["value"] for r in records if r["name"].startswith("ppo_")}
    # one step each: the parts add up to the whole
    assert abs(parts["ppo_generation"] + parts["ppo_scoring"] + parts["ppo_update"] - parts["ppo_iteration"]) < 1e-3
    # an iteration of each estimator at ppo.py's defaults, as many replies each: the group methods 4 to a prompt
    iterations = {r["name"].removeprefix("iteration_"): r for r in records if r["name"].startswith("iteration_")}
    for advantage, r in iterations.items():
        assert r["unit"] == "s" and r["rollout_s"] > 0 and r["update_s"] > 0
        assert abs(r["rollout_s"] + r["update_s"] - r["value"]) < 1e-3
        assert (r["replies"], r["minibatch"], r["ppo_epochs"]) == (4, 4, ppo.Config.ppo_epochs)
        assert r["samples_per_prompt"] == (4 if advantage in ppo.GROUP_BASELINES else 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the gpt2 workload runs where there is a GPU")
def test_gpt2_needs_cuda():
    # a generous limit: on a loaded machine starting python and torch alone can take a minute
    out = subprocess.run([sys.executable, str(ROOT / "bench.py"), "gpt2"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "needs a CUDA GPU" in out.stderr and not out.stdout


def test_pass_flops_counts_each_matmul():
    cfg = GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=2)
    # 12 d² weights = 48, times 2 FLOPs, times 3 sequences of 4 tokens; attention 4 d per key seen (1+2+3+4 keys);
    # the vocabulary projection 2 d V at 5 positions
    assert bench.pass_flops(cfg, 3, 4, 5) == 2 * 48 * 12 + 4 * 2 * 3 * 10 + 2 * 2 * 10 * 5


def test_generation_without_cache_samples_what_generate_samples():
    """The baseline the KV cache is compared against draws the same tokens from the same random numbers."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    idx = torch.randint(1, 50, (3, 5))
    mask = torch.ones_like(idx)
    cached, _ = model.generate(idx, mask, 8, eot_id=50, temperature=0.7, generator=torch.Generator().manual_seed(1))
    recomputed = bench.generate_without_cache(model, idx, mask, 8, 0.7, torch.Generator().manual_seed(1))
    assert torch.equal(cached, recomputed)


def test_threads_are_the_cores_free_at_the_start(monkeypatch, capsys):
    """common.set_cpu_threads: the cores less those busy now, rounded, at least one; else OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    try:
        for busy, threads in [(0.2, 4), (1.6, 2), (3.7, 1), (9.0, 1)]:
            monkeypatch.setattr(common, "busy_cores", lambda: busy)
            common.set_cpu_threads()
            assert torch.get_num_threads() == threads
            assert capsys.readouterr().err == f"cpu threads: {threads} (4 cores, {busy:.1f} busy)\n"
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        common.set_cpu_threads()
        assert torch.get_num_threads() == 3 and capsys.readouterr().err == "cpu threads: 3 (OMP_NUM_THREADS)\n"
    finally:
        torch.set_num_threads(1)  # as conftest set it


@pytest.mark.parametrize("installed", [True, False])
def test_sampling_is_compared_with_hugging_face_where_transformers_is_installed(installed, monkeypatch, capsys):
    if installed:
        pytest.importorskip("transformers")
    else:
        monkeypatch.setitem(sys.modules, "transformers", None)  # import fails, as where it is not installed
    w = {**bench.WORKLOADS["small"], **bench.QUICK}
    [record] = bench.sampling(w, bench.Timer(common.setup_runtime("cpu", "float32"), 1, 1, 8))
    if installed:
        assert record["speedup_over_hf"] == pytest.approx(record["value"] / record["hf_tokens_per_s"])
    else:
        assert "hf_tokens_per_s" not in record
        assert "since transformers is not installed" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux's /proc/stat")
def test_busy_cores_sees_a_job_that_just_started(tmp_path):
    """A spinning process counts at once, where the 1-minute load average would take a minute to show it."""
    idle = common.busy_cores()
    if idle > os.cpu_count() - 1:
        pytest.skip("no free core for the spinning process to show on")
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.5)
        assert common.busy_cores() > idle + 0.5
    finally:
        spinner.wait()
