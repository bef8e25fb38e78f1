"""The tiny model must behave like a real Qwen3 checkpoint for everything downstream: Auto loading,
generation, the chat template's loss mask, and TRL's SFTTrainer with assistant-only loss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import is_chat_template_stop_token_trained

from reasoningner.formats import THINK_CLOSE, THINK_OPEN
from reasoningner.tiny_model import train_tokenizer

SIZES = dict(vocab_size=512, num_layers=2)  # over conftest's TINY_SIZES
CORPUS = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn",
    "BRUSSELS 1996-08-22",
    "The European Commission said on Thursday it disagreed with German advice to consumers .",
    "Germany 's representative to the European Union 's veterinary committee Werner Zwingmann said .",
] * 20

SYSTEM = "Find the named entities."
USER = "EU rejects German call to boycott British lamb ."
ANSWER = (
    '<think>EU is an organization; German and British are adjectives of nationality.</think>{"ORG": ["EU"]}'
)
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
    {"role": "assistant", "content": ANSWER},
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_factory: Callable[..., Path]) -> Path:
    return tiny_model_factory(CORPUS, seed=1, **SIZES)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


def test_loads_with_auto_classes_and_generates(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen3"
    assert model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tokenizer) <= SIZES["vocab_size"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    inputs = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tokenizer))
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_same_seed_gives_identical_files(model_dir: Path, tiny_model_factory: Callable[..., Path]) -> None:
    again = tiny_model_factory(CORPUS, seed=1, **SIZES)
    other_seed = tiny_model_factory(CORPUS, seed=2, **SIZES)
    files = sorted(path.name for path in model_dir.iterdir())
    assert files == sorted(path.name for path in again.iterdir())
    for name in files:
        assert (model_dir / name).read_bytes() == (again / name).read_bytes(), name
    assert (model_dir / "tokenizer.json").read_bytes() == (other_seed / "tokenizer.json").read_bytes()
    assert (model_dir / "model.safetensors").read_bytes() != (other_seed / "model.safetensors").read_bytes()


def test_chat_template_renders_chatml(tokenizer: PreTrainedTokenizerBase) -> None:
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{USER}<|im_end|>\n"
        f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    )


def test_generation_prompt_is_a_token_prefix_of_the_conversation(tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith(f"{USER}<|im_end|>\n<|im_start|>assistant\n")
    prompt_ids = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_dict=False
    )
    full_ids = tokenizer.apply_chat_template(CONVERSATION, return_dict=False)
    assert full_ids[: len(prompt_ids)] == prompt_ids
    no_think = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert no_think == prompt + "<think>\n\n</think>\n\n"


def test_assistant_mask_covers_content_and_im_end(tokenizer: PreTrainedTokenizerBase) -> None:
    second_answer = '<think>Nothing here.</think>{"ORG": []}'
    conversation = [
        *CONVERSATION,
        {"role": "user", "content": "Peter Blackburn"},
        {"role": "assistant", "content": second_answer},
    ]
    out = tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    spans, start = [], None
    for position, flag in enumerate([*mask, 0]):
        if flag and start is None:
            start = position
        elif not flag and start is not None:
            spans.append(tokenizer.decode(ids[start:position]))
            start = None
    assert spans == [ANSWER + "<|im_end|>", second_answer + "<|im_end|>"]


def test_think_delimiters_are_single_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.encode(ANSWER, add_special_tokens=False)
    for delimiter in (THINK_OPEN, THINK_CLOSE):
        (token_id,) = tokenizer.encode(delimiter, add_special_tokens=False)
        assert ids.count(token_id) == 1
    assert THINK_OPEN in tokenizer.decode(ids, skip_special_tokens=True)


def test_words_are_the_same_tokens_in_sentence_and_answer(tokenizer: PreTrainedTokenizerBase) -> None:
    in_answer = tokenizer.tokenize('{"MISC": ["German", "British"]}')
    assert {"German", "British"} <= set(tokenizer.tokenize(USER)) & set(in_answer)
    qwen_split = train_tokenizer(CORPUS, vocab_size=SIZES["vocab_size"], copy_friendly=False)
    assert "ĠGerman" in qwen_split.tokenize(USER)  # Qwen's split glues the space to the word


@settings(max_examples=200, deadline=None)
@given(text=st.text())
@example(text="Zürich Zu\u0308rich 東京 🇪🇺 \r\n\t  x")
@example(text='{"PER": ["Jo"]}<think></think><|im_end|>')
def test_tokenizer_round_trips_any_text(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def _sft_trainer(model_dir: Path, output_dir: Path, **config: object) -> SFTTrainer:
    """A trainer set up as on CPU: fp32 and no activation checkpointing (TRL defaults both on)."""
    dataset = Dataset.from_list(
        [
            {"messages": CONVERSATION},
            {"messages": [*CONVERSATION[1:2], {"role": "assistant", "content": "{}"}]},
        ]
        * 2
    )
    args = SFTConfig(
        output_dir=str(output_dir),
        assistant_only_loss=True,
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        save_strategy="no",
        disable_tqdm=True,
        **config,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def test_sft_trainer_trains_on_assistant_tokens_only(model_dir: Path, tmp_path: Path) -> None:
    trainer = _sft_trainer(model_dir, tmp_path, max_steps=2)
    tokenizer = trainer.processing_class
    assert is_chat_template_stop_token_trained(tokenizer)  # else TRL warns that the model may never stop
    for row, answer in zip(trainer.train_dataset, [ANSWER, "{}"], strict=False):
        trained = [
            token for token, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100
        ]
        assert tokenizer.decode(trained) == answer + "<|im_end|>"
    assert trainer.train().global_step == 2


def test_padding_free_batches_match_padded_ones_on_cpu_attention(model_dir: Path, tmp_path: Path) -> None:
    """Without flash attention, transformers separates the flattened sequences by their position ids."""
    losses = []
    for padding_free in (False, True):
        trainer = _sft_trainer(model_dir, tmp_path, padding_free=padding_free, max_length=None)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        assert ("attention_mask" in batch) != padding_free
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_copy_warm_up_trains_saves_in_place_and_is_seeded(tiny_model_factory: Callable[..., Path]) -> None:
    """The warm-up lowers the loss of texts written twice, leaves a loadable model, and two runs with
    the same seed give the same weights."""
    from reasoningner.tiny_model import warm_up_copying

    first, second = (tiny_model_factory(CORPUS, seed=1, **SIZES) for _ in range(2))
    before = AutoModelForCausalLM.from_pretrained(first).state_dict()
    losses = warm_up_copying(first, CORPUS, steps=30, batch_size=4, seed=3)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    warmed = AutoModelForCausalLM.from_pretrained(first).state_dict()
    assert any(not torch.equal(before[name], warmed[name]) for name in before)
    assert warm_up_copying(second, CORPUS, steps=30, batch_size=4, seed=3) == losses
    again = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert all(torch.equal(warmed[name], again[name]) for name in warmed)
