"""A tiny random Llama causal LM with a locally trained ChatML tokenizer, for backend tests.

Nothing is downloaded: the tokenizer is trained on a small built-in corpus with the `tokenizers`
library and the model is randomly initialised from a fixed seed, so the same directory contents
come out on every call (in a few seconds on a couple of CPU cores).
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]

_CORPUS = """\
Alice: I think we should act on climate change now, because the evidence is strong.
Bob: I disagree. The debate about climate policy is about costs, not about the science.
Alice: On a scale from 0 to 10, how much do you agree? I would say 8.
Bob: I would answer 3. Maybe 4 after this debate. Let us talk about the numbers.
Carol: The numbers are 0 1 2 3 4 5 6 7 8 9 10 and we count them one by one.
Dave: In 2024 the report said that 17 percent of people changed their opinion.
Eve: A good argument is clear, honest and short. A bad argument is long and vague.
Alice: Should the government tax carbon? Yes, because markets do not price pollution.
Bob: Should social media be regulated? No, because free speech matters more.
Carol: Is remote work better than office work? It depends on the team and the task.
Dave: The moderator asks each agent to state a position and give one reason.
Eve: After three rounds of debate, the agents report their final agreement score.
Alice: Answer with a single number between 0 and 10, where 10 means you fully agree.
Bob: I agree with Alice on this point, but I still think the cost is too high.
Carol: The survey asked people about the topic before and after the debate.
Dave: Opinions moved towards the middle, which is what we expected from the theory.
Eve: Persuasion works better when the speaker is confident and the listener is open.
The quick brown fox jumps over the lazy dog. Hello world, this is a test of the model.
You are a helpful assistant. You are a debate agent. Your name is Alice. Your name is Bob.
What is your opinion on the topic? Please explain your reasoning in two sentences.
"""


def same_weights(llm, **options):  # (HFLLM, BackendOptions fields) -> HFLLM
    """The same loaded weights behind other backend options (no reload), on CPU."""
    from debatelab.llm.hf import HFLLM
    from debatelab.llm.options import BackendOptions

    return HFLLM(llm.model, llm.tokenizer, llm.identity(), BackendOptions(device="cpu", **options))


def load_tiny(model_dir: Path, **options):  # -> Iterator[HFLLM], for a module-scoped fixture
    """The tiny model as an HFLLM on CPU in float32 with one intra-op thread (for a model this
    small, torch's thread pool only adds contention), offline; torch's threads restored after."""
    import pytest
    import torch

    from debatelab.llm import load_llm
    from debatelab.llm.hf import HFLLM
    from debatelab.llm.options import BackendOptions

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        llm = load_llm(f"hf:{model_dir}", BackendOptions(**{"device": "cpu", "dtype": "float32", "threads": 1, **options}))
    assert isinstance(llm, HFLLM)
    yield llm
    torch.set_num_threads(threads)


def build_tiny_model(path: Path, *, vocab_size: int = 1000, seed: int = 0) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` plus its tokenizer into ``path`` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    # --- tokenizer: byte-level BPE with single-digit tokens (as in SmolLM2: "10" -> "1", "0") ---
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True) * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)

    # --- model: tiny random Llama, deterministic ---
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        # larger than the usual 0.02 so logits are peaked: fewer near-ties under greedy decoding
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    return path
