"""
Held-out evaluation, shared by the stages, the report card and the experiments: a policy answers held-out prompts
once each; we measure its KL to the reference (the SFT model), what the reward model thinks of the answers and,
where the task has one, what its gold judge thinks, overall and per kind of prompt, with win-rates against the SFT
model's own answers. The proxy (the reward model) and the truth (the gold judge) side by side are what show reward
hacking: a policy can win by one and lose by the other. The judge is handed in by the stage (the built-in task's is
data.world), so this file knows no task.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from common import decode_responses, load_prompts, sample, write_jsonl
from model import token_logprobs


def members_spread(ensemble, batches, rt):
    """
    How far an ensemble's members disagree on each sampled response: the standard deviation of their scores (over
    the members, each normalised on the SFT samples). Where the policy has found what the labels never showed, the
    members should part ways; if they do not, their minimum or variance cannot hold the policy back.
    """
    return torch.tensor(reward_scores(ensemble.member_rewards, batches, rt)).std(0, correction=0).tolist()


@torch.no_grad()
def reward_scores(reward_model, batches, rt):
    """
    The reward model's score of each sampled response (common.sample's batches), read at its last token. Given an
    ensemble's member_rewards, a list of them per member.
    """
    scores = []
    for p, pm, tokens, mask in batches:
        with rt.autocast():  # left-padded prompt, right-padded response: as PPO hands them over
            scores.append(reward_model(torch.cat([p, tokens], 1), torch.cat([pm, mask], 1)).float().cpu())
    return torch.cat(scores, -1).tolist()  # the responses are the last dimension


@torch.no_grad()
def sequence_kl(policy, ref, batches, rt, temperature=1.0):
    """Per-sequence KL(policy || ref) estimated on the policy's own samples: sum over tokens of log pi - log ref."""
    kls = []
    for p, pm, tokens, mask in batches:
        ids, attention = torch.cat([p, tokens], 1), torch.cat([pm, mask], 1)
        real = mask.bool()
        where = F.pad(real, (p.size(1) - 1, 1))  # position t predicts response token t + 1
        with rt.autocast():
            logp, logr = (token_logprobs(model(ids, attention, where=where), tokens[real], temperature)
                          for model in (policy, ref))
        per_token = torch.zeros(tokens.shape, device=tokens.device)
        per_token[real] = logp - logr
        kls += per_token.sum(1).tolist()
    return kls


def win_rate(scores, baseline_scores):
    """
    Share of prompts where the policy's sample scores above the baseline's, a tie counting half, and the half-width
    of its 95% interval: with one independent sample of each per prompt, the per-prompt outcomes are independent.
    """
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores)]
    mean = sum(outcomes) / len(outcomes)
    var = sum((o - mean) ** 2 for o in outcomes) / max(1, len(outcomes) - 1)
    return mean, 1.96 * math.sqrt(var / len(outcomes))


def response_stats(enc, batches, texts):
    """End-of-text rate, mean length in tokens, and the share of distinct replies (1/n: one reply to everything)."""
    ended = torch.cat([(tokens == enc.eot_token).any(1) for _, _, tokens, _ in batches])
    lengths = torch.cat([mask.sum(1) for _, _, _, mask in batches]).float()
    return {"eot_rate": ended.float().mean().item(), "length": lengths.mean().item(),
            "distinct": len(set(texts)) / len(texts)}


def print_samples(rows, n):
    """The first n rows' responses beside their prompts, after whatever else a row holds (the gold judge's verdict)."""
    for row in rows[:n]:
        note = ", ".join(f"{k} {v:+.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                         if k not in ("prompt", "response"))
        print(f"--- {note}{row['prompt']}{row['response']}")


class HeldOut:
    """
    The held-out prompts a stage evaluates on, and how it samples them: one response per prompt at the given
    temperature, scored by the reward model if there is one, and by the gold judge if it knows the prompts.
    judge: a task's gold judge, as data.world: judges(prompts) says whether it knows them, gold_report(rows) adds
    "gold", "label" and "kind" to each row and returns its report, report_table(report) prints it per kind.
    """

    def __init__(self, path, enc, context, max_new_tokens, temperature, n, rt, reward_model=None, judge=None):
        self.path, self.enc, self.rt = path, enc, rt
        self.max_new_tokens, self.temperature, self.reward_model = max_new_tokens, temperature, reward_model
        self.prompts, self.ids = load_prompts(path, enc, context, max_new_tokens, n, rt.say)
        self.judge = judge if judge is not None and judge.judges(self.prompts) else None

    @torch.no_grad()
    def evaluate(self, policy, seed, ref=None, baseline=None):
        """
        One sample of the policy per prompt. Returns (report, rows): rows {prompt, response, and where measured score
        (the reward model's) and the judge's verdict}, and the report: response_stats; with ref, the mean sequence KL
        to it; with the reward model its mean score (an ensemble: also its members' mean spread, members_std), and
        with baseline (another policy's rows on the same prompts) its win-rate by the reward model (rm_win_rate);
        with the judge, its report and the gold win-rates against the baseline, over all prompts and per kind
        ("arith/win_rate").
        """
        batches = sample(policy, self.ids, self.rt, self.enc.eot_token, self.max_new_tokens, self.temperature, 64,
                         seed)
        texts = decode_responses(self.enc, batches)
        rows = [{"prompt": p, "response": t} for p, t in zip(self.prompts, texts)]
        report = response_stats(self.enc, batches, texts)
        if ref is not None:
            kl = sequence_kl(policy, ref, batches, self.rt, self.temperature)
            report["kl"] = sum(kl) / len(kl)
        if self.reward_model is not None:
            scores = reward_scores(self.reward_model, batches, self.rt)
            for row, score in zip(rows, scores):
                row["score"] = score
            report["score"] = sum(scores) / len(scores)
            if hasattr(self.reward_model, "member_rewards"):  # an ensemble
                spread = members_spread(self.reward_model, batches, self.rt)
                report["members_std"] = sum(spread) / len(spread)
            if baseline is not None:
                report["rm_win_rate"], report["rm_win_rate_ci"] = win_rate(scores, [b["score"] for b in baseline])
        if self.judge is not None:
            report.update(self.judge.gold_report(rows))
            if baseline is not None:
                for kind in ["", *dict.fromkeys(row["kind"] for row in rows)]:
                    members = [i for i, row in enumerate(rows) if kind in ("", row["kind"])]
                    prefix = f"{kind}/" if kind else ""
                    report[prefix + "win_rate"], report[prefix + "win_rate_ci"] = win_rate(
                        [rows[i]["gold"] for i in members], [baseline[i]["gold"] for i in members])
        return report, rows

    def show(self, name, report, rows, out_dir):
        """A stage's last word: five of its answers, its summary, and every answer written to out_dir/samples.jsonl."""
        print_samples(rows, 5)
        print(self.summary(name, report))
        write_jsonl(Path(out_dir) / "samples.jsonl", rows)

    def summary(self, name, report):
        """
        What a stage prints of an evaluation: a line of overall numbers, then the gold judge's per-kind table, or
        on prompts no judge knows a line that says so.
        """
        parts = [f"{name} on {len(self.prompts)} prompts of {self.path}:"]
        for key, fmt in (("gold", "gold {:+.3f}"), ("win_rate", "win-rate against sft {:.1%}"),
                         ("score", "reward-model score {:+.3f}"),
                         ("rm_win_rate", "win-rate against sft by the reward model {:.1%}"),
                         ("members_std", "the members' spread {:.2f}"),
                         ("kl", "KL to sft {:.2f} nats"), ("length", "length {:.1f} tokens"),
                         ("eot_rate", "ended {:.1%}"), ("distinct", "distinct {:.1%}")):
            if key in report:
                text = fmt.format(report[key])
                if key + "_ci" in report:
                    text += f" ± {report[key + '_ci']:.1%}"
                parts.append(text)
        lines = [" ".join(parts[:1]) + " " + ", ".join(parts[1:])]
        if self.judge is not None:
            lines.append(self.judge.report_table(report))
        else:
            lines.append(f"(no gold judge: the built-in task's judge knows its own prompts only, not {self.path}'s)")
        return "\n".join(lines)
