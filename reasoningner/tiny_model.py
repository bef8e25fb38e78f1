"""A small random-init Qwen3-style causal LM with a tokenizer trained on our own data.

Tests and the CPU demo cannot download anything, so they build this model locally. It is saved with
`save_pretrained` and loads back through `AutoModelForCausalLM` / `AutoTokenizer`, the same path a real
checkpoint takes, so training and evaluation code has no tiny-model special case.

`warm_up_copying` stands in for pretraining where the demo needs it: generative NER is mostly copying
spans of the input, which every real base model can do and a random-init one cannot.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from reasoningner.formats import THINK_CLOSE, THINK_OPEN

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# ChatML as in Qwen3, minus tools. The assistant content is rendered verbatim, `<think>` block included,
# because we train on the rationale (Qwen3's template strips it from earlier turns). The loss mask
# (`{% generation %}`) covers the content and the closing `<|im_end|>`, so the model learns to stop; the
# newline after it is not trained, as generation stops on `<|im_end|>`. The prompt rendered with
# `add_generation_prompt` is a prefix of the full conversation, so prompt-completion data and GRPO
# see the same tokens as SFT.
CHAT_TEMPLATE = """\
{%- for message in messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
            {{- message.content + '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- elif message.role in ['system', 'user'] %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- else %}
        {{- raise_exception('Unsupported role: ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

# Qwen2/3's split: a word keeps the character before it (" John", '"John'), digits are single tokens.
QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Copy-friendly split: words never absorb the space or quote before them, so "John" is the same token in
# the sentence and in a quoted answer, which a small model trained from scratch can copy by identity.
# Costs about one extra token per word (the space).
WORD_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+|\s+"""

# Format strings weighted into tokenizer training so that they become single tokens even when the corpus
# holds only raw sentences: chat roles, JSON punctuation, the keys of `formats.py`, common label names.
MARKUP = (
    "system",
    "user",
    "assistant",
    '{"',
    '"}',
    '["',
    '"]',
    '": ',
    '", "',
    '"], "',
    '": ["',
    '": {"',
    '"]}}',
    '": []',
    "[]",
    "{}",
    '": "',
    '"},',
    '"}]',
    "\n\n",
    "PER",
    "LOC",
    "ORG",
    "MISC",
    "person",
    "location",
    "organization",
    "miscellaneous",
    "entities",
    "type",
    "text",
    "label",
    "occurrence_index",
    "start",
    "end",
)
MARKUP_WEIGHT = 1000


def train_tokenizer(
    corpus_texts: Iterable[str], *, vocab_size: int, copy_friendly: bool = True, max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (Qwen's design) on `corpus_texts`; at most `vocab_size` tokens.

    No normalizer, unlike Qwen's NFC: every string must round-trip exactly through encode/decode. It is
    saved as the generic `TokenizersBackend` class on purpose: `Qwen2Tokenizer` would rebuild Qwen's own
    split and normalizer around our vocabulary when loaded.
    """
    special = [END_OF_TEXT, IM_START, IM_END]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_SPLIT if copy_friendly else QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,  # room for <think> and </think>
        min_frequency=2,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    markup = itertools.chain.from_iterable(itertools.repeat(MARKUP, MARKUP_WEIGHT))
    tokenizer.train_from_iterator(itertools.chain(corpus_texts, markup), trainer=trainer)
    # Not special, as in Qwen3: decoding with skip_special_tokens=True keeps the rationale delimiters.
    tokenizer.add_tokens([AddedToken(THINK_OPEN, special=False), AddedToken(THINK_CLOSE, special=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        model_max_length=max_length,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    out_dir: str | Path,
    corpus_texts: Iterable[str],
    *,
    vocab_size: int = 4096,
    hidden_size: int = 256,
    intermediate_size: int = 768,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 64,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on `corpus_texts`, build a random-init Qwen3 LM around it and save both to `out_dir`.

    The embedding matrix has exactly one row per token (`vocab_size` is an upper bound: a small corpus
    may yield fewer merges), so no untrained id can be sampled. Embeddings are tied, as in small Qwen3s.
    Same arguments and corpus give identical files.
    """
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(
        corpus_texts,
        vocab_size=vocab_size,
        max_length=max_position_embeddings,
    )
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():  # seeded init without touching the caller's RNG state
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    # Stop on either end marker, as Qwen3's generation config does.
    model.generation_config.eos_token_id = [config.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TEXT)]
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def warm_up_copying(
    model_dir: str | Path,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int = 8,
    learning_rate: float = 4e-3,
    max_tokens: int = 64,
    seed: int = 0,
) -> list[float]:
    """Pretrain the model in `model_dir` for `steps` steps to copy text; save it in place; return the losses.

    A pretrained LLM copies with induction heads (Olsson et al., 2022); a random-init model has none,
    and minutes of SFT on NER do not grow them: the CPU demo's model then wrote entity-like names that
    were not in the sentence (dev F1 3). Trained as a causal LM on texts written twice, once more
    after a newline, it forms them in a few thousand steps: half of the texts are sentences of the
    corpus, half random sequences of its words, whose second copy only copying can predict. No label
    and no NER format is seen, so this is pretraining, not a head start on the task.
    Copying forms abruptly, after a number of steps that depends on the seed; the learning rate of
    4e-3 makes it form sooner (CPU demo, seed 1: dev F1 35 after SFT, 25 with 2e-3).
    """
    from tqdm.auto import tqdm

    model_dir = Path(model_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = Qwen3ForCausalLM.from_pretrained(model_dir)
    rng = random.Random(seed)
    words = sorted({word for text in texts for word in text.split()})
    newline = tokenizer("\n")["input_ids"]

    def twice() -> list[int]:
        text = rng.choice(texts) if rng.random() < 0.5 else " ".join(rng.choices(words, k=rng.randint(3, 20)))
        ids = tokenizer(text)["input_ids"][:max_tokens]
        return ids + newline + ids

    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 50)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.05, 1.0 - step / steps)
    )
    losses = []
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in tqdm(range(steps), desc="copy warm-up", unit="step"):
            batch = [twice() for _ in range(batch_size)]
            width = max(map(len, batch))
            input_ids = torch.full((batch_size, width), tokenizer.pad_token_id)
            labels = torch.full((batch_size, width), -100)
            for row, ids in enumerate(batch):
                input_ids[row, : len(ids)] = labels[row, : len(ids)] = torch.tensor(ids)
            loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    model.save_pretrained(model_dir)
    return losses
