"""
Tokenizers and the conversation format.

Two tokenizers, both tiktoken encodings:
- a byte-level BPE trained on the built-in task's own text (a few thousand tokens, so a tiny model
  spends its capacity on the task, not on a 50k-row embedding table);
- "gpt2", tiktoken's GPT-2 encoding, for GPT-2 weights.

The conversation format is HH-RLHF's for every dataset: the prompt is the dialogue up to and including
the final "\n\nAssistant:", the response follows, then end-of-text.
"""

import base64
import time
import os
from collections import Counter

import regex
import tiktoken
import tiktoken.load

EOT = "<|endoftext|>"
# HH-RLHF's conversation format: each turn is PROMPT.format(human text) followed by the reply, which starts with a
# space; a prompt is the dialogue up to and including its last ASSISTANT
ASSISTANT = "\n\nAssistant:"
PROMPT = "\n\nHuman: {}" + ASSISTANT
# GPT-2's pre-tokenizer: BPE merges never cross these chunks (words, numbers, punctuation runs, spaces)
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def train_bpe(texts, vocab_size):
    """
    Byte-level BPE: start from the 256 bytes, repeatedly merge the most frequent adjacent pair.
    Returns tiktoken's mergeable ranks {token bytes: rank}. Pair counts are updated incrementally, only in
    the words that contain the merged pair, which is what makes this take seconds rather than minutes.
    """
    n_merges = vocab_size - 256 - 1  # the last id is end-of-text
    words = Counter()
    for text in texts:
        words.update(regex.findall(GPT2_SPLIT, text))
    seqs = [list(w.encode("utf-8")) for w in words]
    counts = list(words.values())
    vocab = [bytes([i]) for i in range(256)]
    pairs, where = Counter(), {}
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pairs[pair] += counts[i]
            where.setdefault(pair, set()).add(i)
    for _ in range(n_merges):
        if not pairs:
            break  # every word is a single token already
        best = max(pairs, key=pairs.get)
        new = len(vocab)
        vocab.append(vocab[best[0]] + vocab[best[1]])
        for i in where.pop(best):
            seq = seqs[i]
            for pair in zip(seq, seq[1:]):
                pairs[pair] -= counts[i]
                if pairs[pair] == 0:
                    del pairs[pair]
            merged, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and (seq[j], seq[j + 1]) == best:
                    merged.append(new)
                    j += 2
                else:
                    merged.append(seq[j])
                    j += 1
            seqs[i] = merged
            for pair in zip(merged, merged[1:]):
                pairs[pair] += counts[i]
                where.setdefault(pair, set()).add(i)
    return {token: rank for rank, token in enumerate(vocab)}


def save_bpe(ranks, path):
    """tiktoken's own file format: one "base64(token) rank" per line. Written atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    os.replace(tmp, path)


def train_tokenizer(texts, path, vocab_size=2048):
    """
    A byte-level BPE of at most vocab_size tokens trained on texts, written at path: no download, and a small model
    spends its capacity on its task rather than on a 50k-row embedding table.
    """
    t0 = time.time()
    ranks = train_bpe(texts, vocab_size)
    save_bpe(ranks, path)
    print(f"trained a {len(ranks) + 1}-token BPE on {len(texts)} texts in {time.time() - t0:.1f}s: {path}")


def load_tokenizer(spec):
    """spec: "gpt2", or the path of a BPE file written by save_bpe. Returns a tiktoken.Encoding."""
    if spec == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken downloads the GPT-2 files on first use
            raise SystemExit(
                "tiktoken could not load the gpt2 encoding, which it downloads on first use. On a machine that is "
                "online run `python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"` with TIKTOKEN_CACHE_DIR "
                "set to a folder, copy that folder here and set TIKTOKEN_CACHE_DIR to it.") from e
    if not os.path.isfile(spec):
        raise SystemExit(f"no tokenizer file {spec}: give gpt2 or the BPE file that sft.py trained")
    ranks = tiktoken.load.load_tiktoken_bpe(spec)
    return tiktoken.Encoding(name=os.path.basename(spec), pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                             special_tokens={EOT: len(ranks)})


def render(enc, prompt, response):
    """
    Token ids of prompt + response + end-of-text, and the mask of trained tokens (the response and its
    end-of-text). Text is encoded as ordinary text, so "<|endoftext|>" typed by a user is just characters.
    """
    p = enc.encode_ordinary(prompt)
    r = enc.encode_ordinary(response) + [enc.eot_token]
    return p + r, [0] * len(p) + [1] * len(r)
