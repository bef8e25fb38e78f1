"""Qwen3's own chat template through the paper's recipes (recipes/reasoningner/qwen3-1.7b), on CPU.

The tiny model is given the chat template Qwen3 ships, read from the copy TRL keeps
(`trl/chat_templates/qwen3.jinja`, the one `trl.chat_template_utils.get_training_chat_template`
recognises), and the special-token settings of a Qwen3 *Base* checkpoint, the recipes' starting point:
the tokenizer ends a turn with `<|im_end|>`, while `config.json` and `generation_config.json` stop on
`<|endoftext|>` only (QwenLM/Qwen3#1422). Then SFT, GRPO and evaluation run through the stage scripts'
`main` with the recipes' settings, CPU overrides aside, and the test checks, token by token:

- SFT (`assistant_only_loss`): Qwen3's template has no `{% generation %}` markers, so TRL tokenizes
  with its training variant (`qwen3_training.jinja`). Exactly the assistant turn is trained: the
  `<think>` block, the answer and the end-of-turn `<|im_end|>` (with the newline that TRL's variant
  puts inside the marked span), nothing of the user turn, and the untrained prefix is token for token
  the prompt GRPO and evaluation render with `add_generation_prompt`. Qwen3 rewrites the assistant
  turn (`<think>\\nrationale\\n</think>\\n\\nanswer`): one `<think>` block, never two; a direct answer
  (`reasoning: false`) is trained behind the empty block Qwen3 writes for it (`<think>\\n\\n</think>`).
- The saved model keeps Qwen3's template (not TRL's training variant) and stops on `<|im_end|>`.
- GRPO: the prompts end with `<|im_start|>assistant\\n` (no `enable_thinking`, nothing pre-filled:
  the policy writes its `<think>` block, as SFT taught it), the rewards get each completion's whole
  text, and a completion that is what SFT trained earns every reward in full.
- Evaluation and `NERModel`: a model that writes what SFT trained (its `generate` is replaced by one
  that does) is asked exactly the prompts SFT trained on and scores F1 100 with no parse problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import trl
import yaml
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, Qwen3ForCausalLM
from trl.chat_template_utils import qwen3_chat_template, qwen3_training_chat_template

from reasoningner.configs import PromptArguments, PromptContract
from reasoningner.formats import THINK_CLOSE, THINK_OPEN, get_format, split_answer
from reasoningner.predict import NERModel
from reasoningner.prompts import ner_instruction
from reasoningner.readers import read_dataset
from reasoningner.records import read_records, record_example
from reasoningner.rewards import get_rewards
from reasoningner.tiny_model import END_OF_TEXT, IM_END, IM_START
from reasoningner.training_data import rl_prompts
from tests.scripts import ROOT, load_stage

RECIPES = ROOT / "recipes" / "reasoningner" / "qwen3-1.7b"
CONLL = Path(__file__).parent / "data" / "conll2003_mini.txt"
# The recipes' prompt contract (sft.yaml sets it; rl.yaml and eval.yaml agree with it).
SFT_RECIPE = yaml.safe_load((RECIPES / "sft.yaml").read_text())
PROMPT = PromptArguments(**{key: SFT_RECIPE[key] for key in ("output_format", "reasoning", "descriptions")})
QWEN3_TEMPLATE = Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja"
GENERATION_PROMPT = f"{IM_START}assistant\n"
# What the CPU cannot run, and a short run, over the recipes' settings.
CPU = ["--dtype", "float32", "--bf16", "false", "--use_cpu", "true",
       "--activation_checkpointing", "false", "--report_to", "none", "--save_strategy", "no",
       "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip


@pytest.fixture(scope="module")
def qwen3_model(tiny_model_factory: Callable[..., Path]) -> Path:
    """The tiny model with Qwen3's chat template and a Qwen3 Base checkpoint's stop tokens."""
    model_dir = tiny_model_factory()
    template = QWEN3_TEMPLATE.read_text(encoding="utf-8")
    assert template == qwen3_chat_template  # what TRL matches to swap in its training variant
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(model_dir)
    model = Qwen3ForCausalLM.from_pretrained(model_dir)
    end_of_text = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    model.config.eos_token_id = end_of_text
    model.generation_config = GenerationConfig(eos_token_id=end_of_text, pad_token_id=end_of_text)
    model.save_pretrained(model_dir)
    assert tokenizer.eos_token == IM_END
    return model_dir


@pytest.fixture(scope="module")
def cot_file(gold_cot_factory: Callable[..., Path]) -> Path:
    """Stage 1 output for the mini CoNLL sentences (the gold-template teacher), in the recipes' format."""
    return gold_cot_factory(PROMPT)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_recorded(stage_name: str, trainer_name: str, args: list[str]) -> Any:
    """Run `stages/<stage_name>.py` on `args` in this process; return the trainer it built."""
    stage = load_stage(stage_name)
    built: list[Any] = []

    class Recorded(getattr(stage, trainer_name)):  # type: ignore[misc]
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            built.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage, trainer_name, Recorded)
        stage.main(*stage.make_parser().parse_args_and_config(args=args))
    (trainer,) = built
    return trainer


def sft(model: Path, cot_file: Path, out: Path, *overrides: str) -> Any:
    """Two steps of `stages/sft.py --config recipes/reasoningner/qwen3-1.7b/sft.yaml`; the trainer."""
    args = ["--config", str(RECIPES / "sft.yaml"), "--model_name_or_path", str(model),
            "--train_files", str(cot_file), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--use_liger_kernel", "false",
            *CPU, *overrides]  # fmt: skip
    return run_recorded("sft", "HeldOutSFTTrainer", args)


@pytest.fixture(scope="module")
def sft_run(qwen3_model: Path, cot_file: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None):
    out = tmp_path_factory.mktemp("qwen3") / "sft"
    return out, sft(qwen3_model, cot_file, out)


@pytest.fixture(scope="module")
def tokenizer(qwen3_model: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(qwen3_model)


def generation_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, text: str, prompt: PromptArguments
) -> list[int]:
    """The prompt GRPO and evaluation render: the user turn and Qwen3's `add_generation_prompt`."""
    schema = read_dataset(CONLL).schema
    user = [{"role": "user", "content": ner_instruction(text, schema, prompt)}]
    return tokenizer.apply_chat_template(user, add_generation_prompt=True, return_dict=True)["input_ids"]


def trained_spans(trainer: Any) -> list[tuple[list[int], list[int]]]:
    """(untrained prefix, trained span) of each row TRL built, after checking the span is one piece
    that runs to the end of the row and is labelled with its own tokens."""
    spans = []
    for row in trainer.train_dataset:
        ids, labels = row["input_ids"], row["labels"]
        trained = [position for position, label in enumerate(labels) if label != -100]
        assert trained == list(range(trained[0], len(ids))), "one span, to the end of the conversation"
        assert [labels[p] for p in trained] == ids[trained[0] :]
        spans.append((ids[: trained[0]], ids[trained[0] :]))
    return spans


# --- SFT: the loss mask of Qwen3's template --------------------------------------------------------------


def test_sft_trains_exactly_the_think_block_the_answer_and_the_end_of_turn(
    sft_run: tuple[Path, Any], cot_file: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    _, trainer = sft_run
    assert trainer.chat_template == qwen3_training_chat_template  # swapped in by TRL for the masks
    records = read_records(cot_file)
    spans = trained_spans(trainer)
    assert len(spans) == len(records) == 4
    think_open, think_close = tokenizer.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
    for (prefix, span), record in zip(spans, records, strict=True):
        # The untrained part is the user turn, token for token the prompt generation starts from.
        assert prefix == generation_prompt_ids(tokenizer, record["text"], PROMPT)
        assert tokenizer.decode(prefix).endswith(f"{IM_END}\n{GENERATION_PROMPT}")
        # The trained part: Qwen3's rendering of our target, its end-of-turn token included.
        assert tokenizer.decode(span) == (
            f"{THINK_OPEN}\n{record['rationale']}\n{THINK_CLOSE}\n\n{record['answer']}{IM_END}\n"
        )
        assert span.count(think_open) == span.count(think_close) == 1 and span[0] == think_open
        assert (
            span.count(tokenizer.convert_tokens_to_ids(IM_END)) == 1
            and span[-2:] == tokenizer(f"{IM_END}\n")["input_ids"]
        )
    assert trainer.state.global_step == 2


def test_the_sft_model_keeps_qwen3_s_template_stops_on_im_end_and_carries_its_contract(
    sft_run: tuple[Path, Any], qwen3_model: Path
) -> None:
    out, _ = sft_run
    assert AutoTokenizer.from_pretrained(out).chat_template == qwen3_chat_template
    # The Base checkpoint stops on <|endoftext|> only; the trainer aligns it with the tokenizer's
    # end of turn, so that GRPO's and evaluation's generation stop where SFT taught the model to.
    stop = GenerationConfig.from_pretrained(out).eos_token_id
    im_end = AutoTokenizer.from_pretrained(qwen3_model).convert_tokens_to_ids(IM_END)
    assert im_end in (stop if isinstance(stop, list) else [stop])
    assert GenerationConfig.from_pretrained(qwen3_model).eos_token_id != im_end  # it was not before
    assert PromptContract.load(out).prompt == PROMPT


def test_a_direct_answer_is_trained_behind_qwen3_s_empty_think_block(
    qwen3_model: Path, cot_file: Path, tokenizer: PreTrainedTokenizerBase, tmp_path: Path, one_thread: None
) -> None:
    """`reasoning: false`: our target is the answer alone; Qwen3's template writes the empty block its
    non-thinking mode uses, inside the trained span. The model learns to write it itself (the prompts
    pass no `enable_thinking`), and the parser reads it as an empty rationale before the answer."""
    trainer = sft(qwen3_model, cot_file, tmp_path / "sft", "--reasoning", "false", "--max_steps", "1")
    direct = PromptArguments(PROMPT.output_format, reasoning=False, descriptions=PROMPT.descriptions)
    for (prefix, span), record in zip(trained_spans(trainer), read_records(cot_file), strict=True):
        assert prefix == generation_prompt_ids(tokenizer, record["text"], direct)
        written = tokenizer.decode(span)
        assert written == f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n{record['answer']}{IM_END}\n"
        assert split_answer(tokenizer.decode(span, skip_special_tokens=True)) == ("", record["answer"], [])
    # What `enable_thinking: false` (backend_options' chat_template_kwargs) would pre-fill is the same
    # block, so such a prompt followed by the answer is the trained sequence too.
    text = read_records(cot_file)[0]["text"]
    user = [{"role": "user", "content": ner_instruction(text, read_dataset(CONLL).schema, direct)}]
    no_thinking = tokenizer.apply_chat_template(
        user, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert no_thinking.endswith(f"{GENERATION_PROMPT}{THINK_OPEN}\n\n{THINK_CLOSE}\n\n")


# --- GRPO: the prompts Qwen3's template renders, the completions the rewards read --------------------------


@pytest.fixture(scope="module")
def rl_run(sft_run: tuple[Path, Any], one_thread: None) -> tuple[Path, Any, list[list[Any]]]:
    """Two GRPO steps of `recipes/reasoningner/qwen3-1.7b/rl.yaml` from the SFT model, on the mini
    CoNLL sentences; the rewards' completions recorded."""
    sft_dir, _ = sft_run
    out = sft_dir.parent / "rl"
    stage = load_stage("rl")
    seen: list[list[Any]] = []

    def recording(names: Any, **options: Any) -> list[Any]:
        def record(function: Any) -> Any:
            def wrapped(completions: Any, **columns: Any) -> Any:
                seen.append(list(completions))
                return function(completions, **columns)

            wrapped.__name__ = function.__name__
            return wrapped

        return [record(function) for function in get_rewards(names, **options)]

    args = ["--config", str(RECIPES / "rl.yaml"), "--model_name_or_path", str(sft_dir),
            "--train_files", str(CONLL), "--output_dir", str(out), "--total", "4", "--max_steps", "2",
            "--num_generations", "2", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--num_iterations", "1",
            "--max_completion_length", "12", "--use_vllm", "false", *CPU]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage, "get_rewards", recording)
        trainer = run_recorded("rl", "HeldOutGRPOTrainer", args)
    return out, trainer, seen


def test_grpo_asks_the_sft_prompts_and_rewards_whole_completions(
    rl_run: tuple[Path, Any, list[list[Any]]], sft_run: tuple[Path, Any], tokenizer: PreTrainedTokenizerBase
) -> None:
    out, trainer, seen = rl_run
    assert trainer.state.global_step == 2
    assert trainer.chat_template is None and trainer.chat_template_kwargs == {}  # Qwen3's template as is
    assert [log for log in trainer.state.log_history if "rewards/reasoningie_f1_reward/mean" in log]
    # The prompts it renders, as SFT trained the model to continue them.
    texts = [example.text for example in read_dataset(CONLL).examples]
    trained_prefixes = [prefix for prefix, _ in trained_spans(sft_run[1])]
    rendered, _, _ = trainer._tokenize_prompts([row["prompt"] for row in trainer.train_dataset])
    assert sorted(map(tuple, rendered)) == sorted(map(tuple, trained_prefixes))
    assert all(tokenizer.decode(ids).endswith(f"{IM_END}\n{GENERATION_PROMPT}") for ids in rendered)
    assert {row["text"] for row in trainer.train_dataset} == set(texts)
    # Each reward reads the completion's whole text: no reasoning split off by a response parser.
    assert seen and all(
        completion == [{"role": "assistant", "content": completion[0]["content"]}]
        for batch in seen
        for completion in batch
    )
    assert PromptContract.load(out).prompt == PROMPT
    assert AutoTokenizer.from_pretrained(out).chat_template == qwen3_chat_template


def test_what_sft_trained_earns_every_grpo_reward_in_full(
    sft_run: tuple[Path, Any], cot_file: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """GRPO decodes a completion up to its end of turn, skipping special tokens (TRL's plain decode)."""
    names = yaml.safe_load((RECIPES / "rl.yaml").read_text())["reward_funcs"]
    names = [*names, "format", "consistency", "grounding"]
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    rows = rl_prompts([str(cot_file)], PROMPT)
    by_text = {row["text"]: row for row in rows}
    records = read_records(cot_file)
    completions, columns = [], {"text": [], "entities": [], "labels": [], "output_format": []}
    for (_, span), record in zip(trained_spans(sft_run[1]), records, strict=True):
        completion = tokenizer.decode(span[: span.index(im_end) + 1], skip_special_tokens=True)
        completions.append([{"role": "assistant", "content": completion}])
        for key in columns:
            columns[key].append(by_text[record["text"]][key])
    for function in get_rewards(names):
        assert function(completions, **columns) == [1.0] * len(records), function.__name__


# --- evaluation and NERModel: what the model writes, parsed ---------------------------------------------


@pytest.fixture()
def writes_what_sft_trained(sft_run: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Every Qwen3 model's `generate` continues a prompt SFT trained on with the span it was trained
    on, so the model writes exactly what it learnt; an unknown prompt fails. Returns the prompts asked."""
    trained = {tuple(prefix): span for prefix, span in trained_spans(sft_run[1])}
    asked: list[list[int]] = []

    def generate(self: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, **options: Any):
        pad = options["pad_token_id"]
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt = [token for token, keep in zip(ids, mask, strict=True) if keep]
            asked.append(prompt)
            assert tuple(prompt) in trained, "asked a prompt SFT did not train on"
            rows.append(ids + trained[tuple(prompt)])
        width = max(map(len, rows))
        return torch.tensor([row + [pad] * (width - len(row)) for row in rows])

    monkeypatch.setattr(Qwen3ForCausalLM, "generate", generate)
    return asked


def test_evaluation_of_the_grpo_model_parses_what_it_learnt_to_write(
    rl_run: tuple[Path, Any, list[list[Any]]], writes_what_sft_trained: list[list[int]], tmp_path: Path
) -> None:
    rl_dir, _, _ = rl_run
    stage = load_stage("eval")
    args = ["--config", str(RECIPES / "eval.yaml"), "--model_name_or_path", str(rl_dir),
            "--output_dir", str(tmp_path / "eval"), "--backend", "transformers",
            "--backend_options", json.dumps({"batch_size": 4, "dtype": "float32"}),
            "--max_new_tokens", "512", "--allow_overlap", "true", "--reader", "auto",
            "--compat", "none"]  # fmt: skip
    eval_args, prompt, generation = stage.make_parser().parse_args_and_config(args=args)
    # The hub sets need the network; CoNLL has misc, whose gold ReasoningIE's counting (compat) leaves out.
    eval_args.datasets = [{"path": str(CONLL), "name": "conll"}]
    stage.main(eval_args, prompt, generation)
    assert len(writes_what_sft_trained) == 4
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {key: results["config"][key] for key in PromptArguments.DEFAULTS} == asdict(PROMPT)
    errors = results["errors"]["conll"]
    assert (errors["outputs"], errors["format_failures"], errors["problems"]) == (4, 0, {})
    for mode in ("text", "exact"):
        assert results["scores"][mode]["datasets"]["conll"]["micro"]["f1"] == 1.0, mode
    outputs = [json.loads(line)["output"] for line in (tmp_path / "eval" / "generations.jsonl").open()]
    assert all(re.fullmatch(r"<think>\n.+\n</think>\n\n\{.*\}", output, re.DOTALL) for output in outputs)


def test_ner_model_predicts_gold_and_reads_the_rationale(
    rl_run: tuple[Path, Any, list[list[Any]]], cot_file: Path, writes_what_sft_trained: list[list[int]]
) -> None:
    record = read_records(cot_file)[0]
    example = record_example(record)
    with NERModel.from_pretrained(rl_run[0], dtype="float32") as model:
        assert model.prompt == PROMPT
        (prediction,) = model.predict([example.text], list(example.schema.labels), return_rationale=True)
    assert [(e.start, e.end, e.label) for e in prediction] == [
        (s.start, s.end, s.label) for s in example.spans
    ]
    assert prediction.rationale == record["rationale"] and not prediction.problems
    assert get_format(PROMPT.output_format).render(example) == record["answer"]
