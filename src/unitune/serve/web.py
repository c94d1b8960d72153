"""``unitune web`` (and ``unitune serve --web``): a chat page (Gradio) over the chat engine;
and ``unitune arena --human``: the arena's comparisons judged by a person.

The chat page has the served models (base and adapters), a system prompt, the decoding controls
and the conversation; every turn sends the whole history, rendered through the chosen
model's template, and the reply streams into the page. A reply whose page goes away is
cancelled. The arena page shows a prompt and two anonymous answers in the arena's randomised
order; each vote is a judgment like an LLM judge's. No public share link unless asked for.
"""

from __future__ import annotations

from collections.abc import Iterator

from unitune.errors import UserError
from unitune.infer.engine import Engine, Request
from unitune.infer.generate import Decoding


def reply(engine: Engine, message: str, history: list[dict], model: str, system: str,
          decoding: Decoding) -> Iterator[list[dict]]:
    """The conversation after ``message``, growing as the reply streams in."""
    past = [{"role": m["role"], "content": _text(m["content"])} for m in history
            if m.get("role") in ("user", "assistant")]
    messages = ([{"role": "system", "content": system}] if system.strip() else []) + past + \
        [{"role": "user", "content": message}]
    job = engine.submit(Request(model, engine.render_chat(model, messages), decoding,
                                 stream=True))
    history = [*history, {"role": "user", "content": message},
               {"role": "assistant", "content": ""}]
    try:
        for event in job.events():
            if event[0] == "text":
                history[-1] = {"role": "assistant", "content": history[-1]["content"] + event[2]}
                yield history
    finally:
        job.cancel()  # a no-op once finished; stops the reply when the page goes away
    history[-1] = {"role": "assistant", "content": history[-1]["content"].strip()}
    yield history


def _text(content) -> str:
    """Gradio may hand back a message's content as a list of parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def build_ui(engine: Engine, decoding: Decoding, model: str | None = None):
    import gradio as gr

    ids = [m["id"] for m in engine.models()]
    with gr.Blocks(title="unitune chat") as demo:
        gr.Markdown("## unitune chat")
        with gr.Row():
            chosen = gr.Dropdown(ids, value=model or ids[-1], label="model", scale=1)
            system = gr.Textbox(label="system prompt", scale=3)
        chatbot = gr.Chatbot(label="conversation", elem_id="conversation", height=420)
        message = gr.Textbox(label="message", placeholder="Type a message, then Enter",
                             elem_id="message")
        with gr.Accordion("decoding", open=False):
            with gr.Row():
                max_new = gr.Slider(1, 4096, value=decoding.max_new_tokens, step=1,
                                    label="max new tokens")
                sample = gr.Checkbox(value=decoding.do_sample, label="sample")
                seed = gr.Number(value=decoding.seed or 0, precision=0, label="seed")
            with gr.Row():
                temperature = gr.Slider(0.05, 2.0, value=decoding.temperature, step=0.05,
                                        label="temperature")
                top_p = gr.Slider(0.05, 1.0, value=decoding.top_p, step=0.05, label="top p")
                top_k = gr.Slider(0, 200, value=decoding.top_k, step=1, label="top k")
                penalty = gr.Slider(0.5, 2.5, value=decoding.repetition_penalty, step=0.05,
                                    label="repetition penalty")
        clear = gr.Button("clear")

        def respond(text, history, model_id, system_prompt, max_new_tokens, do_sample, seed_,
                    temp, top_p_, top_k_, penalty_):
            if not text.strip():
                yield "", history
                return
            try:  # (a prompt too long, a full queue): said on the page
                chosen_decoding = Decoding(
                    max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample),
                    temperature=float(temp), top_p=float(top_p_), top_k=int(top_k_),
                    repetition_penalty=float(penalty_), seed=int(seed_ or 0))
                for grown in reply(engine, text, history or [], model_id, system_prompt or "",
                                   chosen_decoding):
                    yield "", grown
            except UserError as exc:
                raise gr.Error(str(exc)) from None

        message.submit(respond, [message, chatbot, chosen, system, max_new, sample, seed,
                                 temperature, top_p, top_k, penalty], [message, chatbot])
        clear.click(lambda: [], None, chatbot)
        chosen.change(lambda: [], None, chatbot)
    return demo


class HumanArena:
    """The arena's comparisons for a person: the next one not yet judged (in a seeded
    shuffled order, so prompts and pairs are mixed), and each vote recorded as a judgment
    of the comparison the person saw, with the leaderboard rewritten. The page owns
    ``judgments.jsonl`` while it runs: it is read once, then kept in step with every vote."""

    JUDGE = "human"

    def __init__(self, models: list[str], questions: list[str], answers: dict[str, list[str]],
                 out, seed: int = 0, rounds: int = 200, log=print):
        import random
        import threading

        from unitune.eval.arena import judgments, keyed

        self.models, self.questions, self.answers = models, questions, answers
        self.out, self.seed, self.rounds = out, seed, rounds
        self.arena = keyed(models, questions, answers, self.JUDGE, seed)
        self.items = list(self.arena)  # (shown in a shuffled order)
        random.Random(seed + 1).shuffle(self.items)
        self.done = judgments(out, log)
        self._lock = threading.Lock()  # (votes from several pages: one at a time)

    def pending(self) -> list[int]:
        """The positions (in ``items``) of the comparisons not judged yet."""
        return [n for n, (_, key) in enumerate(self.items) if key not in self.done]

    def shown(self) -> tuple[int | None, str, str, str, str]:
        """(position, question, answer A, answer B, progress) of the next comparison to
        judge; position None when all are judged."""
        from unitune.eval.arena import shown

        pending = self.pending()
        progress = f"{len(self.items) - len(pending)} of {len(self.items)} comparisons judged"
        if not pending:
            return None, "All comparisons are judged.", "", "", progress
        return pending[0], *shown(self.items[pending[0]][0], self.questions, self.answers), \
            progress

    def vote(self, position: int | None, verdict: str) -> str:
        """Records 'A', 'B' or 'C' (tie) for the comparison at ``position`` (the one on the
        person's screen; None: nothing was shown); the leaderboard (Markdown)."""
        from unitune.eval.arena import record, summarize
        from unitune.eval.ratings import markdown

        with self._lock:
            if position is not None:
                item, key = self.items[position]
                self.done[key] = record(self.out, item, key, f"[[{verdict}]]", verdict,
                                        self.JUDGE)
            report = summarize(self.models, self.questions, self.answers, self.out,
                               {"model": self.JUDGE}, self.arena, self.done, self.rounds,
                               self.seed)
        return markdown(report["leaderboard"])


def build_arena_ui(arena: HumanArena):
    """The page: the question, answers A and B side by side (models hidden), three buttons,
    the progress and the leaderboard so far. Each page remembers which comparison it shows,
    so a vote counts for what the person read even with several pages open."""
    import gradio as gr

    with gr.Blocks(title="unitune arena") as demo:
        gr.Markdown("## unitune arena: which answer is better?")
        position = gr.State(None)
        progress = gr.Markdown(elem_id="progress")
        question = gr.Textbox(label="prompt", interactive=False, elem_id="question")
        with gr.Row():
            answer_a = gr.Textbox(label="answer A", interactive=False, lines=8,
                                  elem_id="answer-a")
            answer_b = gr.Textbox(label="answer B", interactive=False, lines=8,
                                  elem_id="answer-b")
        with gr.Row():
            better_a = gr.Button("A is better", elem_id="vote-a")
            tie = gr.Button("tie", elem_id="vote-tie")
            better_b = gr.Button("B is better", elem_id="vote-b")
        board = gr.Markdown(elem_id="leaderboard")
        shown = [position, question, answer_a, answer_b, progress]

        def vote(on_screen: int | None, verdict: str):
            table = arena.vote(on_screen, verdict)
            return (*arena.shown(), table)

        for button, verdict in ((better_a, "A"), (tie, "C"), (better_b, "B")):
            button.click(lambda on_screen, v=verdict: vote(on_screen, v), position,
                         [*shown, board])
        demo.load(arena.shown, None, shown)
    return demo
