"""
What the experiments share: the finished default pipeline they start from, running a stage in this process with
its printed output in a log file, or as one-thread processes side by side (reusing the runs that finished),
best-of-N sampling from the SFT policy, and the command line that writes an experiment's numbers (JSONL, always)
and its figure (PNG, where matplotlib is installed: see plot.py).
"""

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

import dpo
import label
import ppo
import reward
import sft
from common import (decode_responses, encode_prompts, frozen, load_checkpoint, load_policy, load_reward_model,
                    parse_config, print_config, read_jsonl, sample, setup_runtime, write_jsonl)
from data import world
from evaluate import reward_scores
from model import RewardEnsemble
from plot import MISSING, pyplot
from report import final_metrics
from tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"sft": sft, "label": label, "reward": reward, "ppo": ppo, "dpo": dpo}
# what each stage of the default pipeline leaves behind, and the command that makes it
OUTPUTS = {"sft": ("sft/ckpt.pt", "python sft.py"), "label": ("label/prefs_train.jsonl", "python label.py"),
           "reward": ("reward/ckpt.pt", "python reward.py")}
# --tiny: every stage shrunk to seconds (a 1-layer SFT model that learns to end its replies), to check that an
# experiment runs from end to end; its numbers mean nothing
TINY_ARGS = {"sft": ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--max_steps", "150", "--lr", "1e-2",
                "--warmup_steps", "5", "--eval_interval", "150", "--n_eval", "8", "--max_new_tokens", "16"],
        "label": ["--n_pairs", "40", "--max_new_tokens", "16"],
        "reward": ["--max_steps", "4", "--batch_size", "8", "--eval_interval", "2", "--n_norm", "8",
                   "--max_new_tokens", "16"],
        "ppo": ["--iterations", "2", "--rollout_batch", "4", "--minibatch", "2", "--ppo_epochs", "1",
                "--max_new_tokens", "16", "--n_eval", "8"],
        "dpo": ["--max_steps", "2", "--batch_size", "4", "--eval_interval", "2", "--n_eval", "8",
                "--n_val_pairs", "8", "--max_new_tokens", "16"]}


def needs(base, *stages):
    """Stop, saying what to run, unless the default pipeline in base has finished these stages."""
    for stage in stages:
        path, command = OUTPUTS[stage]
        if not (Path(base) / path).exists():
            raise SystemExit(f"this experiment starts from the default pipeline's {stage} stage, and {Path(base) / path}"
                             f" is missing: run `{command}` first (or give --base, the directory holding it)")


def run_stage(bar, stage, out_dir, args, tiny=False):
    """
    Run a stage (sft, label, reward, ppo or dpo) in this process with args and --out_dir out_dir, shrunk to seconds
    with tiny. What it prints goes to out_dir/log.txt; its progress bar shows under the experiment's. Returns (what its
    main returns: its final numbers, and the seconds it took).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar.set_postfix_str(f"{stage} -> {out_dir}")
    t0 = time.time()
    with open(out_dir / "log.txt", "w") as log, contextlib.redirect_stdout(log):
        try:
            result = STAGES[stage].main([*(TINY_ARGS[stage] if tiny else []), *map(str, args), "--out_dir", str(out_dir)])
        except BaseException:
            tqdm.write(f"{stage} stopped: its output is in {out_dir / 'log.txt'}")
            raise
    bar.update()
    return result, time.time() - t0


def run_all(commands, jobs):
    """
    Run chains of commands, --jobs chains at a time, each command a process with one CPU thread. Returns {command:
    (seconds, peak resident memory in MB)} of every command, also written beside its log as run.json.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending, running, done = [list(chain) for chain in commands], {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            chain = pending.pop(0)
            command, log = chain[0]
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            process = subprocess.Popen([sys.executable, str(ROOT / command[0]), *map(str, command[1:])], env=env,
                                       stdout=open(log, "w"), stderr=subprocess.STDOUT)
            running[process.pid] = (process, chain, time.time())
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        process, chain, t0 = running.pop(pid)
        command, log = chain[0]
        if status != 0:
            raise SystemExit(f"{' '.join(map(str, command))} stopped: its output is in {log}")
        done[tuple(map(str, command))] = (time.time() - t0, usage.ru_maxrss / 1024)
        Path(log).with_name("run.json").write_text(json.dumps({"command": list(map(str, command)),
                                                                "seconds_and_mb": done[tuple(map(str, command))]}))
        if chain[1:]:
            pending.insert(0, chain[1:])
    return done


def measured(command, log):
    """
    (seconds, MB) of an earlier run of a stage (command[0], say ppo.py) that finished with the very config this
    command gives today (its flags, and the stage's defaults for the rest), from its run.json; else None.
    """
    record = Path(log).with_name("run.json")
    if not record.exists() or final_metrics(record.parent) is None:
        return None
    ran = load_checkpoint(record.parent / "ckpt.pt")["config"]
    stage = STAGES[Path(command[0]).stem]
    return tuple(json.loads(record.read_text())["seconds_and_mb"]) \
        if ran == asdict(parse_config(stage.Config, list(map(str, command[1:])))[0]) else None


def run_missing(commands, jobs):
    """run_all for the stage commands that have not finished before as they would run now: an interrupted
    experiment goes on where it stopped, and one whose settings changed runs again what they change."""
    done = {tuple(map(str, c)): measured(c, log) for c, log in commands}
    done.update(run_all([[(c, log)] for c, log in commands if done[tuple(map(str, c))] is None], jobs))
    return done


def held_out_prompts(eval_prompts, n):
    """The first n prompts of eval_prompts; empty: of the built-in task's held-out prompts, as the stages read them."""
    path = eval_prompts or f"{world.builtin_task()[0]}/eval_prompts.jsonl"
    return [r["prompt"] for r in read_jsonl(path, ("prompt",))][:n]


# ----------------------------------------------------------------------------------------------------------
# Best-of-N: the reward model's favourite among N samples of the SFT policy


@torch.no_grad()
def sample_pool(sft_ckpt, reward_ckpts, prompts, n, max_new_tokens, temperature, seed):
    """
    n responses of the SFT policy to each prompt, with the score each reward model gives them and the gold judge's.
    Returns ({reward ckpt: scores [P, n], or [P, n, K] for an ensemble's K members}, gold [P, n], lengths in tokens
    [P, n]): an ensemble's members are kept apart, to be aggregated every way (model.ensemble_reward).
    """
    rt = setup_runtime(seed=seed)
    policy, spec, _ = load_policy(sft_ckpt, "--sft_ckpt")
    policy = frozen(policy).to(rt.device)
    enc = load_tokenizer(spec)
    models = {}
    for path in reward_ckpts:
        rm = frozen(load_reward_model(path, tokenizer=spec)[0]).to(rt.device)
        models[path] = list(rm.members) if isinstance(rm, RewardEnsemble) else [rm]
    ids, _ = encode_prompts(enc, prompts, policy.config.block_size, max_new_tokens)
    per_batch = max(1, 256 // n)  # prompts per batch: 256 responses at once, as label.py samples
    scores, gold, lengths = {path: [] for path in models}, [], []
    for chunk, i in enumerate(tqdm(range(0, len(prompts), per_batch), desc=f"{n} samples per prompt", leave=False)):
        rows = [p for p in ids[i:i + per_batch] for _ in range(n)]
        batches = sample(policy, rows, rt, enc.eot_token, max_new_tokens, temperature, len(rows), seed * 100003 + chunk)
        gold += [world.gold_score(prompts[i + j // n], text) for j, text in enumerate(decode_responses(enc, batches))]
        lengths += torch.cat([mask.sum(1) for *_, mask in batches]).tolist()
        for path, members in models.items():
            scores[path] += zip(*(reward_scores(member, batches, rt) for member in members))
    shaped = lambda xs: torch.tensor(xs, dtype=torch.float64).view(len(prompts), n, -1)
    return ({path: shaped(s) if len(models[path]) > 1 else shaped(s)[..., 0] for path, s in scores.items()},
            shaped(gold)[..., 0], shaped(lengths)[..., 0])


def best_of_n(scores, values, n):
    """
    The mean over prompts of the expected value (gold, say) of the response that scores highest among n drawn without
    replacement from each prompt's m samples (scores, values: [P, m]): the unbiased estimate from all m at once, not
    from m / n disjoint groups. Sorted by score, the i-th lowest of m (from 1) is the best of a random n of them with
    probability C(i - 1, n - 1) / C(m, n).
    """
    m = scores.size(1)
    weights = torch.tensor([math.comb(i - 1, n - 1) / math.comb(m, n) for i in range(1, m + 1)], dtype=torch.float64)
    return (values.gather(1, scores.argsort(1)).double() @ weights).mean().item()


def best_of_n_kl(n):
    """The KL of best-of-n to the policy it samples from, as usually quoted: log n - (n - 1) / n. An upper bound."""
    return math.log(n) - (n - 1) / n


def powers_of_two(largest):
    """1, 2, 4, ... up to largest."""
    return [2 ** k for k in range(int(math.log2(largest)) + 1)]


# ----------------------------------------------------------------------------------------------------------
# An experiment's command line


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def experiment_main(name, Config, run, summary, draw, argv=None, tiny=None):
    """
    Parse the experiment's Config (with the fields out_dir, tiny and plot_only); with --tiny, apply the tiny overrides
    to the fields not given. Then run(cfg, bar) -> rows into out_dir/<name>.jsonl, print summary(rows), and draw(plt,
    rows) -> a matplotlib figure into out_dir/<name>.png. With --plot_only, the summary and the figure of the rows an
    earlier run wrote. Returns the rows.
    """
    cfg, given = parse_config(Config, argv)
    if cfg.tiny:  # the flags given on the command line stay as given
        cfg = replace(cfg, **{k: v for k, v in (tiny or {}).items() if k not in given})
    out = Path(cfg.out_dir)
    numbers, figure = out / f"{name}.jsonl", out / f"{name}.png"
    if cfg.plot_only:
        if not numbers.exists():
            raise SystemExit(f"no {numbers} to draw: run the experiment first")
        rows = read_rows(numbers)
    else:
        print(f"{name} config:")
        print_config(cfg)
        out.mkdir(parents=True, exist_ok=True)
        t0, cpu0 = time.time(), time.process_time()
        with tqdm(desc=name, unit="run", dynamic_ncols=True) as bar:
            rows = run(cfg, bar)
        seconds, cpu = time.time() - t0, time.process_time() - cpu0
        rows.append({"type": "time", "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1)})
        write_jsonl(numbers, rows)
    print(summary(rows))
    time_row = rows[-1]
    print(f"{name}: {time_row['seconds'] / 60:.1f} min ({time_row['cpu_seconds'] / 60:.1f} min of CPU in this "
          f"process); numbers in {numbers}")
    plt = pyplot()
    if plt is None:
        print(f"no figure: {MISSING}, then draw it from the numbers with --plot_only")
        return rows
    fig = draw(plt, rows)
    fig.savefig(figure, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"figure in {figure}")
    return rows
