"""JSON mode: decoding constrained so that a reply is a JSON object (OpenAI's
``response_format: {"type": "json_object"}``).

``JsonPrefix`` is an incremental recogniser of compact JSON text (RFC 8259; whitespace only as
one space after ':' or ',', so a model cannot idle on blanks) whose top-level value is an
object: it tells whether a text is a prefix of such a document and whether it is complete.
``JsonObjectProcessor`` is a transformers logits processor: at every step it keeps only the
tokens (searched in order of score) that extend the reply to a valid prefix, allows the
end-of-sequence tokens only once the object is complete, and forces one then. No grammar
library is in the stack (outlines, lm-format-enforcer), and JSON needs no more than this.
"""

from __future__ import annotations

import torch

_WS = " \t\n\r"
_NUMBER_END = {"zero", "int", "frac", "exp"}  # number states that may end the number


class JsonPrefix:
    """State: (stack of open containers, mode, detail). ``feed`` returns the next state or
    None when the text stops being a prefix of a JSON object."""

    START = ((), "start", "")

    @staticmethod
    def feed(state, text: str):
        for ch in text:
            state = JsonPrefix._step(state, ch)
            if state is None:
                return None
        return state

    @staticmethod
    def complete(state) -> bool:
        return state is not None and state[1] == "done"

    @staticmethod
    def _after_value(stack):
        return (stack, "done", "") if not stack else (stack, "after", "")

    @staticmethod
    def _step(state, ch):  # noqa: C901 - one table of JSON's syntax
        stack, mode, detail = state
        if mode == "string":
            if ch == "\\":
                return stack, "escape", detail
            if ch == '"':
                return (stack, "colon", "") if detail == "key" else JsonPrefix._after_value(stack)
            return state if ch >= " " else None
        if mode == "escape":
            if ch == "u":
                return stack, "unicode", detail + "4"
            return (stack, "string", detail) if ch in '"\\/bfnrt' else None
        if mode == "unicode":
            if ch not in "0123456789abcdefABCDEF":
                return None
            left = int(detail[-1]) - 1
            base = detail[:-1]
            return (stack, "string", base) if left == 0 else (stack, "unicode", base + str(left))
        if mode == "literal":
            if not detail or ch != detail[0]:
                return None
            rest = detail[1:]
            return (stack, "literal", rest) if rest else JsonPrefix._after_value(stack)
        if mode == "number":
            nxt = JsonPrefix._number(detail, ch)
            if nxt is not None:
                return stack, "number", nxt
            if detail not in _NUMBER_END:
                return None
            return JsonPrefix._step(JsonPrefix._after_value(stack), ch)
        if ch in _WS:  # compact JSON: one space after ':' or ',' and nowhere else
            spaced = ch == " " and detail == "" and mode in ("value", "key") and (
                mode == "value" or stack[-1] == "{")
            return (stack, mode, "sp") if spaced else None
        if mode == "done":
            return None
        if mode == "start":
            return (("{",), "key_or_end", "") if ch == "{" else None
        if mode in ("key_or_end", "key"):  # (after '{', or after ',' in an object)
            if ch == '"':
                return stack, "string", "key"
            if ch == "}" and mode == "key_or_end":
                return JsonPrefix._after_value(stack[:-1])
            return None
        if mode == "colon":
            return (stack, "value", "") if ch == ":" else None
        if mode == "after":
            if ch == ",":
                return (stack, "key", "") if stack[-1] == "{" else (stack, "value", "")
            if ch == ("}" if stack[-1] == "{" else "]"):
                return JsonPrefix._after_value(stack[:-1])
            return None
        if mode in ("value", "value_or_end"):
            if ch == "]" and mode == "value_or_end":
                return JsonPrefix._after_value(stack[:-1])
            if ch == "{":
                return (*stack, "{"), "key_or_end", ""
            if ch == "[":
                return (*stack, "["), "value_or_end", ""
            if ch == '"':
                return stack, "string", "value"
            for word in ("true", "false", "null"):
                if ch == word[0]:
                    return stack, "literal", word[1:]
            if ch == "-":
                return stack, "number", "sign"
            if ch == "0":
                return stack, "number", "zero"
            if ch.isdigit():
                return stack, "number", "int"
        return None

    @staticmethod
    def _number(at: str, ch: str) -> str | None:
        digit = ch in "0123456789"
        if at == "sign":
            return "zero" if ch == "0" else "int" if digit else None
        if at in ("zero", "int"):
            if digit and at == "int":
                return "int"
            return "dot" if ch == "." else "e" if ch in "eE" else None
        if at in ("dot", "frac"):
            if digit:
                return "frac"
            return "e" if ch in "eE" and at == "frac" else None
        if at == "e":
            return "esign" if ch in "+-" else "exp" if digit else None
        if at in ("esign", "exp"):
            return "exp" if digit else None
        return None


class JsonObjectProcessor:
    """Masks every token that would make a row's reply stop being a prefix of a JSON object;
    ``start``: where the replies begin in ``input_ids`` (the padded prompt length)."""

    def __init__(self, tokenizer, start: int, end_ids: list[int], search: int = 64):
        if not end_ids:
            raise ValueError("JSON mode needs end-of-sequence ids to end a finished object")
        self.tokenizer, self.start, self.end_ids, self.search = tokenizer, start, end_ids, search

    def _piece(self, context: list[int], context_text: str, token: int) -> str | None:
        """What ``token`` adds after ``context`` (decoded in context: SentencePiece tokens
        carry their leading space only there)."""
        new = self.tokenizer.decode(context + [token], skip_special_tokens=True)
        return new[len(context_text):] if new.startswith(context_text) else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            ids = input_ids[row, self.start:].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            state = JsonPrefix.feed(JsonPrefix.START, text)
            if state is None or JsonPrefix.complete(state):  # done (or lost): end the reply
                allowed = list(self.end_ids)
            else:
                allowed = self._extensions(state, ids[-4:], scores[row]) or list(self.end_ids)
            index = torch.tensor(allowed, dtype=torch.long, device=scores.device)
            out[row, index] = scores[row, index]
        return out

    def _extensions(self, state, context: list[int], row_scores: torch.Tensor) -> list[int]:
        context_text = self.tokenizer.decode(context, skip_special_tokens=True)
        allowed = []
        for k, token in enumerate(torch.argsort(row_scores, descending=True).tolist()):
            if token not in self.end_ids:
                piece = self._piece(context, context_text, token)
                if piece and JsonPrefix.feed(state, piece) is not None:
                    allowed.append(token)
            if allowed and k + 1 >= self.search:
                break
        return allowed
