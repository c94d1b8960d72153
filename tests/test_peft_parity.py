"""An adapter written by `unitune train` is a standard PEFT adapter."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_stock_peft_loads_the_adapter_with_identical_logits(tmp_path, test_preset, synth_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from unitune.config import TrainConfig
    from unitune.run import open_model
    from unitune.train.recipe import train

    out = tmp_path / "run"
    # a high learning rate so the adapter is far from its (zero-B) initialisation
    train(TrainConfig(base_model="tiny-llama-test", data=[str(synth_data["train"])],
                      output_dir=str(out), max_steps=5, batch_size=4, lr=5e-2,
                      lora={"r": 4, "dropout": 0.0}), log=lambda *a: None, progress=False)

    ours, tokenizer, template = open_model(out, device="cpu")
    base = AutoModelForCausalLM.from_pretrained(str(test_preset), dtype=torch.float32)
    stock = PeftModel.from_pretrained(base, str(out)).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(test_preset), dtype=torch.float32).eval()

    from unitune.data.schema import Conversation

    conv = Conversation.single("Sort the numbers.", "", "3 1 2")
    prompt = template.render_prompt(conv, tokenizer)
    enc = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        a = ours(**enc).logits
        b = stock(**enc).logits
        c = plain(**enc).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)  # the adapter changes the model
