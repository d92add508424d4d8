"""
Stage 5, direct preference optimisation: learn from preference pairs without a reward model or sampling.

DPO (Rafailov et al. 2023) shows that the policy maximising reward minus β·KL to a reference has the
reward β·log(π/π_ref) up to a per-prompt constant, which cancels between two responses to the same
prompt. So the Bradley-Terry likelihood of the preferences can be written in the policy itself, and
fitting it is plain supervised learning on (prompt, chosen, rejected). The reference is the SFT model.
With no arguments it trains on the built-in task from out/sft/ckpt.pt; by flags, on any JSONL of
{prompt, chosen, rejected}.

That is offline DPO: the pairs are responses of the SFT model, and the policy drifts away from them as it
trains. With --rounds R it is repeated on the policy's own responses: each round after the first samples the
current policy, has the raters of the first round's pairs label its responses (label.py, with the settings it
recorded beside them; into out_dir/round<r>/), and continues DPO from the current policy on those pairs. The
reference stays the SFT model in every round, so every round optimises the same objective, reward - beta * KL to
SFT, and beta and the KL mean what they mean for one round and for PPO; with the previous round's policy as the
reference, each round would spend another KL budget on top of the last.

    python dpo.py
    python dpo.py --rounds 3                 # offline DPO, then two rounds on the policy's own labelled responses
    python dpo.py --train_file prefs.jsonl --val_file prefs_val.jsonl --eval_prompts prompts.jsonl --device cuda
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import label
from common import (MetricsLog, all_gather_rows, all_sum, batch_at, begin, check_finite, check_split, distributed,
                    fit_pair_to_context, frozen, leave_processes, load_policy, load_reward_model, lr_at, master_first,
                    optimizer_step, pad, read_jsonl, restore_run, save_run)
from data import world
from evaluate import HeldOut
from model import token_logprobs
from tokenizer import load_tokenizer, render


@dataclass
class Config:
    train_file: str = ""  # JSONL of {prompt, chosen, rejected}; empty: the built-in task's (see pairs)
    val_file: str = ""  # held-out JSONL of {prompt, chosen, rejected}; empty: the built-in task's
    pairs: str = "labelled"  # built-in task: labelled (label.py's, of the SFT model's own responses) or scripted (data/world.py's behaviours)
    eval_prompts: str = ""  # JSONL of {prompt} sampled at every evaluation; empty: the built-in task's held-out prompts (tune on out/data/val_prompts.jsonl)
    sft_ckpt: str = "out/sft/ckpt.pt"  # the SFT checkpoint: the initial policy and the reference
    reward_ckpt: str = "out/reward/ckpt.pt"  # evaluation only: a reward model that scores the samples (this default is skipped if missing; empty: none)
    reward_agg: str = "mean"  # evaluation with an ensemble: its members' scores as one (mean, min or uwo, as ppo.py's)
    uwo_lambda: float = 0.5  # uwo: the weight of the members' variance subtracted from their mean
    out_dir: str = "out/dpo"  # where ckpt.pt and metrics.jsonl go
    loss_type: str = "sigmoid"  # sigmoid (DPO; conservative DPO with label_smoothing), ipo (mean log-probs) or hinge
    beta: float = 0.5  # strength of the KL constraint to the reference: the implicit reward is beta * log(pi/pi_ref)
    label_smoothing: float = 0.0  # sigmoid only: assumed probability that a preference label is flipped
    recompute_ref: bool = False  # reference log-probs every step, not once before training (holds two models)
    batch_size: int = 32  # preference pairs per step
    max_steps: int = 150  # optimizer steps
    rounds: int = 1  # 1: DPO on the given pairs; R: then R - 1 rounds of sampling, labelling, DPO (max_steps each)
    lr: float = 5e-4  # peak learning rate
    warmup_steps: int = 10  # linear warmup steps
    grad_clip: float = 1.0  # clip the gradient norm to this
    eval_interval: int = 50  # held-out evaluation and checkpoint every this many steps (and at the end)
    n_eval: int = 256  # held-out prompts sampled at every evaluation
    n_val_pairs: int = 512  # held-out pairs for the implicit-reward accuracy
    max_new_tokens: int = 64  # response length limit when sampling
    temperature: float = 1.0  # sampling temperature at evaluation
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16 or fp16 on CUDA, fp32 on CPU), float32, bfloat16, float16
    seed: int = 0  # seed of data order and sampling
    resume: bool = False  # continue the run in out_dir from its checkpoint


LOSS_TYPES = ("sigmoid", "ipo", "hinge")  # the branches of dpo_loss
MEAN_LOGPS = ("ipo",)  # the losses that read each response's mean log-prob per token, not its sum


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
             loss_type="sigmoid", label_smoothing=0.0):
    """
    Per-pair preference losses from sequence log-probs [B]. With the difference of the two log-ratios

        h = (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x)),

        sigmoid (DPO):   -(1 - ε) log σ(β h) - ε log σ(-β h)     ε = label_smoothing; ε > 0 is conservative DPO
        ipo (IPO):       (h - 1/(2β))²                           h regressed to a fixed margin, not pushed to ∞
        hinge (SLiC):    max(0, 1 - β h)

    The log-probs are sums over the response tokens, except for ipo: means over them (the IPO paper, TRL), so
    that its fixed margin asks the same of a short response as of a long one. At initialisation (π = π_ref)
    h = 0, and the sigmoid loss is ln 2 whatever β and ε. Returns (losses, chosen_rewards, rejected_rewards),
    the rewards being the implicit β (log π - log π_ref), detached.
    """
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing is for the sigmoid loss only, not {loss_type}")
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, not {loss_type!r}")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def load_pairs(path, enc, max_len, say=print):
    """Rendered (chosen ids, chosen mask, rejected ids, rejected mask) of a {prompt, chosen, rejected} file."""
    pairs, truncated = [], 0
    for rec in read_jsonl(path, ("prompt", "chosen", "rejected")):
        chosen, rejected = (render(enc, rec["prompt"], rec[side]) for side in ("chosen", "rejected"))
        (c_ids, c_mask), (r_ids, r_mask), cut = fit_pair_to_context(chosen, rejected, max_len)
        pairs.append((c_ids, c_mask, r_ids, r_mask))
        truncated += cut
    say(f"{path}: {len(pairs)} pairs, {truncated} truncated to {max_len} tokens")
    return pairs


def collate(pairs, pad_id, device):
    """The chosen sequences then the rejected ones, in one right-padded batch [2B, T] with its response mask."""
    # right padding: causal attention never lets a real token see the padding after it, so no mask is needed
    ids, _ = pad([p[0] for p in pairs] + [p[2] for p in pairs], pad_id)
    loss_mask, _ = pad([p[1] for p in pairs] + [p[3] for p in pairs], 0)
    return ids.to(device), loss_mask.to(device)


def sequence_logps(model, ids, loss_mask, average=False):
    """
    log π(response | prompt) per row: the sum of the log-probs of the tokens under loss_mask (response and
    end-of-text), or with average their mean. The model computes logits at those positions only: the
    projection onto the vocabulary is a large share of a small model's compute.
    """
    trained = loss_mask[:, 1:].bool()
    logits = model(ids, where=F.pad(trained, (0, 1)))  # position t predicts token t+1
    logps = torch.zeros(trained.shape, device=ids.device)
    logps[trained] = token_logprobs(logits[None], ids[:, 1:][trained][None])[0]
    return logps.sum(1) / trained.sum(1) if average else logps.sum(1)


def pair_logps(model, pairs, pad_id, rt, average=False):
    """(chosen, rejected) sequence log-probs [B] each (means per token with average), from one forward over both."""
    with rt.autocast():
        logps = sequence_logps(model, *collate(pairs, pad_id, rt.device), average)
    return logps.float().chunk(2)


@torch.no_grad()
def all_pair_logps(model, pairs, pad_id, rt, batch_size, average=False):
    """(chosen, rejected) sequence log-probs [N] of every pair, in order."""
    # batches of pairs of similar length: a batch pads to its longest row, and lengths here vary by 5x
    order = sorted(range(len(pairs)), key=lambda i: max(len(pairs[i][0]), len(pairs[i][2])))
    chosen, rejected = torch.empty(len(pairs), device=rt.device), torch.empty(len(pairs), device=rt.device)
    for j in range(0, len(pairs), batch_size):
        idx = order[j:j + batch_size]
        chosen[idx], rejected[idx] = pair_logps(model, [pairs[i] for i in idx], pad_id, rt, average)
    return chosen, rejected


@torch.no_grad()
def shared_pair_logps(model, pairs, pad_id, rt, batch_size, average=False):
    """
    all_pair_logps as [2, N], the pairs shared out among the processes under torchrun (each computes every N-th)
    and gathered, so that every process holds all of them: how the reference's are computed once.
    """
    mine = torch.stack(all_pair_logps(model, pairs[rt.rank::rt.world_size], pad_id, rt, batch_size, average), 1)
    order = [i for r in range(rt.world_size) for i in range(r, len(pairs), rt.world_size)]
    logps = torch.empty(len(pairs), 2, device=rt.device)
    logps[order] = all_gather_rows(mine)
    return logps.T


@torch.no_grad()
def validate(policy, ref, val, ref_val, heldout, sft_rows, cfg, rt):
    """
    The held-out pairs' loss and implicit-reward accuracy, and the policy's samples on the held-out prompts (its
    KL to ref, its win-rates against the SFT policy's sft_rows). Returns (numbers, rows).
    """
    c, r = all_pair_logps(policy, val, heldout.enc.eot_token, rt, 2 * cfg.batch_size, cfg.loss_type in MEAN_LOGPS)
    losses, chosen_rewards, rejected_rewards = dpo_loss(c, r, *ref_val, cfg.beta, cfg.loss_type, cfg.label_smoothing)
    report, rows = heldout.evaluate(policy, cfg.seed + 1, ref=ref, baseline=sft_rows)
    return {"loss": losses.mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(), **report}, rows


def reference_logps(ref, train, val, eot, step, cfg, rt):
    """
    What the reference is needed for that does not change during training, computed once: its log-probs of the
    held-out pairs, and unless --recompute_ref of the training pairs the run visits from step on (a run shorter
    than an epoch would pay for the rest in vain), [2, N] each (NaN for pairs it does not visit).
    """
    average = cfg.loss_type in MEAN_LOGPS
    ref_val = shared_pair_logps(ref, val, eot, rt, 2 * cfg.batch_size, average)
    if cfg.recompute_ref:
        return ref_val, None
    visited = sorted({i for k in range(step, cfg.max_steps) for i in batch_at(len(train), cfg.batch_size, k, cfg.seed)})
    ref_train = torch.full((2, len(train)), float("nan"), device=rt.device)
    ref_train[:, visited] = shared_pair_logps(ref, [train[i] for i in visited], eot, rt, 2 * cfg.batch_size, average)
    return ref_val, ref_train


def check(cfg):
    """Refuse settings that would silently do something else than they say."""
    if cfg.loss_type not in LOSS_TYPES:
        raise SystemExit(f"--loss_type must be one of {', '.join(LOSS_TYPES)}, not {cfg.loss_type!r}")
    if cfg.label_smoothing and cfg.loss_type != "sigmoid":
        raise SystemExit(f"--label_smoothing is for --loss_type sigmoid (conservative DPO); {cfg.loss_type} has no "
                         f"use for it: drop it")
    if cfg.temperature <= 0:
        raise SystemExit(f"--temperature must be above 0, not {cfg.temperature}: the evaluation's KL is of "
                         f"softmax(logits / temperature), which greedy decoding does not sample from")
    if cfg.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, not {cfg.rounds}: 1 is DPO on the given pairs, and each "
                         f"round more labels the policy's own responses and trains on them")


# ----------------------------------------------------------------------------------------------------------
# Rounds: from the second on, the pairs are the current policy's responses, labelled by label.py's code


def raters_of(train_file):
    """
    The settings label.py recorded in the meta.json beside train_file, the first round's pairs: later rounds are
    drawn and labelled with them (the same raters, prompts and number of comparison sets), from their own policy.
    """
    meta = Path(train_file).parent / "meta.json"
    settings = json.loads(meta.read_text()).get("config", {}) if meta.exists() else {}
    if "rater" not in settings:
        raise SystemExit(f"--rounds above 1 labels each round as the first round's pairs were labelled, and "
                         f"{train_file} has no meta.json of label.py's beside it to say how: give label.py's pairs "
                         f"(the default --pairs labelled, or --train_file in label.py's --out_dir)")
    return settings


def label_round(raters, r, policy_ckpt, out_dir):
    """
    Round r's pairs: label.py as it labelled the first round's (raters: its settings), on responses of the policy in
    policy_ckpt, into out_dir. It resumes where a killed run stopped, and draws anew if the policy changed.
    """
    # a seed of its own per round: the simulated raters draw their noise per comparison set, and every round's sets
    # follow the prompts in the same order, so with one seed they would make the same mistakes round after round
    settings = {**raters, "sft_ckpt": policy_ckpt, "out_dir": out_dir, "seed": raters["seed"] + r - 1}
    label.main([f"--{k}={v}" for k, v in settings.items()])


def print_rounds(log_path):
    """A line per round: its held-out numbers (its final/ line in metrics.jsonl, resumed rounds' too) and its cost."""
    finals = {}
    for line in Path(log_path).read_text().splitlines():
        record = json.loads(line)
        final = {k.removeprefix("final/"): v for k, v in record.items() if k.startswith("final/")}
        if final:
            finals[record["step"]] = final  # a finished run resumed evaluates its last round again: the last word
    shown = (("gold", "gold {:+.2f}"), ("win_rate", "win-rate against sft {:.1%}"), ("score", "reward model {:+.2f}"),
             ("kl", "KL {:.2f}"), ("distinct", "distinct {:.0%}"))
    for r, m in enumerate((finals[step] for step in sorted(finals)), 1):
        numbers = ", ".join(fmt.format(m[key]) for key, fmt in shown if key in m)
        print(f"round {r}: {numbers}; labelling {m['label_seconds']:.0f}s, training {m['train_seconds']:.0f}s")


def reference_model(cfg, rt):
    """The reference, frozen: the SFT model, in every round (see the docstring)."""
    return frozen(load_policy(cfg.sft_ckpt, "--sft_ckpt")[0]).to(rt.device)


def main(argv=None):
    cfg, rt, ckpt_path, resumed = begin("dpo", Config, argv)
    check(cfg)
    check_split(cfg.batch_size, "--batch_size", rt)
    if cfg.rounds > 1 and rt.world_size > 1:
        raise SystemExit("--rounds above 1 labels the policy's responses between rounds, in one process: run it as "
                         "python dpo.py, not under torchrun")
    average = cfg.loss_type in MEAN_LOGPS
    if not cfg.train_file:
        with master_first(rt):  # the master generates the task, the others read it
            data_dir, _ = world.builtin_task()
        train_file, val_file = world.builtin_pairs(cfg.pairs, data_dir)
        prompts_file = cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    elif not (cfg.val_file and cfg.eval_prompts):
        raise SystemExit("with --train_file, also give --val_file and --eval_prompts")
    else:
        train_file, val_file, prompts_file = cfg.train_file, cfg.val_file, cfg.eval_prompts
    raters = raters_of(train_file) if cfg.rounds > 1 else None

    policy, tokenizer_spec, _ = load_policy(cfg.sft_ckpt, "--sft_ckpt")
    # dropout off for good, whatever SFT used, as in PPO and the reward model: it would make the log-probs noisy,
    # and the policy would differ from the reference before its first step
    policy.to(rt.device).eval()
    ref = reference_model(cfg, rt)
    enc = load_tokenizer(tokenizer_spec)
    eot = enc.eot_token
    max_len = policy.config.block_size
    rt.say(f"policy and reference from {cfg.sft_ckpt}: {policy.num_params() / 1e6:.2f}M parameters, "
           f"tokenizer {tokenizer_spec}")
    reward_model = None  # evaluation only: the reward model's view beside the gold judge's
    if rt.master and cfg.reward_ckpt and (Path(cfg.reward_ckpt).exists() or cfg.reward_ckpt != Config.reward_ckpt):
        reward_model = frozen(load_reward_model(cfg.reward_ckpt, "--reward_ckpt", tokenizer_spec, cfg.reward_agg,
                                                cfg.uwo_lambda)[0]).to(rt.device)
    heldout = HeldOut(prompts_file, enc, max_len, cfg.max_new_tokens, cfg.temperature, cfg.n_eval, rt, reward_model,
                      world)
    # the SFT policy is the reference: its samples are the baseline of every round's win-rate. The policy's are
    # drawn with another seed: shared random numbers would make the two tie more often than independent samples
    # do, pulling the win-rate toward 1/2.
    if rt.master:
        sft_report, sft_rows = heldout.evaluate(ref, cfg.seed)
        print(heldout.summary("sft", sft_report))

    train_policy = distributed(policy, rt)
    # where the run starts: a round and a step in it. A resumed run whose round had ended goes on to the next one.
    first_round, first_step = (resumed.get("round", 1), resumed["step"]) if resumed else (1, 0)
    if resumed:
        policy.load_state_dict(resumed["model"])
        if first_step >= cfg.max_steps and first_round < cfg.rounds:
            first_round, first_step = first_round + 1, 0
    # metrics.jsonl counts the steps on from round to round
    log = MetricsLog(cfg.out_dir, rt, resume_step=(first_round - 1) * cfg.max_steps + first_step if resumed else None)

    for r in range(first_round, cfg.rounds + 1):
        name = "dpo" if cfg.rounds == 1 else f"dpo round {r}"
        round_dir = Path(cfg.out_dir) / f"round{r}"
        start = first_step if r == first_round else 0
        t0 = time.time()
        if r > 1:
            if start == 0:  # a round resumed in its middle goes on with the labels it started with
                label_round(raters, r, str(Path(cfg.out_dir) / f"round{r - 1}" / "ckpt.pt"), str(round_dir))
            train_file, val_file = (str(round_dir / label.FILES[split]) for split in ("train", "val"))
        label_seconds, t0 = time.time() - t0, time.time()
        train = load_pairs(train_file, enc, max_len, rt.say)
        val = load_pairs(val_file, enc, max_len, rt.say)[:cfg.n_val_pairs]
        if ref is None:
            ref = reference_model(cfg, rt)
        ref_val, ref_train = reference_logps(ref, train, val, eot, start, cfg, rt)
        rt.say(f"reference log-probs in {time.time() - t0:.1f}s")
        if not cfg.recompute_ref:
            # training then holds one model, not two. The sequence KL at evaluation still needs the reference on
            # fresh samples: it is reloaded for each evaluation, when no activations are held.
            ref = None

        # a fresh optimizer and learning-rate schedule each round, as for one DPO run from the current policy;
        # decay would pull the weights toward 0, not toward the reference: off
        optimizer = policy.configure_optimizers(0.0, cfg.lr, (0.9, 0.95), rt.device.type)
        if start:
            restore_run(resumed, policy, optimizer, rt)
        logged = (r - 1) * cfg.max_steps  # the steps of the rounds before, in metrics.jsonl

        bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc=name, dynamic_ncols=True,
                   disable=not rt.master)
        for step in bar:
            lr = lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = batch_at(len(train), cfg.batch_size, step, cfg.seed)
            mine = idx[rt.rank::rt.world_size]  # under torchrun each process takes a slice of the same batch
            batch = [train[i] for i in mine]
            if cfg.recompute_ref:
                with torch.no_grad():
                    ref_c, ref_r = pair_logps(ref, batch, eot, rt, average)
            else:
                ref_c, ref_r = ref_train[:, mine]
            policy_c, policy_r = pair_logps(train_policy, batch, eot, rt, average)
            losses, chosen_rewards, rejected_rewards = dpo_loss(policy_c, policy_r, ref_c, ref_r, cfg.beta,
                                                                cfg.loss_type, cfg.label_smoothing)
            loss = losses.mean() * len(mine) / len(idx)  # the mean over the whole batch: this slice's share of it
            # sums over the whole batch: every process must see the same loss, so that all of them stop together
            sums = all_sum(torch.stack([loss.detach(), chosen_rewards.sum(), rejected_rewards.sum(),
                                        (chosen_rewards > rejected_rewards).sum().float(), policy_c.detach().sum(),
                                        policy_r.detach().sum()]))
            total_loss, chosen, rejected, correct, logp_chosen, logp_rejected = sums.tolist()
            check_finite(total_loss, step, ckpt_path)
            rt.scaler.scale(loss * rt.world_size).backward()  # x world_size: DDP averages over processes
            grad_norm = optimizer_step(optimizer, policy.parameters(), cfg.grad_clip, rt)

            done = step + 1
            n = len(idx)
            metrics = {"loss": total_loss, "rewards/chosen": chosen / n, "rewards/rejected": rejected / n,
                       "rewards/margins": (chosen - rejected) / n, "rewards/accuracies": correct / n,
                       "logps/chosen": logp_chosen / n, "logps/rejected": logp_rejected / n, "lr": lr,
                       "grad_norm": grad_norm}
            evaluating = done % cfg.eval_interval == 0 and done < cfg.max_steps  # the last one's is the summary
            if evaluating and rt.master:
                reference = ref if cfg.recompute_ref else reference_model(cfg, rt)
                report, _ = validate(policy, reference, val, ref_val, heldout, sft_rows, cfg, rt)
                metrics.update({f"eval/{k}": v for k, v in report.items()})
                tqdm.write(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
            log.log(logged + done, **metrics)
            if evaluating:  # after the log line: a run resumed from here continues metrics.jsonl without a gap
                save_run(ckpt_path, "policy", policy, optimizer, rt, cfg, tokenizer_spec, done, round=r)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", margin=f"{metrics['rewards/margins']:.2f}",
                            acc=f"{metrics['rewards/accuracies']:.2f}", logp_c=f"{metrics['logps/chosen']:.1f}",
                            logp_r=f"{metrics['logps/rejected']:.1f}")
        bar.close()
        leave_processes(rt)  # several processes run one round only (see above)
        if not rt.master:
            return None

        train_seconds = time.time() - t0
        reference = ref if cfg.recompute_ref else reference_model(cfg, rt)
        summary, rows = validate(policy, reference, val, ref_val, heldout, sft_rows, cfg, rt)
        summary.update({f"sft_{k}": v for k, v in sft_report.items()})
        summary.update(label_seconds=label_seconds, train_seconds=train_seconds)
        heldout.show(name, summary, rows, cfg.out_dir)
        print(f"{name}: held-out implicit-reward accuracy {summary['rewards/accuracies']:.1%}")
        log.log(logged + cfg.max_steps, **{f"final/{k}": v for k, v in summary.items()})
        if cfg.rounds > 1:  # the policy the next round samples, beside the labels it learned from
            save_run(round_dir / "ckpt.pt", "policy", policy, optimizer, rt, cfg, tokenizer_spec, cfg.max_steps,
                     round=r, summary=summary)
        save_run(ckpt_path, "policy", policy, optimizer, rt, cfg, tokenizer_spec, cfg.max_steps, round=r,
                 summary=summary)
        print(f"saved {ckpt_path}")
    if cfg.rounds > 1:
        print_rounds(log.path)
    return summary


if __name__ == "__main__":
    main()
