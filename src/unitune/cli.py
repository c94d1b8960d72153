"""The ``unitune`` command line: parses arguments and calls the package; no logic of its own.

User errors (``UserError``, bad flags) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from unitune.errors import UserError, did_you_mean


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line with a 'did you mean' hint for misspelled flags."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            message = unknown_flags_message(self, message.split(":", 1)[1].split())
        elif message.startswith("argument command: invalid choice"):
            bad = message.split("'")[1] if "'" in message else ""
            choices = [a for a in self._subparsers._group_actions[0].choices] \
                if self._subparsers else []
            message = f"unknown command '{bad}'{did_you_mean(bad, choices)}"
        raise UserError(f"{self.prog}: {message}")


def unknown_flags_message(parser: argparse.ArgumentParser, args: list[str]) -> str:
    options = [s for a in parser._actions for s in a.option_strings]
    parts = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        parts.append(f"unknown option '{flag}'{did_you_mean(flag, options)}"
                     if flag.startswith("-") else f"unexpected argument '{arg}'")
    return "; ".join(parts)


def _add_train(sub) -> None:
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


def _train_config(args, flags: dict, base_config: str | None = None):
    """A ``TrainConfig`` from the positional items (one YAML file, key=value overrides) and
    flags; ``base_config`` is the file used when no YAML file is given."""
    from unitune.config import TrainConfig, build_config

    configs = [i for i in args.items if "=" not in i]
    overrides = [i for i in args.items if "=" in i]
    if len(configs) > 1:
        raise UserError(f"{args.command} takes one config file, got {len(configs)}: "
                        f"{', '.join(configs)}")
    return build_config(TrainConfig, configs[0] if configs else base_config, overrides, flags)


def cmd_train(args) -> int:
    from unitune.train.recipe import Interrupted, resume_config, train

    flags = {k: getattr(args, k) for k in args.config_flags}
    base_config = None
    if isinstance(args.resume, str):  # a partial run: its config, in its place
        base_config, flags["output_dir"] = resume_config(args.resume, flags.get("output_dir"))
    cfg = _train_config(args, flags, base_config)
    try:
        out = train(cfg, progress=not args.no_progress, resume_from=args.resume or False,
                    force_resume=args.force_resume)
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return 128 + exc.signum
    print(f"finished: {out}")
    return 0


def _add_compare(sub) -> None:
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

    cfg = _train_config(args, {"output_dir": args.out})
    compare(cfg, [m.strip() for m in args.methods.split(",") if m.strip()], Path(args.out),
            args.test, progress=not args.no_progress)
    return 0


def _add_compose(sub) -> None:
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
    p.add_argument("--ppl-bound", type=float, default=0.5)
    p.add_argument("--max-new-tokens", type=int, default=32,
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
                trust_remote_code=args.trust_remote_code)
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


def _expression_first(parser: Parser, argv: list[str]) -> list[str]:
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


def _add_merge(sub) -> None:
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


def _add_export(sub) -> None:
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
                        "OUT/Modelfile for Ollama. Llama-architecture models (Llama, Mistral).")
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
                                args.overwrite, args.trust_remote_code, log=_stderr):
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


def _add_decoding(p, max_new_tokens: int = 128) -> None:
    """The decoding controls, over a named preset (only the flags given change it)."""
    g = p.add_argument_group("decoding")
    g.add_argument("--preset", default="greedy", help="greedy (default) or alpaca_cot "
                   "(Alpaca-CoT's defaults: sampling, top_p 0.9, no_repeat_ngram_size 6, "
                   "repetition_penalty 1.8)")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--do-sample", action="store_true", default=None,
                   help="sample instead of greedy decoding")
    for flag, kind in (("--temperature", float), ("--top-p", float), ("--top-k", int),
                       ("--min-p", float), ("--repetition-penalty", float),
                       ("--no-repeat-ngram-size", int), ("--num-beams", int), ("--seed", int)):
        g.add_argument(flag, type=kind, default=None)


def _decoding(args):
    from dataclasses import replace

    from unitune.infer.generate import preset

    given = {k: getattr(args, k) for k in ("max_new_tokens", "do_sample", "temperature",
                                           "top_p", "top_k", "min_p", "repetition_penalty",
                                           "no_repeat_ngram_size", "num_beams", "seed")
             if getattr(args, k) is not None}
    return replace(preset(args.preset), **given)


def _add_engine(p, several: bool = True) -> None:
    p.add_argument("target", help="a finished run folder, or a base model (preset, folder or "
                   "hub id)")
    if several:
        p.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN",
                       help="serve another adapter of the same base under NAME; RUN may be a "
                       "module-arithmetic expression (repeatable)")
    p.add_argument("--template", default=None,
                   help="a base model's template (default: its own); overriding a run's is "
                   "warned about (it was trained with its own)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--static-cache", action="store_true",
                   help="a static KV cache, with which transformers compiles decoding on a GPU "
                   "(fastest at one steady batch size, e.g. a chat; each new shape compiles)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the model run its own code (a base model's, or a run's trained with "
                   "trust_remote_code)")
    p.add_argument("--rope", metavar="TYPE:FACTOR", help="RoPE scaling (linear, dynamic or "
                   "yarn), e.g. dynamic:4: a base model's longer context, or instead of a "
                   "run's own (warned about)")


def _rope(args) -> dict | None:
    from unitune.models.rope import parse  # (imported on use: the CLI starts light)

    return parse(args.rope)


def _engine(args, **kw):
    from unitune.infer.engine import Engine

    adapters = {}
    for item in getattr(args, "adapter", []):
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise UserError(f"--adapter {item!r}: expected NAME=RUN (a run folder or an "
                            "expression over runs)")
        adapters[name.strip()] = source.strip()
    return Engine(args.target, adapters, device=args.device, template=args.template,
                  trust_remote_code=args.trust_remote_code, static_cache=args.static_cache,
                  rope_scaling=_rope(args), log=_stderr, **kw)


def _first_model(engine, args) -> str:
    """``--model`` (checked), else the run (the first adapter), else the base."""
    model = getattr(args, "model", None) or (engine.adapters[0] if engine.adapters else
                                             engine.base_id)
    engine.template(model)  # an unknown name fails here
    return model


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer an instruction with a run or a base model",
                       description="Open a run (base + adapter, as trained) or a base model "
                       "and answer one instruction, rendered with the run's own template.")
    _add_engine(p, several=False)
    p.add_argument("instruction", help="the instruction (prompt)")
    p.add_argument("--input", default="", help="optional input/context for the instruction")
    p.add_argument("--system", default=None, help="system prompt (default: the template's)")
    _add_decoding(p)


def cmd_generate(args) -> int:
    from unitune.data.schema import Conversation, Turn
    from unitune.infer.engine import Request

    decoding = _decoding(args)
    conv = Conversation((Turn("user", args.instruction, args.input),), system=args.system or "")
    with _engine(args) as engine:
        model = _first_model(engine, args)
        prompt = engine.template(model).render_prompt(conv, engine.tokenizer)
        print(engine.generate(Request(model, prompt, decoding)).seqs[0].text.strip())
    return 0


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to a run or a base model in the terminal",
                       description="A multi-turn chat, streamed, rendered with the model's "
                       "template. /help inside lists the commands; Ctrl-C stops a reply.")
    _add_engine(p)
    p.add_argument("--model", help="the served model or adapter to start with (default: the "
                   "run, else the base)")
    p.add_argument("--system", default="", help="system prompt")
    _add_decoding(p, max_new_tokens=256)


def cmd_chat(args) -> int:
    from unitune.infer.chat import ChatSession

    with _engine(args) as engine:
        ChatSession(engine, _first_model(engine, args), _decoding(args), args.system).run()
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="batch prediction over a data file (resumable)",
                       description="Answer every record of IN (any supported format) and write "
                       "JSON lines to OUT in input order; run it again to continue after a "
                       "crash or Ctrl-C.")
    _add_engine(p)
    p.add_argument("data", metavar="IN")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--model", help="the served model or adapter to use (default: the run)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")
    _add_decoding(p)


def cmd_predict(args) -> int:
    from unitune.infer.predict import predict

    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {args.batch_size}")
    decoding = _decoding(args)
    with _engine(args, max_batch=args.batch_size, max_queue=args.batch_size) as engine:
        predict(engine, _first_model(engine, args), args.data, Path(args.out), decoding,
                args.batch_size, progress=not args.no_progress, log=_stderr)
    return 0


def _check_host(args) -> None:
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        raise UserError(f"--host {args.host} listens beyond this machine: give --api-key (or "
                        "set UNITUNE_API_KEY)")
    if getattr(args, "share", False) and not args.api_key:
        raise UserError("--share opens a public link: give --api-key (the page's password) "
                        "too")


def _add_web(sub) -> None:
    p = sub.add_parser("web", help="a chat page in the browser over a run and its adapters",
                       description="A Gradio chat page on 127.0.0.1 unless told otherwise: "
                       "model/adapter choice, system prompt, decoding controls, streaming. "
                       "`unitune serve --web` puts it beside the API in one process.")
    _add_engine(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--api-key", default=os.environ.get("UNITUNE_API_KEY"),
                   help="the page's password (user 'unitune'); needed beyond 127.0.0.1")
    p.add_argument("--share", action="store_true",
                   help="also open a public Gradio share link (off unless asked)")
    p.add_argument("--model", help="the served model or adapter the page starts with")
    _add_decoding(p, max_new_tokens=256)


def cmd_web(args) -> int:
    from unitune.serve.web import build_ui

    _check_host(args)
    with _engine(args) as engine:
        demo = build_ui(engine, _decoding(args), _first_model(engine, args))
        _stderr(f"chat page on http://{args.host}:{args.port}")
        demo.queue(default_concurrency_limit=None).launch(
            server_name=args.host, server_port=args.port, share=args.share, quiet=True,
            auth=("unitune", args.api_key) if args.api_key else None)
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible API over a run and its adapters",
                       description="Serve /v1/models, /v1/chat/completions and /v1/completions "
                       "(streaming, n, stop, seed, logprobs, echo, tools) on 127.0.0.1 unless "
                       "told otherwise. The base and every adapter are models, chosen by the "
                       "request's 'model' field.")
    _add_engine(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("UNITUNE_API_KEY"),
                   help="required as 'Authorization: Bearer KEY' (default: $UNITUNE_API_KEY); "
                   "needed to listen beyond 127.0.0.1")
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting; more are answered 429")
    p.add_argument("--max-tokens-limit", type=int, default=4096,
                   help="the largest max_tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="prompt + max_tokens limit (default: the model's context length)")
    p.add_argument("--web", action="store_true", help="also serve the chat page at /ui")


def cmd_serve(args) -> int:
    import uvicorn

    from unitune.serve.openai_api import build_app

    _check_host(args)
    with _engine(args, max_batch=args.max_batch, max_queue=args.max_queue,
                 max_prompt_tokens=args.max_prompt_tokens) as engine:
        app = build_app(engine, args.api_key, args.max_tokens_limit)
        if args.web:
            import gradio as gr

            from unitune.infer.generate import preset
            from unitune.serve.web import build_ui

            app = gr.mount_gradio_app(app, build_ui(engine, preset("greedy")), path="/ui",
                                      auth=("unitune", args.api_key) if args.api_key else None)
        _stderr(f"serving {', '.join(m['id'] for m in engine.models())} on "
                f"http://{args.host}:{args.port}/v1" + (f" and the chat page on "
                                                        f"http://{args.host}:{args.port}/ui"
                                                        if args.web else ""))
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _add_eval(sub) -> None:
    from unitune.eval.suite import TASKS

    p = sub.add_parser("eval", help="evaluate a run, a base model or an endpoint: benchmarks "
                       "(MMLU, CMMLU, C-Eval, MMCU, BBH, CRASS, HHH, DROP, HumanEval, "
                       "Belle-Eval), perplexity, exact match on a file",
                       description="--tasks NAMES --data-dir DIR: benchmarks from their official "
                       "files in DIR (one folder per benchmark: mmlu/, cmmlu/, ceval/, mmcu/, "
                       "bbh/, crass/, hhh/, drop/, humaneval/, belle_eval/). The multiple-"
                       "choice, BBH, HHH and DROP tasks run on lm-evaluation-harness (in "
                       "process, or on an OpenAI-compatible endpoint given as TARGET "
                       "http://.../v1); HumanEval runs the generated code in a sandbox; "
                       "belle_eval, impact (relevance, coherence 1-5), mt_bench (1-10) and "
                       "winrate (against a reference model's outputs) are graded by an LLM "
                       "(--judge-url, --judge-model). Every "
                       "answer is cached next to --report: a rerun continues. --perplexity "
                       "FILE: sliding-window perplexity. --data FILE: exact match on an Alpaca "
                       "file (--reward RM_RUN: and the reward model's mean reward of the "
                       "answers). --preference FILE: how often the model (a reward model: by "
                       "its score; any other: by log-likelihood) prefers the chosen answer of "
                       "each preference pair.")
    _add_engine(p, several=False)
    p.add_argument("--data", help="Alpaca json/jsonl file with reference outputs (exact match)")
    p.add_argument("--reward", metavar="RM_RUN", help="--data: also score every answer with "
                   "this reward model (a stage=rm run)")
    p.add_argument("--preference", metavar="FILE", help="preference pairs: pairwise accuracy")
    p.add_argument("--perplexity", metavar="FILE", help="perplexity on a text file (.txt, "
                   "{\"text\"} records; conversations are scored on their replies)")
    p.add_argument("--window", type=int, default=512,
                   help="--perplexity: tokens per window (sliding over long texts)")
    p.add_argument("--stride", type=int, default=512,
                   help="--perplexity: new tokens per window (< --window: overlapping "
                   "context, as in the module-arithmetic paper's protocol)")
    p.add_argument("--tasks", help=f"benchmark tasks, comma-separated: {', '.join(TASKS)}")
    p.add_argument("--data-dir", help="--tasks: the directory holding the benchmarks' files")
    p.add_argument("--protocol", choices=["harness", "instructeval"], default="harness",
                   help="harness: lm-evaluation-harness's prompts and log-likelihood scoring; "
                   "instructeval: InstructEval's (Flacuna's tables): the generated answer must "
                   "start with the right letter, HHH asked in both orders")
    p.add_argument("--shots", type=int, help="few-shot examples (default: the sources': 5 "
                   "MMLU/CMMLU/C-Eval, 3 BBH/CRASS/DROP, 0 HHH)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap prompts in the model's chat template (default: for generation "
                   "tasks of a model that has one; log-likelihood tasks stay plain)")
    p.add_argument("--served-model", help="an endpoint TARGET: the model name it serves")
    p.add_argument("--tokenizer", help="an endpoint TARGET: the tokenizer (a run folder or "
                   "its base) that counts tokens for log-likelihood tasks")
    p.add_argument("--api-key", default=os.environ.get("UNITUNE_API_KEY"),
                   help="an endpoint TARGET: its API key (default: $UNITUNE_API_KEY)")
    p.add_argument("--max-length", type=int, help="context length in tokens (default: the "
                   "model's; 2048 for an endpoint)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length (default: 64 for --data, 384 humaneval, 512 belle_eval)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n", type=int, default=1, help="humaneval: samples per problem (greedy "
                   "when 1, else sampled at --temperature)")
    p.add_argument("--k", default="1", help="humaneval: pass@k to report, e.g. 1,10")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=1234, help="the seed of sampling and of the "
                   "harness's few-shot sampler")
    p.add_argument("--limit", type=int, help="only the first N questions of each subject")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="humaneval: seconds each program may run")
    p.add_argument("--samples", help="humaneval: JSON lines of every sample (a rerun "
                   "continues from it; default: REPORT.humaneval.jsonl, else "
                   "eval.humaneval.jsonl)")
    p.add_argument("--judge-url", help="judged tasks: the grading LLM, an OpenAI-compatible "
                   "endpoint (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--judge-model", help="judged tasks: the judge's model name")
    p.add_argument("--judge-key", default=os.environ.get("UNITUNE_JUDGE_KEY"),
                   help="judged tasks: the judge's API key (default: $UNITUNE_JUDGE_KEY)")
    p.add_argument("--report", help="write the full result as JSON here (--tasks: also .md and "
                   ".samples.jsonl beside it; default RUN/eval/TASKS.json for a run, else "
                   "./eval-MODEL-TASKS.json; caches and answers go beside it, so a rerun "
                   "continues)")


def cmd_eval(args) -> int:
    if sum(map(bool, (args.data, args.tasks, args.perplexity, args.preference))) != 1:
        raise UserError("unitune eval: give one of --data FILE (exact match), --tasks NAMES "
                        "(benchmarks), --perplexity FILE and --preference FILE")
    if args.reward and not args.data:
        raise UserError("--reward scores the answers of --data FILE; give --data")
    if args.tasks:
        return _eval_tasks(args)
    if args.perplexity:
        return _eval_perplexity(args)
    if args.preference:
        return _eval_preference(args)
    from unitune.data.readers import read_conversations
    from unitune.eval.exact_match import evaluate_exact_match, write_report
    from unitune.run import open_model

    records = read_conversations(args.data)
    reward = None
    if args.reward:
        from unitune.run import read_finished
        from unitune.train.rewards import RewardModel

        if read_finished(args.reward).kind != "rm":  # (before any weights load)
            raise UserError(f"--reward {args.reward}: not a reward model (a stage=rm run)")
        reward = RewardModel(args.reward, args.device, args.trust_remote_code, _stderr)
    model, tokenizer, template = open_model(args.target, device=args.device,
                                            template=args.template,
                                            trust_remote_code=args.trust_remote_code,
                                            log=_stderr, rope_scaling=_rope(args))
    result = evaluate_exact_match(model, tokenizer, template, records,
                                  args.max_new_tokens or 64, args.batch_size,
                                  reward=reward.score if reward else None)
    print(result.table())
    if args.report:
        write_report(result, Path(args.report))
    return 0


def _eval_preference(args) -> int:
    import json

    from unitune.data.readers import iter_accepted
    from unitune.data.schema import PreferencePair
    from unitune.eval.preference import evaluate_preferences

    pairs = list(iter_accepted(args.preference, accept=(PreferencePair,),
                               purpose="--preference"))
    result = evaluate_preferences(args.target, pairs, args.device, args.template,
                                  args.trust_remote_code, args.max_length,
                                  min(args.batch_size, 16), log=_stderr)
    print(result.table())
    if args.report:
        Path(args.report).write_text(json.dumps(result.as_dict(), indent=1), encoding="utf-8")
    return 0


def _eval_perplexity(args) -> int:
    import json

    from unitune.eval.perplexity import perplexity, read_reference, reference_windows
    from unitune.run import open_model

    if not 0 < args.stride <= args.window:
        raise UserError(f"--stride must be in 1..--window ({args.window}), got {args.stride}")
    records = read_reference(args.perplexity)
    model, tokenizer, template = open_model(args.target, device=args.device,
                                            template=args.template,
                                            trust_remote_code=args.trust_remote_code,
                                            log=_stderr, rope_scaling=_rope(args))
    windows = reference_windows(records, tokenizer, template, args.window, args.stride)
    result = {"model": args.target, "file": args.perplexity, "window": args.window,
              "stride": args.stride, "rope": args.rope, "windows": len(windows),
              "perplexity": perplexity(model, windows)}
    print(json.dumps(result, indent=1))
    if args.report:
        Path(args.report).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


def _eval_tasks(args) -> int:
    from unitune.eval.harness import table, write_report
    from unitune.eval.suite import EvalSettings, evaluate, settings

    if not args.data_dir:
        raise UserError("--tasks needs --data-dir, the directory with the benchmarks' files "
                        "(one folder per benchmark, or the benchmark's own folder)")
    s = settings("unitune eval", **{n: getattr(args, n) for n in EvalSettings.model_fields
                                    if getattr(args, n, None) is not None})  # (one flag each)
    if args.report:
        report_path = Path(args.report)
    elif Path(args.target, "run.json").exists():  # results are kept beside the run
        report_path = Path(args.target) / "eval" / f"{'+'.join(s.tasks)}.json"
    else:  # (named after the model: another model's cached answers are never reused)
        import re

        name = s.served_model if args.target.startswith("http") else Path(args.target).name
        report_path = Path(f"eval-{re.sub(r'[^A-Za-z0-9._-]+', '-', name or 'model')}-"
                           f"{'+'.join(s.tasks)}.json")
    report = evaluate(args.target, s, report_path.with_suffix(""), log=_stderr)
    write_report(report, report_path)
    print(table(report))
    _stderr(f"report: {report_path} (and .md, .samples.jsonl)")
    return 0


def _add_vocab(sub) -> None:
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
    import json

    from unitune.models.vocab import base_tokenizer, extend, report, sample_texts

    texts = sample_texts(args.sample) if args.sample else []
    out = Path(args.out)
    extended = extend(args.base, args.add, out, args.overwrite, log=_stderr)
    before = base_tokenizer(args.base)
    result = report(before, extended, texts)
    (out / "vocab_report.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    lines = [f"vocabulary: {result['vocab_before']:,} -> {result['vocab_after']:,}"]
    if texts:
        lines.append(f"tokens per character on {args.sample} ({result['sample_chars']:,} "
                     f"characters): {result['tokens_per_char_before']:.3f} -> "
                     f"{result['tokens_per_char_after']:.3f} ({result['ratio']:.0%})")
    print("\n".join(lines))
    return 0


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="a grid of train + eval runs (base models x methods x data "
                       "mixes x seeds) and its comparison report",
                       description="Trains and evaluates every point of STUDY.yaml's grid "
                       "(output_dir, train: shared training keys, grid: the axes, eval: test "
                       "file and benchmark settings), keeping finished runs and results and "
                       "resuming partial runs, then writes OUT/study.md (every run, means over "
                       "seeds, a pivot of the first two axes), study.json and the pictures "
                       "study_loss.png and study_scores.png.")
    p.add_argument("study", metavar="STUDY.yaml")
    p.add_argument("--dry-run", action="store_true", help="list the grid's runs and stop")
    p.add_argument("--no-progress", action="store_true")


def cmd_study(args) -> int:
    from unitune.eval.study import load_study, plan, run_study

    study = load_study(args.study)
    if args.dry_run:
        for name, cfg, _ in plan(study, args.study)[0]:
            print(f"{name}\t{cfg.output_dir}")
        return 0
    report = run_study(study, args.study, log=_stderr, progress=not args.no_progress)
    print(Path(study.output_dir, "study.md").read_text(encoding="utf-8"), end="")
    return 0 if report["runs"] else 1


def _add_eval_compare(sub) -> None:
    p = sub.add_parser("eval-compare", prog="unitune eval compare",
                       help="`unitune eval compare RUNS...`: finished results side by side",
                       description="Finished results side by side: run folders (their "
                       "losses and the reports under RUN/eval/) and `unitune eval` reports; "
                       "metrics by rows, the best of each in bold.")
    p.add_argument("results", nargs="+", metavar="RUN_OR_REPORT")
    p.add_argument("-o", "--out", help="also write OUT.md, OUT.json and OUT.png")


def cmd_eval_compare(args) -> int:
    from unitune.eval.study import compare_results

    print(compare_results(args.results, Path(args.out) if args.out else None))
    return 0


def _add_arena(sub) -> None:
    p = sub.add_parser("arena", help="models answer the same prompts, a judge (an LLM or a "
                       "person) compares them pairwise; Elo and Bradley-Terry leaderboard",
                       description="Each --model answers every prompt of --prompts (any "
                       "conversation format, or .txt with one prompt per line: the first user "
                       "turn is asked); an OpenAI-compatible judge (unitune serve included) "
                       "compares every pair with positions randomised, or, with --human, a "
                       "person does on a web page; the leaderboard (Elo and Bradley-Terry with "
                       "bootstrap intervals) is written to -o as Markdown, JSON and PNG. "
                       "Answers and judgments are cached there: a rerun continues.")
    p.add_argument("--model", action="append", default=[], metavar="NAME=RUN",
                   help="a contestant: a run or a base model (repeat, at least twice)")
    p.add_argument("--prompts", required=True)
    p.add_argument("--judge-url", help="the judging LLM, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model")
    p.add_argument("--judge-key", default=os.environ.get("UNITUNE_JUDGE_KEY"),
                   help="the judge's API key (default: $UNITUNE_JUDGE_KEY)")
    p.add_argument("--human", action="store_true", help="a person judges on a web page "
                   "(the answers shown side by side, models hidden)")
    p.add_argument("--host", default="127.0.0.1", help="--human: the page's address")
    p.add_argument("--port", type=int, default=7861, help="--human: the page's port")
    p.add_argument("--api-key", default=os.environ.get("UNITUNE_API_KEY"),
                   help="--human: the page's password (user 'unitune'); needed to listen "
                   "beyond 127.0.0.1")
    p.add_argument("-o", "--out", required=True, help="folder for answers, judgments, results")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--rounds", type=int, default=200, help="bootstrap resamples")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _add_decoding(p, max_new_tokens=256)


def cmd_arena(args) -> int:
    from unitune.eval.answers import read_prompts
    from unitune.eval.arena import Judge, run_arena
    from unitune.eval.ratings import markdown

    models = {}
    for item in args.model:
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise UserError(f"--model {item!r}: expected NAME=RUN")
        models[name.strip()] = target.strip()
    if args.human == bool(args.judge_url and args.judge_model):
        raise UserError("give a judge: --judge-url and --judge-model (an LLM), or --human "
                        "(a person on a web page)")
    questions = read_prompts(args.prompts)[:args.limit]
    if not questions:
        raise UserError(f"{args.prompts}: no prompts")
    if args.human:
        return _human_arena(args, models, questions)
    report = run_arena(models, questions, Judge(args.judge_url, args.judge_model,
                                                args.judge_key), Path(args.out),
                       _decoding(args), args.seed or 0, args.rounds, args.device, _stderr)
    print(markdown(report["leaderboard"]), end="")
    return 0


def _human_arena(args, models: dict[str, str], questions: list[str]) -> int:
    from unitune.eval.answers import collect_answers
    from unitune.serve.web import HumanArena, build_arena_ui

    _check_host(args)
    if len(models) < 2:
        raise UserError("an arena needs at least two models (--model NAME=RUN, twice)")
    out = Path(args.out)
    answers = collect_answers(models, questions, out, _decoding(args), args.device, _stderr)
    arena = HumanArena(list(models), questions, answers, out, args.seed or 0, args.rounds)
    _stderr(f"arena page on http://{args.host}:{args.port} ({len(arena.pending())} "
            f"comparisons to judge; votes go to {out / 'judgments.jsonl'})")
    build_arena_ui(arena).queue().launch(
        server_name=args.host, server_port=args.port, quiet=True,
        auth=("unitune", args.api_key) if args.api_key else None)
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="data tools: catalog, synthetic suite, check, convert, "
                       "preview, stats")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="data-command",
                            parser_class=Parser)
    s = dsub.add_parser("synth", help="write the synthetic instruction-task suite",
                        description="Deterministic synthetic tasks with exact answers, in "
                        "Alpaca JSON: train/validation/test splits, preference pairs on the "
                        "train and validation inputs (the exact answer chosen; a wrong or wordy "
                        "one rejected), and a raw pre-training corpus.")
    s.add_argument("--out", default="data/synth", help="output folder (default data/synth)")
    s.add_argument("--families", default=None,
                   help="comma-separated task families (default: the quickstart's)")
    s.add_argument("--train", type=int, default=400, help="training examples per family")
    s.add_argument("--validation", type=int, default=20, help="validation examples per family")
    s.add_argument("--test", type=int, default=40, help="test examples per family")
    s.add_argument("--pretrain", type=int, default=0,
                   help="extra raw examples per family for pretrain.json")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    dsub.add_parser("families", help="list the synthetic task families")
    dsub.add_parser("templates", help="list the prompt templates")
    ls = dsub.add_parser("list", help="the dataset catalog, with tags and filters")
    ls.add_argument("--lang", help="EN, CN or ML")
    ls.add_argument("--task", help="MT (multi-task) or TS (task-specific)")
    ls.add_argument("--gen", help="HG, SI, MIX or COL")
    info = dsub.add_parser("info", help="one catalog dataset: tags, size, where it lives")
    info.add_argument("name")
    info.add_argument("--data-dir", help="where catalog datasets are downloaded")
    ck = dsub.add_parser("check", help="validate files; report every bad record as "
                         "file:line: field: problem")
    ck.add_argument("files", nargs="+")
    ck.add_argument("--format", default="auto", help="reader format (default: detect)")
    cv = dsub.add_parser("convert", help="convert a file to another format")
    cv.add_argument("input")
    cv.add_argument("output", help=".jsonl (one record per line) or .json (an array)")
    cv.add_argument("--to", required=True, help="alpaca, sharegpt, openai, dolly, flan, "
                    "prompt_completion, preference or text")
    cv.add_argument("--format", default="auto", help="input format (default: detect)")
    cv.add_argument("--overwrite", action="store_true")
    si = dsub.add_parser("self-instruct", help="generate instruction data from seed tasks "
                         "with a teacher LLM (Stanford Alpaca's pipeline)",
                         description="Asks an OpenAI-compatible teacher (unitune serve "
                         "included) to continue numbered lists of example tasks, parses the "
                         "replies, keeps the tasks that pass Alpaca's filters and are not "
                         "ROUGE-L-similar to one already kept, and appends them to -o as "
                         "Alpaca JSON lines (a rerun continues); reports the teacher's tokens.")
    si.add_argument("--seed-tasks", required=True, help="self-instruct seed tasks (jsonl) or an "
                    "Alpaca file")
    si.add_argument("--teacher-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    si.add_argument("--teacher-model", required=True)
    si.add_argument("--teacher-key", default=os.environ.get("UNITUNE_TEACHER_KEY"),
                    help="the teacher's API key (default: $UNITUNE_TEACHER_KEY)")
    si.add_argument("-n", "--count", type=int, default=100, help="tasks to generate")
    si.add_argument("-o", "--out", required=True, help="JSON lines (Alpaca format)")
    si.add_argument("--prompt-tasks", type=int, default=3, help="example tasks per request")
    si.add_argument("--max-similarity", type=float, default=0.7,
                    help="ROUGE-L above which a new instruction is a duplicate")
    si.add_argument("--max-requests", type=int, help="give up after this many replies "
                    "(default 4 per task)")
    si.add_argument("--max-tokens", type=int, default=1024, help="the teacher's reply length")
    si.add_argument("--temperature", type=float, default=1.0)
    si.add_argument("--seed", type=int, default=0)
    for name, helptext in (("preview", "render examples through a template and mark the "
                            "trained tokens"),
                           ("stats", "counts, token lengths (histogram PNG), truncation at "
                            "max_length")):
        q = dsub.add_parser(name, help=helptext)
        q.add_argument("files", nargs="+")
        q.add_argument("--format", default="auto")
        q.add_argument("--base-model", default="tiny-llama",
                       help="whose tokenizer to use (preset, folder or hub id)")
        q.add_argument("--template", default="auto")
        q.add_argument("--max-length", type=int, default=512)
        q.add_argument("--masking", choices=["assistant", "last", "all"], default="assistant")
        if name == "preview":
            q.add_argument("-n", type=int, default=2, help="how many examples")
            q.add_argument("--color", choices=["auto", "always", "never"], default="auto")
            q.add_argument("--ids", action="store_true", help="also show the token ids around "
                           "every place where training starts or stops")
        else:
            q.add_argument("--plot", help="write the length histogram PNG here")


def cmd_data(args) -> int:
    from unitune.data import tools

    return tools.run(args)


def _add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="the whole idea on CPU in minutes: data, tiny model, "
                       "exact match before and after LoRA",
                       description="Build the synthetic data and the tiny base (cached after "
                       "the first run), measure held-out exact match, fine-tune with LoRA, "
                       "measure again.")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--size", choices=["full", "smoke"], default="full",
                   help="smoke: a seconds-long run that exercises the plumbing only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def cmd_quickstart(args) -> int:
    from unitune.quickstart import run_quickstart

    run_quickstart(Path(args.out), size=args.size, overwrite=args.overwrite, seed=args.seed,
                   progress=not args.no_progress)
    return 0


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "data": cmd_data,
            "quickstart": cmd_quickstart, "compare": cmd_compare, "compose": cmd_compose,
            "merge": cmd_merge, "chat": cmd_chat, "predict": cmd_predict, "serve": cmd_serve,
            "web": cmd_web, "export": cmd_export, "arena": cmd_arena, "study": cmd_study,
            "eval-compare": cmd_eval_compare, "vocab": cmd_vocab}


def build_parser() -> Parser:
    from unitune import __version__

    parser = Parser(prog="unitune", description="Instruction fine-tuning of LLMs.")
    parser.add_argument("--version", action="version", version=f"unitune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command",
                                parser_class=Parser)
    for add in (_add_quickstart, _add_data, _add_train, _add_compare, _add_compose, _add_merge,
                _add_generate, _add_chat, _add_predict, _add_serve, _add_web, _add_export,
                _add_eval, _add_eval_compare, _add_arena, _add_study, _add_vocab):
        add(sub)
    return parser


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    try:
        parser = build_parser()
        argv = sys.argv[1:] if argv is None else list(argv)
        if argv[:2] == ["eval", "compare"]:  # `unitune eval compare RUNS...`
            argv = ["eval-compare", *argv[2:]]
        args, extra = parser.parse_known_args(_expression_first(parser, argv))
        if hasattr(args, "items"):  # key=value overrides may also come after the flags
            args.items += [e for e in extra if not e.startswith("-")]
            extra = [e for e in extra if e.startswith("-")]
        if extra:
            sub_parser = parser._subparsers._group_actions[0].choices[args.command]
            while sub_parser._subparsers is not None:  # data ..., export ...
                action = sub_parser._subparsers._group_actions[0]
                sub_parser = action.choices[getattr(args, action.dest)]
            raise UserError(f"unitune {args.command}: "
                            f"{unknown_flags_message(sub_parser, extra)}")
        if "transformers" in sys.modules:  # imported already: it has read the variable above
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `unitune data list | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
