import ast
import json
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common import download_file, pretrained_dir
from model import GPT, GPTConfig, ScalarHead, filter_logits, response_mask, sample_token

ROOT = Path(__file__).resolve().parent.parent


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def left_pad(rows, pad=0):
    width = max(len(r) for r in rows)
    idx = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return idx, mask


ROWS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


def test_left_padded_batch_equals_rows_alone():
    model = tiny()
    idx, mask = left_pad(ROWS, pad=3)
    logits = model(idx, mask)
    hidden = model.hidden_states(idx, mask)
    for i, row in enumerate(ROWS):
        alone = model(torch.tensor([row]))[0]
        n = len(row)
        torch.testing.assert_close(logits[i, -n:], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden[i, -n:], model.hidden_states(torch.tensor([row]))[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(logits).all()  # the padding positions too


def test_padding_token_ids_do_not_matter():
    model = tiny()
    a, mask = left_pad(ROWS, pad=3)
    b, _ = left_pad(ROWS, pad=40)
    real = mask.bool()
    torch.testing.assert_close(model(a, mask)[real], model(b, mask)[real])


def full_forward_greedy(model, rows, n, eot):
    """Reference: no cache, the whole sequence through the model at every step."""
    idx, mask = left_pad(rows)
    done = torch.zeros(len(rows), dtype=torch.bool)
    toks, logps = [], []
    for _ in range(n):
        logits = model(idx, mask)[:, -1]
        nxt = torch.where(done, eot, logits.argmax(-1))
        lp = torch.where(done, 0.0, F.log_softmax(logits, -1).gather(1, nxt[:, None]).squeeze(1))
        toks.append(nxt)
        logps.append(lp)
        done |= nxt == eot
        idx = torch.cat([idx, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(toks, 1), torch.stack(logps, 1)


@pytest.mark.parametrize("eot", [49, 7])
def test_kv_cache_greedy_equals_full_forward(eot):
    model = tiny(1)
    idx, mask = left_pad(ROWS)
    toks, logps = model.generate(idx, mask, max_new_tokens=12, eot_id=eot, temperature=0)
    ref_toks, ref_logps = full_forward_greedy(model, ROWS, toks.size(1), eot)
    assert torch.equal(toks, ref_toks)
    torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=1e-5)


def test_generation_stops_and_pads_after_eot():
    model = tiny(2, vocab_size=4)  # with 4 tokens, end-of-text comes soon
    idx, mask = left_pad([[1, 2], [2]])
    toks, logps = model.generate(idx, mask, 20, eot_id=0, temperature=1.0, generator=torch.Generator().manual_seed(0))
    m = response_mask(toks, 0)
    assert (toks[m == 0] == 0).all() and (logps[m == 0] == 0).all()
    assert (logps[m == 1] < 0).all()
    # a row stops at its first end-of-text: the mask has exactly one eot inside it, at its end
    for row, rm in zip(toks, m):
        kept = row[rm.bool()]
        assert (kept == 0).sum() <= 1 and (kept[:-1] != 0).all()


def test_sampled_logprobs_are_temperature_scaled():
    model = tiny(3)
    idx, mask = left_pad(ROWS)
    g = torch.Generator().manual_seed(0)
    toks, logps = model.generate(idx, mask, 1, eot_id=49, temperature=0.7, top_k=5, generator=g)
    expected = F.log_softmax(model(idx, mask)[:, -1] / 0.7, -1).gather(1, toks).squeeze(1)
    torch.testing.assert_close(logps[:, 0], expected)


def test_sampling_is_deterministic_for_a_seed():
    model = tiny(4)
    idx, mask = left_pad(ROWS)
    run = lambda: model.generate(idx, mask, 10, 49, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(run(), run())


def test_filter_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # 0.5 + 0.3 reaches 0.8: the rest go
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]


def test_too_long_is_an_error():
    model = tiny()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        model.generate(torch.zeros(1, 30, dtype=torch.long), None, 5, eot_id=0)
    # positions count real tokens: a left-padded row wider than block_size fits if its real tokens do
    mask = (torch.arange(40) >= 8).long()[None]
    assert model(torch.zeros(1, 40, dtype=torch.long), mask).shape == (1, 40, 50)
    with pytest.raises(ValueError, match="33 tokens is longer than block_size 32"):
        model(torch.zeros(1, 40, dtype=torch.long), (torch.arange(40) >= 7).long()[None])


def test_scalar_head_init():
    torch.manual_seed(0)
    head = ScalarHead(1023)
    assert head.proj.bias.item() == 0
    assert abs(head.proj.weight.std().item() - 1 / 32) < 0.003
    assert head(torch.zeros(2, 5, 1023)).shape == (2, 5)


def test_weight_decay_on_matrices_only():
    model = tiny()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()


# --- GPT-2 checkpoints in the Hugging Face layout ---------------------------------------------------------

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_state(model, prefix):
    """Our weights as Hugging Face stores GPT-2: Conv1D matrices transposed, mask buffers included."""
    state = {}
    T = model.config.block_size
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        name = k.removeprefix("transformer.")
        state[prefix + name] = v.t().contiguous() if name.endswith(CONV1D) else v.clone()
    for i in range(model.config.n_layer):
        state[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        state[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return state


def write_safetensors(path, tensors):
    names = {torch.float32: "F32"}
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for k, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_config(path, cfg):
    path.write_text(json.dumps({"model_type": "gpt2", "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
                                "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                                "n_embd": cfg.n_embd, "layer_norm_epsilon": 1e-5}))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_from_pretrained_reproduces_logits(tmp_path, fmt):
    model = tiny(5)
    write_config(tmp_path / "config.json", model.config)
    if fmt == "safetensors":  # the hub's files have no "transformer." prefix
        write_safetensors(tmp_path / "model.safetensors", hf_state(model, ""))
    else:  # GPT2LMHeadModel.save_pretrained: prefixed, lm_head stored
        state = hf_state(model, "transformer.")
        state["lm_head.weight"] = model.lm_head.weight.detach().clone()
        torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = GPT.from_pretrained(str(tmp_path)).eval()
    idx, mask = left_pad(ROWS)
    torch.testing.assert_close(loaded(idx, mask), model(idx, mask))
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.pop("h.1.mlp.c_fc.bias"), "missing.*h.1.mlp.c_fc.bias"),
    (lambda s: s.__setitem__("h.0.attn.extra", torch.zeros(2)), "unexpected.*h.0.attn.extra"),
    (lambda s: s.__setitem__("wpe.weight", torch.zeros(3, 16)), "wpe.weight.*shape"),
])
def test_from_pretrained_names_bad_keys(tmp_path, edit, message):
    model = tiny(5)
    write_config(tmp_path / "config.json", model.config)
    state = hf_state(model, "")
    edit(state)
    write_safetensors(tmp_path / "model.safetensors", state)
    with pytest.raises((KeyError, ValueError), match=message):
        GPT.from_pretrained(str(tmp_path))


def test_from_pretrained_refuses_an_untied_output_layer(tmp_path):
    model = tiny(5)
    write_config(tmp_path / "config.json", model.config)
    state = hf_state(model, "transformer.")
    state["lm_head.weight"] = model.lm_head.weight.detach() + 0.01  # trained apart from the input embedding
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="lm_head.weight differs from its wte.weight"):
        GPT.from_pretrained(tmp_path)


def test_from_pretrained_by_name_uses_the_download_cache(tmp_path):
    """A GPT-2 name resolves to the download cache, filled once: a filled cache needs no network."""
    model = tiny(6)
    (tmp_path / "gpt2").mkdir()
    write_config(tmp_path / "gpt2" / "config.json", model.config)
    write_safetensors(tmp_path / "gpt2" / "model.safetensors", hf_state(model, ""))
    assert pretrained_dir("gpt2", cache_dir=tmp_path) == tmp_path / "gpt2"
    assert pretrained_dir(str(tmp_path / "gpt2")) == tmp_path / "gpt2"  # a directory is used as it is
    loaded = GPT.from_pretrained(pretrained_dir("gpt2", cache_dir=tmp_path)).eval()
    idx, mask = left_pad(ROWS)
    torch.testing.assert_close(loaded(idx, mask), model(idx, mask))
    with pytest.raises(SystemExit, match="neither a checkpoint directory nor one of"):
        pretrained_dir("gpt3", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face checkpoint directory"):
        GPT.from_pretrained("gpt2")  # names are resolved by common.pretrained_dir, not by the model


def test_a_cropped_context_computes_as_before_on_what_fits():
    model, cropped = tiny(3), tiny(3)
    cropped.crop_block_size(8)
    assert cropped.config.block_size == 8 and model.config.block_size == 32  # the config is not shared
    assert cropped.transformer.wpe.weight.shape == (8, 16)
    idx, mask = left_pad([row[:8] for row in ROWS])
    torch.testing.assert_close(cropped(idx, mask), model(idx, mask))
    with pytest.raises(ValueError, match="longer than block_size 8"):
        cropped(torch.arange(9)[None], torch.ones(1, 9, dtype=torch.long))


@pytest.mark.parametrize("module", ["model.py", "tokenizer.py"])
def test_bottom_layers_import_nothing_of_ours(module):
    """model.py and tokenizer.py sit below everything else: not even a function-level import of ours."""
    ours = {p.stem for p in ROOT.glob("*.py")} | {"data"}
    tree = ast.parse((ROOT / module).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & ours


def test_download_file_is_atomic(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 3_000_000)
    target = download_file(src.as_uri(), tmp_path / "cache" / "model.safetensors")
    assert target.read_bytes() == src.read_bytes() and not list((tmp_path / "cache").glob("*.part"))
    with pytest.raises(SystemExit, match="put the file at"):
        download_file((tmp_path / "missing").as_uri(), tmp_path / "cache" / "other")
    assert not (tmp_path / "cache" / "other").exists()


def test_sample_token_follows_the_distribution():
    probs = torch.tensor([[0.0, 0.5, 0.3, 0.2, 0.0]]).repeat(40000, 1)
    drawn = sample_token(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=5) / len(drawn)
    assert freq[0] == 0 and freq[4] == 0  # zero probability, at either end, is never drawn
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)
    one_hot = torch.zeros(3, 5)
    one_hot[:, [0, 2, 4]] = torch.eye(3)  # the tail of the cumulative sum is flat on either side
    assert sample_token(one_hot, torch.Generator().manual_seed(0)).tolist() == [0, 2, 4]


def plain_sampling(model, rows, n, eot, temperature, top_k, top_p, generator):
    """
    Sampling as simply as it can be written: the whole sequence through the model for every new token, and
    sample_token's one uniform draw per row spelled out, so that a change to the random numbers shows too.
    """
    idx, mask = left_pad(rows)
    done = torch.zeros(len(rows), dtype=torch.bool)
    toks, logps = [], []
    for _ in range(n):
        logits = model(idx, mask)[:, -1] / temperature
        cdf = F.softmax(filter_logits(logits, top_k, top_p), -1).cumsum(-1)
        u = torch.rand(len(rows), 1, generator=generator) * cdf[:, -1:]
        nxt = torch.where(done, eot, torch.searchsorted(cdf, u, right=True).squeeze(1))
        toks.append(nxt)
        logps.append(torch.where(done, 0.0, F.log_softmax(logits, -1).gather(1, nxt[:, None]).squeeze(1)))
        done |= nxt == eot
        if done.all():
            break
        idx = torch.cat([idx, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(toks, 1), torch.stack(logps, 1)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.9)])
@pytest.mark.parametrize("eot", [49, 7])
def test_sampled_tokens_are_those_of_plain_sampling(temperature, top_k, top_p, eot):
    """The KV cache and the left padding change no sampled token for a seed, and no draw of the generator."""
    for seed in range(5):
        model = tiny(seed)
        idx, mask = left_pad(ROWS)
        toks, logps = model.generate(idx, mask, 15, eot, temperature, top_k, top_p, torch.Generator().manual_seed(seed))
        ref_toks, ref_logps = plain_sampling(model, ROWS, 15, eot, temperature, top_k, top_p,
                                             torch.Generator().manual_seed(seed))
        assert torch.equal(toks, ref_toks)
        torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=1e-5)
