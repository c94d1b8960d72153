"""Completion pre-training: all weights trained on prompt/completion pairs, loss on completions.

This is how the embedded tiny base gets its skills before instruction tuning (the raw task
corpus of the synthetic suite, rendered with the ``raw`` template). It reuses the SFT encoder
and collator, so masking and truncation behave exactly as in instruction tuning.
"""

from __future__ import annotations

import tempfile

from unitune.data.encode import Collator, encode_conversations
from unitune.data.schema import Conversation
from unitune.data.templates import get_template


def pretrain_completions(model, tokenizer, records: list[Conversation], steps: int, lr: float,
                         seed: int, batch_size: int = 64, max_length: int = 128,
                         log=print, progress: bool = True) -> dict:
    """Train every weight of ``model`` for ``steps`` steps; returns the final statistics."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from unitune.train.callbacks import ProgressCallback

    rows, report = encode_conversations(records, tokenizer, get_template("raw"), max_length)
    log(f"pre-training the base on {report.summary()} for {steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch_size, learning_rate=lr,
            max_steps=steps, lr_scheduler_type="constant_with_warmup", warmup_steps=50,
            weight_decay=0.01, adam_beta2=0.98, logging_steps=50, save_strategy="no",
            report_to=[], seed=seed, data_seed=seed, disable_tqdm=True, use_cpu=True,
            include_num_input_tokens_seen="non_padding", remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=Collator(tokenizer.pad_token_id),
                          callbacks=[ProgressCallback(disable=not progress, desc="pre-train")])
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    return {"steps": steps, "examples": report.kept, "train_loss": result.training_loss,
            "tokens": trainer.state.num_input_tokens_seen,
            "runtime_s": result.metrics.get("train_runtime")}
