import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import data.world as world
import sample
from common import load_policy, save_checkpoint, setup_runtime
from model import GPT, GPTConfig, ScalarHead
from tokenizer import EOT, PROMPT, load_tokenizer, save_bpe, train_bpe

ROOT = Path(__file__).resolve().parent.parent
ARITH = "What is 7 plus 12?"  # a question of the built-in task: the gold judge knows it
OTHER = "\n\nHuman: Can you recommend a good book?\n\nAssistant:"  # an already formatted prompt it does not know


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """
    A tiny BPE and two random GPTs saved as our stages save them: a.pt like sft.py's, b.pt like ppo.py's (with a
    value head) and made to answer end-of-text at once. Weights are larger than at initialisation, so that what
    a model says depends visibly on its context.
    """
    d = tmp_path_factory.mktemp("sample")
    texts = [PROMPT.format(f"What is {a} plus {b}?") + f" {a} plus {b} is {a + b}."
             for a in range(12) for b in range(12)]
    save_bpe(train_bpe(texts, 300), d / "tok.tiktoken")
    eot = load_tokenizer(str(d / "tok.tiktoken")).eot_token
    for name in ("a", "b"):
        torch.manual_seed(0 if name == "a" else 1)
        model = GPT(GPTConfig(block_size=64, vocab_size=300, n_layer=1, n_head=2, n_embd=32))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(std=0.3)
        extra = {"kind": "policy"}
        if name == "b":  # every hidden state becomes the end-of-text embedding, scaled up
            with torch.no_grad():
                model.transformer.ln_f.weight.zero_()
                model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[eot] * 100)
            extra = {"kind": "ppo_policy", "value_head": ScalarHead(32).state_dict()}
        save_checkpoint(d / f"{name}.pt", {"model": model.state_dict(), "model_config": asdict(model.config),
                                           "tokenizer": str(d / "tok.tiktoken"), "config": {}, "step": 0, **extra})
    return d


@pytest.fixture(scope="module")
def enc(ckpts):
    return load_tokenizer(str(ckpts / "tok.tiktoken"))


def test_a_question_is_asked_as_one_turn_and_a_dialogue_as_it_is():
    assert sample.as_dialogue("Hi?") == "\n\nHuman: Hi?\n\nAssistant:"
    assert sample.as_dialogue(OTHER) == OTHER


def test_context_holds_the_earlier_turns_and_drops_the_oldest_first(enc):
    history = [("What is 1 plus 2?", " 1 plus 2 is 3."), ("What is 2 plus 2?", " 4.")]
    ids, dropped, cut = sample.build_context(enc, history, "What is 3 plus 4?", 100)
    full = ("\n\nHuman: What is 1 plus 2?\n\nAssistant: 1 plus 2 is 3."
            "\n\nHuman: What is 2 plus 2?\n\nAssistant: 4."
            "\n\nHuman: What is 3 plus 4?\n\nAssistant:")
    assert (ids, dropped, cut) == (enc.encode_ordinary(full), 0, False)
    assert enc.decode(ids) == full
    last_two = enc.encode_ordinary("\n\nHuman: What is 2 plus 2?\n\nAssistant: 4."
                                   "\n\nHuman: What is 3 plus 4?\n\nAssistant:")
    # one token short: the whole oldest turn goes, not just one token of it
    assert sample.build_context(enc, history, "What is 3 plus 4?", len(ids) - 1) == (last_two, 1, False)
    assert sample.build_context(enc, history, "What is 3 plus 4?", len(last_two)) == (last_two, 1, False)
    alone = enc.encode_ordinary("\n\nHuman: What is 3 plus 4?\n\nAssistant:")
    assert sample.build_context(enc, history, "What is 3 plus 4?", len(last_two) - 1) == (alone, 2, False)
    # a turn longer than the context keeps its end, which holds "Assistant:"
    assert sample.build_context(enc, history, "What is 3 plus 4?", 5) == (alone[-5:], 2, True)


def test_user_text_cannot_inject_end_of_text(enc):
    ids, _, _ = sample.build_context(enc, [(f"a{EOT}", f" b{EOT}")], f"c{EOT}", 100)
    assert enc.eot_token not in ids
    assert enc.decode(ids) == PROMPT.format(f"a{EOT}") + f" b{EOT}" + PROMPT.format(f"c{EOT}")


def run(*args):
    return sample.main([*args, "--max_new_tokens", "8", "--device", "cpu"])


def test_one_shot_is_reproducible_for_a_seed(ckpts):
    a = str(ckpts / "a.pt")
    first = run("--ckpt", a, "--prompt", ARITH, "--num_samples", "3", "--seed", "5")
    assert first == run("--ckpt", a, "--prompt", ARITH, "--num_samples", "3", "--seed", "5")
    assert first != run("--ckpt", a, "--prompt", ARITH, "--num_samples", "3", "--seed", "6")
    assert len(set(first[0][0])) == 3  # three different samples


def test_temperature_zero_is_greedy(ckpts, enc):
    a = str(ckpts / "a.pt")
    greedy = run("--ckpt", a, "--prompt", ARITH, "--temperature", "0", "--num_samples", "2")[0][0]
    reseeded = run("--ckpt", a, "--prompt", ARITH, "--temperature", "0", "--num_samples", "2", "--seed", "1")
    assert greedy == reseeded[0][0]
    # argmax, token by token, without the cache
    model = load_policy(a)[0].eval()
    ids = enc.encode_ordinary(PROMPT.format(ARITH))
    out = []
    with torch.no_grad():
        for _ in range(8):
            out.append(model(torch.tensor([ids + out]))[0, -1].argmax().item())
            if out[-1] == enc.eot_token:
                break
    assert greedy == [enc.decode(out)] * 2
    # keeping only the likeliest token, or the fewest tokens that reach a tiny probability, is greedy too
    assert run("--ckpt", a, "--prompt", ARITH, "--top_k", "1")[0][0] == [enc.decode(out)]
    assert run("--ckpt", a, "--prompt", ARITH, "--top_p", "1e-6")[0][0] == [enc.decode(out)]


def test_compare_shows_each_checkpoint_with_its_gold_score(ckpts, tmp_path, capsys):
    assert world.parse(PROMPT.format(ARITH)).kind != "unknown" and world.parse(OTHER).kind == "unknown"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": ARITH}) + "\n" + json.dumps({"prompt": OTHER}) + "\n")
    a, b = str(ckpts / "a.pt"), str(ckpts / "b.pt")
    alone = run("--ckpt", a, "--prompts_file", str(prompts))
    capsys.readouterr()
    answers = run("--compare", a, b, "--prompts_file", str(prompts))
    out = capsys.readouterr().out
    # each checkpoint answers as it does alone; b ends at once, a never does
    assert [texts[0] for texts in answers] == [texts[0] for texts in alone]
    assert [texts[1] for texts in answers] == [[EOT], [EOT]]
    (a_arith,), (a_other,) = answers[0][0], answers[1][0]
    assert not a_arith.endswith(EOT)
    # the judge reads "<|endoftext|>" where the model ended: an empty ended reply scores better than an unended one
    prompt = PROMPT.format(ARITH)
    assert world.gold_score(prompt, EOT) != world.gold_score(prompt, "")
    assert out == (f"==={prompt}\n"
                   f"--- {a} #1 (gold {world.gold_score(prompt, a_arith):+.2f}, {world.judge(prompt, a_arith)[1]})\n{a_arith}\n"
                   f"--- {b} #1 (gold {world.gold_score(prompt, EOT):+.2f}, evasive)\n{EOT}\n"
                   f"==={OTHER}\n"
                   f"--- {a} #1\n{a_other}\n"
                   f"--- {b} #1\n{EOT}\n")


def test_chat_through_standard_input(ckpts):
    a = str(ckpts / "a.pt")
    q1, q2, q3, q4 = "What is 1 plus 2?", "What is 3 plus 4?", "What is 5 plus 6?", "What is 7 plus 8?"
    typed = "\n".join([q1, q2, q3, q4, "/reset", q2, "/quit", "What is 9 plus 9?"]) + "\n"
    out = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--ckpt", a, "--temperature", "0",
                          "--max_new_tokens", "8", "--device", "cpu"],
                         input=typed.encode(), capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    said = out.stdout.decode()  # not text=True: its newline translation would turn a "\r" the model says into "\n"

    # what the model answers to each context, computed here
    cfg = sample.Config(temperature=0, max_new_tokens=8)
    rt = setup_runtime("cpu")
    model, enc, max_len = sample.load(a, cfg, rt)
    assert max_len == 64 - 8

    def answer(history, text):
        ids, dropped, _ = sample.build_context(enc, history, text, max_len)
        return sample.respond(model, enc, ids, 1, cfg, rt, None)[0].removesuffix(EOT), dropped

    r1, _ = answer([], q1)
    r2, _ = answer([(q1, r1)], q2)
    r3, dropped3 = answer([(q1, r1), (q2, r2)], q3)
    r4, dropped4 = answer([(q2, r2), (q3, r3)], q4)  # the first turn is gone for good
    fresh, _ = answer([], q2)
    assert r2 != fresh  # the second turn read the first
    assert dropped3 == dropped4 == 1  # the third and fourth turns outgrew the context
    expected = [f"Assistant:{r1}", f"Assistant:{r2}", "[the 1 oldest turn(s) dropped", f"Assistant:{r3}",
                "[the 1 oldest turn(s) dropped", f"Assistant:{r4}", "[conversation forgotten]", f"Assistant:{fresh}"]
    pos = 0
    for part in expected:
        pos = said.index(part, pos) + len(part)
    assert said.count("Assistant:") == 5  # nothing after /quit is answered


@pytest.mark.parametrize("args,message", [
    (["--compare", "x.pt", "y.pt"], "--compare answers --prompt or --prompts_file"),
    (["--prompt", "hi", "--max_new_tokens", "64"], "leaves no room for a prompt"),
    (["--prompt", "hi", "--top_p", "0"], "--top_p in"),
])
def test_clear_errors(ckpts, args, message):
    with pytest.raises(SystemExit, match=message):
        sample.main(["--ckpt", str(ckpts / "a.pt"), "--device", "cpu", *args])
