from dataclasses import asdict

import pytest

from common import batch_at, load_policy, save_checkpoint
from model import GPT, GPTConfig
from reward import RewardModel, load_reward_model


def epoch(n, batch_size, e, seed):
    per_epoch = n // batch_size
    return [batch_at(n, batch_size, k, seed) for k in range(e * per_epoch, (e + 1) * per_epoch)]


def test_batches_cover_each_epoch_once():
    for n, batch_size in ((100, 10), (103, 10)):
        batches = epoch(n, batch_size, 0, seed=1)
        seen = [i for b in batches for i in b]
        assert all(len(b) == batch_size for b in batches)
        assert len(seen) == len(set(seen)) == n // batch_size * batch_size  # a partial last batch is dropped
        assert epoch(n, batch_size, 1, seed=1) != batches  # a new shuffle every epoch
        assert epoch(n, batch_size, 0, seed=2) != batches


def test_a_checkpoint_of_the_wrong_kind_is_refused_in_one_line(tmp_path):
    config = GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8)
    shared = {"model_config": asdict(config), "tokenizer": "tok.tiktoken"}
    save_checkpoint(tmp_path / "sft.pt", {"kind": "policy", "model": GPT(config).state_dict(), **shared})
    save_checkpoint(tmp_path / "ppo.pt", {"kind": "ppo_policy", "model": GPT(config).state_dict(), **shared})
    save_checkpoint(tmp_path / "rm.pt", {"kind": "reward_model", "model": RewardModel(config).state_dict(), **shared})
    save_checkpoint(tmp_path / "old.pt", {"model": GPT(config).state_dict(), **shared})
    load_policy(tmp_path / "sft.pt")
    load_policy(tmp_path / "ppo.pt")  # PPO's policy, without its value head, is a policy for later stages
    load_reward_model(tmp_path / "rm.pt")

    def refusal(load, path, flag):
        with pytest.raises(ValueError) as e:
            load(tmp_path / path, flag)
        return str(e.value).replace(str(tmp_path / path), path)

    assert refusal(load_reward_model, "sft.pt", "--reward_ckpt") == (
        "sft.pt is a policy checkpoint (written by sft.py or dpo.py); "
        "--reward_ckpt needs a reward_model checkpoint (written by reward.py)")
    assert refusal(load_policy, "rm.pt", "--sft_ckpt") == (
        "rm.pt is a reward_model checkpoint (written by reward.py); --sft_ckpt needs a policy checkpoint "
        "(written by sft.py or dpo.py) or a ppo_policy checkpoint (written by ppo.py)")
    assert refusal(load_policy, "old.pt", "--sft_ckpt").startswith(
        "old.pt records no kind: an older version of this code wrote it; --sft_ckpt needs a policy checkpoint")
