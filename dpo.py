"""
Stage 5, direct preference optimisation: learn from preference pairs without a reward model or sampling.

DPO (Rafailov et al. 2023) shows that the policy maximising reward minus β·KL to a reference has the
reward β·log(π/π_ref) up to a per-prompt constant, which cancels between two responses to the same
prompt. So the Bradley-Terry likelihood of the preferences can be written in the policy itself, and
fitting it is plain supervised learning on (prompt, chosen, rejected). The reference is the SFT model.
With no arguments it trains on the built-in task from out/sft/ckpt.pt; by flags, on any JSONL of
{prompt, chosen, rejected}.

    python dpo.py
    python dpo.py --train_file prefs.jsonl --val_file prefs_val.jsonl --eval_prompts prompts.jsonl --device cuda
"""

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import (MetricsLog, all_gather_rows, all_sum, batch_at, check_finite, check_split, encode_prompts,
                    fit_pair_to_context, frozen, leave_processes, load_policy, lr_at, master_first, pad, parallelize,
                    print_config, print_samples, read_jsonl, restore_training, run_config, save_checkpoint,
                    setup_runtime, token_logprobs, training_state, whole, write_jsonl)
from data import world
from evaluate import evaluate_policy, summary_lines
from reward import load_reward_model
from tokenizer import load_tokenizer, render


@dataclass
class Config:
    train_file: str = ""  # JSONL of {prompt, chosen, rejected}; empty: the built-in task's (see pairs)
    val_file: str = ""  # held-out JSONL of {prompt, chosen, rejected}; empty: the built-in task's
    pairs: str = "labelled"  # built-in task: labelled (label.py's, of the SFT model's own responses) or scripted (data/world.py's behaviours)
    eval_prompts: str = ""  # JSONL of {prompt} sampled at every evaluation; empty: the built-in task's held-out prompts (tune on out/data/val_prompts.jsonl)
    sft_ckpt: str = "out/sft/ckpt.pt"  # the SFT checkpoint: the initial policy and the reference
    reward_ckpt: str = "out/reward/ckpt.pt"  # evaluation only: a reward model that scores the samples (this default is skipped if missing; empty: none)
    out_dir: str = "out/dpo"  # where ckpt.pt and metrics.jsonl go
    loss_type: str = "sigmoid"  # sigmoid (DPO; conservative DPO with label_smoothing), ipo (mean log-probs) or hinge
    beta: float = 0.5  # strength of the KL constraint to the reference: the implicit reward is beta * log(pi/pi_ref)
    label_smoothing: float = 0.0  # sigmoid only: assumed probability that a preference label is flipped
    recompute_ref: bool = False  # reference log-probs every step, not once before training (holds two models)
    batch_size: int = 32  # preference pairs per step
    max_steps: int = 150  # optimizer steps
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
    fsdp: bool = False  # under torchrun: shard the policy's weights, gradients and optimizer state across the processes (FSDP2), not copy them (DDP)
    seed: int = 0  # seed of data order and sampling
    resume: bool = False  # continue the run in out_dir from its checkpoint


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
        raise ValueError(f"loss_type must be sigmoid, ipo or hinge, not {loss_type!r}")
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


def main(argv=None):
    cfg, ckpt_path, resumed = run_config(Config, argv)
    if cfg.loss_type not in ("sigmoid", "ipo", "hinge"):
        raise SystemExit(f"--loss_type must be sigmoid, ipo or hinge, not {cfg.loss_type!r}")
    if cfg.label_smoothing and cfg.loss_type != "sigmoid":
        raise SystemExit(f"--label_smoothing is for --loss_type sigmoid (conservative DPO); {cfg.loss_type} has no "
                         f"use for it: drop it")
    average = cfg.loss_type == "ipo"  # IPO's log-probs are means per response token (see dpo_loss)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    check_split(cfg.batch_size, "--batch_size", rt)
    say = print if rt.master else lambda *a, **k: None
    say("dpo config:")
    if rt.master:
        print_config(cfg)

    if not cfg.train_file:
        with master_first(rt):  # the master generates the task, the others read it
            data_dir, _ = world.builtin_task()
        train_file, val_file = world.builtin_pairs(cfg.pairs, data_dir)
        prompts_file = cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    else:
        if not (cfg.val_file and cfg.eval_prompts):
            raise SystemExit("with --train_file, also give --val_file and --eval_prompts")
        train_file, val_file, prompts_file = cfg.train_file, cfg.val_file, cfg.eval_prompts

    policy, tokenizer_spec, _ = load_policy(cfg.sft_ckpt, "--sft_ckpt")
    # dropout off for good, whatever SFT used, as in PPO and the reward model: it would make the log-probs noisy,
    # and the policy would differ from the reference before its first step
    policy.to(rt.device).eval()
    ref = frozen(load_policy(cfg.sft_ckpt, "--sft_ckpt")[0]).to(rt.device)
    enc = load_tokenizer(tokenizer_spec)
    eot = enc.eot_token
    max_len = policy.config.block_size
    say(f"policy and reference from {cfg.sft_ckpt}: {policy.num_params() / 1e6:.2f}M parameters, "
        f"tokenizer {tokenizer_spec}")
    train = load_pairs(train_file, enc, max_len, say)
    val = load_pairs(val_file, enc, max_len, say)[:cfg.n_val_pairs]
    prompts = [r["prompt"] for r in read_jsonl(prompts_file, ("prompt",))][:cfg.n_eval]
    prompt_ids, cut = encode_prompts(enc, prompts, max_len, cfg.max_new_tokens)
    say(f"{prompts_file}: {len(prompts)} prompts sampled at every evaluation, {cut} cut to their last "
        f"{max_len - cfg.max_new_tokens} tokens")

    # everything the reference is needed for that does not change during training, computed once
    t0 = time.time()
    ref_val = shared_pair_logps(ref, val, eot, rt, 2 * cfg.batch_size, average)
    # the SFT policy is the reference: its samples are the baseline of the win-rate. The policy's are drawn
    # with another seed: shared random numbers would make the two tie more often than independent samples
    # do, pulling the win-rate toward 1/2.
    reward_model = None
    if rt.master and cfg.reward_ckpt and (Path(cfg.reward_ckpt).exists() or cfg.reward_ckpt != Config.reward_ckpt):
        reward_model, rm_tokenizer = load_reward_model(cfg.reward_ckpt, "--reward_ckpt")
        if rm_tokenizer != tokenizer_spec:
            raise SystemExit(f"the reward model reads tokenizer {rm_tokenizer}, the policy writes {tokenizer_spec}")
        reward_model = frozen(reward_model).to(rt.device)
    evaluate = lambda policy, seed, **kw: evaluate_policy(policy, enc, prompts, prompt_ids, rt, cfg.max_new_tokens,
                                                          cfg.temperature, seed, reward_model=reward_model, **kw)
    if rt.master:  # who evaluates
        sft_report, sft_rows = evaluate(ref, cfg.seed)
        print(summary_lines("sft", sft_report, len(prompts), prompts_file))
    step = resumed["step"] if resumed else 0
    if not cfg.recompute_ref:
        # only the pairs this run will visit: a run shorter than an epoch would pay for the rest in vain
        visited = sorted({i for k in range(step, cfg.max_steps)
                          for i in batch_at(len(train), cfg.batch_size, k, cfg.seed)})
        ref_train = torch.full((2, len(train)), float("nan"), device=rt.device)
        ref_train[:, visited] = shared_pair_logps(ref, [train[i] for i in visited], eot, rt, 2 * cfg.batch_size,
                                                  average)
        # training then holds one model, not two. The sequence KL at evaluation still needs the reference on
        # fresh samples: it is reloaded from the checkpoint for each evaluation, when no activations are held.
        ref = None
    say(f"reference log-probs and sft samples in {time.time() - t0:.1f}s")

    train_policy, replica = parallelize(policy, rt, cfg.fsdp)
    # decay would pull the weights toward 0, not toward the reference: off
    optimizer = policy.configure_optimizers(0.0, cfg.lr, (0.9, 0.95), rt.device.type)
    if resumed:
        step = restore_training(resumed, policy, optimizer, rt.scaler)
        say(f"resumed from {ckpt_path} at step {step}")
    log = MetricsLog(cfg.out_dir, resume_step=step if resumed else None, enabled=rt.master)

    def checkpoint(step, state, **extra):  # state: training_state, which every process gathers, the master writes
        if rt.master:
            save_checkpoint(ckpt_path, {"kind": "policy", "model_config": asdict(policy.config),
                                        "tokenizer": tokenizer_spec, "config": asdict(cfg), "step": step, **state,
                                        **extra})

    @torch.no_grad()
    def validate(policy):
        """The held-out pairs' loss and implicit-reward accuracy, and the policy's samples on the held-out prompts."""
        c, r = all_pair_logps(policy, val, eot, rt, 2 * cfg.batch_size, average)
        losses, chosen_rewards, rejected_rewards = dpo_loss(c, r, *ref_val, cfg.beta, cfg.loss_type,
                                                            cfg.label_smoothing)
        reference = ref if cfg.recompute_ref else frozen(load_policy(cfg.sft_ckpt, "--sft_ckpt")[0]).to(rt.device)
        report, rows = evaluate(policy, cfg.seed + 1, ref=reference, baseline=sft_rows)
        return {"loss": losses.mean().item(),
                "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(), **report}, rows

    bar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, desc="dpo", dynamic_ncols=True,
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
        losses, chosen_rewards, rejected_rewards = dpo_loss(policy_c, policy_r, ref_c, ref_r, cfg.beta, cfg.loss_type,
                                                            cfg.label_smoothing)
        loss = losses.mean() * len(mine) / len(idx)  # the mean over the whole batch: this slice's share of it
        # sums over the whole batch: every process must see the same loss, so that all of them stop together
        sums = all_sum(torch.stack([loss.detach(), chosen_rewards.sum(), rejected_rewards.sum(),
                                    (chosen_rewards > rejected_rewards).sum().float(), policy_c.detach().sum(),
                                    policy_r.detach().sum()]))
        total_loss, chosen, rejected, correct, logp_chosen, logp_rejected = sums.tolist()
        check_finite(total_loss, step, ckpt_path)
        rt.scaler.scale(loss * rt.world_size).backward()  # x world_size: DDP (or FSDP) averages over processes
        rt.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        rt.scaler.step(optimizer)
        rt.scaler.update()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        n = len(idx)
        metrics = {"loss": total_loss, "rewards/chosen": chosen / n, "rewards/rejected": rejected / n,
                   "rewards/margins": (chosen - rejected) / n, "rewards/accuracies": correct / n,
                   "logps/chosen": logp_chosen / n, "logps/rejected": logp_rejected / n,
                   "lr": lr, "grad_norm": grad_norm.item()}
        evaluating = done % cfg.eval_interval == 0 and done < cfg.max_steps  # the last step's evaluation is the summary
        if evaluating:
            current = whole(policy, replica)  # every process: under FSDP the master evaluates a whole copy
            if rt.master:
                report, _ = validate(current)
                metrics.update({f"eval/{k}": v for k, v in report.items()})
                tqdm.write(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
        log.log(done, **metrics)
        if evaluating:  # after the log line: a run resumed from here continues metrics.jsonl without a gap
            checkpoint(done, training_state(policy, optimizer, rt.scaler))
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", chosen=f"{metrics['rewards/chosen']:+.2f}",
                        rejected=f"{metrics['rewards/rejected']:+.2f}", margin=f"{metrics['rewards/margins']:.2f}",
                        acc=f"{metrics['rewards/accuracies']:.2f}", logp_c=f"{metrics['logps/chosen']:.1f}",
                        logp_r=f"{metrics['logps/rejected']:.1f}")
    bar.close()
    final = training_state(policy, optimizer, rt.scaler)
    policy = whole(policy, replica)  # from here the master goes on alone
    leave_processes(rt)
    if not rt.master:
        return None

    summary, rows = validate(policy)
    summary.update({f"sft_{k}": v for k, v in sft_report.items()})
    print_samples(rows, 5)
    print(f"dpo: held-out implicit-reward accuracy {summary['rewards/accuracies']:.1%}")
    print(summary_lines("dpo", summary, len(prompts), prompts_file))
    write_jsonl(Path(cfg.out_dir) / "samples.jsonl", rows)
    log.log(cfg.max_steps, **{f"final/{k}": v for k, v in summary.items()})
    checkpoint(cfg.max_steps, final, summary=summary)
    print(f"saved {ckpt_path}")
    return summary


if __name__ == "__main__":
    main()
