import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import common
import ppo
from common import parse_config, save_checkpoint, setup_runtime
from data import world
from model import GPT, GPTConfig, RewardEnsemble, RewardModel, response_mask
from tokenizer import load_tokenizer, save_bpe, train_bpe

ROOT = Path(__file__).resolve().parent.parent

REWARDS = torch.tensor([[0.1, -0.2, 1.0]])
VALUES = torch.tensor([[0.5, 0.3, 0.7]])


@pytest.mark.parametrize("lam,advantages", [
    (1.0, [0.4, 0.5, 0.3]),  # Monte Carlo: return minus value
    (0.95, [0.36075, 0.485, 0.3]),
    (0.0, [-0.1, 0.2, 0.3]),  # one-step TD errors
])
def test_gae_known_values(lam, advantages):
    adv, returns = ppo.compute_gae(REWARDS, VALUES, torch.ones(1, 3), gamma=1.0, lam=lam)
    torch.testing.assert_close(adv, torch.tensor([advantages]))
    torch.testing.assert_close(returns, torch.tensor([advantages]) + VALUES)
    if lam == 0.95:
        torch.testing.assert_close(returns, torch.tensor([[0.86075, 0.785, 1.0]]))


def test_gae_treats_the_token_after_the_response_as_terminal():
    # the same three tokens, then padding whose (garbage) reward and value must not leak back
    rewards = torch.tensor([[0.1, -0.2, 1.0, 5.0, 7.0]])
    values = torch.tensor([[0.5, 0.3, 0.7, 9.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    adv, returns = ppo.compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.36075, 0.485, 0.3, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.86075, 0.785, 1.0, 0.0, 0.0]]))


def test_masked_whiten():
    torch.manual_seed(0)
    x = torch.randn(4, 6) * 3 + 2
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] + [0] * 5])
    real = mask.bool()
    w = ppo.masked_whiten(x, mask)
    assert (w[~real] == 0).all()
    torch.testing.assert_close(w[real].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(w[real].var(unbiased=False), torch.tensor(1.0), atol=1e-5, rtol=0)
    # padding values do not change the statistics
    torch.testing.assert_close(ppo.masked_whiten(torch.where(real, x, 1e6), mask), w)
    kept = ppo.masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(kept[real].mean(), x[real].mean())
    torch.testing.assert_close(kept[real].std(unbiased=False), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_policy_loss_has_no_gradient_where_the_clip_binds():
    ratios = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.1]])
    advantages = torch.tensor([[1.0, -1.0, -1.0, 1.0, 1.0]])
    # clip binds:          yes   yes    no     no    no (inside 1 +- 0.2)
    logprobs = ratios.log().requires_grad_()
    loss, clipfrac = ppo.ppo_policy_loss(logprobs, torch.zeros(1, 5), advantages, torch.ones(1, 5), cliprange=0.2)
    loss.backward()
    grad = logprobs.grad[0]
    assert grad[0] == 0 and grad[1] == 0
    # elsewhere d/dlogp of -A * ratio / n_tokens is -A * ratio / 5
    torch.testing.assert_close(grad[2:], -advantages[0, 2:] * ratios[0, 2:] / 5)
    assert clipfrac.item() == pytest.approx(0.4)
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 0.8 + 1.5 - 0.5 - 1.1) / 5))


def test_policy_loss_ignores_padding():
    logprobs = torch.tensor([[0.1, -0.3, 4.0]])
    old = torch.tensor([[0.0, 0.0, -4.0]])
    adv = torch.tensor([[1.0, -1.0, 100.0]])
    loss, clipfrac = ppo.ppo_policy_loss(logprobs, old, adv, torch.tensor([[1, 1, 0]]), 0.2)
    full, full_clipfrac = ppo.ppo_policy_loss(logprobs[:, :2], old[:, :2], adv[:, :2], torch.ones(1, 2), 0.2)
    assert loss == full and clipfrac == full_clipfrac


def test_value_loss_known_value():
    loss, clipfrac = ppo.ppo_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[0.9]]),
                                        torch.ones(1, 1), cliprange_value=0.2)
    # V is clipped to 0.7: 0.5 * max((1.0 - 0.9)^2, (0.7 - 0.9)^2) = 0.5 * 0.04
    assert loss.item() == pytest.approx(0.02)
    assert clipfrac.item() == 1.0


def test_adaptive_kl_controller():
    for kl, beta in ((8.0, 0.151536), (1.0, 0.148464)):
        ctl = ppo.AdaptiveKLController(0.15, target=6.0, horizon=10000)
        ctl.update(kl, n_steps=512)
        assert ctl.value == pytest.approx(beta, abs=1e-9)
    ctl = ppo.AdaptiveKLController(0.15, target=6.0, horizon=10000)
    ctl.update(6.0, n_steps=512)
    assert ctl.value == pytest.approx(0.15)


def test_adaptive_kl_over_the_run_length_brings_the_kl_toward_its_target():
    """
    A policy whose KL answers beta at once, KL = 0.9 / beta: 9 nats at beta = 0.1, as the default run ended up
    against a target of 6 (issue 16). Over the default run's 60 iterations of 64 episodes, a horizon of the run's
    length (the default) lets beta rise by the full e^0.2; the old fixed 10,000 episodes only by 8%.
    """
    cfg = ppo.Config()
    for horizon, final_kl in ((cfg.iterations * cfg.rollout_batch, 7.37), (10000, 8.34)):
        ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=horizon)
        for _ in range(cfg.iterations):
            ctl.update(0.9 / ctl.value, n_steps=cfg.rollout_batch)
        assert 0.9 / ctl.value == pytest.approx(final_kl, abs=0.01)


def test_kl_estimates():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    k1, k3 = ppo.kl_estimates(logp, ref)
    torch.testing.assert_close(k1, logp - ref)
    r = (ref - logp).exp()
    torch.testing.assert_close(k3, (r - 1) - r.log())
    assert (k3 >= 0).all() and k1[1] < 0 and k3[2] == 0


def test_only_k1_paid_as_a_reward_pulls_toward_the_reference():
    """
    By enumeration over random categorical distributions: both estimates average to KL(pi || ref), but the policy
    gradient of a reward f, sum_x grad pi(x) f(x), is grad KL(pi || ref) only for f = k1. For k3 it is
    grad KL(pi || ref) - grad KL(ref || pi), and a step that lowers k3-as-a-penalty raises the KL a third of the time.
    """
    torch.manual_seed(0)
    raised = 0
    for _ in range(200):
        theta = torch.randn(8, requires_grad=True)
        logp, ref = theta.log_softmax(0), torch.randn(8).log_softmax(0)
        p = logp.exp()
        kl = (p * (logp - ref)).sum()
        grad_kl, = torch.autograd.grad(kl, theta, retain_graph=True)
        grad_reverse_kl, = torch.autograd.grad((ref.exp() * (ref - logp)).sum(), theta, retain_graph=True)
        k1, k3 = ppo.kl_estimates(logp, ref)
        torch.testing.assert_close((p * k1).sum(), kl)
        torch.testing.assert_close((p * k3).sum(), kl)
        # the estimate is paid as a reward: no gradient flows through it, only through the sampling probabilities
        pg_k1, = torch.autograd.grad((p * k1.detach()).sum(), theta, retain_graph=True)
        pg_k3, = torch.autograd.grad((p * k3.detach()).sum(), theta)
        torch.testing.assert_close(pg_k1, grad_kl)
        torch.testing.assert_close(pg_k3, grad_kl - grad_reverse_kl)
        raised += (pg_k3 @ grad_kl < 0).item()  # descending pg_k3 then climbs the KL
    assert 50 < raised < 100


def test_score_lands_on_the_last_real_token():
    kl = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    rewards = ppo.token_rewards(torch.tensor([3.0, -1.0]), kl * mask, mask, beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 2.95, 0.0, 0.0], [-0.02, -0.02, -0.02, -1.02]]))


# ----------------------------------------------------------------------------------------------------------
# A real rollout and update on a tiny random model


EOT = 5


def tiny_setup(seed=0):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(block_size=32, vocab_size=6, n_layer=1, n_head=2, n_embd=16))
    agent = ppo.PolicyWithValue(gpt).eval()
    ref = common.frozen(GPT(GPTConfig(block_size=32, vocab_size=6, n_layer=1, n_head=2, n_embd=16)))
    ref.load_state_dict(gpt.state_dict())
    cfg = ppo.Config(rollout_batch=8, minibatch=4, ppo_epochs=2, max_new_tokens=10, lr=1e-2, kl_coef=0.1,
                     missing_eot_penalty=7.0)
    prompts = [[1, 2, 3], [4], [2, 2], [3, 1, 4, 1], [1], [0, 1], [4, 3, 2], [2]]
    return agent, ref, cfg, prompts


def fake_reward_model(ids, mask):
    return mask.sum(1).float() / 10  # a score that tells rows apart


def test_a_reply_that_never_ended_scores_below_the_same_reply_ended():
    bad = lambda ids, mask: torch.full((ids.size(0),), -4.0)  # the reward model hates this reply, ended or not
    prompt, prompt_mask = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long)
    reply = torch.tensor([[3, 3, 3, EOT], [3, 3, 3, 3]])  # ended; cut at the length limit
    mask = torch.ones(2, 4, dtype=torch.long)
    scores = ppo.score_responses(bad, prompt.expand(2, -1), prompt_mask.expand(2, -1), reply, mask, EOT, 1.0)
    torch.testing.assert_close(scores, torch.tensor([-4.0, -5.0]))  # the penalty comes off the score, not replaces it


def test_noncanonical_share(tmp_path):
    save_bpe(train_bpe(["hello world, hello there"] * 5, 270), tmp_path / "tok.tiktoken")
    enc = load_tokenizer(str(tmp_path / "tok.tiktoken"))
    canonical = enc.encode_ordinary(" hello world")
    spelled = [enc.encode_single_token(bytes([b])) for b in b" hello"] + enc.encode_ordinary(" world")
    assert len(canonical) < len(spelled) and enc.decode(spelled) == enc.decode(canonical)
    eot = enc.eot_token
    # canonical and ended; spelled and cut at the length limit; canonical, then spelled text after its end
    width = len(spelled)
    rows = [canonical + [eot] * (width - len(canonical)), spelled, (canonical + [eot] + spelled)[:width]]
    tokens = torch.tensor(rows)
    assert ppo.noncanonical_share(enc, tokens, response_mask(tokens, eot)) == pytest.approx(1 / 3)


def test_rollout_masks_everything_after_end_of_text():
    agent, ref, cfg, prompts = tiny_setup()
    # move the policy away from the reference so that the KL is not zero
    agent.gpt.lm_head.weight.data += 0.3 * torch.randn_like(agent.gpt.lm_head.weight)
    rt = setup_runtime("cpu", seed=0)
    batch, stats = ppo.rollout(agent, ref, fake_reward_model, prompts, 0.1, cfg, rt, EOT, torch.Generator().manual_seed(1))
    mask = batch["mask"]
    lengths = mask.sum(1)
    ended = batch["tokens"][torch.arange(8), lengths - 1] == EOT
    assert ended.any() and not ended.all() and (mask == 0).any(), "want ended, unended and padded rows"
    pad = mask == 0
    for name in ("logprobs", "values", "advantages", "returns"):
        assert (batch[name][pad] == 0).all(), name

    # recompute the rewards as the rollout did, and check where things land
    logits, _ = agent(batch["prompt"], batch["prompt_mask"], batch["tokens"], mask)
    ref_logprobs = ppo.response_logprobs(ref, batch["prompt"], batch["prompt_mask"], batch["tokens"], mask)
    kl, kl_k3 = (k * mask for k in ppo.kl_estimates(batch["logprobs"], ref_logprobs))
    assert (kl[pad] == 0).all() and (kl[mask.bool()] != 0).all()
    scores = ppo.score_responses(fake_reward_model, batch["prompt"], batch["prompt_mask"], batch["tokens"], mask, EOT,
                                 cfg.missing_eot_penalty)
    rm = fake_reward_model(torch.cat([batch["prompt"], batch["tokens"]], 1), torch.cat([batch["prompt_mask"], mask], 1))
    torch.testing.assert_close(scores, rm + torch.where(ended, 0.0, -7.0))
    rewards = ppo.token_rewards(scores, kl, mask, 0.1)
    assert (rewards[pad] == 0).all()
    rows = torch.arange(8)
    torch.testing.assert_close(rewards[rows, lengths - 1], scores - 0.1 * kl[rows, lengths - 1])
    before = torch.arange(mask.size(1)) < (lengths - 1)[:, None]
    torch.testing.assert_close(rewards[before], -0.1 * kl[before])
    torch.testing.assert_close(torch.tensor(stats["objective/rlhf_reward"]), rewards.sum(1).mean())
    torch.testing.assert_close(torch.tensor(stats["objective/kl"]), kl.sum(1).mean())
    # k3 is logged beside k1, never paid
    torch.testing.assert_close(torch.tensor(stats["objective/kl_k3"]), kl_k3.sum(1).mean())


def test_whiten_rewards_rescales_the_scores_and_keeps_their_mean():
    agent, ref, cfg, prompts = tiny_setup()
    cfg.whiten_rewards = True
    rt = setup_runtime("cpu", seed=0)
    batch, stats = ppo.rollout(agent, ref, fake_reward_model, prompts, 0.0, cfg, rt, EOT, torch.Generator().manual_seed(1))
    mask = batch["mask"]
    scores = ppo.score_responses(fake_reward_model, batch["prompt"], batch["prompt_mask"], batch["tokens"], mask, EOT,
                                 cfg.missing_eot_penalty)
    assert abs(scores.std(unbiased=False) - 1) > 0.2  # far from 1, so that the rescaling shows
    paid = (scores - scores.mean()) / scores.std(unbiased=False) + scores.mean()
    # beta = 0: the rewards are the paid scores alone, on each response's last token
    rewards = torch.zeros_like(batch["values"])
    rewards[torch.arange(8), mask.sum(1) - 1] = paid
    _, returns = ppo.compute_gae(rewards, batch["values"], mask, cfg.gamma, cfg.lam)
    torch.testing.assert_close(batch["returns"], returns)
    assert stats["objective/scores"] == pytest.approx(scores.mean().item())  # logged in the reward model's units
    assert stats["objective/rlhf_reward"] == pytest.approx(scores.mean().item(), abs=1e-5)


def test_first_minibatch_ratio_is_exactly_one(monkeypatch):
    agent, ref, cfg, prompts = tiny_setup(1)
    rt = setup_runtime("cpu", seed=0)
    batch, _ = ppo.rollout(agent, ref, fake_reward_model, prompts, 0.1, cfg, rt, EOT, torch.Generator().manual_seed(0))
    calls, real_loss = [], ppo.ppo_policy_loss

    def recording(logprobs, old_logprobs, *args):
        calls.append((logprobs.detach().clone(), old_logprobs.clone()))
        return real_loss(logprobs, old_logprobs, *args)

    monkeypatch.setattr(ppo, "ppo_policy_loss", recording)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr)
    stats = ppo.ppo_update(agent, optimizer, batch, cfg, rt)
    assert len(stats) == len(calls) == cfg.ppo_epochs * 8 // cfg.minibatch
    new, old = calls[0]
    assert torch.equal(new, old)  # the ratio exp(new - old) is exactly 1
    assert stats[0]["policy/approxkl"] == 0.0 and stats[0]["policy/clipfrac"] == 0.0
    assert stats[-1]["policy/approxkl"] > 0  # the later steps do see a policy that has moved


def test_policy_and_value_gradient_norms_are_logged_apart():
    agent, ref, cfg, prompts = tiny_setup()
    rt = setup_runtime("cpu", seed=0)
    batch, _ = ppo.rollout(agent, ref, fake_reward_model, prompts, 0.1, cfg, rt, EOT, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr)
    for s in ppo.ppo_update(agent, optimizer, batch, cfg, rt):
        assert s["grad_norm/policy"] > 0 and s["grad_norm/value"] > 0
        assert s["grad_norm"] ** 2 == pytest.approx(s["grad_norm/policy"] ** 2 + s["grad_norm/value"] ** 2)
    cfg.vf_coef = 0.0  # no value loss: the value head gets no gradient, the policy all of the norm
    for s in ppo.ppo_update(agent, optimizer, batch, cfg, rt):
        assert s["grad_norm/value"] == 0 and s["grad_norm/policy"] == pytest.approx(s["grad_norm"])


class Scripted:
    """Stands in for sampling: each prompt gets the response it got once, whichever process holds it."""

    def __init__(self, prompts, tokens):
        self.responses = {tuple(p): row for p, row in zip(prompts, tokens)}

    def generate(self, prompt, prompt_mask, max_new_tokens, eot_id, temperature, generator=None):
        return torch.stack([self.responses[tuple(p[m.bool()].tolist())] for p, m in zip(prompt, prompt_mask)]), None


def scripted_setup():
    """tiny_setup moved off the reference, with rewards whitened, one minibatch per epoch, and its responses fixed."""
    agent, ref, cfg, prompts = tiny_setup()
    agent.gpt.lm_head.weight.data += 0.3 * torch.randn_like(agent.gpt.lm_head.weight)
    cfg.whiten_rewards, cfg.minibatch = True, cfg.rollout_batch
    prompt, prompt_mask = common.pad(prompts, EOT, left=True)
    tokens, _ = agent.gpt.generate(prompt, prompt_mask, cfg.max_new_tokens, EOT,
                                   generator=torch.Generator().manual_seed(1))
    return agent, ref, cfg, prompts, Scripted(prompts, tokens)


def rollout_and_update(rank, world_size, port, out):
    """One PPO iteration on this process's rows: what a test spawns in each of two processes."""
    if world_size > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rt = setup_runtime("cpu", seed=0)
    agent, ref, cfg, prompts, sampler = scripted_setup()
    agent.gpt.generate = sampler.generate
    batch, stats = ppo.rollout(agent, ref, fake_reward_model, prompts[rank::world_size], 0.1, cfg, rt, EOT, None)
    train_agent = common.distributed(agent, rt)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)  # as ppo.main: steady on tiny gradients
    steps = ppo.ppo_update(agent, optimizer, batch, cfg, rt, train_agent)
    torch.save({"batch": batch, "stats": stats, "steps": steps, "weights": agent.state_dict()}, out / f"{rank}.pt")
    common.leave_processes(rt)


def test_two_processes_reproduce_the_statistics_and_the_update_of_one(tmp_path):
    """
    The same 8 responses, held 4 and 4 by two gloo processes: the KL, the whitened rewards and advantages, the
    explained variance and the update (one minibatch of all 8 rows) are those of one process holding all 8.
    """
    with socket.socket() as s:  # a free port for the processes to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(rollout_and_update, args=(2, port, tmp_path), nprocs=2)
    (tmp_path / "one").mkdir()
    rollout_and_update(0, 1, None, tmp_path / "one")
    one = torch.load(tmp_path / "one" / "0.pt", weights_only=True)
    two = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    mask = one["batch"]["mask"]
    assert mask.bool().any(1).all() and (mask == 0).any() and one["stats"]["objective/kl"] > 0.01
    for name in ("advantages", "returns", "logprobs", "values"):  # rank r holds rows r, r + 2, ...
        for rank in (0, 1):
            torch.testing.assert_close(two[rank]["batch"][name], one["batch"][name][rank::2], atol=1e-5, rtol=1e-5)
    # whitened over all 8 rows: over either half alone the mean would not be 0
    advantages = torch.cat([t["batch"]["advantages"] for t in two])
    assert abs(advantages.sum() / torch.cat([t["batch"]["mask"] for t in two]).sum()) < 1e-6
    assert abs(two[0]["batch"]["advantages"].sum() / two[0]["batch"]["mask"].sum()) > 0.01
    for stats in (two[0]["stats"], two[1]["stats"]):
        assert stats.keys() == one["stats"].keys()
        for k, v in one["stats"].items():
            assert stats[k] == pytest.approx(v, abs=1e-5), k
    for step in (0, 1):  # ppo_epochs 2 of one minibatch each
        for k, v in one["steps"][step].items():
            assert two[0]["steps"][step][k] == pytest.approx(v, abs=1e-5), k
    for k, v in one["weights"].items():
        for rank in (0, 1):
            torch.testing.assert_close(two[rank]["weights"][k], v, atol=1e-5, rtol=1e-4)


def test_command_line_from_dataclass(capsys):
    cfg, given = parse_config(ppo.Config, ["--kl_coef", "0.05", "--adaptive_kl", "--iterations", "3"])
    assert (cfg.kl_coef, cfg.adaptive_kl, cfg.iterations) == (0.05, True, 3)
    assert given == {"kl_coef", "adaptive_kl", "iterations"}
    with pytest.raises(SystemExit):  # k3 is only logged (objective/kl_k3), never paid: see kl_estimates
        parse_config(ppo.Config, ["--kl_estimator", "k3"])
    assert "unrecognized arguments: --kl_estimator" in capsys.readouterr().err


@pytest.fixture
def tiny_stages(tmp_path):
    """Prompt files, a BPE, and random 'SFT' and reward-model checkpoints in the real formats."""
    prompts = [f"\n\nHuman: What is {a} plus {b}?\n\nAssistant:" for a in range(6) for b in range(6)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[:30]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[30:]))
    tok = str(tmp_path / "tok.tiktoken")
    save_bpe(train_bpe([p + " 3 plus 4 is 7." for p in prompts], 300), tok)
    torch.manual_seed(0)
    config = GPTConfig(block_size=48, vocab_size=load_tokenizer(tok).n_vocab, n_layer=1, n_head=2, n_embd=32)
    save_checkpoint(tmp_path / "sft.pt", {"kind": "policy", "model": GPT(config).state_dict(),
                                          "model_config": asdict(config), "tokenizer": tok})
    save_checkpoint(tmp_path / "rm.pt", {"kind": "reward_model", "model": RewardModel(config).state_dict(),
                                         "model_config": asdict(config), "tokenizer": tok})
    return tmp_path


def tiny_ppo_args(d, out):
    return ["--sft_ckpt", str(d / "sft.pt"), "--reward_ckpt", str(d / "rm.pt"), "--prompts_file",
            str(d / "prompts.jsonl"), "--eval_prompts", str(d / "eval.jsonl"), "--out_dir", str(d / out),
            "--iterations", "4", "--ckpt_interval", "2", "--eval_interval", "4", "--rollout_batch", "4",
            "--minibatch", "2", "--ppo_epochs", "1", "--warmup_steps", "1", "--max_new_tokens", "6", "--n_eval", "2",
            "--lr", "1e-2", "--adaptive_kl", "--kl_target", "0.1", "--kl_horizon", "16"]


def test_resume_after_interruption_gives_the_same_weights(tiny_stages, killed_at_first_checkpoint):
    ppo.main(tiny_ppo_args(tiny_stages, "straight"))
    straight = common.load_checkpoint(tiny_stages / "straight" / "ckpt.pt")

    with killed_at_first_checkpoint():  # the process dies right after its first checkpoint (iteration 2 of 4)
        ppo.main(tiny_ppo_args(tiny_stages, "interrupted"))
    assert common.load_checkpoint(tiny_stages / "interrupted" / "ckpt.pt")["step"] == 2
    ppo.main(["--out_dir", str(tiny_stages / "interrupted"), "--resume"])
    resumed = common.load_checkpoint(tiny_stages / "interrupted" / "ckpt.pt")

    assert resumed["step"] == straight["step"] == 4
    assert resumed["kl_coef"] == straight["kl_coef"] != ppo.Config.kl_coef  # beta moved, and resumed where it was
    for part in ("model", "value_head"):
        for k, v in straight[part].items():
            assert torch.equal(v, resumed[part][k]), (part, k)
    steps = [json.loads(l)["step"] for l in (tiny_stages / "interrupted" / "metrics.jsonl").read_text().splitlines()]
    assert steps[:5] == [0, 1, 2, 3, 4]


def test_rollout_and_minibatch_must_split_evenly_across_processes(tiny_stages, monkeypatch):
    four = lambda *a: common.Runtime(torch.device("cpu"), torch.float32, torch.amp.GradScaler("cpu", enabled=False),
                                     rank=3, world_size=4)
    monkeypatch.setattr(common, "setup_runtime", four)
    with pytest.raises(SystemExit, match="--rollout_batch 4 must be a multiple of --minibatch 2, and that of the 4 processes"):
        ppo.main(tiny_ppo_args(tiny_stages, "four"))


def test_two_torchrun_processes_and_their_resume(tiny_stages):
    """
    ppo.py under torchrun with DDP (gloo): each process samples half of the prompts. Where the
    math says so it agrees with one process, and a run resumed from its checkpoint of iteration 2 (which holds
    each process's sampling generator) ends where the uninterrupted run does.
    """
    script = tiny_stages / "snapshot.py"  # ppo.py, copying its out_dir aside at its checkpoint of iteration 2
    script.write_text(f"""import shutil, sys
sys.path.insert(0, {str(ROOT)!r})
import common, ppo
real_save = common.save_checkpoint
def save(path, obj):
    real_save(path, obj)
    if obj["step"] == 2:
        shutil.copytree(path.parent, path.parent.with_name("resumed"))
common.save_checkpoint = save
ppo.main(sys.argv[1:])
""")

    def torchrun(script, *args):
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              str(script), *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.count("saved") == 1  # the master alone reports and writes

    torchrun(script, *tiny_ppo_args(tiny_stages, "straight"))
    torchrun(ROOT / "ppo.py", "--out_dir", str(tiny_stages / "resumed"), "--resume")
    straight, resumed = (common.load_checkpoint(tiny_stages / run / "ckpt.pt") for run in ("straight", "resumed"))
    assert resumed["step"] == straight["step"] == 4 and resumed["kl_coef"] == straight["kl_coef"]
    for part in ("model", "value_head"):
        for k, v in straight[part].items():
            torch.testing.assert_close(resumed[part][k], v, atol=1e-6, rtol=1e-6)
    assert len(straight["generators"]) == 2 and not torch.equal(*straight["generators"])
    common.load_policy(tiny_stages / "straight" / "ckpt.pt")  # a whole policy, which one process loads

    ppo.main(tiny_ppo_args(tiny_stages, "one"))
    read = lambda run: [json.loads(l) for l in (tiny_stages / run / "metrics.jsonl").read_text().splitlines()]
    one, two = read("one"), read("straight")
    assert [l["step"] for l in two] == [0, 1, 2, 3, 4, 4]
    assert one[0] == two[0]  # the master alone samples the SFT policy's baseline, as one process does
    for lines in (one, two):
        # before the first update the policy is the reference; beta then moves by the KL of all 4 rollouts
        assert lines[1]["objective/kl"] == pytest.approx(0, abs=1e-6)
        assert lines[1]["objective/kl_k3"] == pytest.approx(0, abs=1e-6)
        assert lines[2]["objective/beta"] == pytest.approx(ppo.Config.kl_coef * (1 - 0.2 * 4 / 16))


def test_smoke_through_the_command_line(tmp_path):
    """sft.py, reward.py and ppo.py on the built-in task, each shrunk to seconds, in a fresh directory."""
    def run(script, *args):
        out = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    # large batches: the validation passes over the built-in task's held-out files then take few steps
    run("sft.py", "--max_steps", "5", "--n_eval", "4", "--out_dir", "sft", "--n_layer", "1", "--n_embd", "32",
        "--batch_size", "64", "--max_new_tokens", "8")
    run("reward.py", "--sft_ckpt", "sft/ckpt.pt", "--out_dir", "rm", "--max_steps", "3", "--batch_size", "64",
        "--n_norm", "4", "--max_new_tokens", "8", "--pairs", "scripted")
    stdout = run("ppo.py", "--sft_ckpt", "sft/ckpt.pt", "--reward_ckpt", "rm/ckpt.pt", "--out_dir", "ppo",
                 "--iterations", "2", "--rollout_batch", "4", "--minibatch", "2", "--ppo_epochs", "1",
                 "--max_new_tokens", "8", "--n_eval", "4", "--eval_interval", "1", "--adaptive_kl")
    assert "win-rate against sft" in stdout and "evasive  distinct" in " ".join(stdout.split("\n"))
    ckpt = common.load_checkpoint(tmp_path / "ppo" / "ckpt.pt")
    # the final line holds the held-out report per kind of prompt asked
    final = json.loads((tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()[-1])
    asked = {world.parse(json.loads(l)["prompt"]).kind
             for l in (tmp_path / "out" / "data" / "eval_prompts.jsonl").read_text().splitlines()[:4]}
    per_kind = {f"final/{kind}/{k}" for kind in asked
                for k in ("gold", "win_rate", "right", "wrong", "unsure", "evasive", "distinct")}
    assert per_kind | {"final/win_rate", "final/win_rate_ci", "final/gold", "final/kl", "final/distinct"} <= set(final)
    assert not {f"final/{kind}/gold" for kind in set(world.KINDS) - asked} & set(final)
    assert ckpt["step"] == 2 and ckpt["config"]["iterations"] == 2 and ckpt["kind"] == "ppo_policy"
    assert set(ckpt["summary"]) >= {"gold", "win_rate", "kl", "score", "sft_gold"}
    common.load_policy(tmp_path / "ppo" / "ckpt.pt")  # later stages load it like an SFT checkpoint
    assert set(ckpt["value_head"]) == {"proj.weight", "proj.bias"}
    lines = [json.loads(l) for l in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    names = {"objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/approxkl",
             "policy/clipfrac", "val/clipfrac", "val/explained_variance", "loss/policy", "loss/value",
             "response/length", "response/eot_rate", "objective/beta", "objective/kl_k3", "response/noncanonical",
             "grad_norm", "grad_norm/policy", "grad_norm/value", "eval/gold", "eval/win_rate", "eval/kl", "eval/score",
             "eval/rm_win_rate", "eval/rm_win_rate_ci"}
    assert names <= set(lines[1])
    # the adaptive KL horizon defaults to the run's length, 2 iterations of 4 episodes
    error = max(-0.2, min(0.2, lines[1]["objective/kl"] / 6 - 1))
    beta = ppo.Config.kl_coef
    assert lines[1]["objective/beta"] == beta
    assert lines[2]["objective/beta"] == pytest.approx(beta * (1 + error * 4 / 8), abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Critic-free advantages, the KL estimators in a loss, and the token aggregations


LOGP, REF = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])  # log pi - log pi_ref = 0.5, -1, 0


@pytest.mark.parametrize("name,values,grads", [
    ("k1", [0.5, -1.0, 0.0], [1.0, 1.0, 1.0]),
    ("k2", [0.125, 0.5, 0.0], [0.5, -1.0, 0.0]),  # 0.5 d^2, gradient d
    ("k3", [0.10653066, 0.71828183, 0.0], [0.39346934, -1.71828183, 0.0]),  # e^-d - 1 + d, gradient 1 - e^-d
])
def test_kl_estimators_and_their_gradients_on_hand_computed_logprobs(name, values, grads):
    logp = LOGP.clone().requires_grad_()
    k1, k3 = ppo.kl_estimates(logp, REF)
    estimate = {"k1": k1, "k2": ppo.kl_k2(logp, REF), "k3": k3}[name]
    estimate.sum().backward()
    torch.testing.assert_close(estimate.detach(), torch.tensor(values))
    torch.testing.assert_close(logp.grad, torch.tensor(grads))


def test_in_a_loss_k2_pulls_toward_the_reference_k3_by_the_reverse_kl_and_k1_not_at_all():
    """
    By enumeration: an estimate used as a loss, on samples of pi, has the expected gradient sum_x pi(x) grad k(x).
    That is grad KL(pi || ref) for k2, grad KL(ref || pi) for k3 and 0 for k1.
    """
    torch.manual_seed(0)
    for _ in range(20):
        theta = torch.randn(8, requires_grad=True)
        logp, ref = theta.log_softmax(0), torch.randn(8).log_softmax(0)
        p = logp.exp()
        expected = lambda k: torch.autograd.grad((p.detach() * k).sum(), theta, retain_graph=True)[0]
        grad_kl, = torch.autograd.grad((p * (logp - ref)).sum(), theta, retain_graph=True)
        grad_reverse_kl, = torch.autograd.grad((ref.exp() * (ref - logp)).sum(), theta, retain_graph=True)
        k1, k3 = ppo.kl_estimates(logp, ref)
        torch.testing.assert_close(expected(k1), torch.zeros(8), atol=1e-6, rtol=0)
        torch.testing.assert_close(expected(ppo.kl_k2(logp, ref)), grad_kl)
        torch.testing.assert_close(expected(k3), grad_reverse_kl)


def test_aggregations_on_hand_made_token_losses():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # (how, loss, gradient of a token of the long sequence and of the short one)
    for how, loss, grads in [("token_mean", 10 / 4, (1 / 4, 1 / 4)),  # every token the same, / the batch's tokens
                             ("sequence_mean", (6 / 3 + 4 / 1) / 2, (1 / 6, 1 / 2)),  # a short one's tokens weigh more
                             ("constant", 10 / (2 * 8), (1 / 16, 1 / 16))]:  # Dr. GRPO: / (rows * max_new_tokens)
        value = ppo.aggregate(per_token, mask, how, max_len=8)
        grad, = torch.autograd.grad(value, per_token)
        assert value.item() == pytest.approx(loss), how
        torch.testing.assert_close(grad, torch.tensor([[grads[0]] * 3 + [0.0], [grads[1], 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="token_mean, sequence_mean or constant"):
        ppo.aggregate(per_token, mask, "sum")


def test_the_token_mean_of_the_clipped_surrogate_is_ppo_policy_loss():
    logprobs, old = torch.tensor([[0.4, -0.7, 0.1, 0.3], [0.0, 0.2, -0.1, 5.0]]), torch.zeros(2, 4)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0], [2.0, 1.0, -0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    per_token, clipped = ppo.clipped_surrogate(logprobs, old, adv, 0.2)
    loss, clipfrac = ppo.ppo_policy_loss(logprobs, old, adv, mask, 0.2)
    assert ppo.aggregate(per_token, mask, "token_mean") == loss
    assert ppo.aggregate(clipped, mask, "token_mean") == clipfrac


MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])  # three responses of three lengths


def test_rloo_baseline_is_the_mean_of_the_others():
    scores = torch.tensor([1.0, 0.0, 0.0])
    kl = torch.tensor([[0.25, 0.25, 0.0], [0.5, 0.5, 7.0], [0.0, 9.0, 9.0]])  # padding's KL is never paid
    adv = ppo.rloo(scores, kl, MASK, beta=0.2, k=3)
    rewards = torch.tensor([0.9, -0.2, 0.0])  # score - 0.2 * the KL summed over the real tokens
    leave_one_out = torch.stack([rewards[i] - (rewards.sum() - rewards[i]) / 2 for i in range(3)])
    torch.testing.assert_close(leave_one_out, torch.tensor([1.0, -0.65, -0.35]))
    torch.testing.assert_close(leave_one_out, 3 / 2 * (rewards - rewards.mean()))
    torch.testing.assert_close(adv, leave_one_out[:, None] * MASK)  # on every real token, 0 on padding
    # two groups of four: each judged within its own
    adv = ppo.rloo(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, -1.0, 0.5, 0.5]), torch.zeros(8, 1), torch.ones(8, 1), 0.2, 4)
    torch.testing.assert_close(adv[:, 0], torch.tensor([2, -2, -2, 2, 6, -6, 0, 0]) / 3)


def test_grpo_divides_by_the_group_std_and_dr_grpo_does_not():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 1.0, 1.0])  # means 0.25 and 1.5, stds 0.5 and 1 (Bessel)
    mask = torch.ones(8, 2)
    grpo = ppo.grpo(scores, mask, k=4, eps=0.0)
    torch.testing.assert_close(grpo[:, 0], torch.tensor([1.5, -0.5, -0.5, -0.5, 1.5, -0.5, -0.5, -0.5]))
    torch.testing.assert_close(ppo.grpo(scores, mask, 4)[:4, 0], torch.tensor([1.5, -0.5, -0.5, -0.5]) * 0.5 / 0.5001)
    dr = ppo.dr_grpo(scores, mask, k=4)
    torch.testing.assert_close(dr[:, 0], torch.tensor([0.75, -0.25, -0.25, -0.25, 1.5, -0.5, -0.5, -0.5]))
    assert (grpo[:, 0] == grpo[:, 1]).all() and (dr[:, 0] == dr[:, 1]).all()


def test_a_group_of_equal_rewards_has_no_advantage_and_a_finite_loss():
    scores = torch.tensor([0.3] * 6 + [1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    groups = scores.view(2, 6)
    assert (groups[0] - groups[0].mean() != 0).all()  # a plain mean leaves 3e-8, which a zero std would magnify
    assert ppo.equal_reward_share(scores, 6) == 0.5
    mask = torch.ones(12, 3)
    logprobs = torch.full((12, 3), -1.0, requires_grad=True)
    ref = torch.full((12, 3), -1.2)
    for adv in (ppo.rloo(scores, torch.zeros(12, 3), mask, 0.1, 6), ppo.grpo(scores, mask, 6),
                ppo.dr_grpo(scores, mask, 6)):
        assert (adv[:6] == 0).all() and (adv[6:] != 0).all()
        per_token, _ = ppo.clipped_surrogate(logprobs, logprobs.detach(), adv, 0.2)
        k3 = ppo.kl_estimates(logprobs, ref)[1]
        for how in ("token_mean", "sequence_mean", "constant"):
            for loss in (ppo.aggregate(per_token, mask, how, 4), ppo.aggregate(per_token + 0.1 * k3, mask, how, 4)):
                grad, = torch.autograd.grad(loss, logprobs, retain_graph=True)
                assert loss.isfinite() and grad.isfinite().all()
        # the equal group's tokens get no gradient from the surrogate
        grad, = torch.autograd.grad(ppo.aggregate(per_token, mask, "sequence_mean"), logprobs)
        assert (grad[:6] == 0).all() and (grad[6:] != 0).all()


def test_groups_must_be_whole_and_of_two_or_more():
    for n, k in ((6, 4), (4, 1)):
        with pytest.raises(ValueError, match="group baseline"):
            ppo.grpo(torch.zeros(n), torch.ones(n, 1), k)


def test_reinforce_pp_whitens_the_reward_to_go_over_the_batch():
    scores = torch.tensor([1.0, -1.0])
    kl = torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.2, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # rewards [-0.05, -0.05, 0.95] and [-0.02, -1.02, 0]: their sums from each token to the end
    returns = torch.tensor([0.85, 0.9, 0.95, -1.04, -1.02])
    zero = torch.zeros(2, 3)
    gae, _ = ppo.compute_gae(ppo.token_rewards(scores, kl, mask, 0.1), zero, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(gae[mask.bool()], returns)  # GAE with V = 0 and lambda = 1
    whitened = (returns - returns.mean()) / (returns.var(unbiased=False) + 1e-8).sqrt()
    adv = ppo.reinforce_pp(scores, kl, mask, beta=0.1)
    torch.testing.assert_close(adv[mask.bool()], whitened)
    assert adv[1, 2] == 0 and whitened[0].item() == pytest.approx(0.722 / 0.895016 ** 0.5, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------
# The estimators and the rewards in the training loop (issue 21)


@pytest.mark.parametrize("advantage,reward,k", [
    ("gae", "rm+verifier", None), ("rloo", "rm", None), ("grpo", "verifier", 2), ("dr_grpo", "rm+verifier", 2),
    ("reinforce_pp", "rm", None)])
def test_every_estimator_and_reward_through_the_command_line(tiny_stages, monkeypatch, advantage, reward, k):
    args = tiny_ppo_args(tiny_stages, "run") + ["--advantage", advantage, "--reward", reward, "--verifier_weight", "0.5"]
    if k:
        args += ["--samples_per_prompt", str(k)]
    if reward == "verifier":  # no reward model is read
        args[args.index("--reward_ckpt") + 1] = str(tiny_stages / "missing.pt")
    asked, real_rollout = [], ppo.rollout

    def recording(*args):
        asked.append(args[9])  # the prompts' texts, one a row
        return real_rollout(*args)

    monkeypatch.setattr(ppo, "rollout", recording)
    summary = ppo.main(args)

    k = k or (4 if advantage in ppo.GROUP_BASELINES else 1)
    for texts in asked:  # rollout_batch / k distinct prompts, k consecutive rows each
        assert len(texts) == 4 and len(set(texts)) == 4 // k and texts == [t for t in texts[::k] for _ in range(k)]
    ckpt = common.load_checkpoint(tiny_stages / "run" / "ckpt.pt")
    assert ckpt["kind"] == "ppo_policy" and ("value_head" in ckpt) == (advantage == "gae")
    common.load_policy(tiny_stages / "run" / "ckpt.pt")  # later stages load it as a policy
    line = json.loads((tiny_stages / "run" / "metrics.jsonl").read_text().splitlines()[1])
    assert ("loss/value" in line) == ("val/explained_variance" in line) == ("grad_norm/value" in line) == \
           (advantage == "gae")
    assert ("objective/equal_groups" in line) == (advantage in ppo.GROUP_BASELINES)
    assert ("objective/scores" in line) == ("score" in summary) == (reward != "verifier")
    assert ("objective/verifier" in line) == (reward != "rm")
    assert -1 <= line.get("objective/verifier", 0) <= 1 and all(map(math.isfinite, line.values()))
    # the score paid: the reward model's less the missing-EOT penalty (the penalty alone without one), plus half the
    # verifier's; the rollout's reward is that less beta times the KL
    rm = line.get("objective/scores", -ppo.Config.missing_eot_penalty * (1 - line["response/eot_rate"]))
    paid = rm + 0.5 * line.get("objective/verifier", 0)
    assert line["objective/rlhf_reward"] == pytest.approx(paid - line["objective/beta"] * line["objective/kl"], abs=1e-5)


def test_every_estimators_policy_loss_is_the_clipped_surrogate_plus_its_kl_averaged_its_way():
    logprobs, old = torch.tensor([[0.4, -0.7, 0.1, 0.3], [0.0, 0.2, -0.1, 5.0]]), torch.zeros(2, 4)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0], [2.0, 1.0, -0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    kl = 0.1 * ppo.kl_estimates(logprobs, old)[1]
    per_token, clipped = ppo.clipped_surrogate(logprobs, old, adv, 0.2)
    for how in ("token_mean", "sequence_mean", "constant"):
        loss, clipfrac = ppo.ppo_policy_loss(logprobs, old, adv, mask, 0.2, how, 8, kl)
        assert loss == ppo.aggregate(per_token + kl, mask, how, 8) and loss != ppo.aggregate(per_token, mask, how, 8)
        assert clipfrac == ppo.aggregate(clipped, mask, "token_mean")  # a share of tokens, however the loss averages


def test_verify_responses_reads_the_decoded_reply_and_the_penalty_comes_on_top(tiny_stages):
    enc = load_tokenizer(str(tiny_stages / "tok.tiktoken"))
    prompt_text = "\n\nHuman: What is 3 plus 4?\n\nAssistant:"
    # right; wrong; right but cut off at the length limit (the longest row: the others are padded with end-of-text)
    replies = [" 3 plus 4 is 7.", " 3 plus 4 is 8.", " 3 plus 4 is 7. 3 plus 4 is 7."]
    rows = [enc.encode_ordinary(r) + [enc.eot_token] * (i < 2) for i, r in enumerate(replies)]
    tokens, _ = common.pad(rows, enc.eot_token)
    prompt, prompt_mask = common.pad([enc.encode_ordinary(prompt_text)] * 3, enc.eot_token, left=True)
    verified = ppo.verify_responses([prompt_text] * 3, enc, prompt, prompt_mask, tokens,
                                    response_mask(tokens, enc.eot_token))
    torch.testing.assert_close(verified, torch.tensor([1.0, -1.0, -1.0]))
    # without a reward model the score is the verifier's, and the unended reply pays the penalty on top of its -1: it
    # ends below the wrong answer that ended
    penalty = ppo.score_responses(None, prompt, prompt_mask, tokens, response_mask(tokens, enc.eot_token),
                                  enc.eot_token, 1.0)
    torch.testing.assert_close(penalty + verified, torch.tensor([1.0, -1.0, -2.0]))


def test_a_group_method_resumes_where_it_stopped_and_only_as_itself(tiny_stages, killed_at_first_checkpoint):
    grpo = ["--advantage", "grpo", "--samples_per_prompt", "2"]
    ppo.main(tiny_ppo_args(tiny_stages, "straight") + grpo)
    straight = common.load_checkpoint(tiny_stages / "straight" / "ckpt.pt")

    with killed_at_first_checkpoint():  # the process dies right after its first checkpoint (iteration 2 of 4)
        ppo.main(tiny_ppo_args(tiny_stages, "interrupted") + grpo)
    with pytest.raises(SystemExit, match="trained without a value head: resume it with the --advantage it was trained"):
        ppo.main(["--out_dir", str(tiny_stages / "interrupted"), "--resume", "--advantage", "gae",
                  "--samples_per_prompt", "1"])
    ppo.main(["--out_dir", str(tiny_stages / "interrupted"), "--resume"])
    resumed = common.load_checkpoint(tiny_stages / "interrupted" / "ckpt.pt")
    assert resumed["step"] == straight["step"] == 4 and "value_head" not in resumed
    assert resumed["kl_coef"] == straight["kl_coef"] != ppo.Config.kl_coef
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


class ScriptedGroups:
    """Stands in for sampling: the j-th row of a prompt gets the j-th response scripted for it, whichever process asks."""

    def __init__(self, responses):
        self.responses = responses  # {(prompt ids, j): response row}

    def generate(self, prompt, prompt_mask, max_new_tokens, eot_id, temperature, generator=None):
        rows, seen = [], {}
        for p, m in zip(prompt, prompt_mask):
            key = tuple(p[m.bool()].tolist())
            rows.append(self.responses[key, seen.get(key, 0)])
            seen[key] = seen.get(key, 0) + 1
        return torch.stack(rows), None


def group_setup(advantage, k):
    """tiny_setup without its value head, moved off the reference, with k samples of each of its first 8 / k prompts."""
    agent, ref, cfg, prompts = tiny_setup()
    agent = ppo.Policy(agent.gpt)
    agent.gpt.lm_head.weight.data += 0.3 * torch.randn_like(agent.gpt.lm_head.weight)
    cfg.advantage, cfg.samples_per_prompt = advantage, k
    return agent, ref, cfg, prompts[:cfg.rollout_batch // k]


def group_rollout_and_update(rank, world_size, port, out):
    """One GRPO iteration, k = 2, one minibatch of all 8 rows: each process answers its share of the 4 prompts twice."""
    if world_size > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rt = setup_runtime("cpu", seed=0)
    agent, ref, cfg, prompts = group_setup("grpo", 2)
    cfg.minibatch = cfg.rollout_batch
    prompt, prompt_mask = common.pad([p for p in prompts for _ in range(2)], EOT, left=True)
    tokens, _ = agent.gpt.generate(prompt, prompt_mask, cfg.max_new_tokens, EOT,
                                   generator=torch.Generator().manual_seed(1))
    agent.gpt.generate = ScriptedGroups({(tuple(p), j): tokens[2 * g + j] for g, p in enumerate(prompts)
                                         for j in range(2)}).generate
    mine = [p for p in prompts[rank::world_size] for _ in range(2)]  # as ppo.main shares them out
    batch, stats = ppo.rollout(agent, ref, fake_reward_model, mine, 0.1, cfg, rt, EOT, None)
    train_agent = common.distributed(agent, rt)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)
    steps = ppo.ppo_update(agent, optimizer, batch, cfg, rt, train_agent, beta=0.1)
    torch.save({"batch": batch, "stats": stats, "steps": steps, "weights": agent.state_dict()}, out / f"{rank}.pt")
    common.leave_processes(rt)


def test_two_processes_reproduce_a_group_method_in_one(tmp_path):
    """
    GRPO's groups, the k3 in its loss and its per-sequence mean, held by two gloo processes, two groups each: the
    advantages, the statistics and the update are those of one process holding all four groups.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(group_rollout_and_update, args=(2, port, tmp_path), nprocs=2)
    (tmp_path / "one").mkdir()
    group_rollout_and_update(0, 1, None, tmp_path / "one")
    one = torch.load(tmp_path / "one" / "0.pt", weights_only=True)
    two = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert 0 < one["stats"]["objective/equal_groups"] < 1 and one["stats"]["objective/kl"] > 0.01
    assert (one["batch"]["advantages"] != 0).any()
    for rank in (0, 1):  # rank r holds groups r and r + 2: rows 2r, 2r + 1, 2r + 4, 2r + 5 of one process
        rows = [2 * rank, 2 * rank + 1, 2 * rank + 4, 2 * rank + 5]
        for name in ("advantages", "logprobs", "ref_logprobs", "mask"):
            torch.testing.assert_close(two[rank]["batch"][name], one["batch"][name][rows], atol=1e-5, rtol=1e-5)
        assert two[rank]["stats"].keys() == one["stats"].keys()
        for k, v in one["stats"].items():
            assert two[rank]["stats"][k] == pytest.approx(v, abs=1e-5), k
        for step in (0, 1):
            for k, v in one["steps"][step].items():
                assert two[rank]["steps"][step][k] == pytest.approx(v, abs=1e-5), k
        for k, v in one["weights"].items():
            torch.testing.assert_close(two[rank]["weights"][k], v, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("advantage", ["rloo", "grpo", "dr_grpo"])
def test_equal_rewards_in_every_group_give_no_advantage_and_a_finite_loss(advantage):
    agent, ref, cfg, prompts = group_setup(advantage, 4)
    cfg.missing_eot_penalty = 0.0  # the constant score alone, ended or not
    rt = setup_runtime("cpu", seed=0)
    constant = lambda ids, mask: torch.full((ids.size(0),), 0.3)
    batch, stats = ppo.rollout(agent, ref, constant, [p for p in prompts for _ in range(4)], 0.0, cfg, rt, EOT,
                               torch.Generator().manual_seed(0))
    assert len(set(map(tuple, batch["tokens"].tolist()))) > 2  # the samples differ, their scores do not
    assert stats["objective/equal_groups"] == 1.0 and (batch["advantages"] == 0).all()
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr)
    for s in ppo.ppo_update(agent, optimizer, batch, cfg, rt, beta=0.0):
        assert s["loss/policy"] == 0 and s["grad_norm"] == 0 and all(map(math.isfinite, s.values()))
    assert all(torch.equal(v, before[k]) for k, v in agent.state_dict().items())  # nothing learned, nothing broken


@pytest.mark.parametrize("args,message", [
    (["--advantage", "grpo", "--samples_per_prompt", "1"], "--samples_per_prompt must be 2 or more, not 1"),
    (["--advantage", "rloo", "--samples_per_prompt", "3"], "--rollout_batch 4 must be a multiple of --samples_per_prompt 3"),
    (["--advantage", "reinforce_pp", "--samples_per_prompt", "0"], "--samples_per_prompt must be 1 or more, not 0"),
    (["--samples_per_prompt", "2"], "--advantage gae answers each prompt once, not --samples_per_prompt 2"),
    (["--minibatch", "3"], "--rollout_batch 4 must be a multiple of --minibatch 3"),
    (["--advantage", "ppo"], "--advantage must be gae, rloo, grpo, dr_grpo or reinforce_pp, not 'ppo'"),
    (["--reward", "gold"], "--reward must be rm, verifier or rm\\+verifier, not 'gold'"),
    (["--reward", "verifier", "--prompts_file", "hh.jsonl"], "--reward verifier: the verifier checks the answers of the "
                                                              "built-in task's prompts .*: use --reward rm"),
])
def test_impossible_settings_stop_with_one_line(tiny_stages, args, message):
    (tiny_stages / "hh.jsonl").write_text(json.dumps({"prompt": "\n\nHuman: How do I bake bread?\n\nAssistant:"}) + "\n")
    args = [str(tiny_stages / a) if a.endswith(".jsonl") else a for a in args]
    with pytest.raises(SystemExit, match=message) as stop:
        ppo.main(tiny_ppo_args(tiny_stages, "refused") + args)
    assert "\n" not in str(stop.value)


def test_a_prompts_group_stays_in_one_process(tiny_stages, monkeypatch):
    two = lambda *a: common.Runtime(torch.device("cpu"), torch.float32, torch.amp.GradScaler("cpu", enabled=False),
                                    rank=1, world_size=2)
    monkeypatch.setattr(common, "setup_runtime", two)
    with pytest.raises(SystemExit, match="and its 1 prompts one of the 2 processes: a prompt's replies in one process"):
        ppo.main(tiny_ppo_args(tiny_stages, "two") + ["--advantage", "grpo"])


def test_an_ensemble_scores_with_the_aggregation_asked_for(tiny_stages):
    """A reward_ensemble checkpoint scores rollouts and evaluations as one model: the SFT model's held-out samples
    (the same under every aggregation, drawn before training) score lowest under min, then uwo, then mean."""
    rm = common.load_checkpoint(tiny_stages / "rm.pt")
    config = GPTConfig(**rm["model_config"])
    torch.manual_seed(1)
    members = [RewardModel(config) for _ in range(3)]
    save_checkpoint(tiny_stages / "ensemble.pt", {"kind": "reward_ensemble", "members": 3,
                                                  "model": RewardEnsemble(members).state_dict(),
                                                  "model_config": rm["model_config"], "tokenizer": rm["tokenizer"]})
    sft_score = {}
    for how in ("mean", "uwo", "min"):
        summary = ppo.main(tiny_ppo_args(tiny_stages, how) + ["--reward_ckpt", str(tiny_stages / "ensemble.pt"),
                                                              "--reward_agg", how, "--iterations", "1"])
        sft_score[how] = summary["sft_score"]
        assert math.isfinite(summary["score"])
    assert sft_score["min"] < sft_score["uwo"] < sft_score["mean"]
    with pytest.raises(SystemExit, match="is one reward model, and --reward_agg uwo aggregates an ensemble"):
        ppo.main(tiny_ppo_args(tiny_stages, "single") + ["--reward_agg", "uwo"])
