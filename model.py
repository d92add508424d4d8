"""
A GPT-2 style decoder, written out by hand, shared by every stage.

It knows about left padding: every row of a batch may start with padding, and
positions are counted over real tokens only, so a padded row computes exactly what
the same row computes alone. That is what lets us batch prompts of different
lengths in generation, in the reward model and in PPO.
"""

import json
import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 128  # longest sequence, in tokens (the learned position table has this many rows)
    vocab_size: int = 2048
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # every RLHF stage runs with dropout off: it would make log-probs noisy


class KVCache:
    """Keys and values of the tokens seen so far, per layer, preallocated for the whole generation."""

    def __init__(self, n_layer, max_len):
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.max_len = max_len
        self.pos = 0  # number of tokens already in the cache

    def update(self, layer, k, v):
        if self.k[layer] is None:  # allocate lazily, so the cache takes the dtype that autocast produced
            B, H, _, D = k.shape
            # uninitialised: only the positions written so far are ever read (zeroing took 1% of a generation)
            self.k[layer] = k.new_empty(B, H, self.max_len, D)
            self.v[layer] = v.new_empty(B, H, self.max_len, D)
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.layer = layer

    def forward(self, x, attn_mask, cache):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if attn_mask is None:  # no padding, no cache: the fast fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 used the tanh approximation of GELU; matching it keeps the pretrained logits exact
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask, cache):
        x = x + self.attn(self.ln_1(x), attn_mask, cache)
        return x + self.mlp(self.ln_2(x))


class ScalarHead(nn.Module):
    """hidden size -> 1: the reward model's head and PPO's value head."""

    def __init__(self, n_embd):
        super().__init__()
        self.proj = nn.Linear(n_embd, 1)
        # std 1/sqrt(d+1) keeps the initial outputs of order 1 (lm-human-preferences does the same)
        nn.init.normal_(self.proj.weight, std=1 / math.sqrt(n_embd + 1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden):
        return self.proj(hidden).squeeze(-1)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # residual projections add up over 2 per layer; scale them so the residual stream's variance stays put
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx, attention_mask=None, cache=None):
        """
        idx: [B, T] token ids. attention_mask: [B, T_past + T], 1 for real tokens, 0 for left padding
        (with a cache it covers the cached tokens too). Returns the final hidden states [B, T, n_embd].
        """
        B, T = idx.shape
        past = cache.pos if cache is not None else 0
        if attention_mask is None and cache is None:
            pos = torch.arange(T, device=idx.device).unsqueeze(0)
            attn_mask = None
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, past + T, dtype=torch.long, device=idx.device)
            # a token's position is the number of real tokens before it, so left padding shifts nothing
            pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)[:, past:]
            q = torch.arange(past, past + T, device=idx.device)[:, None]
            k = torch.arange(past + T, device=idx.device)[None, :]
            attn_mask = (k <= q) & attention_mask.bool()[:, None, :]
            # a padding query would see no key at all (softmax over nothing is NaN): let it see itself
            attn_mask = (attn_mask | (k == q))[:, None]  # [B, 1, T, T_past + T]
        # positions never exceed the length, so only a padded sequence longer than the table needs the check,
        # which would otherwise wait for the GPU on every forward (and break a compiled graph in two)
        if past + T > self.config.block_size and int(pos.max()) >= self.config.block_size:
            raise ValueError(f"sequence of {int(pos.max()) + 1} tokens is longer than block_size {self.config.block_size}")
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, attn_mask, cache)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx, attention_mask=None, cache=None, where=None):
        """
        Logits [B, T, vocab] for next-token prediction at every position; with a boolean [B, T] `where`, only at
        those positions, as [N, vocab]. SFT needs none over the prompt and the padding, and the projection onto
        the vocabulary is a large share of a small model's compute.
        """
        hidden = self.hidden_states(idx, attention_mask, cache)
        return self.lm_head(hidden if where is None else hidden[where])

    @torch.no_grad()
    def generate(self, idx, attention_mask, max_new_tokens, eot_id, temperature=1.0, top_k=None, top_p=None,
                 generator=None):
        """
        Sample continuations of a left-padded batch of prompts with a KV cache.
        temperature 0 means greedy. Each row stops at its first end-of-text; after it the row holds eot_id
        (padding) with log-prob 0. Returns (tokens [B, N], logprobs [B, N]), N <= max_new_tokens, where
        logprobs are those of the sampled tokens under softmax(logits / temperature), before any top-k/top-p
        filtering: the distribution PPO's log-probs are computed from.
        """
        B, T = idx.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(idx)
        longest = int(attention_mask.sum(1).max()) + max_new_tokens
        if longest > self.config.block_size:
            raise ValueError(f"prompt plus max_new_tokens is {longest} tokens, more than block_size {self.config.block_size}")
        cache = KVCache(self.config.n_layer, T + max_new_tokens)
        # buffers for the whole generation, allocated once; every generated token is real, even after end-of-text
        mask = F.pad(attention_mask.long(), (0, max_new_tokens), value=1)
        tokens = idx.new_full((B, max_new_tokens), eot_id)
        logprobs = torch.zeros(B, max_new_tokens, device=idx.device)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        logits = self.lm_head(self.hidden_states(idx, mask[:, :T], cache)[:, -1])  # the prompt's last position only
        for step in range(max_new_tokens):
            logits = logits.float()
            if temperature == 0:
                logp = F.log_softmax(logits, dim=-1)
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                logp = F.log_softmax(logits, dim=-1)
                nxt = sample_token(F.softmax(filter_logits(logits, top_k, top_p), dim=-1), generator)
            nxt = torch.where(done, eot_id, nxt)
            tokens[:, step] = nxt
            logprobs[:, step] = torch.where(done, 0.0, logp.gather(1, nxt[:, None]).squeeze(1))
            done |= nxt == eot_id
            if step == max_new_tokens - 1 or done.all():
                break
            logits = self.lm_head(self.hidden_states(nxt[:, None], mask[:, :T + step + 1], cache)[:, -1])
        return tokens[:, :step + 1], logprobs[:, :step + 1]

    def crop_block_size(self, block_size):
        """
        Keep the first block_size rows of the position table: a pretrained model (GPT-2's 1024) used with a shorter
        context, which every later stage then reads from its config, computes as before on any sequence that fits.
        """
        assert block_size <= self.config.block_size
        self.config = replace(self.config, block_size=block_size)
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, extra_params=()):
        """AdamW with weight decay on matrices only (not on biases, LayerNorm gains); fused on CUDA and CPU."""
        params = [p for p in list(self.parameters()) + list(extra_params) if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # fused: one kernel for all parameters; on a CPU a third of the time of the default, per-tensor-list one
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward and backward): 6 per parameter plus attention (PaLM appendix B)."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def estimate_mfu(self, tokens_per_second, seq_len, peak_flops=989e12):
        """Model FLOPs utilisation against a peak (default: H100 SXM dense bf16)."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    @classmethod
    def from_pretrained(cls, path):
        """
        Load GPT-2 weights from a Hugging Face checkpoint directory: config.json and model.safetensors or
        pytorch_model.bin. (common.pretrained_dir turns a name such as gpt2 into such a directory.)
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint directory")
        hf = json.loads((path / "config.json").read_text())
        config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0)
        if (path / "model.safetensors").exists():
            hf_state = load_safetensors(path / "model.safetensors")
        elif (path / "pytorch_model.bin").exists():
            hf_state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")
        model = cls(config)
        model.load_state_dict(convert_hf_gpt2(hf_state, model.state_dict()))
        return model


class RewardModel(nn.Module):
    """
    A GPT trunk and a scalar head, read at each sequence's last real token: the end-of-text that closes the
    response, the only position that has seen all of it. reward = gain * head(hidden) + bias, where gain and bias
    are the normalisation reward.py sets after training (1 and 0 before), buffers so they travel in the state dict.
    """

    def __init__(self, config):
        super().__init__()
        self.gpt = GPT(config)
        self.head = ScalarHead(config.n_embd)
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))

    @property
    def config(self):
        return self.gpt.config

    def forward(self, ids, mask):
        """
        ids, mask: [B, T], mask 1 on real tokens. Padding may be on the left, the right or both (a left-padded
        prompt followed by a right-padded response); every row is scored as if alone. Returns rewards [B].
        """
        hidden = self.gpt.hidden_states(ids, mask)
        last = (mask.long() * torch.arange(ids.size(1), device=ids.device)).argmax(1)  # the last 1 of the mask
        return self.gain * self.head(hidden[torch.arange(ids.size(0), device=ids.device), last]).float() + self.bias


REWARD_AGGREGATIONS = ("mean", "min", "uwo")  # the branches of ensemble_reward


def ensemble_reward(scores, how="mean", uwo_lambda=0.5):
    """
    One reward from K reward models' scores [K, B] (Coste et al. 2024, "Reward Model Ensembles Help Mitigate
    Overoptimization"). Where the members disagree, the policy has left the data they learned from, and the
    reward should not be trusted there:

        mean:  R = mean_k R_k
        min:   R = min_k R_k                                    (worst-case optimisation)
        uwo:   R = mean_k R_k - uwo_lambda * var_k R_k          (uncertainty-weighted; var = mean_k (R_k - R)^2)

    One member (K = 1) gives that member's score under every aggregation.
    """
    if how == "mean":
        return scores.mean(0)
    if how == "min":
        return scores.min(0).values
    if how == "uwo":
        return scores.mean(0) - uwo_lambda * scores.var(0, correction=0)
    raise ValueError(f"unknown aggregation {how!r}: one of {', '.join(REWARD_AGGREGATIONS)}")


class RewardEnsemble(nn.Module):
    """
    K reward models of the same shape, each normalised on its own, scored as one by ensemble_reward(how,
    uwo_lambda): every place that takes a RewardModel takes an ensemble. Costs K forward passes.
    """

    def __init__(self, members, how="mean", uwo_lambda=0.5):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.how, self.uwo_lambda = how, uwo_lambda

    @property
    def config(self):
        return self.members[0].config

    def member_rewards(self, ids, mask):
        """Every member's rewards, [K, B]."""
        return torch.stack([member(ids, mask) for member in self.members])

    def forward(self, ids, mask):
        return ensemble_reward(self.member_rewards(ids, mask), self.how, self.uwo_lambda)


def token_logprobs(logits, tokens, temperature=1.0):
    """
    log p(token) under softmax(logits / temperature), the distribution the tokens were sampled from; cross-entropy
    avoids materialising a full log-softmax. Greedy decoding (temperature 0) has no such distribution.
    """
    if temperature <= 0:
        raise ValueError(f"log-probs need a sampling temperature above 0, not {temperature}")
    logits = logits.float() / temperature
    return -F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens.flatten(), reduction="none").view(tokens.shape)


def filter_logits(logits, top_k=None, top_p=None):
    """Set to -inf every logit outside the top k, and outside the smallest set whose probability reaches top_p."""
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - F.softmax(sorted_logits, dim=-1) > top_p  # the mass before a token already reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def sample_token(probs, generator=None):
    """
    One token per row of probs [B, V]. On a CPU, the first token whose cumulative probability exceeds a uniform
    draw (inverse transform sampling): one random number per row, where torch.multinomial draws one per
    vocabulary entry (32 rows of 4096 on a CPU core: 2.9 ms against 0.15 ms, a tenth of a decoding step of
    bench.py's small model). The CPU adds left to right, so a token of probability 0 adds nothing and is never
    drawn, and u < cdf[-1] since a float32 draw is below 1. A GPU's cumulative sum adds in a tree, whose
    rounding could give such a token a sliver; there the one draw per entry costs little: multinomial.
    """
    if probs.device.type != "cpu":
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.size(0), 1, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def response_mask(tokens, eot_id):
    """1 for the tokens of a generated response up to and including its first end-of-text, 0 after."""
    is_eot = (tokens == eot_id).long()
    return (is_eot.cumsum(1) - is_eot == 0).long()


# ----------------------------------------------------------------------------------------------------------
# GPT-2 weights from Hugging Face files

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def load_safetensors(path):
    """Read a .safetensors file: 8-byte little-endian header length, a JSON header, then the raw tensors."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = bytearray(f.read())
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        t = torch.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors


def convert_hf_gpt2(hf_state, our_state):
    """Map Hugging Face GPT-2 keys onto ours; every key and shape must match, or the error names it."""
    # GPT-2 stores these as Conv1D, i.e. [in, out]; nn.Linear wants [out, in]
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {}
    for key, value in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers, not weights (note: "c_attn.bias" is a weight)
        ours = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
        if ours not in our_state:
            raise KeyError(f"unexpected key in the GPT-2 checkpoint: {key}")
        if key.endswith(transposed):
            value = value.t()
        if value.shape != our_state[ours].shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)}, model expects {tuple(our_state[ours].shape)}")
        state[ours] = value
    state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))  # tied: often not stored
    missing = [k for k in our_state if k not in state]
    if missing:
        raise KeyError(f"missing from the GPT-2 checkpoint: {', '.join(missing)}")
    if not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"]):  # loading both would keep one
        raise ValueError("the checkpoint's lm_head.weight differs from its wte.weight: this GPT ties its output layer "
                         "to the input embedding, as GPT-2 does, so it cannot load a model trained with them untied")
    return state
