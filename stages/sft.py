"""Stage 2 — CoT tuning: TRL SFT (full or LoRA) teaching `<think>rationale</think>` then the answer.

accelerate launch --config_file recipes/accelerate/zero3.yaml stages/sft.py --config recipes/qwen3-8b/sft.yaml
python stages/sft.py --config recipes/tiny-cpu/sft.yaml --num_train_epochs 1
"""

from datasets import Dataset
from transformers import AutoTokenizer, IntervalStrategy
from trl import ModelConfig, SFTConfig, get_quantization_config

from reasoningner.cli import run_stage
from reasoningner.configs import (
    PromptArguments,
    PromptContract,
    RecipeParser,
    TrainerScriptArguments,
)
from reasoningner.prompts import wording
from reasoningner.training import (
    HeldOutSFTTrainer,
    answer_budget,
    check_training_data,
    configure_batching,
    cut_conversations,
    describe_run,
    finish_trainer_stage,
    model_init_kwargs,
    peft_config,
    save_final,
    start_trainer_stage,
    train_from,
)
from reasoningner.training_data import sft_conversations, sft_examples, sft_record


def make_parser() -> RecipeParser:
    return RecipeParser((TrainerScriptArguments, PromptArguments, SFTConfig, ModelConfig))


def main(
    script_args: TrainerScriptArguments,
    prompt: PromptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
) -> None:
    start = start_trainer_stage("sft", script_args, prompt, training_args, model_args)
    prompt = start.prompt
    corpora: list[str] = []  # what NER-CoT records name as their source: the contamination check reads it
    # The main process first: it fills the datasets cache that the others then read.
    with training_args.main_process_first(local=False, desc="reading the data"):
        train = sft_examples(script_args.train_files, prompt, script_args, corpora=corpora)
        held_out = (
            sft_conversations(script_args.eval_files, prompt, script_args) if script_args.eval_files else None
        )
    train_dataset = Dataset.from_list(
        [sft_record(e.example, prompt, rationale=e.rationale, answer=e.answer) for e in train]
    )
    eval_dataset = Dataset.from_list(held_out) if held_out is not None else None
    check_training_data(start, training_args, train_dataset, eval_dataset)
    if eval_dataset is not None and training_args.eval_strategy == IntervalStrategy.NO:
        training_args.eval_strategy = IntervalStrategy.EPOCH  # eval files given: evaluate them

    training_args.model_init_kwargs = model_init_kwargs(training_args, model_args)
    batching = configure_batching(training_args, model_args.attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision
    )
    trainer = HeldOutSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args),  # QLoRA with load_in_4bit
        peft_config=peft_config(model_args),
    )
    trainer.accelerator.print(f"sft: {len(train_dataset)} conversations, {batching} batches, {prompt}")
    if cut := cut_conversations(trainer.train_dataset, training_args.max_length):
        trainer.accelerator.print(
            f"sft: warning: {cut} of {len(trainer.train_dataset)} conversations are longer than max_length="
            f"{training_args.max_length} tokens and are trained cut, without the rest of their answer and "
            "their end of turn: raise max_length"
        )
    contract = PromptContract.trained(
        prompt,
        (e.example.schema for e in train),
        start.contract,
        wording=wording(prompt),
        max_new_tokens=answer_budget(trainer.train_dataset, training_args.max_length),
    )
    describe_run("sft", trainer, start, contract, corpora)
    train_from("sft", trainer, start.checkpoint, script_args)
    save_final(trainer, training_args.output_dir, script_args.merge_lora, contract)
    finish_trainer_stage("sft", trainer, start, corpora)


if __name__ == "__main__":
    run_stage(make_parser, main)
