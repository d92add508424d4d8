"""
Held-out evaluation, shared by the stages, the report card and the experiments: a policy answers held-out prompts
once each; we measure its KL to the reference (the SFT model), what the reward model thinks of the answers and, on
the built-in task, what the gold judge thinks, overall and per kind of prompt, with win-rates against the SFT
model's own answers. The proxy (the reward model) and the truth (the gold judge) side by side are what show
reward hacking: a policy can win by one and lose by the other.
"""

import torch

from common import decode_responses, response_stats, sample, sequence_kl, win_rate
from data import world


@torch.no_grad()
def reward_scores(reward_model, batches, rt):
    """The reward model's score of each sampled response (common.sample's batches), read at its last token."""
    scores = []
    for p, pm, tokens, mask in batches:
        with rt.autocast():  # left-padded prompt, right-padded response: as PPO hands them over
            scores.append(reward_model(torch.cat([p, tokens], 1), torch.cat([pm, mask], 1)).float().cpu())
    return torch.cat(scores).tolist()


@torch.no_grad()
def evaluate_policy(policy, enc, prompts, prompt_ids, rt, max_new_tokens, temperature, seed, ref=None,
                    reward_model=None, baseline=None):
    """
    One sample of the policy per prompt. Returns (report, rows): rows {prompt, response, and where measured score
    (the reward model's) and gold, label (the judge's)}, and the report: response_stats; with ref the mean sequence
    KL to it; with reward_model its mean score, and with baseline (another policy's rows on the same prompts) its
    win-rate by the reward model (rm_win_rate); on prompts the gold judge knows, its report per kind with the gold
    win-rate against the baseline (see data.world.gold_report).
    """
    batches = sample(policy, prompt_ids, rt, enc.eot_token, max_new_tokens, temperature, 64, seed)
    texts = decode_responses(enc, batches)
    rows = [{"prompt": p, "response": t} for p, t in zip(prompts, texts)]
    report = response_stats(enc, batches, texts)
    if ref is not None:
        kl = sequence_kl(policy, ref, batches, rt, temperature)
        report["kl"] = sum(kl) / len(kl)
    if reward_model is not None:
        scores = reward_scores(reward_model, batches, rt)
        for row, score in zip(rows, scores):
            row["score"] = score
        report["score"] = sum(scores) / len(scores)
        if baseline is not None:
            report["rm_win_rate"], report["rm_win_rate_ci"] = win_rate(scores, [b["score"] for b in baseline])
    if world.judges(prompts):
        report.update(world.gold_report(rows, None if baseline is None else [b["gold"] for b in baseline]))
    return report, rows


def summary_lines(name, report, n, prompts_file):
    """
    What a stage prints of its evaluation on n prompts: a line of overall numbers, then the gold judge's per-kind
    table, or on prompts the judge does not know a line that says so.
    """
    parts = [f"{name} on {n} prompts of {prompts_file}:"]
    for key, fmt in (("gold", "gold {:+.3f}"), ("win_rate", "win-rate against sft {:.1%}"),
                     ("score", "reward-model score {:+.3f}"),
                     ("rm_win_rate", "win-rate against sft by the reward model {:.1%}"),
                     ("kl", "KL to sft {:.2f} nats"), ("length", "length {:.1f} tokens"),
                     ("eot_rate", "ended {:.1%}"), ("distinct", "distinct {:.1%}")):
        if key in report:
            text = fmt.format(report[key])
            if key + "_ci" in report:
                text += f" ± {report[key + '_ci']:.1%}"
            parts.append(text)
    lines = [" ".join(parts[:1]) + " " + ", ".join(parts[1:])]
    if "gold" in report:
        lines.append(world.report_table(report))
    else:
        lines.append(f"(no gold judge: it knows the built-in task's prompts only, not {prompts_file}'s)")
    return "\n".join(lines)
