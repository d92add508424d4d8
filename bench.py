"""
How fast the real training code runs: one JSON line per measurement, each naming the machine it ran on.

Every workload is built from the stages' own functions (sft.sft_loss, dpo.dpo_loss, reward.preference_loss,
ppo.rollout and ppo.ppo_update, for PPO and for each of ppo.py's --advantage estimators, GPT.generate) on random
weights and random token ids, so a change to the code shows up here. Each training step reports its model FLOP/s
as a share of the rate at which the same machine, in the same run, multiplies two square matrices: the distance to
the limit, read in one run on any machine. Times are medians over several steps after a warm-up.

    python bench.py small     # CPU: 6 layers, width 384, vocabulary 4096, fp32
    python bench.py gpt2      # CUDA: GPT-2 124M at context 1024, bf16, the SFT step compiled
    python bench.py small --quick   # tiny shapes, one step each: checks that everything runs
"""

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import dpo
import ppo
import reward
import sft
from common import frozen, setup_runtime
from model import GPT, GPTConfig, RewardModel, sample_token

# Shapes, from the issue that asked for this benchmark. (sequences, tokens) for SFT; (prompts, prompt tokens,
# new tokens) for sampling and PPO; (replies, prompt tokens, new tokens) for each estimator's iteration; (pairs,
# prompt tokens, response tokens) for DPO and the reward model.
WORKLOADS = {
    "small": dict(device="cpu", dtype="float32", model=GPTConfig(256, 4096, 6, 6, 384), matmul=1024,
                  sft=(16, 128), sampling=(32, 32, 64), dpo=(8, 32, 64), dpo_ref_each_step=True, reward=(8, 32, 64),
                  ppo=(32, 32, 48), estimators=(32, 32, 48)),
    "gpt2": dict(device="cuda", dtype="bfloat16", model=GPTConfig(1024, 50257, 12, 12, 768), matmul=8192,
                 compile=True, sft=(16, 1024), rollout=(256, 128, 128), dpo=(8, 512, 512)),
}
QUICK = dict(model=GPTConfig(64, 128, 2, 2, 32), matmul=64, sft=(2, 16), sampling=(2, 8, 8), rollout=(2, 8, 8),
             dpo=(2, 8, 8), reward=(2, 8, 8), ppo=(2, 8, 8), estimators=(4, 8, 8))
# dense bf16 peaks of the GPUs we know, for MFU (first match in the device name); elsewhere the share of the
# measured matmul rate stands alone
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]


def machine(rt):
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "cpu"}


class Timer:
    """
    Times steps, and beside each the matmul rate of that moment: on a shared machine the rate moves with the
    load, so each step is compared with the rate measured right after it, back to back.
    """

    def __init__(self, rt, warmup, steps, n):
        self.rt, self.warmup, self.steps = rt, warmup, steps
        self.a, self.b = (torch.randn(n, n, device=rt.device, dtype=rt.dtype) for _ in range(2))

    def clock(self):
        if self.rt.device.type == "cuda":
            torch.cuda.synchronize(self.rt.device)
        return time.perf_counter()

    def matmul_rate(self, repeats=3):
        """FLOP/s of the product of the two square matrices: the median of repeats products."""
        times = []
        for _ in range(repeats):
            t0 = self.clock()
            self.a @ self.b
            times.append(self.clock() - t0)
        return 2 * self.a.size(0) ** 3 / statistics.median(times)

    def __call__(self, fn, warmup=None):
        """[(seconds, matmul FLOP/s right after)] of self.steps calls of fn, after untimed warm-up calls."""
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        times = []
        for _ in range(self.steps):
            t0 = self.clock()
            fn()
            times.append((self.clock() - t0, self.matmul_rate()))
        return times


def step_record(name, times, flops, amount=None, unit="s"):
    """
    A training step of `flops` model FLOPs: amount per second (without one, seconds), its model FLOP/s, and their
    share of the matmul rate, each step against the rate measured right after it.
    """
    t = statistics.median(s for s, _ in times)
    return {"name": name, "value": t if amount is None else amount / t, "unit": unit, "step_s": t,
            "model_gflop_per_s": flops / t / 1e9,
            "matmul_share": statistics.median(flops / s / rate for s, rate in times)}


def pass_flops(cfg, n_seq, seq_len, n_logits):
    """
    Matmul FLOPs of one forward pass over n_seq sequences of seq_len tokens with logits at n_logits positions:
    2 per weight per token (12 d² weights per layer), 2 per query-key and per probability-value product over
    the keys a causal query sees, and the projection onto the vocabulary where logits are needed. A backward
    pass costs twice a forward one.
    """
    d, L = cfg.n_embd, cfg.n_layer
    weights = 2 * 12 * L * d * d * n_seq * seq_len
    attention = 2 * 2 * L * d * n_seq * seq_len * (seq_len + 1) / 2
    return weights + attention + 2 * d * cfg.vocab_size * n_logits


def optimizer_step(loss, model, optimizer, rt):
    """What every stage does with its loss."""
    rt.scaler.scale(loss).backward()
    rt.scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    rt.scaler.step(optimizer)
    rt.scaler.update()
    optimizer.zero_grad(set_to_none=True)


def random_ids(n, length, cfg, g):
    """Token ids that are never 0, which serves as padding."""
    return torch.randint(1, cfg.vocab_size, (n, length), generator=g).tolist()


# ----------------------------------------------------------------------------------------------------------
# Measurements: each takes the workload and a Timer, and returns records {name, value, unit, ...}


def matmul(w, timer):
    rate = statistics.median(timer.matmul_rate() for _ in range(3 * timer.steps))
    return [{"name": "matmul", "value": rate / 1e9, "unit": "GFLOP/s", "shape": list(timer.a.shape),
             "dtype": str(timer.a.dtype).removeprefix("torch.")}]


def sft_step(w, timer):
    cfg, (n, length), rt = w["model"], w["sft"], timer.rt
    model = GPT(cfg).to(rt.device).train()
    train_model = torch.compile(model) if w.get("compile") else model
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), rt.device.type)
    # every token trained: a plain language-modelling batch, the heaviest SFT step of this size
    rows = random_ids(n, length, cfg, torch.Generator().manual_seed(0))
    ids, loss_mask = sft.collate([(row, [1] * length) for row in rows], 0, rt.device)

    def step():
        with rt.autocast():
            loss = sft.sft_loss(train_model, ids, loss_mask)
        optimizer_step(loss, model, optimizer, rt)

    times = timer(step, timer.warmup + (2 if w.get("compile") else 0))  # compiling takes the first calls
    return [step_record("sft_step", times, 3 * pass_flops(cfg, n, length, n * (length - 1)), n * length, "tokens/s")]


def sampling(w, timer, shape=None, temperature=1.0, name="sampling"):
    """
    Generated tokens/s with the KV cache; every row runs to full length (its end-of-text id is never sampled). Where
    transformers is installed, Hugging Face's GPT2LMHeadModel.generate of a model of the same shape runs right after
    on the same prompts, as the yardstick for our decode loop.
    """
    cfg, (n, length, new), rt = w["model"], shape or w["sampling"], timer.rt
    model = frozen(GPT(cfg).to(rt.device))
    g = torch.Generator(rt.device).manual_seed(0)
    idx = torch.tensor(random_ids(n, length, cfg, torch.Generator().manual_seed(0)), device=rt.device)

    def run():
        with rt.autocast():
            model.generate(idx, torch.ones_like(idx), new, eot_id=cfg.vocab_size, temperature=temperature, generator=g)

    t = statistics.median(s for s, _ in timer(run))
    record = {"name": name, "value": n * new / t, "unit": "tokens/s", "step_s": t, "shape": [n, length, new]}
    hf = hf_generate(cfg, idx, new, temperature)
    if hf is None:
        tqdm.write(f"{name}: not compared with Hugging Face's generate, since transformers is not installed",
                   file=sys.stderr)
        return [record]

    def run_hf():
        with rt.autocast():
            hf()

    t_hf = statistics.median(s for s, _ in timer(run_hf))
    return [{**record, "hf_tokens_per_s": n * new / t_hf, "speedup_over_hf": t_hf / t}]


def hf_generate(cfg, idx, new, temperature):
    """
    Hugging Face's sampling of new tokens after idx from a GPT-2 of cfg's shape with random weights, as a function;
    None where transformers is not installed. Like ours, it samples from the whole distribution (generate's
    default keeps the top 50) and, with no end-of-text id, runs every row to full length.
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    hf = frozen(GPT2LMHeadModel(GPT2Config(n_positions=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                                           n_head=cfg.n_head, n_embd=cfg.n_embd, bos_token_id=None,
                                           eos_token_id=None)).to(idx.device))
    mask = torch.ones_like(idx)
    return lambda: hf.generate(idx, attention_mask=mask, do_sample=True, max_new_tokens=new, top_k=0,
                               temperature=temperature)


def dpo_steps(w, timer):
    """A DPO step with the reference's log-probs precomputed (the default), and with them computed every step."""
    cfg, (n, prompt, response), rt = w["model"], w["dpo"], timer.rt
    policy = GPT(cfg).to(rt.device).train()
    ref = frozen(copy.deepcopy(policy))
    optimizer = policy.configure_optimizers(0.0, 1e-4, (0.9, 0.95), rt.device.type)
    g = torch.Generator().manual_seed(0)
    mask = [0] * prompt + [1] * response
    pairs = [(c, mask, r, mask) for c, r in zip(random_ids(n, prompt + response, cfg, g),
                                                  random_ids(n, prompt + response, cfg, g))]
    with torch.no_grad():
        ref_logps = dpo.pair_logps(ref, pairs, 0, rt)

    def step(recompute):
        if recompute:
            with torch.no_grad():
                ref_c, ref_r = dpo.pair_logps(ref, pairs, 0, rt)
        else:
            ref_c, ref_r = ref_logps
        policy_c, policy_r = dpo.pair_logps(policy, pairs, 0, rt)
        losses, _, _ = dpo.dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.1)
        optimizer_step(losses.mean(), policy, optimizer, rt)

    # logits are needed on the response tokens only; the reference's forward counts when it runs every step
    flops = pass_flops(cfg, 2 * n, prompt + response, 2 * n * response)
    records = [step_record("dpo_step", timer(lambda: step(False)), 3 * flops, n, "pairs/s")]
    if w.get("dpo_ref_each_step"):
        records.append(step_record("dpo_step_ref_each_step", timer(lambda: step(True)), 4 * flops, n, "pairs/s"))
    return records


def reward_step(w, timer):
    cfg, (n, prompt, response), rt = w["model"], w["reward"], timer.rt
    rm = RewardModel(cfg).to(rt.device).train()
    optimizer = rm.gpt.configure_optimizers(0.0, 1e-4, (0.9, 0.95), rt.device.type, extra_params=rm.head.parameters())
    g = torch.Generator().manual_seed(0)
    pairs = list(zip(random_ids(n, prompt + response, cfg, g), random_ids(n, prompt + response, cfg, g)))

    def step():
        ids, mask = reward.collate(pairs, 0, rt.device)
        with rt.autocast():
            chosen, rejected = rm(ids, mask).chunk(2)
            loss = reward.preference_loss(chosen, rejected)
        optimizer_step(loss, rm, optimizer, rt)

    return [step_record("reward_step", timer(step), 3 * pass_flops(cfg, 2 * n, prompt + response, 0), n, "pairs/s")]


def ppo_iteration(w, timer):
    """One PPO iteration, 4 epochs of one minibatch, split into generation, scoring and the update."""
    cfg, (n, prompt, new), rt = w["model"], w["ppo"], timer.rt
    pcfg = ppo.Config(rollout_batch=n, minibatch=n, ppo_epochs=4, temperature=0.7, max_new_tokens=new)
    agent = ppo.PolicyWithValue(GPT(cfg)).to(rt.device).eval()
    ref = frozen(copy.deepcopy(agent.gpt))
    reward_model = frozen(RewardModel(cfg).to(rt.device))
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-5, eps=1e-5)
    prompts = random_ids(n, prompt, cfg, torch.Generator().manual_seed(0))
    g = torch.Generator(rt.device).manual_seed(0)
    generation = []

    def timed_generate(*args, **kwargs):  # ppo.rollout calls agent.gpt.generate: its time is the generation
        t0 = timer.clock()
        out = GPT.generate(agent.gpt, *args, **kwargs)
        generation.append(timer.clock() - t0)
        return out

    agent.gpt.generate = timed_generate
    parts = []  # (generation, scoring, update, matmul rate right after)
    for i in range(timer.warmup + timer.steps):
        t0 = timer.clock()
        batch, _ = ppo.rollout(agent, ref, reward_model, prompts, 0.1, pcfg, rt, cfg.vocab_size, g)
        t1 = timer.clock()
        ppo.ppo_update(agent, optimizer, batch, pcfg, rt)
        parts.append((generation[-1], t1 - t0 - generation[-1], timer.clock() - t1, timer.matmul_rate()))
    parts = parts[timer.warmup:]
    gen, score = (statistics.median(x) for x in list(zip(*parts))[:2])
    return [{"name": "ppo_iteration", "value": statistics.median(sum(x[:3]) for x in parts), "unit": "s"},
            {"name": "ppo_generation", "value": gen, "unit": "s", "tokens_per_s": n * new / gen},
            {"name": "ppo_scoring", "value": score, "unit": "s"},
            step_record("ppo_update", [(u, rate) for _, _, u, rate in parts],
                        pcfg.ppo_epochs * 3 * pass_flops(cfg, n, prompt + new, n * new))]


def estimator_iterations(w, timer):
    """
    One iteration, the rollout and the update, of each of ppo.py's --advantage estimators at ppo.py's defaults (its
    replies per prompt, minibatch, epochs, temperature and beta) but for the workload's replies and lengths: a group
    method answers a quarter as many prompts, 4 times each. Each starts from the same random policy.
    """
    cfg, (n, prompt, new), rt = w["model"], w["estimators"], timer.rt
    start = GPT(cfg)
    ref = frozen(copy.deepcopy(start).to(rt.device))
    reward_model = frozen(RewardModel(cfg).to(rt.device))
    records = []
    for advantage in ppo.AGGREGATION:
        pcfg = ppo.Config(advantage=advantage, rollout_batch=n, minibatch=min(ppo.Config.minibatch, n),
                          max_new_tokens=new)
        ppo.check(pcfg, rt)
        k = ppo.samples_per_prompt(pcfg)
        agent = (ppo.PolicyWithValue if advantage == "gae" else ppo.Policy)(copy.deepcopy(start)).to(rt.device).eval()
        optimizer = torch.optim.Adam(agent.parameters(), lr=pcfg.lr, eps=1e-5)
        prompts = [p for p in random_ids(n // k, prompt, cfg, torch.Generator().manual_seed(0)) for _ in range(k)]
        g = torch.Generator(rt.device).manual_seed(0)
        parts = []  # (rollout, update)
        for _ in range(timer.warmup + timer.steps):
            t0 = timer.clock()
            batch, _ = ppo.rollout(agent, ref, reward_model, prompts, pcfg.kl_coef, pcfg, rt, cfg.vocab_size, g)
            t1 = timer.clock()
            ppo.ppo_update(agent, optimizer, batch, pcfg, rt, beta=pcfg.kl_coef)
            parts.append((t1 - t0, timer.clock() - t1))
        rollout_s, update_s = zip(*parts[timer.warmup:])
        records.append({"name": f"iteration_{advantage}", "value": statistics.median(map(sum, parts[timer.warmup:])),
                        "unit": "s", "rollout_s": statistics.median(rollout_s), "update_s": statistics.median(update_s),
                        "replies": n, "samples_per_prompt": k, "minibatch": pcfg.minibatch,
                        "ppo_epochs": pcfg.ppo_epochs})
    return records


@torch.no_grad()
def generate_without_cache(model, idx, mask, max_new_tokens, temperature, generator):
    """The baseline a KV cache is measured against: the whole sequence through the model for every new token."""
    for _ in range(max_new_tokens):
        logits = model.lm_head(model.hidden_states(idx, mask)[:, -1]).float() / temperature
        nxt = sample_token(F.softmax(logits, dim=-1), generator)[:, None]
        idx, mask = torch.cat([idx, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return idx[:, -max_new_tokens:]


def rollout_generation(w, timer):
    """PPO's rollout sampling with the KV cache, against recomputing the whole sequence for each new token."""
    cfg, (n, length, new), rt = w["model"], w["rollout"], timer.rt
    cached = sampling(w, timer, w["rollout"], temperature=0.7, name="rollout_generation")[0]
    model = frozen(GPT(cfg).to(rt.device))
    idx = torch.tensor(random_ids(n, length, cfg, torch.Generator().manual_seed(0)), device=rt.device)
    g = torch.Generator(rt.device).manual_seed(0)
    with rt.autocast():
        t0 = timer.clock()
        generate_without_cache(model, idx, torch.ones_like(idx), new, 0.7, g)  # once: it is the slow one
        t = timer.clock() - t0
    return [cached, {"name": "rollout_generation_recomputed", "value": n * new / t, "unit": "tokens/s", "step_s": t,
                     "kv_cache_speedup": cached["value"] / (n * new / t)}]


MEASUREMENTS = {"matmul": matmul, "sft": sft_step, "sampling": sampling, "rollout": rollout_generation,
                "dpo": dpo_steps, "reward": reward_step, "ppo": ppo_iteration, "estimators": estimator_iterations}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=list(WORKLOADS), help="small (CPU) or gpt2 (CUDA)")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per measurement, after the warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads, as OMP_NUM_THREADS sets them; 0: as every stage chooses them, from the "
                             "cores free at the start (common.set_cpu_threads)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one step each: checks that it all runs")
    args = parser.parse_args(argv)
    w = dict(WORKLOADS[args.workload])
    if args.quick:
        w.update({k: v for k, v in QUICK.items() if k in w})
        args.steps, args.warmup = 1, 1
    if w["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench.py {args.workload} needs a CUDA GPU, and torch sees none "
                         f"(torch {torch.__version__}); on a CPU run: python bench.py small")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for setup_runtime, which sets and reports the threads
    rt = setup_runtime(w["device"], w["dtype"], seed=0)
    about = machine(rt)
    timer = Timer(rt, args.warmup, args.steps, w["matmul"])
    peak = next((flops for name, flops in PEAK_FLOPS if name in about["device"]), None)
    names = [k for k in MEASUREMENTS if k in w]
    bar = tqdm(names, desc=f"bench {args.workload}", dynamic_ncols=True, file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        if rt.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(rt.device)
        torch.manual_seed(0)
        for record in MEASUREMENTS[name](w, timer):
            if peak and "model_gflop_per_s" in record:
                record["mfu"] = record["model_gflop_per_s"] * 1e9 / peak
            if rt.device.type == "cuda":
                record["peak_memory_gib"] = torch.cuda.max_memory_allocated(rt.device) / 2 ** 30
            record = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
            tqdm.write(json.dumps({**record, "workload": args.workload + (" --quick" if args.quick else ""),
                                   "machine": about}), file=sys.stdout)
    bar.close()


if __name__ == "__main__":
    main()
