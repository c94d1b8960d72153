"""``unitune train``, ``compare``, ``compose``, ``merge``, ``export`` and ``vocab``: making and
reshaping runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from unitune import distributed
from unitune.cli.common import (
    Parser,
    number,
    stderr,
    train_config,
    whole,
)
from unitune.errors import UserError


def add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model on instruction data (any method)",
                       description="Fine-tune (--method lora by default). Configuration: an "
                       "optional YAML file, then key=value overrides (nested keys with dots, "
                       "e.g. lora.r=16), then the flags below. Unknown keys are errors.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    help_without_keys = p.format_help

    def format_help() -> str:  # the schema (pydantic) is imported only when help is asked for
        from unitune.config import TrainConfig, describe_keys

        p.epilog = "config keys (default) [choices]:\n" + "\n".join(describe_keys(TrainConfig))
        return help_without_keys()

    p.format_help = format_help
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value",
                   help="a YAML config file and/or key=value overrides")
    p.add_argument("--data", help="comma-separated training files, catalog names or hub ids")
    p.add_argument("--validation-data", dest="validation_data",
                   help="comma-separated validation files, catalog names or hub ids")
    p.add_argument("-o", "--output-dir", dest="output_dir", help="run folder to create")
    p.add_argument("--base-model", dest="base_model",
                   help="a preset (tiny-llama), a local HF folder or a hub id")
    p.add_argument("--template", help="prompt template (default auto: the model's own)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--epochs", type=float, help="number of epochs")
    p.add_argument("--max-steps", dest="max_steps", type=int, help="stop after N steps")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="examples per forward pass, all processes together")
    p.add_argument("--method", help="fine-tuning method (the choices: config key 'method' "
                   "below)")
    p.add_argument("--lora-r", dest="lora.r", type=int, help="LoRA rank")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--overwrite", action="store_const", const=True,
                   help="replace a run in the output folder (never a folder that is not one)")
    p.add_argument("--skip-invalid", dest="skip_invalid", action="store_const", const=True,
                   help="leave out invalid records (each reported) instead of stopping")
    p.add_argument("--resume", nargs="?", const=True, metavar="PARTIAL_RUN",
                   help="continue an interrupted run from its newest valid checkpoint: the "
                   "unfinished run of the output folder, or the <run>.partial folder (or one "
                   "of its checkpoints) given here, whose config is used")
    p.add_argument("--force-resume", action="store_true",
                   help="resume even though settings, data or model changed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(config_flags=[a.dest for a in p._actions if a.dest not in (
        "help", "items", "no_progress", "resume", "force_resume")])


def cmd_train(args) -> int:
    from unitune.train.recipe import Interrupted, resume_config, train

    if isinstance(args.resume, str) and not Path(args.resume).is_dir() and (
            "=" in args.resume or args.resume.endswith((".yaml", ".yml"))):
        args.items.append(args.resume)  # `--resume key=value` / `--resume run.yaml`: an
        args.resume = True              # override or the config, not a folder to resume
    flags = {k: getattr(args, k) for k in args.config_flags}
    base_config = None
    if isinstance(args.resume, str):  # a partial run: its config, in its place
        base_config, flags["output_dir"] = resume_config(args.resume, flags.get("output_dir"))
    cfg = train_config(args, flags, base_config)
    try:
        out = train(cfg, log=stderr, progress=not args.no_progress,
                    resume_from=args.resume or False, force_resume=args.force_resume)
    except Interrupted as exc:
        if distributed.is_main():
            stderr(str(exc))
        return 128 + exc.signum
    if distributed.is_main():  # (once, not once per process)
        print(f"finished: {out}")
    return 0


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="train the same data with several methods; one loss "
                       "picture and a table",
                       description="A study whose one axis is the method: runs `train` once per "
                       "method into OUT/runs/<method> (finished runs are kept, partial ones "
                       "resumed), then draws their training-loss curves on one picture and "
                       "tabulates trainable share, final losses and (with --test) exact match "
                       "in OUT/study.md.")
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value")
    p.add_argument("--methods", required=True, help="comma-separated, e.g. lora,adalora,ia3")
    p.add_argument("--out", required=True, help="folder for the runs and the report")
    p.add_argument("--test", help="Alpaca/ShareGPT file scored by exact match after training")
    p.add_argument("--no-progress", action="store_true")


def cmd_compare(args) -> int:
    from unitune.train.compare import compare

    cfg = train_config(args, {"output_dir": args.out})
    compare(cfg, [m.strip() for m in args.methods.split(",") if m.strip()], Path(args.out),
            args.test, log=stderr, progress=not args.no_progress)
    print(Path(args.out, "study.md").read_text(encoding="utf-8"), end="")
    return 0


def add_compose(sub) -> None:
    from unitune.compose import COMBINES

    p = sub.add_parser("compose", help="module arithmetic: add, negate, transfer adapters",
                       description="Combine trained runs with an expression such as "
                       "'0.5*math + 0.5*code', 'chat - 0.6*toxic' or "
                       "'λ*cls + (1-λ)*(lm_b - lm_a)'. Names are run folders (or folders under "
                       "--root). λ (or any parameter) is set with --lambda or chosen by --sweep. "
                       "An expression that starts with '-' may be given as is.")
    p.add_argument("expression")
    p.add_argument("-o", "--out", required=True, help="folder for the composed run")
    p.add_argument("--root", default=".", help="where names are looked up (default .)")
    p.add_argument("--lambda", dest="lam", action="append", default=[], metavar="[NAME=]VALUE",
                   help="a parameter's value: '0.3' sets λ, 'mu=0.3' another (repeatable)")
    p.add_argument("--combine", choices=COMBINES, default="paper",
                   help="paper: the paper's per-parameter operators, rank kept (default); "
                   "exact: the summed update itself (LoRA ranks concatenated or --rank by SVD; "
                   "DoRA/AdaLoRA; bottlenecks concatenated); ties, dare_linear, dare_ties, "
                   "magnitude_prune: PEFT's, with --density")
    p.add_argument("--rank", type=int, help="LoRA, exact or pruning rules: SVD to this rank")
    p.add_argument("--density", type=float, help="pruning rules: share of each task vector kept")
    p.add_argument("--majority-sign", choices=["total", "frequency"], default="total",
                   help="ties, dare_ties: how the sign of each weight is elected")
    p.add_argument("--seed", type=int, default=0, help="dare_*: the random drop's seed")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=START:STOP:STEP",
                   help="values to score, e.g. 'λ=0:1:0.02' (repeat for a grid over several)")
    p.add_argument("--eval-data", help="sweep: pick the point with the best exact match here")
    p.add_argument("--ppl-text", help="sweep: reference text (.txt) or conversations (scored "
                   "on the replies); pick the largest λ whose perplexity rise over λ=0 stays "
                   "within --ppl-bound")
    p.add_argument("--ppl-bound", type=number(0, strict=False), default=0.5)
    p.add_argument("--max-new-tokens", type=whole(1), default=32,
                   help="sweep: answer length for exact match")
    p.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="the runs' model may run its own code (sweeps and some rules load it)")


def cmd_compose(args) -> int:
    from unitune.compose.compose import compose, sweep
    from unitune.compose.expr import parse_lambda, parse_sweep

    out = Path(args.out)
    values = dict(parse_lambda(v) for v in args.lam)
    rule = dict(combine=args.combine, rank=args.rank, density=args.density,
                majority_sign=args.majority_sign, seed=args.seed, overwrite=args.overwrite,
                trust_remote_code=args.trust_remote_code, log=stderr)
    if args.sweep:
        sweep(args.expression, out, dict(parse_sweep(v) for v in args.sweep), Path(args.root),
              args.eval_data, args.ppl_text, args.ppl_bound, values,
              max_new_tokens=args.max_new_tokens, **rule)
    else:
        for flag in ("eval_data", "ppl_text"):
            if getattr(args, flag):
                raise UserError(f"--{flag.replace('_', '-')} scores a --sweep; add --sweep "
                                "'λ=0:1:0.1' or drop it")
        compose(args.expression, out, Path(args.root), values, **rule)
    print(f"composed run: {out}")
    return 0


def expression_first(parser: Parser, argv: list[str]) -> list[str]:
    """``unitune compose -0.5*x ...``: an expression that starts with '-' is not an option
    (argparse would take it for one); a leading space makes argparse read it as positional."""
    if "compose" not in argv:
        return argv
    compose = parser._subparsers._group_actions[0].choices["compose"]
    flags = {s for a in compose._actions for s in a.option_strings}
    takes_value = {s for a in compose._actions if a.nargs != 0 for s in a.option_strings}
    out = list(argv)
    for i in range(argv.index("compose") + 1, len(argv)):
        arg = argv[i]
        if arg.startswith("-") and not arg.startswith("--") and arg[:2] not in flags \
                and out[i - 1] not in takes_value:
            out[i] = " " + arg
            break
    return out


def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="fold a run's adapter into its base; save a HF checkpoint",
                       description="Merge LoRA/IA3 (or a composed adapter) into the base "
                       "weights and save safetensors + tokenizer + template. A quantized base "
                       "is merged in 16-bit, never in its quantized form.")
    p.add_argument("run_dir")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--quantize", choices=["8bit", "4bit"],
                   help="re-quantize the merged 16-bit weights (CUDA + bitsandbytes)")
    p.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="the run's model may run its own code")


def cmd_merge(args) -> int:
    from unitune.export.merge import merge

    out = merge(Path(args.run_dir), Path(args.out), args.dtype, args.overwrite, args.quantize,
                args.trust_remote_code)
    print(f"merged model: {out}")
    print(f"serve it with vLLM: vllm serve {out}")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="serve or run a run elsewhere (vLLM, llama.cpp / Ollama)")
    esub = p.add_subparsers(dest="export_command", required=True, metavar="export-command",
                            parser_class=Parser)
    v = esub.add_parser("vllm", help="whether vLLM serves the run's adapter as it is, and the "
                        "`vllm serve` command",
                        description="vLLM (--enable-lora) serves plain LoRA / rsLoRA adapters "
                        "without modules_to_save up to rank 512; anything else is merged first. "
                        "Prints which applies and the command.")
    v.add_argument("run_dir")
    g = esub.add_parser("gguf", help="a run (merged first) or a model as GGUF for llama.cpp, "
                        "with an Ollama Modelfile",
                        description="Writes OUT/<name>-<type>.gguf for each --type (f16, "
                        "q8_0, f32) with the gguf package: the weights (an adapter folded in "
                        "first), the tokenizer, the special ids and the chat template; and "
                        "OUT/Modelfile for Ollama. Llama, Mistral, Qwen2 and Qwen3 models.")
    g.add_argument("target", help="a run folder or a model folder")
    g.add_argument("-o", "--out", required=True, help="the folder to write into")
    g.add_argument("--type", default="f16,q8_0", help="comma-separated: f16, q8_0, f32")
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--trust-remote-code", action="store_true")


def cmd_export(args) -> int:
    if args.export_command == "gguf":
        from unitune.export.gguf import export_gguf

        for path in export_gguf(args.target, Path(args.out), [t.strip() for t in
                                                               args.type.split(",")],
                                args.overwrite, args.trust_remote_code, log=stderr):
            print(path)
        return 0
    from unitune.export.vllm import vllm_plan

    as_adapter, reasons, command = vllm_plan(Path(args.run_dir))
    if as_adapter:
        print("vLLM serves this adapter as it is, beside its base:")
    elif reasons:
        print(f"vLLM cannot serve this adapter as it is ({'; '.join(reasons)}); merge it first:")
    else:
        print("a whole model; vLLM serves the folder:")
    print(command)
    return 0


def add_vocab(sub) -> None:
    p = sub.add_parser("vocab", help="tokenizer vocabulary: extend a SentencePiece tokenizer "
                       "with another's pieces (Chinese-LLaMA)")
    vsub = p.add_subparsers(dest="vocab_command", required=True, metavar="vocab-command",
                            parser_class=Parser)
    e = vsub.add_parser("extend", help="append the pieces of --add to --base's, every "
                        "original id kept; save a Hugging Face tokenizer",
                        description="Merges SentencePiece models: the base's pieces keep their "
                        "ids, the new ones are appended once each. Writes OUT with "
                        "tokenizer.model and tokenizer.json (and the base's special tokens and "
                        "chat template when --base is a tokenizer folder), and reports the "
                        "vocabulary size and tokens per character on --sample. Train with "
                        "tokenizer=OUT: the embeddings grow, the new rows start at the mean.")
    e.add_argument("--base", required=True, help="a .model file or a tokenizer folder with "
                   "tokenizer.model (e.g. LLaMA's)")
    e.add_argument("--add", action="append", required=True, metavar="MODEL",
                   help="a SentencePiece .model whose new pieces are appended (repeatable)")
    e.add_argument("-o", "--out", required=True, help="the tokenizer folder to write")
    e.add_argument("--sample", help="text to measure tokens per character on (a .txt or any "
                   "conversation file)")
    e.add_argument("--overwrite", action="store_true")


def cmd_vocab(args) -> int:
    from unitune.models.vocab import extend

    result = extend(args.base, args.add, Path(args.out), args.overwrite, args.sample,
                    log=stderr)
    lines = [f"vocabulary: {result['vocab_before']:,} -> {result['vocab_after']:,}"]
    if result["tokens_per_char_before"] is not None:
        lines.append(f"tokens per character on {args.sample} ({result['sample_chars']:,} "
                     f"characters): {result['tokens_per_char_before']:.3f} -> "
                     f"{result['tokens_per_char_after']:.3f} ({result['ratio']:.0%})")
    print("\n".join(lines))
    return 0
