"""unitune: instruction fine-tuning of large language models, one CLI and one Python API.

The API is what the CLI calls::

    from unitune import TrainConfig, finetune, open_model, answer, Decoding, Conversation

    run = finetune(TrainConfig(data=["data/synth/train.json"], output_dir="runs/api",
                               max_steps=200))
    model, tokenizer, template = open_model(run)   # exactly as trained
    question = Conversation.single("Count the letters.", output="", input="a b c")
    print(answer(model, tokenizer, template, [question], Decoding()))

Names are imported on first use, so ``import unitune`` stays cheap. (``finetune`` and
``compose_adapters`` are ``train.recipe.train`` and ``compose.compose.compose``: the package
folders ``train/`` and ``compose/`` own the shorter names.)
"""

from __future__ import annotations

import importlib
import warnings

__version__ = "0.1.0"

# PEFT (0.21) reads transformers' deprecated ``is_gradient_checkpointing`` on every adapter it
# builds or loads: a warning no user of the API can act on (the CLI silences warnings)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                        category=FutureWarning)

_API = {  # name: (module, name there)
    "TrainConfig": ("unitune.config", "TrainConfig"),
    "finetune": ("unitune.train.recipe", "train"),
    "Interrupted": ("unitune.train.recipe", "Interrupted"),
    "compare": ("unitune.train.compare", "compare"),
    "RunRecord": ("unitune.run", "RunRecord"),
    "read_run": ("unitune.run", "read_run"),
    "open_model": ("unitune.run", "open_model"),
    "open_tokenizer": ("unitune.run", "open_tokenizer"),
    "compose_adapters": ("unitune.compose.compose", "compose"),
    "sweep_lambda": ("unitune.compose.compose", "sweep"),
    "merge": ("unitune.export.merge", "merge"),
    "Decoding": ("unitune.infer.generate", "Decoding"),
    "answer": ("unitune.infer.generate", "answer"),
    "evaluate_exact_match": ("unitune.eval.exact_match", "evaluate_exact_match"),
    "evaluate_file": ("unitune.eval.exact_match", "evaluate_file"),
    "evaluate_perplexity": ("unitune.eval.perplexity", "evaluate_perplexity"),
    "EvalSettings": ("unitune.eval.suite", "EvalSettings"),
    "evaluate": ("unitune.eval.suite", "evaluate"),
    "load_study": ("unitune.eval.study", "load_study"),
    "run_study": ("unitune.eval.study", "run_study"),
    "compare_results": ("unitune.eval.study", "compare_results"),
    "evaluate_preferences": ("unitune.eval.preference", "evaluate_preferences"),
    "RewardModel": ("unitune.train.rewards", "RewardModel"),
    "Conversation": ("unitune.data.schema", "Conversation"),
    "PreferencePair": ("unitune.data.schema", "PreferencePair"),
    "Prompt": ("unitune.data.schema", "Prompt"),
    "read_conversations": ("unitune.data.readers", "read_conversations"),
    "UserError": ("unitune.errors", "UserError"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        module, attribute = _API[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'unitune' has no attribute {name!r}")
