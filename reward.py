"""
Stage 3, reward modelling: learn a scalar score from pairs where raters preferred one response.

The reward model is the SFT transformer with its language-model head swapped for a scalar head, read at
the end-of-text token that closes the response: the only position that has seen the whole response.
It is trained with the Bradley-Terry loss, P(chosen beats rejected) = sigmoid(r_chosen - r_rejected).
At the end the reward is scaled and shifted so that the SFT policy's own samples, where PPO starts, score
mean 0 and standard deviation 1. With no arguments it trains on the built-in task; by flags, on any JSONL of
{prompt, chosen, rejected}. With --members K it trains K reward models one after another, each from the SFT model
with its own head and data order (with --bootstrap, its own resample of the pairs): an ensemble that PPO and the
experiments score as one (model.ensemble_reward), and with --warm their weight average as one more reward model.

    python reward.py
    python reward.py --train_file pairs.jsonl --val_file pairs_val.jsonl --prompts_file prompts.jsonl
    python reward.py --members 4 --warm --out_dir out/reward_ensemble
"""

import collections
import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import (MetricsLog, all_gather_rows, all_sum, batch_at, begin, check_finite, check_split, distributed,
                    fit_pair_to_context, leave_processes, load_policy, load_prompts, lr_at, master_first,
                    optimizer_step, pad, read_jsonl, restore_run, sample, save_checkpoint, save_run)
from data import world
from evaluate import reward_scores
from model import GPTConfig, RewardEnsemble, RewardModel
from tokenizer import EOT, load_tokenizer, render


@dataclass
class Config:
    sft_ckpt: str = "out/sft/ckpt.pt"  # the SFT checkpoint: the reward model's start, and the policy that sets its scale
    train_file: str = ""  # JSONL of {prompt, chosen, rejected}; empty: the built-in task's (see pairs)
    val_file: str = ""  # held-out JSONL of {prompt, chosen, rejected}; empty: the built-in task's
    pairs: str = "labelled"  # built-in task: labelled (label.py's, of the SFT model's own responses) or scripted (data/world.py's behaviours)
    prompts_file: str = ""  # JSONL of {prompt} for the normalisation; empty: the built-in task's training prompts
    out_dir: str = "out/reward"  # where ckpt.pt and metrics.jsonl go
    batch_size: int = 32  # pairs per step (the forward pass holds twice as many sequences)
    max_steps: int = 200  # optimizer steps (200 of 32 pairs: two thirds of the built-in task's 10k pairs, each seen once)
    lr: float = 3e-4  # peak learning rate
    warmup_steps: int = 20  # linear warmup steps
    weight_decay: float = 0.0  # AdamW weight decay, on matrices only
    grad_clip: float = 1.0  # clip the gradient norm to this
    margin: float = 0.0  # required reward gap: the loss is -log sigmoid(r_chosen - r_rejected - margin)
    center_coef: float = 0.0  # weight of mean((r_chosen + r_rejected)^2), which keeps rewards near 0 during training
    eval_interval: int = 100  # validation every this many steps (and at the end, after normalising)
    ckpt_interval: int = 100  # checkpoint every this many steps (and at the end)
    n_norm: int = 256  # training prompts the SFT policy answers to set the reward's zero and scale
    max_new_tokens: int = 64  # response length limit when sampling for the normalisation
    temperature: float = 1.0  # sampling temperature for the normalisation (PPO's sampling temperature)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16 or fp16 on CUDA, fp32 on CPU), float32, bfloat16, float16
    compile: bool = False  # torch.compile the model for training
    members: int = 1  # reward models trained one after another from the SFT model, each its own head and data order: an ensemble
    warm: bool = False  # with members > 1, also write their weight average (WARM) to out_dir/warm.pt, one ordinary reward model
    bootstrap: bool = False  # with members > 1, each member trains on its own resample (with replacement) of the pairs
    seed: int = 0  # seed of the head's initialisation, data order and sampling (member m: seed + m)
    resume: bool = False  # continue the run in out_dir from its checkpoint


def preference_loss(chosen_rewards, rejected_rewards, margin=0.0, center_coef=0.0):
    """
    Bradley-Terry negative log-likelihood of the raters' choices:

        loss = mean(-log sigmoid(r_chosen - r_rejected - margin)) + center_coef * mean((r_chosen + r_rejected)^2)

    margin (a float, or one per pair) asks for a gap of at least that much (Llama 2). Without the centering
    term only differences of rewards matter, so their common level drifts freely; the term pins it near 0.
    """
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - margin).mean()
    return loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()


def load_pairs(path, enc, max_len, say=print):
    """The records of a {prompt, chosen, rejected} file and their rendered (chosen ids, rejected ids)."""
    records = read_jsonl(path, ("prompt", "chosen", "rejected"))
    pairs, truncated = [], 0
    for rec in records:
        chosen, rejected = (render(enc, rec["prompt"], rec[side]) for side in ("chosen", "rejected"))
        (chosen, _), (rejected, _), cut = fit_pair_to_context(chosen, rejected, max_len)
        pairs.append((chosen, rejected))
        truncated += cut
    say(f"{path}: {len(pairs)} pairs, {truncated} truncated to {max_len} tokens")
    return records, pairs


def collate(pairs, pad_id, device):
    """The chosen rows, then the rejected rows, right-padded into one batch: one forward pass scores both."""
    ids, mask = pad([c for c, _ in pairs] + [r for _, r in pairs], pad_id)
    return ids.to(device), mask.to(device)


@torch.no_grad()
def evaluate(rm, pairs, cfg, rt, pad_id, gold=None, classes=None):
    """
    Held-out loss, accuracy (the reward ranks the raters' choice first), mean and spread of all rewards and the
    mean chosen - rejected margin. gold: per pair, +1 where the gold judge prefers the chosen response, -1 the
    rejected, 0 a tie (half credit, as in the raters' ceiling). classes: per pair, the gold judge's classes of the
    better and the worse reply ("right>wrong"), for the agreement within each: where the reward model is blind.
    """
    chosen, rejected = [], []
    for i in range(0, len(pairs), cfg.batch_size):
        ids, mask = collate(pairs[i:i + cfg.batch_size], pad_id, rt.device)
        with rt.autocast():
            c, r = rm(ids, mask).cpu().chunk(2)
        chosen.append(c)
        rejected.append(r)
    c, r = torch.cat(chosen), torch.cat(rejected)
    both = torch.cat([c, r])
    metrics = {"val_loss": preference_loss(c, r, cfg.margin, cfg.center_coef).item(),
               "val_accuracy": (c > r).float().mean().item(), "val_reward_mean": both.mean().item(),
               "val_reward_std": both.std().item(), "val_margin": (c - r).mean().item()}
    if gold is not None:
        agree = torch.where(gold == 0, 0.5, (torch.sign(c - r) == gold).float())
        metrics["val_gold_agreement"] = agree.mean().item()
        for name in sorted(set(classes or [])):
            metrics[f"val_gold_agreement/{name}"] = agree[[k == name for k in classes]].mean().item()
    return metrics


def gold_verdicts(records):
    """
    What the gold judge says of held-out pairs, where it knows their prompts: (per pair +1 where it prefers the
    chosen response, -1 the rejected, 0 a tie; per pair its classes of the better and the worse reply, as
    "right>wrong"; the raters' agreement with it, a tie counting half). (None, None, None) elsewhere.
    """
    if not world.judges([r["prompt"] for r in records]):
        return None, None, None
    # the gold judge reads raw decoded text, where a finished response ends in end-of-text
    judged = [(world.judge(r["prompt"], r["chosen"] + EOT), world.judge(r["prompt"], r["rejected"] + EOT))
              for r in records]
    gold = torch.tensor([a[0] - b[0] for a, b in judged]).sign()
    classes = [f"{max(a, b)[1]}>{min(a, b)[1]}" for a, b in judged]  # (score, label): the better one's first
    return gold, classes, torch.where(gold == 0, 0.5, (gold > 0).float()).mean().item()


def normalisation(raw, ended):
    """
    (gain, bias) that make gain * raw + bias score mean 0 and standard deviation 1 over the SFT policy's samples
    that ended with end-of-text (lm-human-preferences): PPO starts from this policy, so its rewards start centred
    and on a fixed scale, and beta, the missing end-of-text penalty and the value clip range mean the same on any
    dataset. Only the ended ones, as the reward model was trained to read an end-of-text; all of them if fewer
    than two ended (an SFT model trained too briefly to end its responses).
    """
    scores = raw[ended] if ended.sum() >= 2 else raw
    std = scores.std(correction=0)
    return 1 / std, -scores.mean() / std


@torch.no_grad()
def normalise(models, policy, enc, prompt_ids, cfg, rt):
    """
    Sample the SFT policy on the prompts (token ids) once and set each reward model's gain and bias by
    normalisation: every member of an ensemble on the same samples. Returns which samples ended. Under torchrun
    each process samples and scores its share of the prompts, and the scale is set from all of them.
    """
    batches = sample(policy, prompt_ids[rt.rank::rt.world_size], rt, enc.eot_token, cfg.max_new_tokens,
                     cfg.temperature, 64, cfg.seed + rt.rank)
    ended = all_gather_rows(torch.cat([(tokens == enc.eot_token).any(1) for _, _, tokens, _ in batches])).cpu()
    for rm in models:
        rm.gain.fill_(1.0)
        rm.bias.zero_()
        raw = all_gather_rows(torch.tensor(reward_scores(rm, batches, rt), device=rt.device)).cpu()  # every process's
        gain, bias = normalisation(raw, ended)
        rm.gain.fill_(gain.item())
        rm.bias.fill_(bias.item())
    return ended


def bootstrap(pairs, seed):
    """
    A resample of the pairs as large as they are, drawn with replacement: about 63% of them, some more than once.
    Members trained on the same pairs share those pairs' blind spots; resamples make them differ where the labels
    are thin, so that their disagreement can flag a reply the labels say little about.
    """
    return [pairs[i] for i in torch.randint(len(pairs), (len(pairs),), generator=torch.Generator().manual_seed(seed))]


@torch.no_grad()
def weight_average(models):
    """
    WARM (Ramé et al. 2024, "WARM: On the Benefits of Weight Averaged Reward Models"): the mean of the members'
    weights. Fine-tuned from the same SFT model, they stay close enough in weight space that their average is a
    good reward model itself, more robust than any member, at the cost of one. Normalise it afterwards.
    """
    average = copy.deepcopy(models[0])
    states = [m.state_dict() for m in models]
    average.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
                             for k, v in states[0].items()})
    return average


def print_summary(summary, ended, classes, val_file):
    """What reward.py says at the end: its normalisation, its held-out numbers, and where the gold judge knows the
    pairs, its agreement with the judge overall and within each pair of the judge's classes; for an ensemble, the
    same for each member and the weight average."""
    scale = (f"reward = {summary['norm_gain']:.3f} * head {summary['norm_bias']:+.3f}, so that" if "norm_gain" in
             summary else "each member on its own, so that under each of them")
    print(f"normalised: {scale} the SFT policy's samples on {len(ended)} training prompts score mean 0, std 1 over "
          f"the {int(ended.sum())} that ended with end-of-text"
          + ("" if ended.sum() >= 2 else " (too few: over all of them)"))
    print(f"held-out pairs, {'before normalising' if 'norm_gain' in summary else 'the ensemble (mean)'}: accuracy "
          f"{summary['val_accuracy']:.1%}, loss {summary['val_loss']:.3f}, margin {summary['val_margin']:.3f}, rewards "
          f"{summary['val_reward_mean']:+.3f} ± {summary['val_reward_std']:.3f}")
    if classes is None:
        print(f"no gold judge for these pairs (it knows the built-in task's prompts only): the accuracy against the "
              f"held-out labels of {val_file} is the measure")
    else:
        print(f"agreement with the gold judge {summary['val_gold_agreement']:.1%}; the raters' own: "
              f"{summary['raters_ceiling']:.1%}")
        counts = collections.Counter(k for k in classes if k.split(">")[0] != k.split(">")[1])
        print("by the gold judge's classes of the better > the worse reply: " + ", ".join(
            f"{k} {summary[f'val_gold_agreement/{k}']:.0%} of {n}" for k, n in counts.most_common()))
    for name in [k.removesuffix("/val_accuracy") for k in summary if k.endswith("/val_accuracy")]:  # an ensemble's
        print(f"  {name}: accuracy {summary[f'{name}/val_accuracy']:.1%}" + ("" if classes is None else (
            f", gold agreement {summary[f'{name}/val_gold_agreement']:.1%}; " + ", ".join(
                f"{k} {summary[f'{name}/val_gold_agreement/{k}']:.0%}" for k, _ in counts.most_common()))))


def main(argv=None):
    cfg, rt, ckpt_path, resumed = begin("reward", Config, argv)
    check_split(cfg.batch_size, "--batch_size", rt)
    if cfg.members < 1:
        raise SystemExit(f"--members must be at least 1, not {cfg.members}")
    if cfg.warm and cfg.members < 2:
        raise SystemExit("--warm averages the members' weights: give --members 2 or more")
    if cfg.bootstrap and cfg.members < 2:
        raise SystemExit("--bootstrap gives each member of an ensemble its own resample of the pairs: give --members 2 "
                         "or more")
    if not cfg.train_file:
        with master_first(rt):  # the master generates the task, the others read it
            data_dir, _ = world.builtin_task()
        train_file, val_file = world.builtin_pairs(cfg.pairs, data_dir)
        prompts_file = f"{data_dir}/prompts_train.jsonl"
    elif not (cfg.val_file and cfg.prompts_file):
        raise SystemExit("with --train_file, also give --val_file and --prompts_file")
    else:
        train_file, val_file, prompts_file = cfg.train_file, cfg.val_file, cfg.prompts_file

    # the SFT model: a frozen policy to sample from, and the trunk of every member, each with its own random head.
    # Dropout off: a reward must be a deterministic function of the text.
    policy, tokenizer_spec, sft = load_policy(cfg.sft_ckpt, "--sft_ckpt")
    enc = load_tokenizer(tokenizer_spec)
    members = [RewardModel(GPTConfig(**{**sft["model_config"], "dropout": 0.0})) for _ in range(cfg.members)]
    for member in members:
        member.gpt.load_state_dict(sft["model"])
    rm = members[0] if cfg.members == 1 else RewardEnsemble(members)  # what ckpt.pt holds
    kind = "reward_model" if cfg.members == 1 else "reward_ensemble"
    policy.to(rt.device)
    rm.to(rt.device)
    rt.say(f"reward model: {cfg.members} x {sum(p.numel() for p in members[0].parameters()) / 1e6:.2f}M parameters "
           f"from {cfg.sft_ckpt}")

    max_len = members[0].config.block_size
    _, train = load_pairs(train_file, enc, max_len, rt.say)
    val_records, val = load_pairs(val_file, enc, max_len, rt.say)
    _, prompt_ids = load_prompts(prompts_file, enc, max_len, cfg.max_new_tokens, cfg.n_norm, rt.say)
    gold, classes, ceiling = gold_verdicts(val_records)
    if gold is not None:
        rt.say(f"raters' ceiling: the held-out labels agree with the gold judge on {ceiling:.1%} of pairs")

    first = resumed.get("member", 0) if resumed else 0  # a resumed run goes on with the member it was training
    log = MetricsLog(cfg.out_dir, rt, resume_step=first * cfg.max_steps + resumed["step"] if resumed else None)
    for m in range(first, cfg.members):  # the members one after another: the same loop, another seed
        member = members[m]
        pairs = bootstrap(train, cfg.seed + m) if cfg.bootstrap else train
        train_rm = distributed(member, rt, cfg.compile)
        optimizer = member.gpt.configure_optimizers(cfg.weight_decay, cfg.lr, (0.9, 0.95), rt.device.type,
                                                    extra_params=member.head.parameters())
        step = restore_run(resumed, rm, optimizer, rt) if resumed and m == first else 0

        bar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, dynamic_ncols=True,
                   desc="reward" if cfg.members == 1 else f"reward member {m}", disable=not rt.master)
        t0, start = time.time(), step
        for step in bar:
            lr = lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = [pairs[i] for i in batch_at(len(pairs), cfg.batch_size, step, cfg.seed + m)]
            mine = batch[rt.rank::rt.world_size]  # under torchrun each process takes a slice of the same batch
            ids, mask = collate(mine, enc.eot_token, rt.device)
            with rt.autocast():
                chosen, rejected = train_rm(ids, mask).chunk(2)
                # the mean over the whole batch: this slice's mean, weighed by its share of the pairs
                loss = preference_loss(chosen, rejected, cfg.margin, cfg.center_coef) * len(mine) / len(batch)
            # every process must see the same loss, so that all of them stop together
            sums = all_sum(torch.stack([loss.detach().float(), (chosen > rejected).sum().float()]))
            total_loss, correct = sums.tolist()
            check_finite(total_loss, step, ckpt_path)
            rt.scaler.scale(loss * rt.world_size).backward()  # x world_size: DDP averages over processes
            grad_norm = optimizer_step(optimizer, member.parameters(), cfg.grad_clip, rt)

            done = step + 1
            metrics = {"loss": total_loss, "accuracy": correct / len(batch), "lr": lr, "grad_norm": grad_norm,
                       "pairs_per_s": (done - start) * cfg.batch_size / (time.time() - t0)}
            if rt.master and (done % cfg.eval_interval == 0 or done == cfg.max_steps):
                metrics.update(evaluate(member, val, cfg, rt, enc.eot_token, gold, classes))
            log.log(m * cfg.max_steps + done, **metrics, **({"member": m} if cfg.members > 1 else {}))
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", **({"val_acc": f"{metrics['val_accuracy']:.3f}"}
                                                              if "val_accuracy" in metrics else {}))
            # the last member's last step is saved after normalising, below
            if done % cfg.ckpt_interval == 0 and done < cfg.max_steps or done == cfg.max_steps and m < cfg.members - 1:
                save_run(ckpt_path, kind, rm, optimizer, rt, cfg, tokenizer_spec, done, member=m, members=cfg.members)
        bar.close()

    warm = weight_average(members) if cfg.warm else None
    ended = normalise(members + ([warm] if warm else []), policy, enc, prompt_ids, cfg, rt)  # each process a share
    leave_processes(rt)
    if not rt.master:
        return None
    if cfg.members == 1:
        # the validation numbers are those of the last step, on the head's scale like every earlier one; accuracy
        # and agreement are the same after normalising (gain > 0), the loss and the margin are not
        summary = {k: v for k, v in metrics.items() if k.startswith("val_")}
        summary.update({"norm_gain": rm.gain.item(), "norm_bias": rm.bias.item()})
    else:  # the ensemble's mean reads the members' normalised scores: after normalising
        summary = evaluate(rm, val, cfg, rt, enc.eot_token, gold, classes)
        scored = {f"member{m}": member for m, member in enumerate(members)} | ({"warm": warm} if warm else {})
        for name, model in scored.items():
            summary.update({f"{name}/{k}": v for k, v in evaluate(model, val, cfg, rt, enc.eot_token, gold,
                                                                   classes).items()})
            summary.update({f"{name}/norm_gain": model.gain.item(), f"{name}/norm_bias": model.bias.item()})
    summary["norm_ended"] = ended.float().mean().item()
    if gold is not None:
        summary["raters_ceiling"] = ceiling
    print_summary(summary, ended, classes, val_file)
    log.log(cfg.members * cfg.max_steps, **{f"final/{k}": v for k, v in summary.items()})
    save_run(ckpt_path, kind, rm, optimizer, rt, cfg, tokenizer_spec, cfg.max_steps, member=cfg.members - 1,
             members=cfg.members, summary=summary)
    print(f"saved {ckpt_path}")
    if warm is not None:  # one ordinary reward model: not a run to resume
        save_checkpoint(Path(cfg.out_dir) / "warm.pt", {"kind": "reward_model", "model": warm.state_dict(),
                                                        "model_config": asdict(warm.config),
                                                        "tokenizer": tokenizer_spec, "config": asdict(cfg)})
        print(f"saved {Path(cfg.out_dir) / 'warm.pt'} (the members' weight average)")
    return summary


if __name__ == "__main__":
    main()
