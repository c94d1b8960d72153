"""``unitune generate``, ``chat``, ``predict``, ``serve`` and ``web``: the chat engine's front
ends."""

from __future__ import annotations

import os
from pathlib import Path

from unitune.cli.common import (
    PORT,
    add_decoding,
    add_engine,
    check_address,
    decoding_of,
    first_model,
    open_engine,
    stderr,
    whole,
)


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer an instruction with a run or a base model",
                       description="Open a run (base + adapter, as trained) or a base model "
                       "and answer one instruction, rendered with the run's own template.")
    add_engine(p, several=False)
    p.add_argument("instruction", help="the instruction (prompt)")
    p.add_argument("--input", default="", help="optional input/context for the instruction")
    p.add_argument("--system", default=None, help="system prompt (default: the template's)")
    add_decoding(p)


def cmd_generate(args) -> int:
    from unitune.data.schema import Conversation, Turn
    from unitune.infer.engine import Request

    decoding = decoding_of(args)
    conv = Conversation((Turn("user", args.instruction, args.input),), system=args.system or "")
    with open_engine(args) as engine:
        model = first_model(engine, args)
        prompt = engine.template(model).render_prompt(conv, engine.tokenizer)
        print(engine.generate(Request(model, prompt, decoding)).seqs[0].text.strip())
    return 0


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to a run or a base model in the terminal",
                       description="A multi-turn chat, streamed, rendered with the model's "
                       "template. /help inside lists the commands; Ctrl-C stops a reply.")
    add_engine(p)
    p.add_argument("--model", help="the served model or adapter to start with (default: the "
                   "run, else the base)")
    p.add_argument("--system", default="", help="system prompt")
    add_decoding(p, max_new_tokens=256)


def cmd_chat(args) -> int:
    from unitune.infer.chat import ChatSession

    with open_engine(args) as engine:
        ChatSession(engine, first_model(engine, args), decoding_of(args), args.system).run()
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="batch prediction over a data file (resumable)",
                       description="Answer every record of IN (any supported format) and write "
                       "JSON lines to OUT in input order; run it again to continue after a "
                       "crash or Ctrl-C.")
    add_engine(p)
    p.add_argument("data", metavar="IN")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--model", help="the served model or adapter to use (default: the run)")
    p.add_argument("--batch-size", type=whole(1), default=32)
    p.add_argument("--no-progress", action="store_true")
    add_decoding(p)


def cmd_predict(args) -> int:
    from unitune.infer.predict import predict

    decoding = decoding_of(args)
    with open_engine(args, max_batch=args.batch_size, max_queue=args.batch_size) as engine:
        predict(engine, first_model(engine, args), args.data, Path(args.out), decoding,
                args.batch_size, progress=not args.no_progress, log=stderr)
    return 0


def add_web(sub) -> None:
    p = sub.add_parser("web", help="a chat page in the browser over a run and its adapters",
                       description="A Gradio chat page on 127.0.0.1 unless told otherwise: "
                       "model/adapter choice, system prompt, decoding controls, streaming. "
                       "`unitune serve --web` puts it beside the API in one process.")
    add_engine(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=7860)
    p.add_argument("--api-key", default=os.environ.get("UNITUNE_API_KEY"),
                   help="the page's password (user 'unitune'); needed beyond 127.0.0.1")
    p.add_argument("--share", action="store_true",
                   help="also open a public Gradio share link (off unless asked)")
    p.add_argument("--model", help="the served model or adapter the page starts with")
    add_decoding(p, max_new_tokens=256)


def cmd_web(args) -> int:
    from unitune.serve.web import build_ui

    check_address(args)
    with open_engine(args) as engine:
        demo = build_ui(engine, decoding_of(args), first_model(engine, args))
        stderr(f"chat page on http://{args.host}:{args.port}")
        demo.queue(default_concurrency_limit=None).launch(
            server_name=args.host, server_port=args.port, share=args.share, quiet=True,
            auth=("unitune", args.api_key) if args.api_key else None)
    return 0


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible API over a run and its adapters",
                       description="Serve /v1/models, /v1/chat/completions and /v1/completions "
                       "(streaming, n, stop, seed, logprobs, echo, tools) on 127.0.0.1 unless "
                       "told otherwise. The base and every adapter are models, chosen by the "
                       "request's 'model' field.")
    add_engine(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=8000)
    p.add_argument("--api-key", default=os.environ.get("UNITUNE_API_KEY"),
                   help="required as 'Authorization: Bearer KEY' (default: $UNITUNE_API_KEY); "
                   "needed to listen beyond 127.0.0.1")
    p.add_argument("--max-batch", type=whole(1), default=32, help="sequences decoded together")
    p.add_argument("--max-queue", type=whole(1), default=256,
                   help="requests waiting; more are answered 429")
    p.add_argument("--max-tokens-limit", type=whole(1), default=4096,
                   help="the largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=whole(1), default=None,
                   help="a reply's budget when the request gives no max_tokens (default 256, "
                   "at most --max-tokens-limit; cut to what the context leaves after the "
                   "prompt)")
    p.add_argument("--max-prompt-tokens", type=whole(1), default=None,
                   help="prompt + max_tokens limit (default: the model's context length)")
    p.add_argument("--web", action="store_true", help="also serve the chat page at /ui")


def cmd_serve(args) -> int:
    import uvicorn

    from unitune.serve.openai_api import build_app, default_budget

    check_address(args)
    default_budget(args.max_tokens_limit, args.default_max_tokens)  # (before the model loads)
    with open_engine(args, max_batch=args.max_batch, max_queue=args.max_queue,
                 max_prompt_tokens=args.max_prompt_tokens) as engine:
        app = build_app(engine, args.api_key, args.max_tokens_limit, args.default_max_tokens)
        if args.web:
            import gradio as gr

            from unitune.infer.generate import preset
            from unitune.serve.web import build_ui

            app = gr.mount_gradio_app(app, build_ui(engine, preset("greedy")), path="/ui",
                                      auth=("unitune", args.api_key) if args.api_key else None)
        stderr(f"serving {', '.join(m['id'] for m in engine.models())} on "
                f"http://{args.host}:{args.port}/v1" + (f" and the chat page on "
                                                        f"http://{args.host}:{args.port}/ui"
                                                        if args.web else ""))
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
