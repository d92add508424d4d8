"""
The KL-gold frontier, as in the DPO paper's controlled experiment: how much gold score each method buys per nat of
KL from the SFT policy, on held-out prompts. PPO at several KL coefficients beta, DPO at several beta, and best-of-N
sampling from the SFT policy for N = 1, 2, 4, ..., 64 (the gold score of the reward model's favourite among N
samples, at KL log N - (N - 1)/N, an upper bound on its true KL); one curve per method.

It needs the default pipeline's SFT model, labels and reward model (python sft.py && python label.py && python
reward.py), and trains PPO and DPO once per beta with everything else at their defaults. About 13 minutes on two
CPU cores with the defaults below, as estimated from short runs of its pieces; --tiny runs it in seconds.

    python -m experiments.frontier
    python -m experiments.frontier --ppo_betas 0.05 0.2 --dpo_betas 0.1 0.5 --eval_prompts out/data/val_prompts.jsonl
"""

from dataclasses import dataclass

from data import world
from experiments.common import (best_of_n, best_of_n_kl, experiment_main, held_out_prompts, needs, powers_of_two,
                                run_stage, sample_pool)


@dataclass
class Config:
    base: str = "out"  # the finished default pipeline: its sft, label and reward stages are where every method starts
    out_dir: str = "out/experiments/frontier"  # the runs, frontier.jsonl and frontier.png
    eval_prompts: str = ""  # held-out JSONL of {prompt}; empty: the built-in task's (tune on out/data/val_prompts.jsonl)
    ppo_betas: tuple = ("0.02", "0.05", "0.1", "0.3", "1.0")  # PPO's per-token KL coefficients, one run each
    dpo_betas: tuple = ("0.05", "0.1", "0.25", "0.5", "1.0")  # DPO's beta, one run each
    bon_max: int = 64  # best-of-N for N = 1, 2, 4, ... up to this, from bon_max samples per prompt
    bon_prompts: int = 256  # held-out prompts for best-of-N (PPO and DPO answer n_eval of them: 256 by default)
    max_new_tokens: int = 64  # best-of-N's response length limit (the stages' default)
    seed: int = 0  # of every run and of best-of-N's samples
    tiny: bool = False  # a smoke run in seconds: tiny stages, one beta each, N up to 4 on 4 prompts
    plot_only: bool = False  # only draw frontier.png from the frontier.jsonl of an earlier run


TINY = {"ppo_betas": ("0.1",), "dpo_betas": ("0.5",), "bon_max": 4, "bon_prompts": 4, "max_new_tokens": 16}


def run(cfg, bar):
    needs(cfg.base, "sft", "label", "reward")
    sft_ckpt, reward_ckpt = f"{cfg.base}/sft/ckpt.pt", f"{cfg.base}/reward/ckpt.pt"
    data_dir = world.builtin_task()[0]
    eval_prompts = cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    bar.total = len(cfg.ppo_betas) + len(cfg.dpo_betas) + 1
    rows = []
    for beta in cfg.ppo_betas:
        summary, seconds = run_stage(bar, "ppo", f"{cfg.out_dir}/ppo_beta{beta}", [
            "--sft_ckpt", sft_ckpt, "--reward_ckpt", reward_ckpt, "--eval_prompts", eval_prompts,
            "--kl_coef", beta, "--seed", cfg.seed], cfg.tiny)
        rows.append(point("ppo", float(beta), summary, seconds))
    for beta in cfg.dpo_betas:
        summary, seconds = run_stage(bar, "dpo", f"{cfg.out_dir}/dpo_beta{beta}", [
            "--sft_ckpt", sft_ckpt, "--reward_ckpt", reward_ckpt, "--train_file", f"{cfg.base}/label/prefs_train.jsonl",
            "--val_file", f"{cfg.base}/label/prefs_val.jsonl", "--eval_prompts", eval_prompts, "--beta", beta,
            "--seed", cfg.seed], cfg.tiny)
        rows.append(point("dpo", float(beta), summary, seconds))

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


def summary(rows):
    lines = [f"{'method':<10} {'beta / N':>8} {'KL':>6} {'gold':>6} {'score':>6}"]
    for r in rows:
        if r["type"] == "point":
            lines.append(f"{r['method']:<10} {r.get('beta', r.get('n')):>8} {r['kl']:>6.2f} {r['gold']:>+6.2f} "
                         f"{r['score']:>+6.2f}")
    return "\n".join(lines)


def point(method, beta, summary, seconds):
    """A PPO or DPO run's place on the frontier: its held-out numbers, and its SFT baseline's gold."""
    keys = ("kl", "gold", "score", "win_rate", "win_rate_ci", "length", "eot_rate", "sft_gold")
    return {"type": "point", "method": method, "beta": beta, **{k: summary[k] for k in keys if k in summary},
            "seconds": round(seconds, 1)}


def draw(plt, rows):
    fig, ax = plt.subplots(figsize=(7, 5))
    for method, marker in (("ppo", "o"), ("dpo", "s"), ("best-of-n", "^")):
        points = sorted((r for r in rows if r.get("method") == method), key=lambda r: r["kl"])
        if not points:
            continue
        label = {"ppo": "PPO", "dpo": "DPO", "best-of-n": "best-of-N from SFT (KL: an upper bound)"}[method]
        ax.plot([r["kl"] for r in points], [r["gold"] for r in points], marker=marker, label=label)
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
    ax.set_title("The KL-gold frontier\nbest-of-N at log N - (N-1)/N, an upper bound on its KL", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def main(argv=None):
    return experiment_main("frontier", Config, run, summary, draw, argv, TINY)


if __name__ == "__main__":
    main()
