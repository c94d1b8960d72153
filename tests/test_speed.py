"""The fast path's choices: which attention a model gets, and that FlexAttention's document
mask keeps packed examples apart exactly as separate forward passes do."""

import json

import pytest
import torch

from unitune.data.encode import Collator, Packed
from unitune.errors import UserError
from unitune.train import speed


def tiny_model(test_preset):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(test_preset), dtype=torch.float32)


def test_auto_keeps_sdpa_on_the_cpu_and_flex_is_refused_there(test_preset):
    model = tiny_model(test_preset)
    assert speed.set_attention(model, "auto", packing=True) == "attention: sdpa"
    assert speed.set_attention(model, "eager", packing=False) == "attention: eager"
    assert model.config._attn_implementation == "eager"
    with pytest.raises(UserError, match="attention=flex_attention trains only on a GPU"):
        speed.set_attention(model, "flex_attention", packing=True)


def test_auto_picks_flex_for_packed_rows_on_a_gpu(test_preset, monkeypatch):
    model = tiny_model(test_preset)
    monkeypatch.setattr(speed, "_device_type", lambda _: "cuda")
    assert speed.set_attention(model, "auto", packing=False) == "attention: sdpa"
    assert speed.set_attention(model, "auto", packing=True) == \
        "attention: flex_attention (block-sparse mask per packed example)"
    assert model.config._attn_implementation == "flex_attention"


@pytest.mark.slow
def test_flex_packed_logits_equal_separate_logits(test_preset):
    """The attention 'auto' picks for packed rows on a GPU, run here in its forward pass (the
    CPU has no FlexAttention backward): every packed example sees only itself."""
    model = tiny_model(test_preset).eval()
    model.set_attn_implementation("flex_attention")
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist()}
            for n in (37, 20, 51)]
    for r in rows:
        r["labels"] = r["input_ids"]
    packed = list(Packed(rows, max_length=70))  # two rows: 37 + 20, then 51 (padded)
    batch = Collator(pad_token_id=0)(packed)
    with torch.no_grad():
        together = model(**batch).logits
        alone = [model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows]
    assert torch.allclose(together[0, :37], alone[0], atol=1e-5)
    assert torch.allclose(together[0, 37:57], alone[1], atol=1e-5)
    assert torch.allclose(together[1, :51], alone[2], atol=1e-5)


def _lora_step(test_preset, as_is: bool):
    """One LoRA step of a bf16 model under bf16 autocast (as the Trainer runs 16-bit
    training): the loss, the adapter's gradients, and the bytes saved for the backward pass."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model(test_preset).to(torch.bfloat16)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                             lora_dropout=0.0, init_lora_weights=False))
    note = speed.lora_inputs_as_is(model, torch.bfloat16) if as_is else None
    ids = torch.randint(3, model.config.vocab_size, (2, 48), generator=torch.Generator()
                        .manual_seed(1))
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, sum(saved.values()), note


def test_lora_layers_reading_bf16_inputs_as_is_give_identical_gradients_and_save_less(
        test_preset):
    loss, grads, saved, _ = _lora_step(test_preset, as_is=False)
    loss2, grads2, saved2, note = _lora_step(test_preset, as_is=True)
    assert note == "LoRA layers read their bfloat16 inputs as they are"
    assert loss2 == loss and grads2.keys() == grads.keys()
    for name, g in grads.items():
        assert g.dtype == torch.float32 and torch.equal(grads2[name], g), name
    # every adapted layer kept its own copy of its input; now it shares the base layer's
    assert saved2 < saved


def test_lora_inputs_as_is_applies_only_to_16_bit_plain_lora(test_preset):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(test_preset), LoraConfig(r=4, target_modules="all-linear"))
    assert speed.lora_inputs_as_is(model, torch.float32) is None
    # DoRA's own forward pass keeps PEFT's cast
    dora = get_peft_model(tiny_model(test_preset).to(torch.bfloat16),
                          LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    assert speed.lora_inputs_as_is(dora, torch.bfloat16) is None


def test_kernels_none_keeps_peft_s_own_lora_layers(test_preset):
    from peft import LoraConfig, get_peft_model
    from torch import nn

    model = get_peft_model(tiny_model(test_preset).to(torch.bfloat16),
                           LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1))
    assert speed.optimize_adapter(model, torch.bfloat16, "none") == []
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer.lora_A["default"]) is nn.Linear and layer.cast_input_dtype_enabled
    assert speed.optimize_adapter(model, torch.bfloat16, "auto") == [
        "LoRA layers read their bfloat16 inputs as they are",
        "LoRA dropout inside lora_A (no dropped copy kept)"]
    assert isinstance(layer.lora_dropout["default"], nn.Identity)


def test_auto_falls_back_when_flex_cannot_be_set(test_preset, monkeypatch):
    model = tiny_model(test_preset)
    monkeypatch.setattr(speed, "_device_type", lambda _: "cuda")

    def refuse(name):
        raise ImportError("FlexAttention needs torch >= 2.5")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    assert speed.set_attention(model, "auto", packing=True) == \
        "attention: sdpa (flex_attention unavailable: FlexAttention needs torch >= 2.5)"
    with pytest.raises(UserError, match="attention=flex_attention: FlexAttention needs"):
        speed.set_attention(model, "flex_attention", packing=True)


def test_liger_listed_as_active_is_applied_by_the_trainer(tmp_path, test_preset, synth_data,
                                                          monkeypatch):
    """Where liger applies (a CUDA llama; faked here), the Trainer is told to apply it."""
    import transformers.trainer

    from unitune.config import TrainConfig
    from unitune.train import speed
    from unitune.train.recipe import train

    applied = []
    monkeypatch.setattr(speed, "liger_applies", lambda model: True)
    monkeypatch.setattr(transformers.trainer, "apply_liger_kernel",
                        lambda model, config: applied.append(type(model).__name__))
    out = train(TrainConfig(base_model="tiny-llama-test", data=[str(synth_data["train"])],
                            output_dir=str(tmp_path / "run"), max_steps=1, batch_size=4,
                            device="cpu", template="alpaca"), log=lambda *a: None,
                progress=False)
    assert applied and speed.LIGER in json.loads((out / "run.json").read_text())[
        "optimizations"]
