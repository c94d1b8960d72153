"""The embedded default model: a tiny Llama built from a config, with a tokenizer we train.

Owns the named tiny presets, building their byte-level BPE tokenizer with ``tokenizers`` on the
synthetic corpus, building the randomly initialised ``LlamaForCausalLM``, and the on-disk cache
(``$UNITUNE_HOME/models/<preset>``, default ``~/.cache/unitune``) that holds a preset after its
first build: tokenizer, the pre-trained weights (safetensors) and a ``preset.json`` recording
how it was made. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from unitune.errors import UserError, did_you_mean

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
    pretrain_batch_size: int = 64
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


def unitune_home() -> Path:
    return Path(os.environ.get("UNITUNE_HOME", Path.home() / ".cache" / "unitune"))


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


def init_model(preset: TinyPreset, tokenizer):
    """A randomly initialised LlamaForCausalLM of the preset's shape (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size, num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(preset.seed)
    return LlamaForCausalLM(config)


def ensure_preset(name: str, log=print, progress: bool = True) -> Path:
    """Return the cached folder of a preset, building it (data, tokenizer, pre-training) if absent.

    The build happens in a temporary folder that is renamed into place only when complete, so
    an interrupted build never leaves a half-written preset behind.
    """
    preset = get_preset(name)
    target = preset_dir(name)
    if (target / "preset.json").exists():
        return target
    from unitune.data.readers import read_conversations
    from unitune.data.synth import DEFAULT_FAMILIES, write_suite
    from unitune.train.pretrain import pretrain_completions

    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"building model preset '{name}' (first use; cached in {target})")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        suite = write_suite(tmp / "corpus", list(DEFAULT_FAMILIES), n_train=0, n_val=0,
                            n_test=0, n_pretrain=preset.pretrain_examples_per_family,
                            seed=preset.seed)
        records = read_conversations(str(suite["pretrain"]))
        texts = [f"{r.turns[0].content}\n{r.answer}" for r in records]
        tokenizer = train_tokenizer(texts + _template_texts(), preset.vocab_size, tmp)
        model = init_model(preset, tokenizer)
        stats = pretrain_completions(model, tokenizer, records, steps=preset.pretrain_steps,
                                     lr=preset.pretrain_lr, seed=preset.seed,
                                     batch_size=preset.pretrain_batch_size, log=log,
                                     progress=progress)
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(tmp / "corpus")
        meta = {"preset": name, **asdict(preset), "parameters": model.num_parameters(),
                "pretrain": stats}
        (tmp / "preset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if target.exists():  # a concurrent build finished first; keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


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
