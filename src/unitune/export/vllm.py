"""Serving a run beyond one machine with vLLM (not a dependency): whether its adapter is what
vLLM's ``--enable-lora`` serves, and the ``vllm serve`` command either way.

vLLM serves plain LoRA and rsLoRA adapters on linear layers up to its largest LoRA rank
(512; ``--max-lora-rank`` picks among 1, 8, 16, 32, 64, 128, 256, 320, 512), without
``modules_to_save`` weights, DoRA or biases; every other method is merged first
(``unitune merge``), and a whole-model run (full, freeze, merged) is served as a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from unitune import methods
from unitune.methods import CONFIG_FILE
from unitune.run import is_adapter_run, read_finished

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_plan(folder: Path) -> tuple[bool, list[str], str]:
    """(served as an adapter?, why not, the shell command that serves it with vLLM)."""
    record = read_finished(folder)
    method = methods.get(record.method)
    if method.whole_model:
        return False, [], f"vllm serve {folder}"
    reasons = []
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")) \
        if (folder / CONFIG_FILE).exists() else {}
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    if config.get("peft_type") != "LORA":
        reasons.append(f"method {record.method} is not LoRA")
    else:
        if config.get("use_dora"):
            reasons.append("DoRA's magnitude vectors")
        if config.get("modules_to_save"):
            reasons.append(f"modules_to_save {config['modules_to_save']} (fully trained weights)")
        if config.get("bias", "none") != "none":
            reasons.append("trained biases")
        if max(ranks) > VLLM_RANKS[-1]:
            reasons.append(f"rank {max(ranks)} above vLLM's {VLLM_RANKS[-1]}")
    if record.model_patches.get("vocab_size"):
        reasons.append("a grown vocabulary")
    if is_adapter_run(Path(record.base_model_path or record.base_model)):
        reasons.append("its base is a run (folded in memory), not a model vLLM can load")
    merged = folder.with_name(folder.name + "-merged")
    if reasons:
        how = f"unitune merge {folder} -o {merged} && vllm serve {merged}" \
            if method.mergeable else f"(method {record.method} cannot be merged or served by vLLM)"
        return False, reasons, how
    rank = next(r for r in VLLM_RANKS if r >= max(ranks))
    base = record.base_model_path or record.base_model
    return True, [], (f"vllm serve {base} --enable-lora --lora-modules {folder.name}={folder} "
                      f"--max-lora-rank {rank}")
