"""The embedded default model: a tiny Llama built from a config, with a tokenizer we train.

Owns the named tiny presets, building their byte-level BPE tokenizer with ``tokenizers`` on the
synthetic corpus (cached on its own, so commands that need only a tokenizer never train a
model), building the randomly initialised ``LlamaForCausalLM`` (``train/preset.py`` pre-trains
it with the ``pt`` stage on the raw task text, in a process of its own), and the on-disk cache
(``$UNITUNE_HOME/models/<preset>``, default ``~/.cache/unitune``) that holds a preset after its
first build: the ``pt`` run folder (weights in safetensors, tokenizer, loss curve,
``run.json``) plus a ``preset.json`` recording how it was made. Nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from unitune.errors import UserError, did_you_mean
from unitune.paths import unitune_home

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


@dataclass(frozen=True)
class TinyPreset:
    """Shape of a tiny Llama and how its base is made (synthetic suite + causal-LM pre-training)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    pretrain_examples_per_family: int
    pretrain_steps: int
    pretrain_lr: float = 3e-3
    pretrain_batch_size: int = 10  # blocks of pretrain_block tokens
    pretrain_block: int = 128
    seed: int = 0


PRESETS: dict[str, TinyPreset] = {
    # ~0.9M parameters: the quickstart's base.
    "tiny-llama": TinyPreset(hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
                             max_position_embeddings=256,
                             pretrain_examples_per_family=4000, pretrain_steps=1800),
    # a smaller, barely pre-trained variant for fast tests.
    "tiny-llama-test": TinyPreset(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, vocab_size=512,
                                  max_position_embeddings=256,
                                  pretrain_examples_per_family=200, pretrain_steps=30),
}


def preset_dir(name: str) -> Path:
    return unitune_home() / "models" / name


def get_preset(name: str) -> TinyPreset:
    if name not in PRESETS:
        raise UserError(f"unknown model preset '{name}'{did_you_mean(name, PRESETS)}; "
                        f"presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """Train a byte-level BPE (digits and CJK characters kept as single pieces) and save it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[\u3400-\u9fff\uff00-\uffef\u3000-\u303f]"), "isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, padding_side="right")
    fast.save_pretrained(out_dir)
    return fast


def preset_config(preset: TinyPreset, tokenizer):
    """The ``LlamaConfig`` of the preset's shape (known before its weights exist)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size, num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def init_model(preset: TinyPreset, tokenizer):
    """A randomly initialised LlamaForCausalLM of the preset's shape (seeded)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(preset.seed)
    return LlamaForCausalLM(preset_config(preset, tokenizer))


def pretrain_corpus(preset: TinyPreset, folder: Path) -> Path:
    """The raw task text the preset is pre-trained on (Alpaca records, rendered raw)."""
    from unitune.data.synth import DEFAULT_FAMILIES, write_suite

    return write_suite(folder, list(DEFAULT_FAMILIES), n_train=0, n_val=0, n_test=0,
                       n_pretrain=preset.pretrain_examples_per_family,
                       seed=preset.seed)["pretrain"]


def preset_tokenizer(name: str, log=print) -> Path:
    """A folder holding the preset's tokenizer: the built preset's, or the tokenizer alone,
    trained (in seconds) and cached the first time."""
    from unitune.data.readers import read_conversations

    preset = get_preset(name)
    if (preset_dir(name) / "preset.json").exists():
        return preset_dir(name)

    def build(tmp: Path) -> None:
        log(f"building the tokenizer of preset '{name}' (first use)")
        records = read_conversations(str(pretrain_corpus(preset, tmp / "corpus")))
        texts = [f"{r.turns[0].content}\n{r.answer}" for r in records]
        train_tokenizer(texts + _template_texts(), preset.vocab_size, tmp)
        shutil.rmtree(tmp / "corpus")

    from unitune import distributed

    target = unitune_home() / "tokenizers" / name
    distributed.build_once(target, "tokenizer.json", f"building the tokenizer of '{name}'",
                           build)
    return target


def ensure_preset(name: str, log=print, progress: bool = True) -> Path:
    """Return the cached folder of a preset, building it (tokenizer, initial weights,
    pre-training with the ``pt`` stage) if absent: ``unitune.train.preset`` builds it in a
    process of its own, started by the local main process (the others wait for it)."""
    import subprocess
    import sys

    from unitune import distributed

    get_preset(name)  # (an unknown name fails here)

    def build(tmp: Path) -> None:
        log(f"building model preset '{name}' (first use; cached in {preset_dir(name)})")
        env = {k: v for k, v in os.environ.items()  # (its training is single-process)
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
        env.setdefault("PYTHONWARNINGS", "ignore::UserWarning,ignore::FutureWarning")
        # on a terminal its progress bar shows there; otherwise its log goes through ``log``
        live = progress and sys.stderr.isatty()
        command = [sys.executable, "-m", "unitune.train.preset", name, str(tmp)]
        child = subprocess.Popen(command + ([] if live else ["--no-progress"]), env=env,
                                 stderr=None if live else subprocess.PIPE, text=True)
        last = ""
        try:
            for line in [] if live else child.stderr:
                if line := line.rstrip("\n"):
                    last = line
                    log(line)
            code = child.wait()
        except BaseException:  # (interrupted: the build stops too)
            child.terminate()
            child.wait()
            raise
        if code:
            raise UserError(f"building preset '{name}' failed: " +
                            ("see above" if live else last.removeprefix("error: ")))

    distributed.build_once(preset_dir(name), "preset.json", f"building preset '{name}'", build)
    return preset_dir(name)


def _template_texts() -> list[str]:
    """Prompt-template text, so the tokenizer has compact pieces for the words templates use."""
    import random

    from unitune.data.schema import Conversation
    from unitune.data.synth import FAMILIES
    from unitune.data.templates import TEMPLATES

    rng = random.Random(0)
    examples = [gen(rng) for _, gen in FAMILIES.values()]
    return [t.render(Conversation.single(ex.instruction, ex.output, ex.input))[0]
            for t in TEMPLATES.values() if not t.tokenizer_template for ex in examples] * 20
