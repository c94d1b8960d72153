"""The stages after SFT, on TRL's trainers: reward modelling (``rm``), direct preference
optimisation with its loss variants (``dpo``), unpaired feedback (``kto``), on-policy RL from
a reward (``grpo``, ``rloo``), and the reference-free ``orpo`` and ``cpo``.

Each brings its config section (``rm:``, ``dpo:``, ``kto:``, ``rl:``, ``orpo:``, ``cpo:``),
its data (preference pairs, unpaired feedback or prompts, read, mixed and split by
``data/sources.py`` and encoded by ``data/preference.py`` with the run's template and
truncation policy, cached like SFT data), and TRL's trainer with what we change of it:

- the data arrives tokenised: the DPO and KTO trainers skip their own tokenisation (the reward
  trainer does so by itself for tokenised rows), GRPO and RLOO tokenise prompts exactly as the
  inference engine does (``encode.tokenize_ids``, BOS as the template leaves it), and end an
  answer at the template's end-of-turn marker as well as at EOS; what TRL's trainers map while
  they set up stays out of the shared prepared-data cache;
- the reference model of a new LoRA or (IA)3 adapter is the base with the adapter disabled
  (TRL keeps a frozen copy of a PEFT adapter; one that starts as the identity is the base
  itself, so that copy is dropped; prompt tuning's and an ``init_adapter``'s is kept), and of
  a whole-model or bottleneck run a frozen copy of the starting weights;
- rewards for GRPO / RLOO come from ``train/rewards.py`` (a reward-model run, built-in checks,
  or the user's Python function).

ORPO and CPO / SimPO (``orpo``, ``cpo``) come from ``trl.experimental``: they work in the
pinned TRL (1.16), where their trainers still tokenise text themselves, so they are given our
encoded pairs in the layout they collate. TRL 1.16 has no PPO (docs/PREFERENCE.md).
"""

from __future__ import annotations

import copy
import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from unitune.data.encode import IGNORE
from unitune.data.schema import Conversation, PreferencePair, Prompt
from unitune.errors import UserError, did_you_mean
from unitune.sections import Section
from unitune.train.stages.base import Stage

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
              "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft",
              "sigmoid_norm")


def _comma_list(value):
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) \
        else value


class RewardSection(Section):
    """stage=rm: a reward model (a scoring head) trained on preference pairs."""

    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="pull the mean reward towards 0 (the loss adds c * mean(r^2))")


class DpoSection(Section):
    """stage=dpo: direct preference optimisation (TRL's DPOTrainer) and its loss variants."""

    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], description=(
        "one or more (comma-separated) of: " + ", ".join(DPO_LOSSES) + "; sigmoid_norm: "
        "length-normalised (SimPO-style) log-ratios"))
    loss_weights: list[float] | None = Field(None, description="weights of several loss types")
    beta: float = Field(0.1, gt=0, description="how far the policy may move from the "
                        "reference (IPO: the regulariser tau)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust: the chance a "
                                   "label is flipped; exo_pair: epsilon")
    ld_alpha: float | None = Field(None, ge=0, le=1, description="LD-DPO: the weight of reply "
                                   "tokens beyond the shorter reply's length")
    use_weighting: bool = Field(False, description="WPO weighting of the pairs")
    precompute_ref_log_probs: bool = Field(False, description="score the reference once "
                                           "before training")

    @field_validator("loss_type", mode="before")
    @classmethod
    def _losses(cls, value):
        value = _comma_list(value)
        for loss in value if isinstance(value, list) else []:
            if loss not in DPO_LOSSES:
                raise ValueError(f"unknown DPO loss '{loss}'{did_you_mean(loss, DPO_LOSSES)}; "
                                 f"choose from {', '.join(DPO_LOSSES)}")
        return value


class KtoSection(Section):
    """stage=kto: Kahneman-Tversky optimisation on unpaired feedback (TRL's KTOTrainer)."""

    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0, description="weight of desirable answers")
    undesirable_weight: float = Field(1.0, gt=0, description="weight of undesirable answers")


class OrpoSection(Section):
    """stage=orpo: odds-ratio preference optimisation, reference-free (trl.experimental)."""

    beta: float = Field(0.1, gt=0, description="the odds-ratio term's weight (lambda)")


class CpoSection(Section):
    """stage=cpo: contrastive preference optimisation and SimPO, reference-free
    (trl.experimental)."""

    loss_type: Literal["sigmoid", "hinge", "ipo", "simpo"] = Field(
        "sigmoid", description="simpo: SimPO (length-normalised, a target margin)")
    beta: float = Field(0.1, gt=0)
    cpo_alpha: float = Field(1.0, ge=0, description="the weight of the chosen answers' NLL "
                             "(SimPO: 0)")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target reward margin")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)


class RlSection(Section):
    """stage=grpo / rloo: on-policy RL from a reward (TRL's GRPOTrainer / RLOOTrainer)."""

    reward: list[str] = Field(default_factory=list, description=(
        "comma-separated rewards: a reward-model run (stage=rm), a built-in "
        "(exact_match, number_match, brevity) or FILE.py:FUNCTION / MODULE:FUNCTION"))
    reward_weights: list[float] | None = Field(None, description="one weight per reward")
    beta: float = Field(0.04, ge=0, description="KL penalty towards the reference (0: none)")
    num_generations: int = Field(4, ge=2, description="answers sampled per prompt (the group)")
    max_new_tokens: int = Field(64, gt=0, description="the longest answer sampled")
    decoding: str | None = Field(None, description="an inference decoding preset (unitune "
                                 "generate --preset) whose sampling settings are used instead "
                                 "of temperature, top_p, top_k, repetition_penalty")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: off")
    repetition_penalty: float = Field(1.0, gt=0)
    epsilon: float = Field(0.2, gt=0, description="the clipping range of the policy ratio")
    mask_truncated_completions: bool = Field(False, description=(
        "leave answers cut off at max_new_tokens out of the loss (DAPO's overlong filtering)"))
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"] = Field(
        "dapo", description="grpo: how token losses are aggregated (TRL's)")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="grpo: divide advantages by the std of the group, batch, or not")

    @field_validator("reward", mode="before")
    @classmethod
    def _rewards(cls, value):
        return _comma_list(value)


def _reference(cfg, model, precomputed: bool) -> dict:
    """The reference of a stage trained against one (DPO, KTO; GRPO and RLOO with KL): for a
    PEFT adapter TRL's (the adapter disabled, or a copy of an adapter that does not start at
    the base); else a frozen copy of the starting weights (whole-model training, bottleneck
    adapters), unless the reference is scored once before training (``precomputed``: the
    policy then is the reference) or DeepSpeed shards the model (TRL loads it from the base's
    folder, which ``check_method`` allows only for a base model)."""
    from peft import PeftModel

    kwargs = {"drop_reference": _starts_at_base(cfg)}
    if isinstance(model, PeftModel) or precomputed or cfg.deepspeed:
        return {**kwargs, "ref_model": None}
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return {**kwargs, "ref_model": ref}


@contextmanager
def _reference_is(trainer_cls, reference):
    """While ``trainer_cls`` sets up, its loading of a reference model from a folder hands it
    ``reference`` instead (nothing changes when that is None)."""
    import inspect

    module = inspect.getmodule(trainer_cls)
    if reference is None:
        yield
        return
    load = module.create_model_from_path
    module.create_model_from_path = lambda *args, **kwargs: reference
    try:
        yield
    finally:
        module.create_model_from_path = load


class _SetUp:
    """What every TRL trainer of ours does around TRL's own set-up: its maps of the training
    set kept out of the prepared-data cache (``_datasets_in_memory``), and TRL's copy of a new
    adapter dropped when that adapter starts at the base (``drop_reference``)."""

    def __init__(self, *args, drop_reference: bool = False, **kwargs):
        with _datasets_in_memory():
            super().__init__(*args, **kwargs)
        if drop_reference:
            _drop_reference_adapter(self.model)


@contextmanager
def _datasets_in_memory():
    """TRL's trainers map the training set while they set up (KL completions, ORPO / CPO's
    layout, precomputed reference log-probabilities): those results stay in memory or in
    temporary files, never beside the shared prepared-data cache."""
    import datasets

    from unitune.data.encode import progress_bars

    was = datasets.is_caching_enabled()
    datasets.disable_caching()
    try:
        with progress_bars(False):
            yield
    finally:
        if was:
            datasets.enable_caching()


class _Preference(Stage):
    """A stage on preference data, trained by one of TRL's trainers."""

    accept = (PreferencePair,)
    fast_path = False
    form: str = ""  # the rows data/preference.py writes (prompts: encode says)

    def check(self, cfg, seq2seq):
        if seq2seq:
            raise UserError(f"stage={self.name} trains a decoder-only (causal) language model; "
                            "this model is an encoder-decoder")
        if cfg.packing:
            raise UserError(f"stage={self.name} compares whole answers; set packing=false")
        if cfg.masking != "assistant":
            raise UserError(f"stage={self.name} trains on each answer (its reply and "
                            f"end-of-turn marker); masking={cfg.masking} does not apply")
        aug = cfg.augment
        if aug.flan_templates or aug.k_shot or aug.cot_suffix:
            raise UserError(f"stage={self.name}: augment applies to instruction tuning; remove "
                            "the augment keys")
        self.check_method(cfg)

    def copies_adapter(self, cfg) -> bool:
        """Whether TRL keeps a copy of a PEFT adapter as the reference."""
        return False

    def reference_from_folder(self, cfg) -> bool:
        """Whether TRL loads the reference of a non-PEFT run from the base's folder."""
        return False

    def check_method(self, cfg) -> None:
        """Refuse a method the stage cannot train."""
        from unitune import methods
        from unitune.run import is_run

        method = methods.get(cfg.method)
        if method.name == "adalora" and self.copies_adapter(cfg):
            raise UserError(f"stage={self.name} keeps a copy of the adapter as its reference, "
                            "and PEFT holds one AdaLoRA adapter only; use method=lora")
        if not method.peft and self.reference_from_folder(cfg):
            why = "a run" if is_run(Path(cfg.base_model)) else "a grown vocabulary" \
                if cfg.tokenizer else "RoPE-scaled" if cfg.rope_scaling else None
            if why:
                raise UserError(f"stage={self.name} with method={cfg.method} loads its "
                                "reference model from the base's folder, which cannot be "
                                f"{why}; use a PEFT method (lora, ...), or start from a "
                                "merged model")

    def loss(self, cfg):
        return "last", False  # the reply (and its end-of-turn marker) of each answer

    def trains_on(self, masking):
        return "each pair's chosen and rejected replies"

    def collator(self, tokenizer):
        return None  # TRL's

    def encode(self, records, tokenizer, template, cfg, seq2seq, out, progress):
        from unitune.data.preference import encode_preferences

        return encode_preferences(records, tokenizer, template, cfg.max_length, self.form, out,
                                  cfg.data_workers, progress)

    def trl_arguments(self, cfg) -> dict:
        """The stage's own keys as its TRL config takes them."""
        return {}

    def arguments(self, cfg, common):
        common = {**common, "include_num_input_tokens_seen": "no",  # (TRL counts its own)
                  "gradient_checkpointing": False}  # (train/checkpointing.py does it)
        return self.config_class()(**common, **self.trl_arguments(cfg))

    def config_class(self):
        raise NotImplementedError


class RewardModelling(_Preference):
    name = "rm"
    summary = "a reward model (a scoring head) from preference pairs"
    head = "reward"
    sections = (("rm", RewardSection),)
    metrics = ("eval_accuracy", "eval_margin", "accuracy", "margin")
    purpose = "reward modelling (stage=rm)"
    form = "sequences"

    def trains_on(self, masking):
        return "the score of each whole answer (chosen above rejected)"

    def check_method(self, cfg):
        from unitune import methods

        method = methods.get(cfg.method)
        if not (method.whole_model or method.native_checkpoints):
            raise UserError(f"stage=rm: method={cfg.method} does not save the reward head; "
                            "use a PEFT method (lora, ...), full or freeze")

    def config_class(self):
        from trl import RewardConfig

        return RewardConfig

    def trl_arguments(self, cfg):
        return {"max_length": None,
                "center_rewards_coefficient": cfg.rm.center_rewards_coefficient}

    def trainer_class(self):
        from trl import RewardTrainer

        return RewardTrainer


PAIR_METRICS = ("eval_rewards/accuracies", "eval_rewards/margins", "rewards/accuracies",
                "rewards/margins")


class _AgainstReference(_Preference):
    """DPO and KTO: trained against a frozen reference, which ``_reference`` provides."""

    def copies_adapter(self, cfg):
        return True

    def reference_from_folder(self, cfg):
        return bool(cfg.deepspeed)

    def precomputed(self, cfg) -> bool:
        """Whether the reference is scored once, before training."""
        return False

    def trainer_kwargs(self, cfg, model, tokenizer, template, log):
        return _reference(cfg, model, self.precomputed(cfg))


class DirectPreference(_AgainstReference):
    name = "dpo"
    summary = "direct preference optimisation on pairs (dpo.loss_type: sigmoid, ipo, ...)"
    sections = (("dpo", DpoSection),)
    metrics = PAIR_METRICS
    purpose = "preference optimisation (stage=dpo)"
    form = "pairs"

    def config_class(self):
        from trl import DPOConfig

        return DPOConfig

    def check(self, cfg, seq2seq):
        super().check(cfg, seq2seq)
        d = cfg.dpo
        if "exo_pair" in d.loss_type and not d.label_smoothing:
            raise UserError("dpo.loss_type=exo_pair needs dpo.label_smoothing > 0 (the EXO "
                            "paper uses 0.001)")
        if d.loss_weights is not None and len(d.loss_weights) != len(d.loss_type):
            raise UserError(f"dpo.loss_weights: {len(d.loss_weights)} weights for "
                            f"{len(d.loss_type)} loss types; give one per loss type")

    def precomputed(self, cfg):
        return cfg.dpo.precompute_ref_log_probs

    def trl_arguments(self, cfg):
        d = cfg.dpo
        return {"max_length": None, "loss_type": d.loss_type, "loss_weights": d.loss_weights,
                "beta": d.beta, "label_smoothing": d.label_smoothing, "ld_alpha": d.ld_alpha,
                "use_weighting": d.use_weighting,
                "precompute_ref_log_probs": d.precompute_ref_log_probs}

    def trainer_class(self):
        from trl import DPOTrainer

        class TokenisedDPOTrainer(_SetUp, DPOTrainer):
            """TRL's DPO on rows ``data/preference.py`` tokenised."""

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset

        return TokenisedDPOTrainer


class UnpairedFeedback(_AgainstReference):
    name = "kto"
    summary = "Kahneman-Tversky optimisation on unpaired feedback (good / bad answers)"
    sections = (("kto", KtoSection),)
    accept = (PreferencePair, Conversation)
    metrics = ("eval_rewards/chosen", "eval_rewards/rejected", "eval_kl", "kl")
    purpose = "unpaired feedback (stage=kto)"
    form = "unpaired"

    def trains_on(self, masking):
        return "each reply, desirable or not"

    def check(self, cfg, seq2seq):
        super().check(cfg, seq2seq)
        from unitune import distributed

        if cfg.kto.loss_type == "kto" and cfg.batch_size // distributed.world_size() < 2:
            raise UserError("stage=kto estimates its KL term from the other answers of a batch: "
                            "give batch_size >= 2 per process")

    def config_class(self):
        from trl import KTOConfig

        return KTOConfig

    def trl_arguments(self, cfg):
        k = cfg.kto
        return {"max_length": None, "loss_type": k.loss_type, "beta": k.beta,
                "desirable_weight": k.desirable_weight,
                "undesirable_weight": k.undesirable_weight}

    def trainer_class(self):
        from trl import KTOTrainer

        class TokenisedKTOTrainer(_SetUp, KTOTrainer):
            """TRL's KTO on rows ``data/preference.py`` tokenised; the KL completions are
            added as TRL adds them (each batch's answers rotated by one)."""

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                if not self.calculate_KL:
                    return dataset

                def rotate(batch):
                    ids = batch["completion_ids"]
                    return {"KL_completion_ids": ids[-1:] + ids[:-1]}

                return dataset.map(rotate, batched=True,
                                   batch_size=args.per_device_train_batch_size)

        return TokenisedKTOTrainer


def _as_legacy_pairs(feature: dict) -> dict:
    """A ``pairs`` row in the layout TRL's experimental ORPO / CPO trainers collate."""
    prompt, out = feature["prompt_ids"], {}
    out.update(prompt_input_ids=prompt, prompt_attention_mask=[1] * len(prompt))
    for side in ("chosen", "rejected"):
        reply = feature[f"{side}_ids"]
        out[f"{side}_input_ids"] = prompt + reply
        out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(reply))
        out[f"{side}_labels"] = [IGNORE] * len(prompt) + reply
    return out


class _ReferenceFree(_Preference):
    """ORPO and CPO / SimPO from ``trl.experimental``: pairs, no reference model. They tokenise
    with their own older code path (``tokenize_row``), which here only lays out our rows."""

    metrics = PAIR_METRICS
    form = "pairs"

    def experimental(self):
        """(config class, trainer class) of ``trl.experimental``."""
        raise NotImplementedError

    def config_class(self):
        return self.experimental()[0]

    def trainer_class(self):
        class TokenisedTrainer(_SetUp, self.experimental()[1]):
            def tokenize_row(self, feature, model=None):
                return _as_legacy_pairs(feature)

        return TokenisedTrainer


class OddsRatio(_ReferenceFree):
    name = "orpo"
    summary = "odds-ratio preference optimisation on pairs, no reference (trl.experimental)"
    sections = (("orpo", OrpoSection),)
    purpose = "preference optimisation (stage=orpo)"

    def experimental(self):
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # (said in the docs)
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer

    def trl_arguments(self, cfg):
        return {"max_length": cfg.max_length, "beta": cfg.orpo.beta}


class Contrastive(_ReferenceFree):
    name = "cpo"
    summary = "contrastive preference optimisation and SimPO on pairs, no reference " \
              "(trl.experimental)"
    sections = (("cpo", CpoSection),)
    purpose = "preference optimisation (stage=cpo)"

    def experimental(self):
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return CPOConfig, CPOTrainer

    def trl_arguments(self, cfg):
        c = cfg.cpo
        return {"max_length": cfg.max_length, "loss_type": c.loss_type, "beta": c.beta,
                "cpo_alpha": c.cpo_alpha, "simpo_gamma": c.simpo_gamma,
                "label_smoothing": c.label_smoothing}


def _starts_at_base(cfg) -> bool:
    """Whether the new adapter starts as the identity (LoRA's zero B, (IA)3's ones), so the
    reference is the base with the adapter disabled: not from another run's adapter
    (``init_adapter``), not virtual tokens (prefix / prompt tuning)."""
    from unitune import methods

    return methods.get(cfg.method).starts_at_base and not cfg.init_adapter


def _drop_reference_adapter(model) -> None:
    """TRL keeps a frozen copy of a PEFT model's adapter as the reference ("ref"); when the
    adapter starts at the base (``_starts_at_base``) that copy is the base itself, so it is
    dropped and the reference is the base with the adapter disabled."""
    config = getattr(model, "peft_config", None)
    if config and "ref" in config:
        model.delete_adapter("ref")
        model.set_adapter("default")


class _Reinforce(_Preference):
    """GRPO and RLOO: prompts, rewards, sampling settings."""

    sections = (("rl", RlSection),)
    accept = (Prompt, Conversation, PreferencePair)
    metrics = ("reward", "reward_std", "kl", "eval_reward")

    def trains_on(self, masking):
        return "sampled answers, by their reward"

    def check(self, cfg, seq2seq):
        super().check(cfg, seq2seq)
        rl = cfg.rl
        self.sampling(cfg)  # (a preset that cannot be used fails here)
        if not rl.reward:
            raise UserError(f"stage={self.name} needs rl.reward: a reward-model run "
                            "(stage=rm), a built-in (exact_match, number_match, brevity) or "
                            "FILE.py:FUNCTION")
        if rl.reward_weights is not None and len(rl.reward_weights) != len(rl.reward):
            raise UserError(f"rl.reward_weights: {len(rl.reward_weights)} weights for "
                            f"{len(rl.reward)} rewards; give one per reward")
        if cfg.batch_size % rl.num_generations:  # (all processes together)
            raise UserError(f"stage={self.name}: batch_size={cfg.batch_size} must be a multiple "
                            f"of rl.num_generations={rl.num_generations} (each prompt's answers "
                            "are compared within one batch)")

    def copies_adapter(self, cfg):
        return cfg.rl.beta > 0

    def reference_from_folder(self, cfg):
        # (otherwise a frozen copy of the starting weights is handed to TRL: trainer_for)
        return cfg.rl.beta > 0 and bool(cfg.deepspeed)

    def check_tokenizer(self, cfg, tokenizer, template):
        from unitune.infer.generate import split_stops
        from unitune.train.rewards import check_rewards

        check_rewards(cfg.rl.reward, tokenizer)
        _, markers = split_stops(tokenizer, template.stop_strings(tokenizer))
        if cfg.rl.mask_truncated_completions and markers:
            raise UserError(f"rl.mask_truncated_completions: template '{template.name}' ends a "
                            f"turn with {markers[0]!r}, several tokens for this tokenizer, and "
                            "TRL counts an answer as truncated unless it ends with an EOS "
                            "token; use a template whose turns end with EOS or one token, or "
                            "leave the key out")

    def encode(self, records, tokenizer, template, cfg, seq2seq, out, progress):
        from unitune.data.preference import prompt_rows

        return prompt_rows(records, tokenizer, template, cfg.max_length, out, progress)

    def sampling(self, cfg) -> dict:
        """The sampling settings: ``rl``'s own, or those of the preset ``rl.decoding``."""
        rl = cfg.rl
        keys = ("temperature", "top_p", "top_k", "repetition_penalty")
        if not rl.decoding:
            return {k: getattr(rl, k) for k in keys}
        from unitune.infer.generate import preset

        chosen = preset(rl.decoding)
        if set(keys) & rl.model_fields_set:
            raise UserError(f"rl.decoding={rl.decoding} sets the sampling; leave out rl."
                            f"{', rl.'.join(sorted(set(keys) & rl.model_fields_set))}")
        if not chosen.do_sample:
            raise UserError(f"rl.decoding={rl.decoding} does not sample, and stage={self.name} "
                            "compares sampled answers; pick a sampling preset")
        extra = {"no_repeat_ngram_size": chosen.no_repeat_ngram_size} \
            if chosen.no_repeat_ngram_size else {}
        return {**{k: getattr(chosen, k) for k in keys},
                **({"generation_kwargs": extra} if extra else {})}

    def trl_arguments(self, cfg):
        rl = cfg.rl
        return {"beta": rl.beta, "num_generations": rl.num_generations,
                "max_completion_length": rl.max_new_tokens, "epsilon": rl.epsilon,
                "mask_truncated_completions": rl.mask_truncated_completions,
                "reward_weights": rl.reward_weights, **self.sampling(cfg)}

    def trainer_kwargs(self, cfg, model, tokenizer, template, log):
        from unitune.infer.generate import split_stops
        from unitune.train.rewards import load_rewards

        return {"reward_funcs": load_rewards(cfg.rl.reward, tokenizer, template, log,
                                             cfg.trust_remote_code, cfg.device),
                "add_special_tokens": template.add_special_tokens,
                "stops": split_stops(tokenizer, template.stop_strings(tokenizer)),
                "drop_reference": _starts_at_base(cfg),
                "reference": None if cfg.rl.beta == 0 else
                _reference(cfg, model, precomputed=False)["ref_model"]}

    def trainer_for(self, trainer_cls):
        from unitune.data.encode import tokenize_ids
        from unitune.infer.generate import tokens_through_stop

        class PromptsAsInference(_SetUp, trainer_cls):
            """TRL's trainer with prompts tokenised as the inference engine tokenises them, an
            answer ending at the template's end-of-turn marker as at EOS, and the reference
            copy of a new adapter dropped. A marker that is one token joins the EOS ids (TRL
            stops there and masks what follows the first of its ``eos_token_ids``, read from
            the model's generation config); an answer is cut after a longer marker, so
            nothing sampled past the end of the turn is scored or trained on. The reference
            of a whole model or bottleneck adapters (KL control) is ``reference``, a frozen
            copy of the starting weights: TRL would load it from the base's folder, which
            holds neither a run it starts from nor a grown vocabulary."""

            def __init__(self, *args, add_special_tokens: bool,
                         stops: tuple[list[int], list[str]], drop_reference: bool,
                         reference=None, **kwargs):
                self._add_special_tokens = add_special_tokens
                stop_ids, self._stop_strings = stops
                config = kwargs["model"].generation_config
                eos = config.eos_token_id
                eos = [eos] if isinstance(eos, int) else list(eos or [])
                config.eos_token_id = [*eos, *(i for i in stop_ids if i not in eos)]
                with _reference_is(trainer_cls, reference):
                    super().__init__(*args, drop_reference=drop_reference, **kwargs)
                self._stop_sampling_at_markers()

            def _stop_sampling_at_markers(self):
                """Sampling ends at a marker of several tokens too (once every answer of the
                batch has ended): the stop strings go into TRL's generation config, and the
                policy's ``generate`` gets the tokenizer, which transformers needs to match
                them and which TRL's call does not pass."""
                if not self._stop_strings:
                    return
                self.generation_config.stop_strings = list(self._stop_strings)
                policy = self.accelerator.unwrap_model(self.model)
                policy.generate = functools.partial(policy.generate,
                                                    tokenizer=self.processing_class)

            def _tokenize_prompts(self, prompts):
                return tokenize_ids(prompts, self.processing_class,
                                    self._add_special_tokens), None, {}

            def _generate_single_turn(self, *args, **kwargs):
                sampled = super()._generate_single_turn(*args, **kwargs)
                ids, logprobs = sampled if isinstance(sampled, tuple) else (sampled, None)
                keep = [tokens_through_stop(self.processing_class, row, self._stop_strings)
                        for row in ids]
                ids = [row[:n] for row, n in zip(ids, keep, strict=True)]
                if logprobs is not None:
                    logprobs = [row[:n] for row, n in zip(logprobs, keep, strict=True)]
                return (ids, logprobs) if isinstance(sampled, tuple) else ids

        return PromptsAsInference


class GroupRelative(_Reinforce):
    name = "grpo"
    summary = "group relative policy optimisation from a reward (rl.reward)"
    purpose = "reinforcement learning (stage=grpo)"

    def config_class(self):
        from trl import GRPOConfig

        return GRPOConfig

    def trl_arguments(self, cfg):
        return {**super().trl_arguments(cfg), "loss_type": cfg.rl.loss_type,
                "scale_rewards": cfg.rl.scale_rewards}

    def trainer_class(self):
        from trl import GRPOTrainer

        return self.trainer_for(GRPOTrainer)


class LeaveOneOut(_Reinforce):
    name = "rloo"
    summary = "REINFORCE leave-one-out from a reward (rl.reward)"
    purpose = "reinforcement learning (stage=rloo)"

    def copies_adapter(self, cfg):
        return True  # (TRL's RLOO copies a PEFT adapter whatever rl.beta is)

    def check(self, cfg, seq2seq):
        super().check(cfg, seq2seq)
        if cfg.rl.loss_type != "dapo" or cfg.rl.scale_rewards != "group":
            raise UserError("rl.loss_type and rl.scale_rewards are GRPO's; stage=rloo has its "
                            "own leave-one-out baseline (leave them out)")

    def config_class(self):
        from trl import RLOOConfig

        return RLOOConfig

    def trainer_class(self):
        from trl import RLOOTrainer

        return self.trainer_for(RLOOTrainer)


PREFERENCE_STAGES = (RewardModelling(), DirectPreference(), UnpairedFeedback(),
                     GroupRelative(), LeaveOneOut(), OddsRatio(), Contrastive())
