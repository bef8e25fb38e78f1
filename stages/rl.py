"""Stage 3 — reasoning enhancement: TRL GRPO with the composite, verifiable NER reward.

accelerate launch --config_file recipes/accelerate/zero3.yaml stages/rl.py --config recipes/qwen3-8b/rl.yaml
python stages/rl.py --config recipes/tiny-cpu/rl.yaml --max_steps 5
"""

from datasets import Dataset
from transformers import AutoTokenizer
from trl import GRPOConfig, ModelConfig, get_quantization_config

from reasoningner.cli import run_stage
from reasoningner.configs import (
    PromptArguments,
    PromptContract,
    RecipeParser,
    RLScriptArguments,
)
from reasoningner.prompts import wording
from reasoningner.rewards import answer_only_warning, default_weight, get_rewards
from reasoningner.spans import Schema
from reasoningner.tracking import with_gold_column
from reasoningner.training import (
    HeldOutGRPOTrainer,
    check_adapter_start,
    check_generation_cycle,
    check_training_data,
    describe_run,
    finish_trainer_stage,
    held_out_schedule,
    model_init_kwargs,
    peft_config,
    policy_model,
    save_final,
    start_trainer_stage,
    train_from,
)
from reasoningner.training_data import rl_prompts


def make_parser() -> RecipeParser:
    return RecipeParser((RLScriptArguments, PromptArguments, GRPOConfig, ModelConfig))


def main(
    script_args: RLScriptArguments,
    prompt: PromptArguments,
    training_args: GRPOConfig,
    model_args: ModelConfig,
) -> None:
    check_generation_cycle(training_args)
    check_adapter_start(model_args)
    start = start_trainer_stage("rl", script_args, prompt, training_args, model_args)
    prompt = start.prompt
    corpora: list[str] = []  # what NER-CoT records name as their source: the contamination check reads it
    schemas: list[Schema] = []  # of the prompts: the labels and descriptions the contract records
    # The main process first: it fills the datasets cache that the others then read.
    with training_args.main_process_first(local=False, desc="reading the data"):
        train = rl_prompts(
            script_args.train_files,
            prompt,
            script_args,
            total=script_args.total,
            cap_per_dataset=script_args.cap_per_dataset,
            seed=training_args.seed,
            sampler=script_args.sampler,
            corpora=corpora,
            schemas=schemas,
            trained=start.contract,
        )
        held_out = None
        if script_args.eval_files:
            # Seed 0 whatever the run's seed: runs of several seeds are scored on the same prompts.
            held_out = rl_prompts(
                script_args.eval_files,
                prompt,
                script_args,
                total=script_args.eval_total,
                sampler="proportional",
                trained=start.contract,
            )
    train_dataset = Dataset.from_list(train)
    eval_dataset = Dataset.from_list(held_out) if held_out is not None else None
    check_training_data(start, training_args, train_dataset, eval_dataset)
    contract = PromptContract.trained(
        prompt,
        schemas,
        start.contract,
        wording=wording(prompt),
        max_new_tokens=training_args.max_completion_length,  # the policy learnt to finish within it
    )
    if training_args.reward_weights is None:
        training_args.reward_weights = [default_weight(name) for name in script_args.reward_funcs]

    reward_funcs = get_rewards(
        script_args.reward_funcs,
        parse=script_args.reward_parse,
        fold_label_case=script_args.reward_fold_label_case,
    )
    if training_args.log_completions:
        reward_funcs = with_gold_column(reward_funcs)  # the completions table shows each row's gold

    training_args.model_init_kwargs = model_init_kwargs(training_args, model_args)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision
    )
    trainer = HeldOutGRPOTrainer(
        model=policy_model(model_args.model_name_or_path, training_args.model_init_kwargs, training_args),
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args),  # QLoRA with load_in_4bit
        peft_config=peft_config(model_args),
    )
    trainer.accelerator.print(
        f"rl: {len(train_dataset)} prompts, {prompt}, rewards "
        + ", ".join(
            f"{n}×{w:g}" for n, w in zip(script_args.reward_funcs, training_args.reward_weights, strict=True)
        )
        + (f"; {held_out_schedule(training_args, len(eval_dataset))}" if eval_dataset is not None else "")
    )
    if warning := answer_only_warning(script_args.reward_funcs, prompt.reasoning):
        trainer.accelerator.print(f"rl: warning: {warning}")
    describe_run("rl", trainer, start, contract, corpora)
    train_from("rl", trainer, start.checkpoint, script_args)
    save_final(trainer, training_args.output_dir, script_args.merge_lora, contract)
    finish_trainer_stage("rl", trainer, start, corpora)


if __name__ == "__main__":
    run_stage(make_parser, main)
