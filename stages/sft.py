"""Stage 2 — CoT tuning: TRL SFT (full or LoRA) teaching `<think>rationale</think>` then the answer.

accelerate launch --config_file recipes/accelerate/zero2.yaml stages/sft.py --config recipes/qwen3-8b/sft.yaml
python stages/sft.py --config recipes/tiny-cpu/sft.yaml --num_train_epochs 1
"""

from dataclasses import dataclass, field

from datasets import Dataset
from transformers import AutoTokenizer, IntervalStrategy, set_seed
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config, get_quantization_config

from reasoningner.tracking import record_trainer_stage, set_trainer_run, wants_wandb
from reasoningner.training import (
    configure_batching,
    last_checkpoint,
    model_init_kwargs,
    save_final,
    start_deepspeed_on_cpu,
)
from reasoningner.training_data import sft_conversations


@dataclass
class SFTScriptArguments:
    train_files: list[str] = field(
        default_factory=list, metadata={"help": "stage 1 annotations or NER files"}
    )
    eval_files: list[str] = field(default_factory=list, metadata={"help": "held-out files for eval loss"})
    output_format: str = field(default="grouped_json", metadata={"help": "answer format (formats.FORMATS)"})
    rationales: bool = field(
        default=True, metadata={"help": "train <think> rationales; false = direct answers"}
    )
    descriptions: bool = field(default=True, metadata={"help": "label descriptions in the prompt"})
    compact_prompt: bool = field(default=False, metadata={"help": "short prompts for small models"})
    reader: str = field(default="auto", metadata={"help": "reader for plain NER files"})
    limit: int | None = field(default=None, metadata={"help": "first N examples of each file"})
    merge_lora: bool = field(default=False, metadata={"help": "also save the LoRA-merged model in merged/"})


def main() -> None:
    script_args, training_args, model_args = TrlParser(
        (SFTScriptArguments, SFTConfig, ModelConfig)
    ).parse_args_and_config()
    set_seed(training_args.seed)
    start_deepspeed_on_cpu(training_args)
    if wants_wandb(training_args.report_to):
        set_trainer_run("sft", training_args.output_dir)

    def conversations(files: list[str]) -> Dataset:
        return Dataset.from_list(
            sft_conversations(
                files,
                script_args.output_format,
                rationales=script_args.rationales,
                descriptions=script_args.descriptions,
                compact=script_args.compact_prompt,
                reader=script_args.reader,
                limit=script_args.limit,
            )
        )

    train_dataset = conversations(script_args.train_files)
    eval_dataset = conversations(script_args.eval_files) if script_args.eval_files else None
    if eval_dataset is not None and training_args.eval_strategy == IntervalStrategy.NO:
        training_args.eval_strategy = IntervalStrategy.EPOCH  # eval files given: evaluate them

    training_args.model_init_kwargs = model_init_kwargs(training_args, model_args)
    batching = configure_batching(training_args, model_args.attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision
    )
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args),  # QLoRA with load_in_4bit
        peft_config=get_peft_config(model_args),
    )
    trainer.accelerator.print(f"sft: {len(train_dataset)} conversations, {batching} batches")
    trainer.train(resume_from_checkpoint=last_checkpoint(training_args.output_dir))
    save_final(trainer, training_args.output_dir, script_args.merge_lora)
    record_trainer_stage(
        "sft",
        trainer,
        (script_args, training_args, model_args),
        [*script_args.train_files, model_args.model_name_or_path],
    )


if __name__ == "__main__":
    main()
