"""Activation memory of one decoder layer: what plain HF + PEFT keeps for the backward pass
against what unitune keeps, measured on any machine (no GPU needed).

The bytes a training step keeps between its forward and backward passes do not depend on the
device, so they can be counted on the CPU: every tensor autograd saves while one decoder layer
of the Llama-3-8B shape runs its forward pass (hidden 4096, MLP 14336, 32 heads, 8 KV heads,
bf16 weights, LoRA r=16 on all seven projections) goes through a saved-tensor hook, and the
distinct storages are added up (at n and 2n tokens: the difference is what grows with the
tokens). Printed per token and for a step of 8,192 tokens (the issue-6
setting, 2048 x 4) per layer and for 32 layers, without checkpointing.

- baseline: HF + PEFT as a user writes it: a bf16 model, PEFT's fp32 adapter weights, each
  adapted layer casting its input to fp32 (the baseline of train_throughput.py); and the same
  under the Trainer's bf16 autocast ("baseline, autocast").
- unitune: under autocast, its leaner LoRA layers (`train/speed.py`): they read their bf16
  inputs as they are, and their dropout keeps no dropped copy of the input
  (`methods/lean_dropout.py`).

Each with LoRA dropout 0 and 0.05 (unitune's default; PEFT's dropout keeps a dropped copy of
every adapted layer's input). Liger's kernels (GPU only) shrink the MLP and norm activations
further; they are not in these numbers.

    python benchmarks/activation_memory.py [--tokens 256]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from train_throughput import SHAPES, TARGETS

SHAPE = {**SHAPES["8b"], "num_hidden_layers": 1, "vocab_size": 256}  # one layer, no logits


def lora_layer(dropout: float, unitune: bool):
    """A one-layer model of the 8B shape with LoRA on its seven projections, in training mode,
    with unitune's leaner LoRA layers or PEFT's own."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, use_cache=False)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    if unitune:
        from unitune.train import speed

        speed.optimize_adapter(model, torch.bfloat16, "auto")
    return model.train()


def saved_bytes(model, tokens: int, autocast: bool) -> int:
    """Bytes autograd keeps for the backward pass of the decoder layer's forward pass."""
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:  # activations only: weights are kept anyway
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    layer = model.base_model.model.model.layers[0]
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    handles = [layer.register_forward_pre_hook(lambda *_: hooks.__enter__()),
               layer.register_forward_hook(lambda *_: hooks.__exit__(None, None, None))]
    ids = torch.randint(model.config.vocab_size, (1, tokens),
                        generator=torch.Generator().manual_seed(0))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with cast:
        model(input_ids=ids, labels=ids)
    for h in handles:
        h.remove()
    return sum(storages.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256, help="n")
    args = ap.parse_args()
    sides = [("baseline", False, False), ("baseline, autocast", True, False),
             ("unitune", True, True)]
    print(f"one Llama-3-8B decoder layer, {args.tokens} and {2 * args.tokens} tokens, LoRA r=16 "
          "on 7 projections, bytes saved for the backward pass")
    print(f"{'side':<20}{'dropout':>8}{'KiB/token':>11}{'GiB/layer @8192':>17}"
          f"{'GiB, 32 layers':>16}{'vs baseline':>13}")
    for dropout in (0.0, 0.05):
        models = {False: lora_layer(dropout, unitune=False), True: lora_layer(dropout, True)}
        base = None
        for name, autocast, unitune in sides:
            # the slope between n and 2n tokens: what grows with the tokens (autocast's bf16
            # copies of the fp32 adapter weights are kept too, once per step)
            n = args.tokens
            model = models[unitune]
            per_token = (saved_bytes(model, 2 * n, autocast)
                         - saved_bytes(model, n, autocast)) / n
            base = base or per_token
            layer = per_token * 8192 / 2**30
            print(f"{name:<20}{dropout:>8}{per_token / 1024:>11.1f}{layer:>17.2f}"
                  f"{32 * layer:>16.1f}{base / per_token:>12.2f}x", flush=True)


if __name__ == "__main__":
    main()
