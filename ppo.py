"""
Stage 4, PPO: the SFT policy learns to write responses the reward model scores highly, without drifting
far from what it was.

Each iteration samples responses to a batch of prompts, scores them with the frozen reward model, and pays
every token a penalty of beta * (log pi - log pi_ref), its estimate of the KL to the frozen SFT model (the
reference), the score landing on the end-of-text token. GAE turns those rewards into advantages for a
clipped policy loss; a value head on the policy's own trunk learns the returns with a clipped value loss.
The details follow OpenAI's lm-human-preferences and "The N+ Implementation Details of RLHF with PPO"
(Huang et al., 2024).

--advantage swaps GAE for a critic-free estimator; the sampling, the clipped surrogate over --ppo_epochs passes and
the rest of the loop stay. What each leaves out:
    gae           nothing: PPO as above.
    rloo          the value head and GAE: it samples --samples_per_prompt replies to each prompt and judges each
                  against the mean reward of the others; every token of a reply gets the reply's one advantage, and
                  the KL is paid in the reward, summed over the reply.
    grpo          the value head, GAE and the KL in the reward: the group's mean reward is the baseline and its std
                  the scale, and beta * k3 joins each token's loss instead, whose gradient is that of the reverse
                  KL(pi_ref || pi); each reply weighs the same in the loss, however long.
    dr_grpo       GRPO's two divisions as well: no std scaling, and token losses summed over the length limit rather
                  than averaged per reply.
    reinforce_pp  the value head and any groups: PPO's per-token rewards, each token's reward-to-go whitened over
                  the batch.
--reward swaps the score: the reward model's (rm), the task's own check of the answer (verifier: data/world.py's
verify, +1 right, 0 not sure, -1 wrong or no answer, 0 for advice and small talk, which have nothing to check; no
reward model at all), or the reward model's plus --verifier_weight times the verifier's (rm+verifier).

    python ppo.py
    python ppo.py --advantage grpo --reward verifier
    python ppo.py --sft_ckpt out/sft/ckpt.pt --reward_ckpt out/reward/ckpt.pt --prompts_file p.jsonl --eval_prompts e.jsonl
"""

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common import (MetricsLog, all_gather_objects, all_mean, all_sum, batch_at, begin, check_finite, decode_responses,
                    distributed, frozen, leave_processes, load_policy, load_prompts, load_reward_model, lr_at,
                    master_first, pad, restore_run, save_run)
from data import world
from evaluate import HeldOut, print_samples
from model import RewardEnsemble, ScalarHead, response_mask, token_logprobs
from tokenizer import load_tokenizer


@dataclass
class Config:
    sft_ckpt: str = "out/sft/ckpt.pt"  # the SFT policy: where PPO starts, and the frozen reference
    reward_ckpt: str = "out/reward/ckpt.pt"  # the trained, normalised reward model or ensemble (not read with --reward verifier)
    reward_agg: str = "mean"  # an ensemble's members scored as one: mean, min (worst case) or uwo (mean - uwo_lambda * variance)
    uwo_lambda: float = 0.5  # uwo: the weight of the members' disagreement (their variance) subtracted from their mean
    prompts_file: str = ""  # JSONL of {prompt} to train on; empty: the built-in task's training prompts
    eval_prompts: str = ""  # held-out JSONL of {prompt}; empty: the built-in task's (tune on out/data/val_prompts.jsonl)
    out_dir: str = "out/ppo"  # where ckpt.pt and metrics.jsonl go
    iterations: int = 60  # rounds of sampling a rollout batch and updating on it
    advantage: str = "gae"  # gae (PPO: GAE with a value head), or without a critic rloo, grpo, dr_grpo or reinforce_pp
    samples_per_prompt: int | None = None  # k, replies sampled to each prompt; none: 4 for rloo, grpo and dr_grpo, 1 for gae and reinforce_pp (gae takes only 1)
    reward: str = "rm"  # rm (the reward model's score), verifier (the built-in task's answer check, data.world.verify) or rm+verifier
    verifier_weight: float = 2.0  # the score is the reward model's (with rm+verifier; 0 with verifier) plus this times the verifier's (tuned on the validation prompts)
    rollout_batch: int = 64  # replies sampled per iteration: rollout_batch / samples_per_prompt prompts, each answered k times
    minibatch: int = 16  # replies per gradient step
    ppo_epochs: int = 2  # passes over each rollout batch
    lr: float = 3e-4  # peak learning rate of the policy (and its value head, with gae)
    warmup_steps: int = 5  # iterations of linear learning-rate warmup, then cosine decay
    grad_clip: float = 1.0  # clip the gradient norm to this
    temperature: float = 1.0  # sampling temperature; every log-prob is of softmax(logits / temperature)
    max_new_tokens: int = 64  # response length limit; a response that hits it never ended
    missing_eot_penalty: float = 1.0  # subtracted from the score of a response that never ended (1: one std of SFT samples' rewards)
    whiten_rewards: bool = False  # rescale each rollout's scores to std 1, keeping their mean
    kl_coef: float = 0.2  # beta, the per-token KL penalty's weight, in the reward or in grpo's and dr_grpo's loss (start value if adaptive; tuned on the validation prompts); lower lets the policy exploit the reward model more
    adaptive_kl: bool = False  # adapt beta to keep the KL near kl_target (Ziegler et al. 2019)
    kl_target: float = 6.0  # adaptive beta: the sequence KL to aim for, in nats
    kl_horizon: int = 0  # adaptive beta: episodes over which beta moves by at most ~20%; 0: the run's length in episodes
    gamma: float = 1.0  # gae: discount; 1, the score at the end counts as much for the first token as the last
    lam: float = 0.95  # gae: GAE lambda; lower trusts the value head more, less variance, more bias
    cliprange: float = 0.2  # clip the probability ratio to 1 +- this
    cliprange_value: float = 0.2  # gae: clip the new values to the old values +- this
    vf_coef: float = 0.1  # gae: weight of the value loss against the policy loss (they share a trunk)
    eval_interval: int = 30  # evaluate on the held-out prompts every this many iterations (and at the end)
    ckpt_interval: int = 10  # checkpoint every this many iterations (and at the end)
    n_eval: int = 256  # held-out prompts per evaluation
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16 or fp16 on CUDA, fp32 on CPU), float32, bfloat16, float16
    seed: int = 0  # seed of the value head, prompt order and sampling
    resume: bool = False  # continue the run in out_dir from its checkpoint


class Policy(nn.Module):
    """The policy GPT alone, as the critic-free estimators train it."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def response_states(self, prompt, prompt_mask, response, resp_mask):
        """Left-padded prompts [B, P] and their responses [B, T]: the final hidden state before each response token."""
        hidden = self.gpt.hidden_states(torch.cat([prompt, response], 1), torch.cat([prompt_mask, resp_mask], 1))
        return hidden[:, prompt.size(1) - 1:-1]  # position t reads everything before response token t

    def forward(self, prompt, prompt_mask, response, resp_mask):
        """The logits that predict each response token [B, T, vocab], and no value: None."""
        return self.gpt.lm_head(self.response_states(prompt, prompt_mask, response, resp_mask)), None


class PolicyWithValue(Policy):
    """The policy GPT and a value head on its final hidden states (gae): one trunk, one forward pass, both outputs."""

    def __init__(self, gpt):
        super().__init__(gpt)
        self.value_head = ScalarHead(gpt.config.n_embd)

    def forward(self, prompt, prompt_mask, response, resp_mask):
        """The logits that predict each response token [B, T, vocab] and the value of the state before it [B, T]."""
        hidden = self.response_states(prompt, prompt_mask, response, resp_mask)
        return self.gpt.lm_head(hidden), self.value_head(hidden).float()


class AdaptiveKLController:
    """
    Ziegler et al. (2019): move beta in proportion to how far the KL is from its target, the error clipped to
    +-20%, at a rate of n_steps / horizon per update: beta grows when the policy drifts too far, shrinks when not.
    """

    def __init__(self, init_kl_coef, target, horizon):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl, n_steps):
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


# ----------------------------------------------------------------------------------------------------------
# The math. Tensors are [batch, response time]; mask is 1 on a response's tokens up to and including its
# first end-of-text, 0 on the padding after it, and everything here keeps the padding out. Under torchrun each
# process holds some rows of the batch: statistics of the whole batch are taken across_processes.


def masked_mean(x, mask, across_processes=False):
    """The mean of x over the real tokens; across_processes, over those of every process's rows."""
    if not across_processes:
        return (x * mask).sum() / mask.sum()
    total, count = all_sum(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]))
    return total / count


def masked_whiten(values, mask, shift_mean=True, across_processes=False):
    """(x - mean) / std over the real tokens; 0 on padding. shift_mean=False adds the mean back: only rescales."""
    mean = masked_mean(values, mask, across_processes)
    var = masked_mean((values - mean) ** 2, mask, across_processes)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimates(logprobs, ref_logprobs):
    """
    Two per-token estimates of KL(pi || pi_ref) from tokens x sampled from pi (Schulman, "Approximating KL
    divergence"), both with the KL as their expected value. Returns (k1, k3):
        k1 = log pi(x) - log pi_ref(x)                  the penalty paid in the reward
        k3 = (r - 1) - log r,  r = pi_ref(x) / pi(x)    never negative, less noisy while pi is near pi_ref: logged
    Only k1 may be paid as a reward. The policy gradient of a reward f(x) is sum_x grad pi(x) f(x); for k1 that
    is exactly grad KL(pi || pi_ref), for k3 it is grad KL(pi || pi_ref) - grad KL(pi_ref || pi), which points
    almost anywhere (tests/test_ppo.py checks both by enumeration).
    """
    k1 = logprobs - ref_logprobs
    return k1, torch.expm1(-k1) + k1


def kl_k2(logprobs, ref_logprobs):
    """
    A third per-token estimate (Schulman's k2), the one to put in a loss rather than a reward:
        k2 = 0.5 * (log pi(x) - log pi_ref(x))^2
    Its value is near the KL only while pi is near pi_ref, but its gradient (log pi - log pi_ref) grad log pi
    averages over samples of pi to exactly grad KL(pi || pi_ref). In a loss, k1's gradient grad log pi averages to 0,
    and k3's, (1 - pi_ref / pi) grad log pi, to grad KL(pi_ref || pi), the reverse KL (tests/test_ppo.py checks all
    three by enumeration).
    """
    return 0.5 * (logprobs - ref_logprobs) ** 2


def token_rewards(scores, kl, mask, beta):
    """r_t = -beta * KL_t on every response token, plus the sequence's score on its last one (the end-of-text)."""
    rewards = -beta * kl * mask
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards


def compute_gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """
    Generalised advantage estimation, backwards in time:
        delta_t = r_t + gamma * V_{t+1} - V_t,    A_t = delta_t + gamma * lam * A_{t+1},    returns_t = A_t + V_t
    The state after the last real token is terminal (V = 0), which the masking gives for free: padding has
    no reward and no value, so its advantage stays 0 and bootstraps nothing into the token before it.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, advantages + values


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange, how="token_mean", max_len=None, kl=None):
    """
    The clipped surrogate of every token (clipped_surrogate), plus kl where given (GRPO's beta * k3 per token),
    averaged as `how` says (aggregate): PPO's is the mean over tokens. Returns (loss, fraction of tokens where the
    clip binds).
    """
    per_token, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, cliprange)
    if kl is not None:
        per_token = per_token + kl
    return aggregate(per_token, mask, how, max_len), masked_mean(clipped, mask)


def ppo_value_loss(values, old_values, returns, mask, cliprange_value):
    """
    0.5 * mean over tokens of max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2): the value head cannot
    gain by moving far from where it was when the rollout was made. Returns (loss, fraction where the clip binds).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def explained_variance(values, returns, mask, across_processes=False):
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect critic, 0 a constant one."""
    var = lambda x: masked_mean((x - masked_mean(x, mask, across_processes)) ** 2, mask, across_processes)
    return 1 - var(returns - values) / var(returns)


# Critic-free advantages: k samples of every prompt, each judged against the other samples of its group instead of
# a value head. A group is k consecutive rows: rows g*k .. g*k + k - 1 answer prompt g. What tells the estimators
# apart, the few switches of TRL's trainers around one clipped surrogate:
#                 baseline             scale            KL, weighted by beta            token losses: aggregate
#   compute_gae   the value head       batch whitening  k1 per token, in the reward     token_mean
#   rloo          mean of the others   k / (k - 1)      k1 summed, in the reward        constant
#   grpo          group mean           group std        k3 per token, in the loss       sequence_mean
#   dr_grpo       group mean           -                k3 per token, in the loss       constant
#   reinforce_pp  -                    batch whitening  k1 per token, in the reward     token_mean
# Each estimator, the --advantage of that name, has its own lines in rollout and ppo_update, switched on these:
AGGREGATION = {"gae": "token_mean", "rloo": "constant", "grpo": "sequence_mean", "dr_grpo": "constant",
               "reinforce_pp": "token_mean"}
GROUP_BASELINES = ("rloo", "grpo", "dr_grpo")  # a sample judged against the other samples of its prompt
KL_IN_LOSS = ("grpo", "dr_grpo")  # beta * k3 on every token's loss, rather than k1 in the reward


def reward_groups(rewards, k):
    """The sequence rewards [B] as [B / k, k], row g holding the rewards of prompt g's k samples."""
    if k < 2 or rewards.numel() % k:
        raise ValueError(f"a group baseline needs k >= 2 samples of every prompt and whole groups: "
                         f"{rewards.numel()} rewards in groups of {k}")
    return rewards.view(-1, k)


def equal_groups(groups):
    """[G, 1]: whether each group's rewards (a row of [G, k]) are all equal."""
    return (groups == groups[:, :1]).all(1, keepdim=True)


def equal_reward_share(rewards, k):
    """The share of groups whose k rewards are all equal: they get no advantage, so nothing is learned from them."""
    return equal_groups(reward_groups(rewards, k)).float().mean()


def centred_rewards(rewards, k):
    """
    r_i - mean_j r_j within each group, [B / k, k]. Exactly 0 where a group's rewards are all equal: the mean of equal
    floats can round (six times 0.3 leaves 3e-8), and GRPO's division by that group's zero std would magnify it.
    """
    groups = reward_groups(rewards, k)
    return torch.where(equal_groups(groups), 0.0, groups - groups.mean(1, keepdim=True))


def to_tokens(advantages, mask):
    """A sequence's advantage, [B / k, k] or [B], on every one of its response tokens: [B, T], 0 on padding."""
    return advantages.reshape(-1, 1) * mask


def rloo(scores, kl, mask, beta, k):
    """
    RLOO, Ahmadian et al. 2024 ("Back to Basics", eq. 3): each sample's baseline is the mean reward of the other
    k - 1 samples of its prompt, which does not depend on the sample, so the gradient stays unbiased:
        A_i = r_i - 1/(k-1) sum_{j != i} r_j = k/(k-1) (r_i - mean_j r_j),    r_i = score_i - beta * sum_t k1_t
    The KL is paid in the reward, as PPO pays it (token_rewards), summed over the sequence. Eq. 3 weighs the
    sequence's log-prob, the sum of its tokens': aggregate the loss as "constant".
    """
    rewards = token_rewards(scores, kl, mask, beta).sum(1)
    return to_tokens(k / (k - 1) * centred_rewards(rewards, k), mask)


def grpo(scores, mask, k, eps=1e-4):
    """
    GRPO, Shao et al. 2024 (DeepSeekMath, outcome supervision): the group's mean is the baseline, its std the scale:
        A_i = (r_i - mean_j r_j) / (std_j r_j + eps)      std with Bessel's correction, as TRL's
    The KL stays out of the reward: beta * k3 joins every token's loss, and the loss is each sequence's token mean,
    then the mean over sequences: aggregate "sequence_mean". k3 as the paper has it, though in a loss its gradient is
    that of the reverse KL(pi_ref || pi); kl_k2 would give grad KL(pi || pi_ref).
    """
    groups = reward_groups(scores, k)
    return to_tokens(centred_rewards(scores, k) / (groups.std(1, keepdim=True) + eps), mask)


def dr_grpo(scores, mask, k):
    """
    Dr. GRPO, Liu et al. 2025 ("Understanding R1-Zero-like training"): GRPO without its two divisions,
        A_i = r_i - mean_j r_j
    Dividing by the std weighs most the groups that are nearly all right or all wrong; dividing each sequence's loss
    by its own length pushes a long wrong reply down less per token than a short one, so wrong replies grow long.
    The loss is instead the token sum over a constant, the length limit: aggregate "constant". The KL, if any, as
    GRPO's.
    """
    return to_tokens(centred_rewards(scores, k), mask)


def reinforce_pp(scores, kl, mask, beta, across_processes=False):
    """
    REINFORCE++, Hu 2025: PPO's rewards without its critic, and no groups (one sample per prompt will do). The
    reward is token_rewards' (-beta * k1 on every token, the score on the last); the advantage its reward-to-go,
    whitened over the whole batch rather than within a prompt's group:
        G_t = sum_{s >= t} r_s   (gamma = 1: compute_gae with V = 0 and lambda = 1),    A_t = (G_t - mean G) / std G
    Loss: aggregate "token_mean", as PPO's.
    """
    rewards = token_rewards(scores, kl, mask, beta)
    returns = rewards.flip(1).cumsum(1).flip(1)
    return masked_whiten(returns, mask, across_processes=across_processes)


def clipped_surrogate(logprobs, old_logprobs, advantages, cliprange):
    """
    PPO's clipped surrogate per token, max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) with ratio = pi / pi_old,
    and 1.0 where the clip binds, before any averaging (ppo_policy_loss). Where the clipped term wins, the loss is flat
    in pi: no gradient pushes further.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    return torch.max(unclipped, clipped), (clipped > unclipped).float()


def aggregate(per_token, mask, how, max_len=None):
    """
    The loss of a batch of B sequences from its per-token losses l_it:
        token_mean     sum_it l_it / sum_it m_it          PPO, REINFORCE++: a long sequence weighs more
        sequence_mean  1/B sum_i sum_t l_it / sum_t m_it  GRPO: every sequence weighs the same, its tokens share it
        constant       sum_it l_it / (B * max_len)        Dr. GRPO, RLOO: every token the same, and the divisor
                                                          does not move with the lengths the policy chooses
    max_len: the response length limit (max_new_tokens), for "constant".
    """
    if how == "token_mean":
        return masked_mean(per_token, mask)
    if how == "sequence_mean":
        return ((per_token * mask).sum(1) / mask.sum(1)).mean()
    if how == "constant":
        return (per_token * mask).sum() / (mask.size(0) * max_len)
    raise ValueError(f"aggregate how={how!r}: token_mean, sequence_mean or constant")


# ----------------------------------------------------------------------------------------------------------
# Rollouts and the update


def response_logprobs(model, prompt, prompt_mask, response, resp_mask, temperature=1.0):
    """Per-token log-probs [B, T_resp] of responses that follow left-padded prompts; 0 outside resp_mask."""
    real = resp_mask.bool()
    # logits only where a response token is predicted (position t predicts token t+1): not over the prompt,
    # nor the padding after an end-of-text
    logits = model(torch.cat([prompt, response], 1), torch.cat([prompt_mask, resp_mask], 1),
                   where=F.pad(real, (prompt.size(1) - 1, 1)))
    logprobs = torch.zeros(response.shape, device=response.device)
    logprobs[real] = token_logprobs(logits, response[real], temperature)
    return logprobs


def noncanonical_share(enc, tokens, mask):
    """
    Share of responses whose tokens are not the tokenizer's own encoding of their text, enc.encode_ordinary(text):
    the policy may sample such a spelling, which the reward model never read in training (its pairs are encoded
    from text).
    """
    responses = [[t for t, keep in zip(row, m) if keep and t != enc.eot_token]
                 for row, m in zip(tokens.tolist(), mask.tolist())]
    return sum(enc.encode_ordinary(enc.decode(r)) != r for r in responses) / len(responses)


def samples_per_prompt(cfg):
    """k, the replies sampled to each prompt: --samples_per_prompt, or by default 4 for a group baseline, else 1."""
    if cfg.samples_per_prompt is not None:
        return cfg.samples_per_prompt
    return 4 if cfg.advantage in GROUP_BASELINES else 1


def verify_responses(prompt_texts, enc, prompt, prompt_mask, tokens, mask):
    """The verifier's value of each response: world.verify of its prompt and its text, as the gold judge reads it."""
    texts = decode_responses(enc, [(prompt, prompt_mask, tokens, mask)])
    return torch.tensor([world.verify(p, t) for p, t in zip(prompt_texts, texts)], device=tokens.device)


@torch.no_grad()
def score_responses(reward_model, prompt, prompt_mask, tokens, mask, eot_id, missing_eot_penalty):
    """
    The reward model's score, read at each response's end-of-text; 0 without one (--reward verifier). A response
    that never ended also pays the penalty, on top of its score rather than instead of it: a replacement would let a
    bad reply escape its low score by running to the length limit.
    """
    scores = torch.zeros(len(tokens), device=tokens.device)
    if reward_model is not None:
        scores = reward_model(torch.cat([prompt, tokens], 1), torch.cat([prompt_mask, mask], 1)).float()
    ended = (tokens == eot_id).any(1)
    return scores - torch.where(ended, 0.0, missing_eot_penalty)


@torch.no_grad()
def rollout(agent, ref, reward_model, prompt_ids, beta, cfg, rt, eot_id, generator, prompt_texts=None, enc=None):
    """
    Answer a batch of prompts and compute everything the update needs. Returns (batch, stats): batch holds the
    left-padded prompts, the responses and their mask, the old log-probs and the advantages, with gae the old values
    and the returns, with grpo and dr_grpo the reference's log-probs, all [B, ...] so that minibatches are rows of it;
    stats are the per-iteration objective metrics. A group method's prompts come k times each, in consecutive rows.
    The verifier (--reward verifier or rm+verifier) reads the prompt_texts and the responses decoded by enc.
    Under torchrun each process answers its share of the prompts, and the statistics are of all of them.
    """
    prompt, prompt_mask = (t.to(rt.device) for t in pad(prompt_ids, eot_id, left=True))
    with rt.autocast():
        tokens, _ = agent.gpt.generate(prompt, prompt_mask, cfg.max_new_tokens, eot_id, cfg.temperature,
                                       generator=generator)
    mask = response_mask(tokens, eot_id)
    # old log-probs come from the very forward pass the update uses, not from generate's cached one: otherwise
    # rounding differences would make the first ratio differ from 1 before the policy has moved at all
    with rt.autocast():
        logits, values = agent(prompt, prompt_mask, tokens, mask)
        ref_logprobs = response_logprobs(ref, prompt, prompt_mask, tokens, mask, cfg.temperature)
        # less the missing-EOT penalty: the penalty alone, without a reward model
        rm_scores = score_responses(reward_model, prompt, prompt_mask, tokens, mask, eot_id, cfg.missing_eot_penalty)
    scores, verified = rm_scores, None
    if cfg.reward != "rm":
        # the task's own check of each answer, added to the score. It gives a reply that never ended -1 where it checks
        # an answer, as it does a wrong one, so such a reply pays twice, and should: the penalty puts a reply cut off
        # at the length limit below a wrong one that ended, as under the reward model, and on advice and small talk,
        # where the verifier gives 0, the penalty alone asks a reply to end
        verified = verify_responses(prompt_texts, enc, prompt, prompt_mask, tokens, mask)
        scores = rm_scores + cfg.verifier_weight * verified
    logprobs = token_logprobs(logits, tokens, cfg.temperature) * mask
    kl, kl_k3 = (k * mask for k in kl_estimates(logprobs, ref_logprobs))
    paid = scores
    if cfg.whiten_rewards:  # rescaled, not centred: the returns still rise as the policy's replies get better
        paid = masked_whiten(scores, torch.ones_like(scores), shift_mean=False, across_processes=True)
    rewards = token_rewards(paid, kl, mask, beta)
    k = samples_per_prompt(cfg)
    # the advantage, by --advantage: the table above reward_groups
    if cfg.advantage == "gae":
        values = values * mask
        advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask, across_processes=True)
    elif cfg.advantage == "rloo":
        advantages = rloo(paid, kl, mask, beta, k)
    elif cfg.advantage == "grpo":
        advantages = grpo(paid, mask, k)
    elif cfg.advantage == "dr_grpo":
        advantages = dr_grpo(paid, mask, k)
    else:
        advantages = reinforce_pp(paid, kl, mask, beta, across_processes=True)

    logp = F.log_softmax(logits.float() / cfg.temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1) * mask
    ended = (tokens == eot_id).any(1)
    stats = {"objective/kl": kl.sum(1).mean(), "objective/kl_k3": kl_k3.sum(1).mean(),
             "objective/entropy": entropy.sum(1).mean()}
    if reward_model is not None:  # the reward model's part of the score, penalty included: all of it with --reward rm
        stats["objective/scores"] = rm_scores.mean()
    if verified is not None:
        stats["objective/verifier"] = verified.mean()
    if cfg.advantage in GROUP_BASELINES:  # the score teaches these groups nothing (RLOO's KL term still does)
        stats["objective/equal_groups"] = equal_reward_share(paid, k)
    stats.update({"objective/rlhf_reward": rewards.sum(1).mean(), "response/length": mask.sum(1).float().mean(),
                  "response/eot_rate": ended.float().mean()})
    stats = all_mean({name: v.item() for name, v in stats.items()}, rt.device)  # every process holds as many rows
    if verified is not None:  # Dr. GRPO's finding: normalising by std and by length lets wrong replies grow long
        wrong = (verified < 0).float()
        total, count = all_sum(torch.stack([(mask.sum(1) * wrong).sum(), wrong.sum()])).tolist()
        if count:
            stats["response/wrong_length"] = total / count
    batch = {"prompt": prompt, "prompt_mask": prompt_mask, "tokens": tokens, "mask": mask, "logprobs": logprobs,
             "advantages": advantages}
    if cfg.advantage == "gae":  # the value loss's old values and targets
        stats["val/explained_variance"] = explained_variance(values, returns, mask, across_processes=True).item()
        batch.update(values=values, returns=returns)
    if cfg.advantage in KL_IN_LOSS:
        batch["ref_logprobs"] = ref_logprobs
    return batch, stats


def grad_norm(params):
    """The L2 norm of the gradients of params, as clip_grad_norm_ measures it."""
    norms = [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms))


def ppo_update(agent, optimizer, batch, cfg, rt, train_agent=None, beta=None):
    """
    ppo_epochs passes over the rollout batch in shuffled minibatches, a clipped gradient step on each. Returns per-step
    stats. beta: the weight of the KL in the loss of grpo and dr_grpo (the others paid it in the rollout's rewards).
    Under torchrun each process holds rollout_batch / N rows and takes minibatch / N of them per step; the agent runs
    as train_agent (wrapped in DDP), and the losses are those of the whole minibatch.
    """
    how = AGGREGATION[cfg.advantage]
    stats = []
    for epoch in range(cfg.ppo_epochs):
        for rows in torch.randperm(batch["tokens"].size(0), device=rt.device).split(cfg.minibatch // rt.world_size):
            mb = {k: v[rows] for k, v in batch.items()}
            mask = mb["mask"]
            with rt.autocast():
                logits, values = (train_agent or agent)(mb["prompt"], mb["prompt_mask"], mb["tokens"], mask)
            logprobs = token_logprobs(logits, mb["tokens"], cfg.temperature) * mask
            kl_loss = None
            if cfg.advantage in KL_IN_LOSS:  # k3, as GRPO has it: see grpo
                kl_loss = beta * kl_estimates(logprobs, mb["ref_logprobs"])[1]
            pg_loss, pg_clipfrac = ppo_policy_loss(logprobs, mb["logprobs"], mb["advantages"], mask, cfg.cliprange,
                                                   how, cfg.max_new_tokens, kl_loss)
            loss = pg_loss
            if cfg.advantage == "gae":
                vf_loss, vf_clipfrac = ppo_value_loss(values, mb["values"], mb["returns"], mask, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
            # this process's losses are means over its own tokens (token_mean) or its own rows: weighed by its share
            # of the minibatch's tokens, or rows (every process holds as many)
            token_share = mask.sum() / all_sum(mask.sum())
            share = token_share if how == "token_mean" else 1 / rt.world_size
            rt.scaler.scale(loss * share * rt.world_size).backward()  # x world_size: DDP averages over processes
            rt.scaler.unscale_(optimizer)
            norms = {}
            if cfg.advantage == "gae":  # one clip budget for both: the norms apart tell which of the two losses spends it
                norms = {"grad_norm/policy": grad_norm(agent.gpt.parameters()).item(),
                         "grad_norm/value": grad_norm(agent.value_head.parameters()).item()}
            total_norm = torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.grad_clip)
            rt.scaler.step(optimizer)
            rt.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                # 0.5 * E[(log ratio)^2]: how far this step's policy already is from the one that sampled
                approxkl = 0.5 * masked_mean((logprobs - mb["logprobs"]) ** 2, mask)
                token_means = {"policy/approxkl": approxkl, "policy/clipfrac": pg_clipfrac}
                if cfg.advantage == "gae":
                    token_means.update({"loss/value": vf_loss, "val/clipfrac": vf_clipfrac})
                means = all_sum(torch.stack([pg_loss * share, *(v * token_share for v in token_means.values())]))
            stats.append({**dict(zip(("loss/policy", *token_means), means.tolist())), "grad_norm": total_norm.item(),
                          **norms})
    return stats


def save_ppo(path, agent, optimizer, rt, cfg, tokenizer, step, beta, generator, **extra):
    """
    The policy and, apart, gae's value head: later stages load it as a policy (common.load_policy). For --resume,
    besides what every stage keeps: beta and each process's sampling generator, which every process must send.
    """
    generators = all_gather_objects(generator.get_state())
    if cfg.advantage == "gae":
        extra["value_head"] = agent.value_head.state_dict()
    save_run(path, "ppo_policy", agent.gpt, optimizer, rt, cfg, tokenizer, step, kl_coef=beta, generators=generators,
             **extra)


def resume_ppo(ckpt, agent, optimizer, generator, cfg, rt):
    """
    Load what save_ppo saved; returns (the iteration to go on from, beta). The prompts of each iteration follow
    from its number (batch_at), so nothing else is needed.
    """
    if len(ckpt["generators"]) != rt.world_size:
        raise SystemExit(f"{cfg.out_dir} was written by {len(ckpt['generators'])} processes, each with its own "
                         f"sampling generator: resume it with as many")
    if ckpt["step"] >= cfg.iterations:
        raise SystemExit(f"{cfg.out_dir} has finished all {cfg.iterations} iterations: nothing to resume")
    if ("value_head" in ckpt) != (cfg.advantage == "gae"):  # the optimizer's state would not fit either
        raise SystemExit(f"{cfg.out_dir} was trained {'by gae, with' if 'value_head' in ckpt else 'without'} a value "
                         f"head: resume it with the --advantage it was trained with, not {cfg.advantage}")
    if cfg.advantage == "gae":
        agent.value_head.load_state_dict(ckpt["value_head"])
    generator.set_state(ckpt["generators"][rt.rank])
    return restore_run(ckpt, agent.gpt, optimizer, rt), ckpt["kl_coef"]


SHOWN = ("objective/scores", "objective/verifier", "objective/kl", "objective/rlhf_reward", "objective/equal_groups",
         "policy/approxkl", "policy/clipfrac", "val/explained_variance", "response/length", "response/eot_rate",
         "objective/beta", "eval/gold")


def check(cfg, rt):
    """Refuse settings that would silently do something else than they say."""
    if cfg.rollout_batch % cfg.minibatch or cfg.minibatch % rt.world_size:
        raise SystemExit(f"--rollout_batch {cfg.rollout_batch} must be a multiple of --minibatch {cfg.minibatch}, and "
                         f"that of the {rt.world_size} processes: every minibatch the same size, shared out equally")
    if cfg.temperature <= 0:
        raise SystemExit(f"--temperature must be above 0, not {cfg.temperature}: PPO's log-probs are of "
                         f"softmax(logits / temperature), which greedy decoding does not sample from")
    if cfg.missing_eot_penalty < 0:
        raise SystemExit(f"--missing_eot_penalty is subtracted from the score of a response that never ended: give "
                         f"0 or more, not {cfg.missing_eot_penalty}, which would reward never ending")
    if cfg.advantage not in AGGREGATION:
        raise SystemExit(f"--advantage must be gae, rloo, grpo, dr_grpo or reinforce_pp, not {cfg.advantage!r}")
    if cfg.reward not in ("rm", "verifier", "rm+verifier"):
        raise SystemExit(f"--reward must be rm, verifier or rm+verifier, not {cfg.reward!r}")
    k = samples_per_prompt(cfg)
    if cfg.advantage in GROUP_BASELINES and k < 2:
        raise SystemExit(f"--advantage {cfg.advantage} judges each reply against the other replies to its prompt: "
                         f"--samples_per_prompt must be 2 or more, not {k}")
    if cfg.advantage == "gae" and k != 1:
        raise SystemExit(f"--advantage gae answers each prompt once, not --samples_per_prompt {k}: its value head "
                         f"already gives each prompt its baseline, and repeats would only make a batch's prompts fewer "
                         f"(rloo, grpo, dr_grpo and reinforce_pp take several)")
    if k < 1:
        raise SystemExit(f"--samples_per_prompt must be 1 or more, not {k}")
    if cfg.rollout_batch % k or cfg.rollout_batch // k % rt.world_size:
        raise SystemExit(f"--rollout_batch {cfg.rollout_batch} must be a multiple of --samples_per_prompt {k}, and its "
                         f"{cfg.rollout_batch // k} prompts one of the {rt.world_size} processes: a prompt's replies "
                         f"in one process, and as many in each")


def main(argv=None):
    cfg, rt, ckpt_path, resumed = begin("ppo", Config, argv)
    check(cfg, rt)
    if not cfg.prompts_file:
        with master_first(rt):  # the master generates the task, the others read it
            data_dir, _ = world.builtin_task()
        train_file, eval_file = f"{data_dir}/prompts_train.jsonl", cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    elif not cfg.eval_prompts:
        raise SystemExit("with --prompts_file, also give --eval_prompts")
    else:
        train_file, eval_file = cfg.prompts_file, cfg.eval_prompts

    # three models: the policy (trained, with gae's value head), the reference and the reward model (frozen; none
    # for the verifier alone)
    policy, tokenizer_spec, _ = load_policy(cfg.sft_ckpt, "--sft_ckpt")
    ref = frozen(load_policy(cfg.sft_ckpt, "--sft_ckpt")[0]).to(rt.device)
    reward_model = None
    if cfg.reward != "verifier":
        reward_model = frozen(load_reward_model(cfg.reward_ckpt, "--reward_ckpt", tokenizer_spec, cfg.reward_agg,
                                                cfg.uwo_lambda)[0]).to(rt.device)
    enc = load_tokenizer(tokenizer_spec)
    agent = (PolicyWithValue if cfg.advantage == "gae" else Policy)(policy).to(rt.device)
    agent.eval()  # dropout off for good: it would make the log-probs, and so the ratios, noisy
    rt.say(f"policy: {policy.num_params() / 1e6:.2f}M parameters from {cfg.sft_ckpt}; advantage {cfg.advantage}; "
           f"reward {cfg.reward}" + (f" from {cfg.reward_ckpt}" if reward_model is not None else "")
           + (f" ({len(reward_model.members)} members, {cfg.reward_agg})" if isinstance(reward_model, RewardEnsemble)
              else ""))
    context = policy.config.block_size
    train_texts, train_ids = load_prompts(train_file, enc, context, cfg.max_new_tokens, None, rt.say)
    if cfg.reward != "rm" and not world.verifiable(train_texts):
        raise SystemExit(f"--reward {cfg.reward}: the verifier checks the answers of the built-in task's prompts "
                         f"(data.world.verifiable), not {train_file}'s: use --reward rm, or the built-in task")
    k = samples_per_prompt(cfg)
    heldout = HeldOut(eval_file, enc, context, cfg.max_new_tokens, cfg.temperature, cfg.n_eval, rt, reward_model,
                      world)

    train_agent = distributed(agent, rt)
    # Adam's eps 1e-5 rather than 1e-8, as in lm-human-preferences: steadier steps on tiny second moments
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)
    generator = torch.Generator(rt.device).manual_seed(cfg.seed + rt.rank)  # each process samples its own
    start, beta = resume_ppo(resumed, agent, optimizer, generator, cfg, rt) if resumed else (0, cfg.kl_coef)
    kl_horizon = cfg.kl_horizon or cfg.iterations * cfg.rollout_batch
    kl_ctl = AdaptiveKLController(beta, cfg.kl_target, kl_horizon) if cfg.adaptive_kl else None
    log = MetricsLog(cfg.out_dir, rt, resume_step=start if resumed else None)

    # the SFT policy's samples on the held-out prompts, at the training temperature: the baseline of every win-rate.
    # The policy's are drawn with another seed: shared random numbers would make the two tie more often than
    # independent samples do
    if rt.master:
        sft_report, sft_rows = heldout.evaluate(ref, cfg.seed)
        print(heldout.summary("sft", sft_report))
        if not resumed:
            log.log(0, **{f"eval/sft_{k}": v for k, v in sft_report.items()})

    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc="ppo", dynamic_ncols=True,
               disable=not rt.master)
    t0 = time.time()
    for it in bar:
        lr = lr_at(it, cfg.iterations, cfg.lr, cfg.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # rollout_batch / k prompts, shared out among the processes, then each answered k times in consecutive rows:
        # a prompt's group stays in one process
        chosen = batch_at(len(train_ids), cfg.rollout_batch // k, it, cfg.seed)[rt.rank::rt.world_size]
        mine = [i for i in chosen for _ in range(k)]
        batch, metrics = rollout(agent, ref, reward_model, [train_ids[i] for i in mine], beta, cfg, rt, enc.eot_token,
                                 generator, [train_texts[i] for i in mine], enc)
        metrics.update(all_mean({"response/noncanonical": noncanonical_share(enc, batch["tokens"], batch["mask"])},
                                rt.device))
        steps = ppo_update(agent, optimizer, batch, cfg, rt, train_agent, beta)
        for name in steps[0]:
            metrics[name] = sum(s[name] for s in steps) / len(steps)
        check_finite(metrics["loss/policy"] + metrics.get("loss/value", 0.0), it, ckpt_path)
        metrics.update({"objective/beta": beta, "lr": lr, "iters_per_s": (it + 1 - start) / (time.time() - t0)})
        if kl_ctl:
            kl_ctl.update(metrics["objective/kl"], cfg.rollout_batch)
            beta = kl_ctl.value

        done = it + 1
        if rt.master and (done % cfg.eval_interval == 0 or done == cfg.iterations):
            report, rows = heldout.evaluate(agent.gpt, cfg.seed + 1, ref=ref, baseline=sft_rows)
            metrics.update({f"eval/{k}": v for k, v in report.items()})
            bar.write(f"iteration {done}: " + ", ".join(f"{k} {report[k]:.3f}" for k in
                                                        ("score", "gold", "win_rate", "kl", "length") if k in report))
            print_samples(rows, 2)
        log.log(done, **metrics)
        bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in SHOWN if k in metrics})
        if done % cfg.ckpt_interval == 0 and done < cfg.iterations:
            # after the log line: a run resumed from here continues metrics.jsonl without a gap
            save_ppo(ckpt_path, agent, optimizer, rt, cfg, tokenizer_spec, done, beta, generator)
    bar.close()
    summary = {**report, **{f"sft_{k}": v for k, v in sft_report.items()},
               "iters_per_s": metrics["iters_per_s"]} if rt.master else None
    save_ppo(ckpt_path, agent, optimizer, rt, cfg, tokenizer_spec, cfg.iterations, beta, generator, summary=summary)
    leave_processes(rt)
    if not rt.master:
        return None

    log.log(cfg.iterations, **{f"final/{k}": v for k, v in summary.items()})
    heldout.show("ppo", report, rows, cfg.out_dir)
    print(f"saved {ckpt_path} ({(cfg.iterations - start) / (time.time() - t0):.2f} iterations/s)")
    return summary


if __name__ == "__main__":
    main()
