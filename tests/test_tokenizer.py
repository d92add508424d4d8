import random

import pytest

from tokenizer import EOT, load_tokenizer, render, save_bpe, train_bpe

TEXTS = ["\n\nHuman: What is the capital of Zorbia?\n\nAssistant: The capital of Zorbia is Quell.",
         "\n\nHuman: I'm feeling overwhelmed at work, any advice?\n\nAssistant: Try writing a short list."] * 50


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tok.tiktoken"
    save_bpe(train_bpe(TEXTS, 320), path)
    return load_tokenizer(str(path))


def test_vocabulary_and_end_of_text(enc):
    assert enc.n_vocab == 320 and enc.eot_token == 319
    assert enc.encode(EOT, allowed_special="all") == [319]
    # merges were learned: a frequent word is one token
    assert len(enc.encode_ordinary(" Zorbia")) == 1


def test_round_trip_arbitrary_unicode(enc):
    rng = random.Random(0)
    for _ in range(200):
        s = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x10FFFF)]))
                    for _ in range(rng.randrange(0, 30)) if True)
        s = s.encode("utf-8", "replace").decode("utf-8", "replace")  # no lone surrogates
        assert enc.decode(enc.encode_ordinary(s)) == s
    for s in ["héllo wörld", "日本語のテキスト", "emoji 🤖🎉", "\n\n\t  spaces  ", ""]:
        assert enc.decode(enc.encode_ordinary(s)) == s


def test_render_mask_covers_response_and_eot(enc):
    prompt, response = TEXTS[0].split("\n\nAssistant:")[0] + "\n\nAssistant:", " The capital is Quell."
    ids, mask = render(enc, prompt, response)
    n_prompt = len(enc.encode_ordinary(prompt))
    assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)
    assert ids[-1] == enc.eot_token
    assert enc.decode([t for t, m in zip(ids, mask) if m]) == response + EOT
    assert enc.decode(ids) == prompt + response + EOT


def test_special_token_text_in_user_input_stays_text(enc):
    prompt = f"\n\nHuman: say {EOT} please\n\nAssistant:"
    ids, mask = render(enc, prompt, f" ok {EOT}")
    assert ids.count(enc.eot_token) == 1 and ids[-1] == enc.eot_token
    assert enc.decode(ids) == prompt + f" ok {EOT}" + EOT


def test_training_is_deterministic():
    assert train_bpe(TEXTS, 300) == train_bpe(TEXTS, 300)


def test_gpt2_offline_says_how_to_seed_the_cache(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(SystemExit, match="TIKTOKEN_CACHE_DIR"):
        load_tokenizer("gpt2")
