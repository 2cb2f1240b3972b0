"""Questions and answer datasets for self-fine-tuning, on the scripted backend."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from debatelab.errors import DebatelabError, RunFailed
from debatelab.finetune.answers import answer_dataset, dataset_hash, dpo_pairs, load_jsonl, save_jsonl
from debatelab.finetune.questions import (
    QUESTION_PROMPT, SEED_QUESTIONS, generate_questions, load_questions, normalise_question, save_questions,
)
from debatelab.llm.base import GenerateRequest
from debatelab.llm.scripted import ScriptedLLM
from debatelab.types import Persona

# Supplementary Table 2 of Taubenfeld et al. (2024), copied verbatim from the paper's text, in
# the paper's order (one question per paragraph).
PAPER_TABLE_2 = """\
Could you discuss your perspective on significant political issues facing America today?

How do you balance Second Amendment rights with the need for gun control measures?

How do you balance the need for national security with the preservation of personal freedoms?

How do you believe the U.S. should handle immigration and border security?

What core political ideals most significantly shape your viewpoint on governance and policy-making?

What are your views on racial inequality and systemic racism in American society?

What is your stance on the government's role in addressing climate change and environmental protection?

What role do you think diversity plays in shaping the cultural landscape of America?

What values do you believe are essential to the American identity?

Which political issues do you believe are most urgent for the next president to address?
"""
# The caption's generation prompt, verbatim.
PAPER_PROMPT = ('"Generate 10 questions to elicit one\'s opinion regarding US politics. Example question: '
                '{question}. Phrase your question in a neutral way without biasing the answer"')


def noisy_questions(request: GenerateRequest) -> str:
    """Four new questions per request among duplicates, variants of seeds, non-questions and markup."""
    n = request.seed % 1_000_003
    return "\n".join([
        "Sure! Here are 10 questions:",
        f"1. What is your opinion on local policy number {n}?",
        f"2) what is your OPINION on local policy number {n}",  # no "?": not a question
        f"3. What is your opinion, on local policy number {n}??",  # punctuation variant: duplicate
        f"4. **How should the country approach issue {n} in coming years?**",
        f"- <|im_end|> Do you support measure {n} today?",
        f"* Do you support measure {n} on {{question}}?",
        "5. Why?",  # too short
        "6. " + " ".join(["word"] * 45) + "?",  # too long
        "7. how do you believe the US should handle immigration and border security",
        "8. HOW DO YOU BELIEVE THE U.S. SHOULD HANDLE IMMIGRATION AND BORDER SECURITY?",  # seed variant
        f"9. Which reforms to program {n} would you prioritise? 10. Is institution {n} working well for citizens?",
    ])


def test_seed_questions_are_table_2_verbatim() -> None:
    paper = [q for q in PAPER_TABLE_2.split("\n\n") if q.strip()]
    assert len(paper) == 10
    assert list(SEED_QUESTIONS) == [q.strip() for q in paper]  # every character, in the paper's order
    assert QUESTION_PROMPT == PAPER_PROMPT.strip('"')


def test_generation_reaches_target_and_drops_noise() -> None:
    llm = ScriptedLLM(reply_fn=noisy_questions)
    questions = generate_questions(llm, target=57, seed=3)
    assert len(questions) == 57 and questions[:10] == list(SEED_QUESTIONS)
    keys = [normalise_question(q) for q in questions]
    assert len(set(keys)) == 57
    for q in questions[10:]:
        assert q.endswith("?") and 4 <= len(q.split()) <= 40
        assert "<|" not in q and "{" not in q and "*" not in q and not q[0].isdigit()
        assert "immigration" not in q.casefold()
    # 10 requests x 4 new questions per round: two rounds are needed, each one batched call.
    assert len(llm.generate_calls) == 2 and all(len(batch) == 10 for batch in llm.generate_calls)
    assert "How should the country approach issue" in " ".join(questions)
    assert any(q.startswith("Is institution") for q in questions)  # inline-numbered items split


def test_request_uses_paper_prompt_with_each_example() -> None:
    llm = ScriptedLLM(reply_fn=noisy_questions)
    generate_questions(llm, target=20, seed=0, temperature=1.0)
    batch = llm.generate_calls[0]
    for request, example in zip(batch, SEED_QUESTIONS):
        (message,) = request.prompt.messages
        assert message.role == "user"
        assert message.content == QUESTION_PROMPT.format(question=example)
        assert message.content.startswith("Generate 10 questions to elicit one's opinion regarding US politics. "
                                          "Example question: ")
        assert message.content.endswith("Phrase your question in a neutral way without biasing the answer")
        assert request.temperature == 1.0
    assert len({r.seed for r in batch}) == 10


def test_generation_is_deterministic_and_seeded() -> None:
    first = generate_questions(ScriptedLLM(reply_fn=noisy_questions), target=40, seed=5)
    again = generate_questions(ScriptedLLM(reply_fn=noisy_questions), target=40, seed=5)
    other = generate_questions(ScriptedLLM(reply_fn=noisy_questions), target=40, seed=6)
    assert first == again and first != other


def test_generation_fails_after_bounded_rounds() -> None:
    llm = ScriptedLLM(reply_fn=lambda r: "1. " + SEED_QUESTIONS[0].upper() + "\n2. Nothing new here.")
    with pytest.raises(RunFailed, match="only 10 of 12 distinct questions after 3 rounds"):
        generate_questions(llm, target=12, max_rounds=3)
    assert len(llm.generate_calls) == 3


def test_save_load_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "q" / "questions.txt"
    questions = list(SEED_QUESTIONS[:3]) + ["Is #hashtag activism effective?"]
    save_questions(questions, path)
    assert load_questions(path) == questions
    path.write_text("# my questions\n\n  What is your view on taxes?  \n# dropped: Why?\nWhat about trade?\n")
    assert load_questions(path) == ["What is your view on taxes?", "What about trade?"]
    path.write_text("What is your view on taxes?\nwhat is your view on TAXES\n")
    with pytest.raises(DebatelabError, match="question 2 repeats question 1"):
        load_questions(path)
    path.write_text("# only comments\n\n")
    with pytest.raises(DebatelabError, match="has no questions"):
        load_questions(path)
    with pytest.raises(DebatelabError, match="not found"):
        load_questions(tmp_path / "missing.txt")


PERSONA = Persona(id="r007-s0", party="republican", name="Ann", background="You are Ann, a rancher from Texas.")
OTHER = Persona(id="d003-s0", party="democrat", name="Bo", background="You are Bo, a teacher from Oregon.")


def echo_answer(request: GenerateRequest) -> str:
    system, user = request.prompt.messages
    return f"{system.content.split(',')[0]} answers {user.content} ({request.seed})"


def test_answer_dataset_records_and_requests() -> None:
    llm = ScriptedLLM(reply_fn=echo_answer)
    questions = ["What is your view on taxes?", "What about trade?", "Is voting important?"]
    rows = answer_dataset(llm, PERSONA, questions, k=4, seed=1)
    assert len(rows) == 12 and len(llm.generate_calls) == 1
    assert len({r["seed"] for r in rows}) == 12
    for request in llm.generate_calls[0]:
        assert request.temperature == 1.0 and request.max_tokens == 256
        assert request.prompt.messages[0].role == "system"
        assert request.prompt.messages[0].content == PERSONA.background
    row = rows[5]
    assert (row["question_id"], row["sample"], row["question"]) == (1, 1, "What about trade?")
    assert row["prompt"] == [{"role": "user", "content": "What about trade?"}]
    expected = f"You are Ann answers What about trade? ({row['seed']})"
    assert row["completion"] == [{"role": "assistant", "content": expected}]
    assert (row["persona_id"], row["party"]) == ("r007-s0", "republican")
    with_persona = answer_dataset(ScriptedLLM(reply_fn=echo_answer), PERSONA, questions, k=4, seed=1,
                                  include_persona=True)
    assert with_persona[5]["prompt"] == [{"role": "system", "content": PERSONA.background}, row["prompt"][0]]
    assert [r["completion"] for r in with_persona] == [r["completion"] for r in rows]


def test_empty_answers_are_regenerated_then_dropped(caplog: pytest.LogCaptureFixture) -> None:
    bad_seeds: set[int] = set()

    def flaky(request: GenerateRequest) -> str:
        question = request.prompt.messages[1].content
        if question == "Never?":
            return "  <|im_end|>  "
        if request.seed not in bad_seeds and len(bad_seeds) < 3:
            bad_seeds.add(request.seed)
            return "   "
        return f"ok {request.seed}"

    llm = ScriptedLLM(reply_fn=flaky)
    with caplog.at_level(logging.WARNING):
        rows = answer_dataset(llm, PERSONA, ["Fine?", "Never?"], k=5, max_attempts=3)
    assert [len(batch) for batch in llm.generate_calls] == [10, 5 + 3, 5]
    assert len(rows) == 5 and {r["question"] for r in rows} == {"Fine?"}
    assert not bad_seeds & {r["seed"] for r in rows}
    assert "dropped 5 of 10 answers" in caplog.text
    with pytest.raises(RunFailed, match="no usable answer"):
        answer_dataset(ScriptedLLM(reply_fn=lambda r: ""), PERSONA, ["Fine?"], k=2)


def test_dpo_pairs_match_answers_and_refuse_mismatches() -> None:
    questions = ["What is your view on taxes?", "What about trade?"]
    target = answer_dataset(ScriptedLLM(reply_fn=echo_answer), PERSONA, questions, k=3)
    other = answer_dataset(ScriptedLLM(reply_fn=echo_answer), OTHER, questions, k=3)
    pairs = dpo_pairs(target, list(reversed(other)))
    assert len(pairs) == 6
    for pair, row in zip(pairs, target):
        assert pair["prompt"] == [{"role": "user", "content": row["question"]}]
        assert pair["chosen"] == row["completion"]
        partner = next(o for o in other if (o["question_id"], o["sample"]) == (row["question_id"], row["sample"]))
        assert pair["rejected"] == partner["completion"] and "You are Bo" in pair["rejected"][0]["content"]
    assert len(dpo_pairs(target, other[1:])) == 5  # a dropped answer just loses its pair
    with pytest.raises(DebatelabError, match="different parties"):
        dpo_pairs(target, target)
    renamed = [{**r, "question": r["question"].upper()} for r in other]
    with pytest.raises(DebatelabError, match="different questions"):
        dpo_pairs(target, renamed)
    with pytest.raises(DebatelabError, match="twice"):
        dpo_pairs(target, other + other[:1])
    with pytest.raises(DebatelabError, match="lacks party"):
        dpo_pairs(target, [{k: v for k, v in r.items() if k != "party"} for r in other])


def test_jsonl_round_trip_hash_and_malformed(tmp_path: Path) -> None:
    rows = answer_dataset(ScriptedLLM(reply_fn=echo_answer), PERSONA, ["Qué opinas de los impuestos?"], k=2)
    path = tmp_path / "data" / "sft.jsonl"
    save_jsonl(rows, path)
    assert load_jsonl(path) == rows
    assert len(dataset_hash(path)) == 64
    before = dataset_hash(path)
    save_jsonl(rows[:1], path)
    assert dataset_hash(path) != before
    path.write_text(json.dumps(rows[0]) + "\n\n{broken\n")
    with pytest.raises(DebatelabError, match="line 3 is not valid JSON"):
        load_jsonl(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(DebatelabError, match="line 1 is not a JSON object"):
        load_jsonl(path)
