"""Stage 2 (SFT): the loss mask on the real template, full and LoRA runs of the stage script, auto-resume,
the direct-answer baseline and the batching policy."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from datasets import Dataset
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import SFTConfig, SFTTrainer
from trl.trainer import sft_trainer

from reasoningner.configs import DEFAULT_MAX_NEW_TOKENS, PromptArguments, PromptContract
from reasoningner.formats import THINK_OPEN, get_format
from reasoningner.model_card import default_repository
from reasoningner.prompts import ner_instruction
from reasoningner.readers import read_dataset
from reasoningner.records import read_records, record_example
from reasoningner.tiny_model import IM_END
from reasoningner.training import configure_batching
from reasoningner.training_data import rl_prompts, sft_conversations
from tests.scripts import load_stage

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "tiny-cpu" / "sft.yaml"
RECIPE_ARGS = yaml.safe_load(RECIPE.read_text())
# The recipe's prompt contract, and the default one in the recipe's answer format.
RECIPE_PROMPT = PromptArguments(
    **{key: RECIPE_ARGS[key] for key in ("output_format", "descriptions", "compact_prompt")}
)
PROMPT = PromptArguments(output_format=RECIPE_ARGS["output_format"])
CONLL = Path(__file__).parent / "data" / "conll2003_mini.txt"


@pytest.fixture(scope="module")
def cot_file(gold_cot_factory: Callable[..., Path]) -> Path:
    """Stage 1 output for the mini CoNLL file, from the gold-template teacher."""
    return gold_cot_factory(PROMPT)


@pytest.fixture(scope="module")
def model_dir(tiny_model_factory: Callable[..., Path], cot_file: Path) -> Path:
    """A tiny model whose tokenizer learnt from the conversations it trains on."""
    conversations = sft_conversations([str(cot_file)], PROMPT)
    corpus = [message["content"] for c in conversations for message in c["messages"]] * 20
    return tiny_model_factory(corpus, vocab_size=512, num_layers=2)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """The tiny model trains about twice as fast on one thread as on two (thread overhead dominates)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def recipe_conversations(cot_file: Path) -> list[dict[str, Any]]:
    """The conversations the stage builds from `cot_file` under the tiny-cpu recipe."""
    return sft_conversations([str(cot_file)], RECIPE_PROMPT)


def run_stage(*args: str) -> None:
    """`python stages/sft.py --config recipes/tiny-cpu/sft.yaml ARGS`, in this process."""
    stage = load_stage("sft")
    stage.main(*stage.make_parser().parse_args_and_config(args=["--config", str(RECIPE), *args]))


def stage_args(model_dir: Path, cot_file: Path, output_dir: Path, *, max_steps: int, lr: float) -> list[str]:
    """Overrides for a short run on the four mini conversations: whole-batch steps at a constant rate."""
    return [
        "--model_name_or_path", str(model_dir),
        "--train_files", str(cot_file),
        "--output_dir", str(output_dir),
        "--max_steps", str(max_steps),
        "--learning_rate", str(lr),
        "--lr_scheduler_type", "constant",
        "--warmup_steps", "0",
        "--per_device_train_batch_size", "4",
        "--logging_steps", "1",
        "--disable_tqdm", "true",
    ]  # fmt: skip


def supervised_loss(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, conversations: Sequence[dict[str, Any]]
) -> float:
    """Mean loss over the assistant tokens of one padded batch of `conversations`, model in eval mode."""
    encoded = [
        tokenizer.apply_chat_template(c["messages"], return_dict=True, return_assistant_tokens_mask=True)
        for c in conversations
    ]
    width = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        ids = torch.tensor(e["input_ids"])
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = torch.where(torch.tensor(e["assistant_masks"]) == 1, ids, -100)
        attention_mask[row, : len(ids)] = 1
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()


def load(path: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# --- the loss mask, token by token, as TRL tokenizes our conversations -------------------------------------


@pytest.mark.parametrize("reasoning", [True, False], ids=["cot", "direct"])
def test_exactly_the_assistant_turn_is_trained(
    model_dir: Path, tokenizer: PreTrainedTokenizerBase, cot_file: Path, tmp_path: Path, reasoning: bool
) -> None:
    conversations = sft_conversations([str(cot_file)], PromptArguments(PROMPT.output_format, reasoning))
    args = SFTConfig(
        output_dir=str(tmp_path),
        assistant_only_loss=True,
        max_length=RECIPE_ARGS["max_length"],
        use_cpu=True,
        bf16=False,
        report_to="none",
    )
    trainer = SFTTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=Dataset.from_list(conversations),
        processing_class=tokenizer,
    )
    records = read_records(cot_file)
    assert len(trainer.train_dataset) == len(records) == 4
    think_id, im_end_id = tokenizer.convert_tokens_to_ids([THINK_OPEN, IM_END])
    for row, record, conversation in zip(trainer.train_dataset, records, conversations, strict=True):
        target = (f"<think>\n{record['rationale']}\n</think>\n" if reasoning else "") + record["answer"]
        user = conversation["messages"][0]["content"]
        ids, labels = row["input_ids"], row["labels"]
        trained = [position for position, label in enumerate(labels) if label != -100]
        first, last = trained[0], trained[-1]
        assert trained == list(range(first, last + 1)), "the trained tokens are one contiguous span"
        assert [labels[p] for p in trained] == ids[first : last + 1]
        assert tokenizer.decode(ids[:first]) == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        assert tokenizer.decode(ids[first : last + 1]) == target + "<|im_end|>"
        assert tokenizer.decode(ids[last + 1 :]) == "\n"  # after <|im_end|>: not trained, never generated
        assert ids[last] == im_end_id
        assert (ids[first] == think_id) == reasoning

    # The collator pads on the right with -100 labels and keeps each row's labels as they were.
    rows = [trainer.train_dataset[i] for i in range(len(records))]
    batch = trainer.data_collator(rows)
    for row, labels, attention in zip(rows, batch["labels"], batch["attention_mask"], strict=True):
        length = len(row["input_ids"])
        assert labels[:length].tolist() == row["labels"]
        assert (labels[length:] == -100).all() and attention.sum() == length


# --- full and LoRA training through the stage script --------------------------------------------------------


def test_full_sft_run_lowers_the_loss_and_saves_a_loadable_model(
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    cot_file: Path,
    tmp_path: Path,
    one_thread: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "sft"
    run_stage(*stage_args(model_dir, cot_file, out, max_steps=20, lr=3e-3), "--save_strategy", "no")
    log = capsys.readouterr().out
    assert f"sft: 4 conversations, length-grouped batches, {RECIPE_PROMPT}" in log
    assert "trained cut" not in log
    conversations = recipe_conversations(cot_file)
    before = supervised_loss(load(model_dir), tokenizer, conversations)
    after = supervised_loss(load(out), tokenizer, conversations)
    assert after < 0.8 * before, (before, after)
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template == tokenizer.chat_template and saved.eos_token == IM_END
    contract = PromptContract.load(out)  # how to ask the model, and what it learnt to find
    assert contract.prompt == RECIPE_PROMPT
    assert sorted(contract.labels) == sorted(read_dataset(CONLL).schema.labels)
    # Twice the longest answer it learnt to write, in tokens: evaluation's and predict's default budget.
    answers = [
        tokenizer.apply_chat_template(c["messages"], return_dict=True, return_assistant_tokens_mask=True)
        for c in conversations
    ]
    longest = max(sum(a["assistant_masks"]) for a in answers)
    max_length = yaml.safe_load(RECIPE.read_text())["max_length"]  # no longer sequence was trained
    assert contract.max_new_tokens == min(max(2 * longest, DEFAULT_MAX_NEW_TOKENS), max_length)
    # ... and `generate`'s default outside reasoningner (transformers' own is 20 tokens).
    assert GenerationConfig.from_pretrained(out).max_new_tokens == contract.max_new_tokens


def test_the_answer_budget_is_twice_the_longest_trained_answer_packed_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted per conversation, as TRL tokenized them: in labels not -100, per bfd-packed sequence."""
    from trl.data_utils import pack_dataset

    from reasoningner import training

    rows = Dataset.from_list(
        [
            {"input_ids": [1] * length, "labels": [-100] * (length - answer) + [7] * answer}
            for length, answer in [(8, 6), (5, 3), (4, 2), (3, 1), (9, 5)]
        ]
    )
    assert training.answer_budget(rows) == DEFAULT_MAX_NEW_TOKENS  # 2 x 6 is under the default
    assert training.answer_budget(rows, max_length=768) == 768  # no longer sequence was trained
    monkeypatch.setattr(training, "DEFAULT_MAX_NEW_TOKENS", 1)
    assert training.answer_budget(rows) == 12
    assert training.answer_budget(rows, max_length=10) == 10
    packed = pack_dataset(rows, seq_length=12, strategy="bfd")
    assert len(packed) < len(rows)  # several answers to a row
    assert training.answer_budget(packed) == 12
    assert training.answer_budget(rows.select([3])) == 2
    assert training.answer_budget(Dataset.from_list([{"input_ids": [1], "labels": [-100]}])) is None


def test_conversations_cut_by_max_length_are_counted_aloud(
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    cot_file: Path,
    tmp_path: Path,
    one_thread: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TRL cuts a conversation longer than max_length and trains the rest, an answer without its end."""
    conversations = recipe_conversations(cot_file)

    def tokens(messages: list[dict[str, str]], **options: Any) -> int:
        return len(tokenizer.apply_chat_template(messages, return_dict=True, **options)["input_ids"])

    prompts = [tokens(c["messages"][:-1], add_generation_prompt=True) for c in conversations]
    fulls = sorted(tokens(c["messages"]) for c in conversations)
    # The three longest lose at least their end of turn (the newline after it is not trained).
    max_length = fulls[1] - 2
    assert fulls[0] <= max_length
    assert max(prompts) < max_length
    args = stage_args(model_dir, cot_file, tmp_path / "sft", max_steps=1, lr=1e-3)
    run_stage(*args, "--save_strategy", "no", "--max_length", str(max_length))
    assert (
        f"sft: warning: 3 of 4 conversations are longer than max_length={max_length} tokens and are "
        "trained cut" in capsys.readouterr().out
    )


def test_recipe_model_init_kwargs_reach_the_loader(
    model_dir: Path, cot_file: Path, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[dict[str, Any]] = []
    create = sft_trainer.create_model_from_path

    def spy(path: str, **kwargs: Any) -> PreTrainedModel:
        loads.append(kwargs)
        return create(path, **kwargs)

    monkeypatch.setattr(sft_trainer, "create_model_from_path", spy)
    run_stage(
        *stage_args(model_dir, cot_file, tmp_path, max_steps=1, lr=1e-3),
        "--save_strategy", "no",
        "--model_init_kwargs", '{"trust_remote_code": false, "dtype": "bfloat16"}',
        "--attn_implementation", "eager",
    )  # fmt: skip
    (kwargs,) = loads
    assert kwargs["trust_remote_code"] is False  # kept from the recipe
    assert kwargs["use_kernels"] is False  # no Hub kernels unless the recipe asks
    assert (kwargs["dtype"], kwargs["attn_implementation"]) == ("float32", "eager")  # the model options win


LORA = [
    "--use_peft",
    "true",
    "--lora_r",
    "8",
    "--lora_alpha",
    "16",
    "--lora_target_modules",
    "q_proj",
    "v_proj",
]


def check_lora_output(
    out: Path, model_dir: Path, tokenizer: PreTrainedTokenizerBase, cot_file: Path
) -> float:
    """The adapter and its merge in `out/merged` agree, and the merge changed q/v only; returns its loss."""
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (8, 16)
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert not (out / "model.safetensors").exists()  # the adapter alone, not the base weights
    conversations = recipe_conversations(cot_file)
    with_adapter = supervised_loss(PeftModel.from_pretrained(load(model_dir), out), tokenizer, conversations)
    merged = load(out / "merged")
    base_weights = load(model_dir).state_dict()
    assert type(merged).__name__ == "Qwen3ForCausalLM"
    for name, weight in merged.state_dict().items():
        targeted = name.endswith(("q_proj.weight", "v_proj.weight"))
        assert torch.equal(weight, base_weights[name]) != targeted, name
    assert AutoTokenizer.from_pretrained(out / "merged").chat_template == tokenizer.chat_template
    loss = supervised_loss(merged, tokenizer, conversations)
    assert loss == pytest.approx(with_adapter, rel=1e-4)
    return loss


def fake_hub(monkeypatch: pytest.MonkeyPatch, files: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """HfApi's repository creation and upload, recorded (a bare name is the account `me`'s); every
    repository holds `files` (name -> text) until an upload."""
    import huggingface_hub
    from huggingface_hub import HfApi, RepoUrl

    uploads: list[dict[str, Any]] = []
    held = dict(files or {})

    def create_repo(self: HfApi, repo_id: str, **kw: Any) -> RepoUrl:
        uploads.append({"repo": repo_id})
        return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'me/' + repo_id}")

    def download(repo_id: str, filename: str, **kw: Any) -> str:
        path = Path(tempfile.mkdtemp()) / filename
        path.write_text(held[filename])
        return str(path)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: [".gitattributes", *held])
    if held:
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw) or "https://hub/commit")
    return uploads


def test_lora_sft_run_lowers_the_loss_and_merges(
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    cot_file: Path,
    tmp_path: Path,
    one_thread: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As Qwen3-Base: the generation config ends at another token than the tokenizer (the chat turn's end).
    base = tmp_path / "base"
    shutil.copytree(model_dir, base)
    base_generation = GenerationConfig.from_pretrained(base)
    base_generation.eos_token_id = next(t for t in range(8) if t != tokenizer.eos_token_id)
    base_generation.update(do_sample=True, temperature=0.6, min_p=0.05)  # a base that samples by default
    base_generation.save_pretrained(base)
    out = tmp_path / "lora"
    uploads = fake_hub(monkeypatch)
    run_stage(*stage_args(base, cot_file, out, max_steps=20, lr=1e-2), *LORA, "--merge_lora", "true",
              "--push_to_hub", "true", "--hub_model_id", "me/lora")  # fmt: skip
    # The merged model is published (an adapter on a local base could be loaded by no one else), with
    # the run's lineage (the contamination check reads it) and a card naming the repository.
    assert uploads[-1]["repo_id"] == "me/lora" and uploads[-1]["folder_path"] == str(out / "merged")
    assert (out / "merged" / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    assert 'NERModel.from_pretrained("me/lora")' in (out / "merged" / "README.md").read_text()
    before = supervised_loss(load(base), tokenizer, recipe_conversations(cot_file))
    after = check_lora_output(out, base, tokenizer, cot_file)
    assert PromptContract.load(out / "merged").prompt == RECIPE_PROMPT
    # The merged model stops where it was trained to, as the trainer's model did (transformers adds the
    # tokenizer's end to it), not only where the base's generation config says.
    merged_ends = GenerationConfig.from_pretrained(out / "merged").eos_token_id
    assert {tokenizer.eos_token_id, base_generation.eos_token_id} <= set(merged_ends)
    budget = PromptContract.load(out / "merged").max_new_tokens
    merged_generation = GenerationConfig.from_pretrained(out / "merged")
    assert budget and merged_generation.max_new_tokens == budget
    assert merged_generation.do_sample is False and merged_generation.min_p is None  # greedy: not the base's
    assert not (out / "generation_config.json").exists()  # an adapter: its users load the base's
    # A random-init model's logits are tiny (unit hidden states against 0.02-scale tied embeddings) and LoRA
    # on q/v cannot scale them up, so the loss can only fall a little below log(vocab): ~0.15 nats here.
    assert after < before - 0.1, (before, after)


@pytest.mark.slow
def test_lora_merge_under_zero3(
    model_dir: Path, tokenizer: PreTrainedTokenizerBase, cot_file: Path, tmp_path: Path
) -> None:
    """ZeRO-3 leaves each rank an empty partition of each weight: the merge must not use the trainer model."""
    pytest.importorskip("deepspeed")
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(
        json.dumps(
            {
                "zero_optimization": {
                    "stage": 3,
                    "stage3_param_persistence_threshold": 0,  # partition even the tiny model's weights
                    "stage3_gather_16bit_weights_on_model_save": True,
                },
                "train_batch_size": "auto",
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
            }
        )
    )
    out = tmp_path / "lora"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    result = subprocess.run(
        [
            *launch, str(ROOT / "stages" / "sft.py"), "--config", str(RECIPE),
            *stage_args(model_dir, cot_file, out, max_steps=3, lr=1e-2), *LORA,
            "--merge_lora", "true", "--save_strategy", "no", "--deepspeed", str(zero3),
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    check_lora_output(out, model_dir, tokenizer, cot_file)


# --- resume -------------------------------------------------------------------------------------------------


def test_a_relaunched_run_resumes_from_the_last_checkpoint(
    model_dir: Path, cot_file: Path, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sft"
    args = ["--save_steps", "3", "--per_device_train_batch_size", "2", "--eval_files", str(cot_file),
            "--eval_strategy", "steps", "--eval_steps", "3", "--eval_on_start", "true"]  # fmt: skip
    run_stage(*stage_args(model_dir, cot_file, out, max_steps=3, lr=1e-3), *args)
    first = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert first["global_step"] == 3

    steps_taken: list[int] = []
    training_step = SFTTrainer.training_step

    def counting_step(self: SFTTrainer, *args: Any, **kwargs: Any) -> torch.Tensor:
        steps_taken.append(self.state.global_step)
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", counting_step)
    run_stage(*stage_args(model_dir, cot_file, out, max_steps=6, lr=1e-3), *args)
    assert steps_taken == [3, 4, 5], "the relaunch continues at step 3 instead of starting over"
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    losses = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in losses] == [1, 2, 3, 4, 5, 6]
    assert losses[:3] == [entry for entry in first["log_history"] if "loss" in entry]
    # Step 3 was evaluated before its checkpoint was saved: the relaunch does not evaluate it again.
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry] == [0, 3, 6]
    assert not (out / "checkpoint-3").exists()  # save_total_limit: 1


# --- the direct-answer baseline -----------------------------------------------------------------------------


def test_without_reasoning_the_targets_are_the_answers_alone(cot_file: Path) -> None:
    fmt = get_format(RECIPE_ARGS["output_format"])
    records = read_records(cot_file)
    direct_prompt = PromptArguments(fmt.name, reasoning=False)
    direct = sft_conversations([str(cot_file)], direct_prompt)
    with_cot = sft_conversations([str(cot_file)], PromptArguments(fmt.name))
    for record, plain, reasoned in zip(records, direct, with_cot, strict=True):
        example = record_example(record)
        (user, assistant) = plain["messages"]
        assert assistant == {"role": "assistant", "content": record["answer"]}
        assert user["content"] == ner_instruction(example.text, example.schema, direct_prompt)
        assert THINK_OPEN not in user["content"] + assistant["content"]
        assert reasoned["messages"][1]["content"].startswith(THINK_OPEN)
        assert THINK_OPEN in reasoned["messages"][0]["content"]

    examples = read_dataset(CONLL).examples
    from_plain = sft_conversations([str(CONLL)], direct_prompt)
    assert [c["messages"][1]["content"] for c in from_plain] == [fmt.render(e) for e in examples]


def test_a_lone_surrogate_in_the_data_trains_as_u_fffd_at_its_offset(cot_file: Path, tmp_path: Path) -> None:
    """Half an emoji escaped in a dataset's JSON ("\\ud83d") reaches stage 1's records as read; Arrow
    refused the training rows ("surrogates not allowed", no file named). The model is asked U+FFFD for
    it (`generation.without_lone_surrogates`), and learns on that, in its place: the spans still hold."""
    record = next(r for r in read_records(cot_file) if r["accepted"] and r["entities"])
    at = record["entities"][0]["start"]
    half = record["text"][:at] + "\ud83d" + record["text"][at + 1 :]
    path = tmp_path / "annotations.jsonl"
    path.write_text(json.dumps({**record, "text": half}) + "\n", encoding="utf-8")
    asked = half.replace("\ud83d", "\ufffd")

    [row] = Dataset.from_list(sft_conversations([str(path)], PROMPT))
    assert asked in row["messages"][0]["content"]
    [prompt] = Dataset.from_list(rl_prompts([str(path)], PROMPT))
    assert prompt["text"] == asked and asked in prompt["prompt"][0]["content"]
    entity = prompt["entities"][0]
    assert entity["text"] == asked[entity["start"] : entity["end"]] and entity["text"].startswith("\ufffd")


def test_plain_ner_data_with_rationales_fails_naming_the_file(
    cot_file: Path, model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{CONLL}: plain NER data has no rationales")):
        sft_conversations([str(cot_file), str(CONLL)], PROMPT)
    with pytest.raises(ValueError, match="reasoning: false"):  # the stage stops before loading the model
        run_stage(
            "--model_name_or_path", str(model_dir), "--train_files", str(CONLL), "--output_dir", str(tmp_path)
        )


# --- batching policy ----------------------------------------------------------------------------------------


def sft_config(tmp_path: Path, **kwargs: Any) -> SFTConfig:
    return SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **kwargs)


@pytest.mark.parametrize("attn", ["flash_attention_2", "flash_attention_3", "kernels-community/flash-attn"])
def test_varlen_attention_gets_padding_free_batches(tmp_path: Path, attn: str) -> None:
    args = sft_config(tmp_path, max_length=512)
    assert configure_batching(args, attn) == "padding-free"
    assert args.padding_free and args.train_sampling_strategy == "random"
    assert args.max_length is None  # TRL enforces it only on padded or packed batches, and refuses otherwise


@pytest.mark.parametrize("attn", ["sdpa", "eager", None])
def test_other_attention_gets_length_grouped_padded_batches(tmp_path: Path, attn: str | None) -> None:
    args = sft_config(tmp_path, padding_free=True)
    assert configure_batching(args, attn) == "length-grouped"
    assert not args.padding_free and args.train_sampling_strategy == "group_by_length"


@pytest.mark.parametrize("attn", ["flash_attention_2", "sdpa"])
def test_a_packing_recipe_keeps_its_own_batching(tmp_path: Path, attn: str) -> None:
    args = sft_config(tmp_path, packing=True, packing_strategy="wrapped")
    assert configure_batching(args, attn) == "packing (wrapped)"
    assert (args.packing, args.packing_strategy, args.padding_free) == (True, "wrapped", False)
    assert args.train_sampling_strategy == "random"


def test_trl_accepts_the_padding_free_choice_with_the_recipe_max_length(
    model_dir: Path, tokenizer: PreTrainedTokenizerBase, cot_file: Path, tmp_path: Path
) -> None:
    """TRL 1.16 refuses `padding_free` with a `max_length` unless packing; the recipe sets one."""
    args = sft_config(tmp_path, assistant_only_loss=True, max_length=RECIPE_ARGS["max_length"])
    configure_batching(args, "flash_attention_2")
    dataset = Dataset.from_list(recipe_conversations(cot_file))
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(dataset))]
    batch = trainer.data_collator(rows)
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (1, sum(len(row["input_ids"]) for row in rows))
    assert (batch["position_ids"] == 0).sum() == len(rows)


def test_publishing_asks_the_hub_before_training_and_refuses_an_adapter_no_one_else_could_load(
    model_dir: Path, cot_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError

    def no_login(self: HfApi, repo_id: str, **kw: Any) -> None:
        raise LocalTokenNotFoundError("Token is required (`token=True`), but no token found")

    monkeypatch.setattr(HfApi, "create_repo", no_login)
    out = tmp_path / "sft"
    args = stage_args(model_dir, cot_file, out, max_steps=2, lr=1e-3)
    with pytest.raises(LocalTokenNotFoundError):
        run_stage(*args, "--push_to_hub", "true")
    assert trained(out) == []
    with pytest.raises(ValueError, match=f"push_to_hub of a LoRA adapter on the local model {model_dir}"):
        run_stage(*args, *LORA, "--push_to_hub", "true")
    # A run the output folder refuses (another run's outputs there) makes no repository.
    run_stage(*args)
    uploads = fake_hub(monkeypatch)
    with pytest.raises(ValueError, match="holds a run with other settings"):
        run_stage(*stage_args(model_dir, cot_file, out, max_steps=2, lr=2e-3), "--push_to_hub", "true")
    assert uploads == []


def trained(out: Path) -> list[str]:
    """What a trainer stage left in `out` beyond its claim of the folder (its settings and writer's lock)."""
    return sorted(p.name for p in out.glob("*") if p.name not in ("run_settings.json", "training.lock"))


def test_publishing_refuses_before_training_a_repository_holding_another_model(
    model_dir: Path, cot_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishing replaces a repository's files: one of another project, or of another run of ours, is
    refused before anything trains; a republish of this run (same folder) goes ahead."""
    out = tmp_path / "outputs" / "qwen3-8b" / "sft"
    args = [*stage_args(model_dir, cot_file, out, max_steps=1, lr=1e-3), "--push_to_hub", "true"]
    fake_hub(monkeypatch, {"model.safetensors": "", "README.md": "someone's model"})
    refused = r"me/mine holds another model \(model.safetensors, README.md; published from elsewhere\)"
    with pytest.raises(ValueError, match=refused + r".*--hub_model_id another name"):
        run_stage(*args, "--hub_model_id", "mine")
    ours_elsewhere = json.dumps({"config": {"output_dir": str(tmp_path / "other" / "sft")}})
    fake_hub(monkeypatch, {"manifest.json": ours_elsewhere})
    with pytest.raises(ValueError, match=r"published from .*other/sft"):
        run_stage(*args, "--hub_model_id", "mine")
    # A folder of the same name in another pipeline (outputs/reasoningner/qwen3-8b/sft beside
    # outputs/qwen3-8b/sft) is another run: its model was replaced by this one.
    namesake = json.dumps(
        {"config": {"output_dir": str(tmp_path / "outputs" / "reasoningner" / "qwen3-8b" / "sft")}}
    )
    fake_hub(monkeypatch, {"manifest.json": namesake})
    with pytest.raises(ValueError, match=r"published from .*outputs/reasoningner/qwen3-8b/sft"):
        run_stage(*args, "--hub_model_id", "mine")
    assert default_repository("outputs/reasoningner/qwen3-8b/sft") == "reasoningner-qwen3-8b-sft"
    assert default_repository("outputs/qwen3-8b/sft") == "qwen3-8b-sft"
    assert default_repository("/ckpt/runs/sft") == "runs-sft"  # not under outputs/: its last two parts
    fake_hub(monkeypatch, {"manifest.json": ours_elsewhere})
    assert trained(out) == []
    run_stage(*stage_args(model_dir, cot_file, out, max_steps=1, lr=2e-3))  # another run in the folder
    with pytest.raises(ValueError, match=r"published from .*other/sft"):  # over it: refused, not deleting it
        run_stage(*args, "--hub_model_id", "mine", "--overwrite_output_dir", "true")
    kept = json.loads((out / "run_settings.json").read_text())
    assert (out / "model.safetensors").is_file() and kept["learning_rate"] == 2e-3
    uploads = fake_hub(monkeypatch, {"manifest.json": json.dumps({"config": {"output_dir": str(out)}})})
    run_stage(*args, "--hub_model_id", "mine", "--overwrite_output_dir", "true")
    assert uploads[-1]["repo_id"] == "me/mine"


def test_a_relaunch_the_hub_does_not_answer_goes_on_and_publishes_at_its_end(
    model_dir: Path,
    cot_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A requeued attempt (after a preemption) failed at start when the Hub did not answer for a moment,
    and SLURM requeues no failed job: days of training ended there. The first attempt checked the
    repository; a relaunch warns and asks again to publish. A first attempt still fails at once."""
    import httpx
    from huggingface_hub import HfApi

    args = [*stage_args(model_dir, cot_file, tmp_path / "sft", max_steps=1, lr=1e-3), "--push_to_hub", "true",
            "--hub_model_id", "me/ner"]  # fmt: skip
    uploads = fake_hub(monkeypatch)
    run_stage(*args)
    answering, asked = HfApi.create_repo, []

    def down_once(self: HfApi, repo_id: str, **kw: Any) -> Any:
        asked.append(repo_id)
        if len(asked) == 1:
            raise httpx.ConnectError("the Hub does not answer")
        return answering(self, repo_id, **kw)

    monkeypatch.setattr(HfApi, "create_repo", down_once)
    with caplog.at_level(logging.WARNING, logger="reasoningner.training"):
        run_stage(*args)  # the run relaunched after it finished: nothing trained, published again
    assert "the Hub could not be asked for me/ner (the Hub does not answer)" in caplog.text
    assert asked == ["me/ner", "me/ner"] and uploads[-1]["repo_id"] == "me/ner"
    asked.clear()
    with pytest.raises(httpx.ConnectError):
        run_stage(*stage_args(model_dir, cot_file, tmp_path / "new", max_steps=1, lr=1e-3), "--push_to_hub",
                  "true", "--hub_model_id", "me/new")  # fmt: skip


def test_the_model_card_tells_how_to_use_the_model_and_publishing_uploads_it_with_the_card(
    model_dir: Path, cot_file: Path, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "tiny-ner"
    uploads = fake_hub(monkeypatch)
    # A base that samples by default (as Qwen3's generation config does).
    base = Path(shutil.copytree(model_dir, tmp_path / "base"))
    sampling = GenerationConfig.from_pretrained(base)
    sampling.update(do_sample=True, temperature=0.6, top_k=20, top_p=0.95, min_p=0.05)
    sampling.save_pretrained(base)
    # And a beam-search leftover an older transformers wrote, which 5.24's strict check refuses to save.
    written = json.loads((base / "generation_config.json").read_text())
    (base / "generation_config.json").write_text(json.dumps(written | {"early_stopping": True}))
    args = stage_args(base, cot_file, out, max_steps=2, lr=1e-3)
    run_stage(*args, "--save_strategy", "steps", "--save_steps", "1", "--push_to_hub", "true")
    # Plain transformers and `vllm serve` ask the model, and each checkpoint, as evaluation does: greedy,
    # within the budget it was trained with.
    checkpoints = list(out.glob("checkpoint-*"))
    assert checkpoints
    for folder in (out, *checkpoints):
        saved = GenerationConfig.from_pretrained(folder)
        assert saved.max_new_tokens == PromptContract.load(out).max_new_tokens and saved.do_sample is False
        assert (saved.temperature, saved.top_k, saved.top_p, saved.min_p) == (None, None, None, None)
    card = (out / "README.md").read_text()
    assert "[None]" not in card and f'NERModel.from_pretrained("me/{tmp_path.name}-tiny-ner")' in card
    for label in PromptContract.load(out).labels:
        assert f"`{label}`" in card
    assert "| `compact_prompt` | `True` |" in card and "| `learning_rate` | `0.001` |" in card
    budget = PromptContract.load(out).max_new_tokens
    assert f"| `max_new_tokens` | `{budget}` |" in card and f"up to {budget} new tokens" in card
    # Outside reasoningner: greedy, its budget, the answer after the rationale; the snippet is Python.
    served = card.split("```python\n")[2].split("```", 1)[0]
    compile(served, "card", "exec")
    assert "temperature=0" in served and f"max_tokens={budget}" in served and "</think>" in served
    assert f"`{cot_file}`" in card  # the training data, with its fingerprint
    default = f"{tmp_path.name}-tiny-ner"  # the run folder and its parent: not every sft run in one repo
    assert uploads[0] == {"repo": default}
    assert uploads[-1]["repo_id"] == f"me/{default}" and uploads[-1]["folder_path"] == str(out)
    assert "checkpoint-*" in uploads[-1]["ignore_patterns"] and uploads[-1]["delete_patterns"] == "*"
    assert (out / "checkpoint-2").is_dir()  # the Trainer itself pushed nothing
    # The card's usage snippet runs as written, against the local folder.
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    exec(snippet.replace(f'"me/{default}"', f'"{out}", max_new_tokens=8'), {})


def test_an_overwrite_by_full_fine_tuning_leaves_no_adapter_config_of_the_lora_run_before(
    model_dir: Path, cot_file: Path, tmp_path: Path, one_thread: None
) -> None:
    """Left behind, the LoRA run's adapter_config.json made the new full model pass for an adapter."""
    from reasoningner.training import is_adapter

    out = tmp_path / "sft"
    args = stage_args(model_dir, cot_file, out, max_steps=1, lr=1e-3)
    run_stage(*args, *LORA)
    assert is_adapter(str(out))
    run_stage(*args, "--overwrite_output_dir", "true")
    assert not is_adapter(str(out)) and (out / "model.safetensors").is_file()
