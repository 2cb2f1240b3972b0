"""Reply quality: the replies of a run, the repetition rate on texts with known answers, and reply
perplexity on a tiny random Llama against a manual, one-text-at-a-time torch computation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_bank

from debatelab.analysis.frames import load
from debatelab.config import load_config
from debatelab.errors import DebatelabError
from debatelab.experiment import run_experiment
from debatelab.lab.quality import (
    REPLY_COLUMNS,
    repetition_rate,
    reply_perplexities,
    reply_texts,
)
from debatelab.llm import load_llm
from debatelab.llm.hf import HFLLM
from debatelab.llm.options import BackendOptions

TEXTS = ["I rate it 6 out of 10.",
         "Alice: I think we should act on climate change now, because the evidence is strong.",
         "Bob", "The numbers are 0 1 2 3 4 5 6 7 8 9 10 and we count them one by one. " * 3, "Hello world"]


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[HFLLM]:
    threads = torch.get_num_threads()
    loaded = load_llm(f"hf:{tiny_model_dir}", BackendOptions(device="cpu", dtype="float32", threads=1))
    assert isinstance(loaded, HFLLM)
    yield loaded
    torch.set_num_threads(threads)


def _manual(llm: HFLLM, text: str) -> float:
    """exp(mean NLL) of the text's tokens after the EOS token (the tiny tokenizer has no BOS)."""
    assert llm.tokenizer.bos_token_id is None
    ids = [llm.tokenizer.eos_token_id, *llm.tokenizer(text, add_special_tokens=False).input_ids]
    with torch.inference_mode():
        logits = llm.model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], -1)
    return float(torch.exp(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean()))


def test_perplexities_match_a_manual_computation_whatever_the_batching(llm):
    manual = np.array([_manual(llm, t) for t in TEXTS])
    for batch_size in (1, 2, 16):  # mixed lengths: every batch but the first pads
        assert reply_perplexities(llm, TEXTS, batch_size=batch_size) == pytest.approx(manual, rel=1e-5)
    shuffled = [TEXTS[i] for i in (3, 0, 4, 1, 2)]
    assert reply_perplexities(llm, shuffled) == pytest.approx(manual[[3, 0, 4, 1, 2]], rel=1e-5)
    assert len(set(np.round(manual, 6))) == len(TEXTS) and (manual > 1).all()


def test_batches_stay_within_the_logit_budget(llm, monkeypatch):
    from debatelab.lab import quality

    lengths = [10, 20, 30, 40, 50]
    monkeypatch.setattr(quality, "LOGIT_BUDGET", 2 * 30 * 100)
    assert quality._batches([0, 1, 2, 3, 4], lengths, 16, 100) == [[0, 1], [2], [3], [4]]
    assert quality._batches([0, 1, 2, 3, 4], lengths, 1, 1) == [[0], [1], [2], [3], [4]]
    monkeypatch.setattr(quality, "LOGIT_BUDGET", 1)  # every text alone: the same numbers
    assert reply_perplexities(llm, TEXTS) == pytest.approx([_manual(llm, t) for t in TEXTS], rel=1e-5)


def test_empty_and_overlong_replies(llm):
    long = "the quick brown fox " * 400  # beyond the tiny model's 512 positions: cut to them
    out = reply_perplexities(llm, ["", long, "Hello world"])
    assert np.isnan(out[0]) and np.isfinite(out[1]) and out[2] == pytest.approx(_manual(llm, "Hello world"), rel=1e-5)
    assert reply_perplexities(llm, []).shape == (0,)


@pytest.mark.parametrize("call, needle", [
    (lambda llm: reply_perplexities(llm, "one string"), "sequence of texts"),
    (lambda llm: reply_perplexities(llm, ["a"], batch_size=0), "batch_size must be a positive integer"),
    (lambda llm: repetition_rate("one string"), "sequence of texts"),
    (lambda llm: repetition_rate(["a"], n=0), "n must be a positive integer"),
])
def test_bad_inputs_are_one_line(llm, call, needle):
    with pytest.raises(DebatelabError) as info:
        call(llm)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_repetition_rate_is_the_share_of_repeated_word_ngrams():
    texts = ["a b c a b c", "One two three four.", "loop loop loop loop loop", "too short", "",
             "Don't stop, don't STOP"]
    rates = repetition_rate(texts)
    assert rates[0] == pytest.approx(1 - 3 / 4)  # abc bca cab abc
    assert rates[1] == 0.0 and rates[2] == pytest.approx(1 - 1 / 3)
    assert np.isnan(rates[3]) and np.isnan(rates[4])
    assert rates[5] == 0.0  # case and punctuation do not make words: two distinct 3-grams of two
    assert repetition_rate(["don't stop don't stop"], n=2)[0] == pytest.approx(1 - 2 / 3)  # an apostrophe keeps a word
    assert repetition_rate(["x y x y"], n=1)[0] == pytest.approx(0.5)


def test_reply_texts_are_the_finished_debates_replies(tmp_path):
    bank = make_bank(tmp_path / "bank.jsonl")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "opinion-sim", "agents": ["republican", "democrat", "default"],
                                    "topics": ["climate_change", "gun_violence"], "rounds": 2, "repetitions": 2,
                                    "seed": 1, "personas": str(bank)}))
    run_experiment(load_config(path), tmp_path / "run")
    replies = reply_texts(tmp_path / "run")
    turns = load(tmp_path / "run").turns
    assert list(replies.columns) == REPLY_COLUMNS and len(replies) == len(turns) == 2 * 2 * 2 * 3
    assert replies["text"].tolist() == turns["text"].tolist() and replies["text"].str.startswith("I rate it").all()
    assert set(replies["role"]) == {"republican", "democrat", "default"}
