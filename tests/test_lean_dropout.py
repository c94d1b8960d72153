"""LoRA dropout fused into lora_A: the same function and gradients as dropout followed by the
matmul with the same mask, nn.Dropout's statistics, PEFT's weights and file format, and the
same masks when checkpointing recomputes a layer."""

import pytest
import torch

from unitune.methods import lean_dropout
from unitune.train import checkpointing


def reference(x, weight, p, seed):
    """Dropout with the same mask, then the matmul, through autograd."""
    return lean_dropout.dropped(x, p, seed) @ weight.to(x.dtype).t()


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_dropout_matmul_matches_autograd_with_the_same_mask(autocast):
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if autocast else torch.float32
    x0 = torch.randn(2, 7, 32, generator=g).to(dtype)
    w0 = torch.randn(4, 32, generator=g)  # fp32, as PEFT keeps adapter weights
    grad_out = torch.randn(2, 7, 4, generator=g).to(dtype)
    results = []
    for fn in (reference, lean_dropout._DropoutLinear.apply):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = fn(x, w, 0.25, 1234)
        y.backward(grad_out)
        results.append((y, x.grad, w.grad))
    for ref, ours in zip(*results, strict=True):
        assert ours.dtype == ref.dtype
        assert torch.allclose(ours.float(), ref.float(), atol=1e-2 if autocast else 1e-6)


def test_mask_has_dropouts_statistics_and_is_the_same_for_the_same_seed():
    x = torch.ones(200_000)
    mask = lean_dropout.dropout_mask(x, 0.1, 7)
    assert mask.unique().tolist() == [0.0, 1.0]
    assert abs((mask == 0).float().mean().item() - 0.1) < 0.005
    # kept values are scaled in one rounding, as nn.Dropout scales them, also in bf16
    h = torch.randn(10_000, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    exact = (h.float() * lean_dropout.dropout_mask(h, 0.05, 3).float() / 0.95).to(torch.bfloat16)
    assert torch.equal(lean_dropout.dropped(h, 0.05, 3), exact)
    assert torch.equal(mask, lean_dropout.dropout_mask(x, 0.1, 7))
    assert not torch.equal(mask, lean_dropout.dropout_mask(x, 0.1, 8))


def lora_model(test_preset, dropout=0.1, **kw):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(test_preset), dtype=torch.float32)
    torch.manual_seed(0)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                           target_modules="all-linear", init_lora_weights=False,
                                           **kw)), base


def test_fused_layers_keep_peft_weights_and_eval_outputs(test_preset):
    stock, _ = lora_model(test_preset)
    lean, _ = lora_model(test_preset)
    n = lean_dropout.apply(lean)
    assert n == sum(1 for name, _ in lean.named_modules() if name.endswith("lora_A.default"))
    assert n > 0 and lean.state_dict().keys() == stock.state_dict().keys()
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(1))
    stock.eval(), lean.eval()
    with torch.no_grad():
        assert torch.equal(lean(input_ids=ids).logits, stock(input_ids=ids).logits)
    dora, _ = lora_model(test_preset, use_dora=True)
    assert lean_dropout.apply(dora) == 0  # DoRA's own forward keeps PEFT's dropout


def test_checkpointing_recomputes_the_same_masks(test_preset):
    """Recomputing a checkpointed layer draws the same seeds, so the gradients are those of
    the run without checkpointing."""
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = []
    for ckpt in (False, True):
        model, base = lora_model(test_preset)
        checkpointing.enable(base, ckpt)
        lean_dropout.apply(model)
        model.train()
        torch.manual_seed(5)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-6), name
