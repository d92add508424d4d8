import torch

from common import batch_at, response_logprobs
from model import GPT, GPTConfig


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
