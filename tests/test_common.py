import json
import os
import socket
import time
from dataclasses import asdict

import pytest
import torch

import common
import dpo
import reward
from common import batch_at, fit_pair_to_context, load_policy, load_reward_model, save_checkpoint
from model import GPT, GPTConfig, RewardEnsemble, RewardModel
from ppo import response_logprobs


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
    save_checkpoint(tmp_path / "ensemble.pt", {"kind": "reward_ensemble", "members": 2, **shared,
                                               "model": RewardEnsemble([RewardModel(config)] * 2).state_dict()})
    load_policy(tmp_path / "sft.pt")
    load_policy(tmp_path / "ppo.pt")  # PPO's policy, without its value head, is a policy for later stages
    load_reward_model(tmp_path / "rm.pt")
    assert len(load_reward_model(tmp_path / "ensemble.pt")[0].members) == 2

    def refusal(load, path, flag):
        with pytest.raises(SystemExit) as e:
            load(tmp_path / path, flag)
        return str(e.value).replace(str(tmp_path / path), path)

    assert refusal(load_reward_model, "sft.pt", "--reward_ckpt") == (
        "sft.pt is a policy checkpoint (written by sft.py or dpo.py); "
        "--reward_ckpt needs a reward_model checkpoint (written by reward.py) or a reward_ensemble checkpoint "
        "(written by reward.py --members K)")
    assert refusal(load_policy, "rm.pt", "--sft_ckpt") == (
        "rm.pt is a reward_model checkpoint (written by reward.py); --sft_ckpt needs a policy checkpoint "
        "(written by sft.py or dpo.py) or a ppo_policy checkpoint (written by ppo.py)")
    assert refusal(load_policy, "ensemble.pt", "--sft_ckpt").startswith(
        "ensemble.pt is a reward_ensemble checkpoint (written by reward.py --members K); --sft_ckpt needs a policy")
    assert refusal(load_policy, "old.pt", "--sft_ckpt").startswith(
        "old.pt records no kind: an older version of this code wrote it; --sft_ckpt needs a policy checkpoint")


class CharEncoding:
    """What tokenizer.render needs of a tokenizer, one token per character: token ids that read as text."""
    eot_token = ord("$")

    def encode_ordinary(self, text):
        return [ord(c) for c in text]


def test_prompts_to_sample_from_are_cut_by_the_truncation_rule():
    enc = CharEncoding()
    # room for 4 new tokens in 10: a prompt keeps its last 6 tokens, as fit_to_context keeps a prompt's end
    ids, cut = common.encode_prompts(enc, ["abcdefghij", "abcdef", "xy"], 10, 4)
    assert (ids, cut) == ([enc.encode_ordinary("efghij"), enc.encode_ordinary("abcdef"), enc.encode_ordinary("xy")], 1)
    long_prompt = enc.encode_ordinary("abcdefghij")
    assert ids[0] == common.fit_to_context(long_prompt, [0] * 10, 6)[0]
    with pytest.raises(SystemExit, match="--max_new_tokens 10 leaves no room for a prompt in the model's context of 10"):
        common.encode_prompts(enc, ["abc"], 10, 10)


def test_both_sides_of_a_long_pair_keep_the_same_prompt_tokens(tmp_path):
    ids = lambda text: [ord(c) for c in text]
    # a 10-token prompt. For the longer side, the rejected (6 tokens and end-of-text), the rule keeps half the
    # context for the prompt: "fghij", on both sides. Then the rejected response loses its end.
    chosen = (ids("abcdefghijkl$"), [0] * 10 + [1] * 3)
    rejected = (ids("abcdefghijmnopqr$"), [0] * 10 + [1] * 7)
    want_chosen, want_rejected = (ids("fghijkl$"), [0] * 5 + [1] * 3), (ids("fghijmnopq"), [0] * 5 + [1] * 5)
    assert fit_pair_to_context(chosen, rejected, 10) == (want_chosen, want_rejected, True)
    assert fit_pair_to_context(rejected, chosen, 10) == (want_rejected, want_chosen, True)
    assert fit_pair_to_context(chosen, rejected, 17) == (chosen, rejected, False)
    # both stages read their pairs through it
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "abcdefghij", "chosen": "kl", "rejected": "mnopqr"}) + "\n")
    assert dpo.load_pairs(path, CharEncoding(), 10) == [(*want_chosen, *want_rejected)]
    assert reward.load_pairs(path, CharEncoding(), 10)[1] == [(want_chosen[0], want_rejected[0])]


def test_length_grouped_batches_cover_each_epoch_once_and_pad_little():
    torch.manual_seed(0)
    n, batch_size = 1000, 8
    lengths = torch.randint(1, 100, (n,))
    batches = [batch_at(n, batch_size, k, 1, lengths) for k in range(n // batch_size)]
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == n
    assert batches != [batch_at(n, batch_size, k, 1, lengths) for k in range(n // batch_size, 2 * n // batch_size)]
    padded = lambda bs: sum(len(b) * max(lengths[b]).item() for b in bs) / lengths.sum().item()
    assert padded(batches) < 1.1 < 1.5 < padded(epoch(n, batch_size, 0, seed=1))
    # the batches of an epoch come in a shuffled order of lengths, not sorted
    means = [lengths[b].float().mean().item() for b in batches]
    assert means != sorted(means)


def test_response_logprobs_are_those_of_the_full_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=20, n_layer=2, n_head=2, n_embd=16)).eval()
    prompt = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    prompt_mask = (prompt != 0).long()
    response = torch.tensor([[11, 12, 1, 1], [13, 1, 1, 1]])  # 1 ends a response; after it, padding
    resp_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    logp = response_logprobs(model, prompt, prompt_mask, response, resp_mask, temperature=0.7)
    logits = model(torch.cat([prompt, response], 1), torch.cat([prompt_mask, resp_mask], 1))[:, 3:-1]
    full = torch.log_softmax(logits / 0.7, -1).gather(2, response[..., None]).squeeze(2)
    torch.testing.assert_close(logp, full * resp_mask)
    assert (logp[resp_mask == 0] == 0).all() and (logp[resp_mask == 1] < 0).all()


def collectives(rank, port, out):
    """What each of two gloo processes sees of common's helpers for torchrun: a test spawns it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rt = common.setup_runtime("cpu")
    with common.master_first(rt):
        if rt.master:
            time.sleep(0.5)  # slow to write: the other process must still wait for it
            (out / "data").write_text("written")
        seen = (out / "data").read_text()
    rows = torch.arange(3 + 2 * rank, dtype=torch.float32)[:, None] * (rank + 1)  # 3 rows, then 5
    torch.save({"seen": seen, "rows": common.all_gather_rows(rows), "sum": common.all_sum(torch.tensor(rank + 1.0)),
                "mean": common.all_mean({"x": 1.0 + rank}, rt.device),
                "objects": common.all_gather_objects(f"rank {rank}")}, out / f"{rank}.pt")
    common.leave_processes(rt)


def test_helpers_for_several_processes(tmp_path):
    with socket.socket() as s:  # a free port for the processes to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(collectives, args=(port, tmp_path), nprocs=2)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert got["seen"] == "written"  # the master wrote before the other read
        torch.testing.assert_close(got["rows"], torch.tensor([0, 1, 2, 0, 2, 4, 6, 8.0])[:, None])
        assert got["sum"].item() == 3 and got["mean"] == {"x": 1.5} and got["objects"] == ["rank 0", "rank 1"]

