"""
The KL-gold frontier, as in the DPO paper's controlled experiment: how much gold score each method buys per nat of
KL from the SFT policy, on held-out prompts. PPO, RLOO and GRPO (ppo.py's --advantage gae, rloo and grpo) at several
KL coefficients beta, DPO at several beta, and best-of-N sampling from the SFT policy for N = 1, 2, 4, ..., 64 (the
gold score of the reward model's favourite among N samples, at KL log N - (N - 1)/N, an upper bound on its true KL);
one curve per method. Every RL run samples as many replies per iteration as PPO (64: RLOO and GRPO answer 16 prompts
4 times each), with everything else at ppo.py's defaults; beta is the KL's weight wherever each puts it (RLOO in the
reward, like PPO; GRPO as k3 in the loss, so its beta is on another scale). The summary names, for RLOO and GRPO, the
beta with the best gold at no more KL than PPO's default beta gets: run on the validation prompts, that is the tuning.

It needs the default pipeline's SFT model, labels and reward model (python sft.py && python label.py && python
reward.py). Each PPO, RLOO, GRPO and DPO run is its own process with one CPU thread, --jobs of them at a time, as in
experiments/critic_free.py; a run that finished before with the config it would run now is reused. About 60
CPU-minutes with the defaults (half that on two cores); --tiny runs it in seconds.

    python -m experiments.frontier
    python -m experiments.frontier --methods ppo rloo grpo --ppo_betas 0.2 --eval_prompts out/data/val_prompts.jsonl \
        --out_dir out/experiments/frontier_val   # tuning RLOO's and GRPO's beta
"""

from dataclasses import dataclass
from pathlib import Path

import ppo
from data import world
from experiments.common import (TINY_ARGS, best_of_n, best_of_n_kl, experiment_main, held_out_prompts, needs,
                                powers_of_two, run_missing, sample_pool)
from report import final_metrics

RL = {"ppo": "gae", "rloo": "rloo", "grpo": "grpo"}  # the frontier's RL methods and ppo.py's --advantage of each
NAMES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "dpo": "DPO",
         "best-of-n": "best-of-N from SFT (KL: an upper bound)"}


@dataclass
class Config:
    base: str = "out"  # the finished default pipeline: its sft, label and reward stages are where every method starts
    out_dir: str = "out/experiments/frontier"  # the runs, frontier.jsonl and frontier.png
    eval_prompts: str = ""  # held-out JSONL of {prompt}; empty: the built-in task's (tune on out/data/val_prompts.jsonl)
    methods: tuple = ("ppo", "rloo", "grpo", "dpo", "best-of-n")  # the curves to run: tuning needs only ppo, rloo, grpo
    ppo_betas: tuple = ("0.02", "0.05", "0.1", "0.2", "0.3", "1.0")  # PPO's per-token KL coefficients, one run each
    rloo_betas: tuple = ("0.05", "0.2", "0.3", "0.5", "1.0")  # RLOO's, the KL paid in the reward as PPO pays it
    grpo_betas: tuple = ("0.2", "0.3", "0.5", "1.0", "2.0")  # GRPO's weight of k3 in the loss: at 0.2 its KL runs to ~5 nats
    dpo_betas: tuple = ("0.05", "0.1", "0.25", "0.5", "1.0")  # DPO's beta, one run each
    bon_max: int = 64  # best-of-N for N = 1, 2, 4, ... up to this, from bon_max samples per prompt
    bon_prompts: int = 256  # held-out prompts for best-of-N (the trained policies answer n_eval of them: 256 by default)
    max_new_tokens: int = 64  # best-of-N's response length limit (the stages' default)
    seed: int = 0  # of every run and of best-of-N's samples
    jobs: int = 2  # runs at a time, one CPU thread each
    tiny: bool = False  # a smoke run in seconds: tiny stages, one beta each, N up to 4 on 4 prompts
    plot_only: bool = False  # only draw frontier.png from the frontier.jsonl of an earlier run


TINY = {"ppo_betas": ("0.1",), "rloo_betas": ("0.1",), "grpo_betas": ("1.0",), "dpo_betas": ("0.5",), "bon_max": 4,
        "bon_prompts": 4, "max_new_tokens": 16}


def run(cfg, bar):
    needs(cfg.base, "sft", "label", "reward")
    unknown = set(cfg.methods) - {*RL, "dpo", "best-of-n"}
    if unknown:
        raise SystemExit(f"--methods takes ppo, rloo, grpo, dpo and best-of-n, not {' '.join(sorted(unknown))}")
    sft_ckpt, reward_ckpt = f"{cfg.base}/sft/ckpt.pt", f"{cfg.base}/reward/ckpt.pt"
    data_dir = world.builtin_task()[0]
    eval_prompts = cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    shared = ["--sft_ckpt", sft_ckpt, "--reward_ckpt", reward_ckpt, "--eval_prompts", eval_prompts, "--seed", cfg.seed]
    runs = {}  # (method, beta): (command, log)
    for method in (m for m in ("ppo", "rloo", "grpo", "dpo") if m in cfg.methods):
        stage = "ppo" if method in RL else "dpo"
        for beta in getattr(cfg, f"{method}_betas"):
            out = f"{cfg.out_dir}/{method}_beta{beta}"
            flags = ["--advantage", RL[method], "--kl_coef", beta] if method in RL else [
                "--train_file", f"{cfg.base}/label/prefs_train.jsonl", "--val_file", f"{cfg.base}/label/prefs_val.jsonl",
                "--beta", beta]
            command = [f"{stage}.py", *(TINY_ARGS[stage] if cfg.tiny else []), *shared, *flags, "--out_dir", out]
            runs[method, beta] = (list(map(str, command)), f"{out}/log.txt")
    bar.total = len(runs) + ("best-of-n" in cfg.methods)
    done = run_missing(list(runs.values()), cfg.jobs)  # a run that finished before as it would run now is reused
    bar.update(len(runs))
    rows = [point(method, float(beta), final_metrics(Path(log).parent), done[tuple(command)][0])
            for (method, beta), (command, log) in runs.items()]

    if "best-of-n" in cfg.methods:
        bar.set_postfix_str(f"best-of-{cfg.bon_max} samples of {sft_ckpt}")
        prompts = held_out_prompts(eval_prompts, cfg.bon_prompts)
        scores, gold, lengths = sample_pool(sft_ckpt, [reward_ckpt], prompts, cfg.bon_max, cfg.max_new_tokens, 1.0,
                                            cfg.seed)
        for n in powers_of_two(cfg.bon_max):
            rows.append({"type": "point", "method": "best-of-n", "n": n, "kl": best_of_n_kl(n),
                         "gold": best_of_n(scores[reward_ckpt], gold, n),
                         "score": best_of_n(scores[reward_ckpt], scores[reward_ckpt], n),
                         "length": best_of_n(scores[reward_ckpt], lengths, n), "prompts": len(prompts)})
        bar.update()
    return rows


def point(method, beta, summary, seconds):
    """A run's place on the frontier: its held-out numbers, and its SFT baseline's gold."""
    keys = ("kl", "gold", "score", "win_rate", "win_rate_ci", "length", "eot_rate", "sft_gold")
    return {"type": "point", "method": method, "beta": beta, **{k: summary[k] for k in keys if k in summary},
            "seconds": round(seconds, 1)}


def tuned(rows):
    """{method: its point with the best gold at no more KL than PPO's at its default beta}, for RLOO and GRPO."""
    default = [r for r in rows if r.get("method") == "ppo" and r["beta"] == ppo.Config.kl_coef]
    if not default:
        return {}
    best = {}
    for method in ("rloo", "grpo"):
        within = [r for r in rows if r.get("method") == method and r["kl"] <= default[0]["kl"]]
        if within:
            best[method] = max(within, key=lambda r: r["gold"])
    return best


def summary(rows):
    lines = [f"{'method':<10} {'beta / N':>8} {'KL':>6} {'gold':>6} {'score':>6} {'win':>6}"]
    for r in rows:
        if r["type"] == "point":
            win = f"{r['win_rate']:>6.1%}" if "win_rate" in r else ""
            lines.append(f"{r['method']:<10} {r.get('beta', r.get('n')):>8} {r['kl']:>6.2f} {r['gold']:>+6.2f} "
                         f"{r['score']:>+6.2f} {win}")
    for method, r in tuned(rows).items():
        lines.append(f"{method}: the best gold at no more KL than PPO at beta {ppo.Config.kl_coef} on these prompts: "
                     f"beta {r['beta']:g} (gold {r['gold']:+.2f}, KL {r['kl']:.2f})")
    return "\n".join(lines)


def draw(plt, rows):
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for method, marker in (("ppo", "o"), ("rloo", "D"), ("grpo", "v"), ("dpo", "s"), ("best-of-n", "^")):
        points = sorted((r for r in rows if r.get("method") == method), key=lambda r: r["kl"])
        if not points:
            continue
        ax.plot([r["kl"] for r in points], [r["gold"] for r in points], marker=marker, label=NAMES[method])
        for r in points:
            ax.annotate(f"N={r['n']}" if method == "best-of-n" else f"β={r['beta']:g}", (r["kl"], r["gold"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    sft = [r["sft_gold"] for r in rows if "sft_gold" in r]
    if sft:
        ax.axhline(sum(sft) / len(sft), color="grey", linestyle="--", linewidth=1, label="SFT")
    kls = [r["kl"] for r in rows if r.get("type") == "point"]
    if max(kls) > 20:  # a run whose KL ran away would squash the others
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=min(0, min(kls)) - 0.05)
    ax.set_xlabel("KL to the SFT policy (nats per response)")
    ax.set_ylabel("gold score, held-out prompts")
    ax.set_title("The KL-gold frontier, 64 replies per iteration for every RL method\n"
                 "best-of-N at log N - (N-1)/N, an upper bound on its KL", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def main(argv=None):
    return experiment_main("frontier", Config, run, summary, draw, argv, TINY)


if __name__ == "__main__":
    main()
