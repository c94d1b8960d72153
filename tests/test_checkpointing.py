"""Activation checkpointing of every layer, none, or the first N: same gradients, and only
the chosen layers are recomputed."""

import json

import pytest
import torch

from unitune.cli import main
from unitune.errors import UserError
from unitune.train import checkpointing


def lora_grads(test_preset, setting, offload=False) -> tuple[dict, list[int]]:
    """LoRA gradients of one step, and how often each layer's attention ran."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(test_preset), dtype=torch.float32)
    active = checkpointing.enable(base, setting, offload)
    layers = base.model.layers
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.self_attn.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            init_lora_weights=False))
    model.train()
    ids = torch.randint(3, base.config.vocab_size, (2, 24), generator=torch.Generator()
                        .manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return grads, calls, active


def test_every_some_or_no_layer_gives_the_same_gradients(test_preset):
    reference, calls, active = lora_grads(test_preset, False)
    assert calls == [1, 1] and active is None
    for setting, recomputed, label in ((True, [2, 2], "2 of 2"), (1, [2, 1], "1 of 2")):
        grads, calls, active = lora_grads(test_preset, setting)
        assert calls == recomputed and active == f"activation checkpointing: {label} layers"
        assert grads.keys() == reference.keys()
        for name, g in grads.items():
            assert torch.allclose(g, reference[name], atol=1e-6), name


def test_offloading_keeps_the_gradients(test_preset):
    reference, _, _ = lora_grads(test_preset, False)
    grads, calls, active = lora_grads(test_preset, 1, offload=True)
    assert calls == [2, 1]
    assert active == ("activation checkpointing: 1 of 2 layers, offloaded to host memory "
                      "(a no-op on the CPU)")
    for name, g in grads.items():
        assert torch.allclose(g, reference[name], atol=1e-6), name


@pytest.mark.parametrize("offload", [False, True])
def test_offloaded_layers_hand_their_input_to_the_host_copy_hooks(test_preset, offload):
    """Offloaded, what a checkpointed layer saves is handed to save_on_cpu's hooks (on a GPU
    they copy it to pinned host memory), so autograd no longer holds the activation itself
    and does not see it change; without offloading it does, and refuses."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(test_preset), dtype=torch.float32)
    checkpointing.enable(model, True, offload)
    model.train()
    inputs = []
    model.model.layers[1].register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=torch.Generator()
                        .manual_seed(1))
    loss = model(input_ids=ids, labels=ids).loss
    with torch.no_grad():
        inputs[0].mul_(1.0)  # bumps the tensor's version, as any in-place change would
    if offload:
        loss.backward()
    else:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_offloading_without_checkpointing_is_an_error(tmp_path, synth_data, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(synth_data["train"]), "-o", str(out), "--base-model",
                 "tiny-llama-test", "--max-steps", "1", "--no-progress",
                 "offload_activations=true"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: offload_activations=true offloads what checkpointed layers keep: "
                   "set gradient_checkpointing=true (or N) too"]


def test_more_layers_than_the_model_has_is_an_error(test_preset):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(test_preset))
    with pytest.raises(UserError, match="the model has 2 layers"):
        checkpointing.enable(base, 3)


@pytest.mark.slow
def test_train_records_selective_offloaded_checkpointing(tmp_path, synth_data, test_preset, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(synth_data["train"]), "-o", str(out), "--base-model",
            "tiny-llama-test", "--max-steps", "1", "--no-progress"]
    assert main([*args, "gradient_checkpointing=5"]) == 2
    assert "gradient_checkpointing=5: the model has 2 layers" in capsys.readouterr().err
    assert main([*args, "gradient_checkpointing=1", "offload_activations=true",
                 "attention=eager"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["optimizations"][:2] == [
        "attention: eager",
        "activation checkpointing: 1 of 2 layers, offloaded to host memory (a no-op on the CPU)"]
