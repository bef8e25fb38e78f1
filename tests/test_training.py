"""What the SFT and GRPO stages share: the policy handed to GRPO, and how the model is loaded."""

from types import SimpleNamespace

from reasoningner.training import model_init_kwargs, policy_model


def test_a_full_model_is_handed_over_by_path_and_a_lora_adapter_as_a_trainable_peft_model(
    tmp_path, tiny_model_dir
):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    assert policy_model(str(tiny_model_dir), {"dtype": "float32"}) == str(tiny_model_dir)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter_dir = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter_dir)
    policy = policy_model(str(adapter_dir), {"dtype": "float32", "attn_implementation": None})
    assert isinstance(policy, PeftModel)
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_model_options_override_the_recipes_model_init_kwargs_and_keep_the_rest():
    training_args = SimpleNamespace(model_init_kwargs={"use_kernels": True, "dtype": "float16"})
    model_args = SimpleNamespace(model_revision="main", dtype="bfloat16", attn_implementation="sdpa")
    assert model_init_kwargs(training_args, model_args) == {
        "use_kernels": True,
        "revision": "main",
        "dtype": "bfloat16",
        "attn_implementation": "sdpa",
    }
