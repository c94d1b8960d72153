"""An LLM judge behind any OpenAI-compatible chat endpoint (``unitune serve`` included), shared
by the arena, the graded benchmarks and self-instruct's teacher: one call per judgment,
retried with backoff on network errors, 5xx and 429, its token usage counted; and the
JSON-lines cache of its grades (``Grades``), so a rerun asks nothing twice."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from unitune.errors import UserError
from unitune.jsonl import read_jsonl


def cache_key(value) -> str:
    """The key of a cached result: a digest of everything it depends on (JSON)."""
    import hashlib

    return hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()[:20]


class Judge:
    """An OpenAI-compatible chat endpoint: one call per comparison, retried with backoff."""

    def __init__(self, url: str, model: str, api_key: str | None = None, retries: int = 4,
                 timeout_s: float = 120.0, max_tokens: int = 256, temperature: float = 0.0,
                 role: str = "judge"):
        self.role = role  # what errors call it ("teacher" for self-instruct)
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions")
                                      else "/chat/completions")
        self.model, self.api_key, self.retries = model, api_key, retries
        self.timeout_s, self.max_tokens, self.temperature = timeout_s, max_tokens, temperature
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}

    def report(self) -> dict:
        """Who answered and what it cost, as every report records it."""
        return {"url": self.url, "model": self.model, **self.usage}

    def ask(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages,
                           "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.loads(response.read())
                self.usage["calls"] += 1
                for key in ("prompt_tokens", "completion_tokens"):
                    self.usage[key] += (reply.get("usage") or {}).get(key, 0)
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:200].decode('utf-8', 'replace')}"
                if exc.code not in (408, 409, 429) and exc.code < 500:
                    raise UserError(f"{self.role} {self.url}: {last}") from None
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            except (KeyError, IndexError, json.JSONDecodeError):
                last = "a reply that is not an OpenAI chat completion"
            if attempt < self.retries:
                time.sleep(min(30.0, 0.5 * 2 ** attempt))
        raise UserError(f"{self.role} {self.url}: no answer after {self.retries + 1} tries "
                        f"({last})")


class Grades:
    """A judge's replies for one task, cached in ``<out>/grades.jsonl`` by the judge and their
    messages: the same question, answer and prompt are never asked twice, and a changed one
    or another judge is asked anew."""

    def __init__(self, out: Path, judge: Judge):
        out.mkdir(parents=True, exist_ok=True)
        self.path, self.judge = out / "grades.jsonl", judge
        self.rows = {row["key"]: row for row in read_jsonl(self.path, appended=True)}

    def reply(self, key: str, messages: list[dict]) -> str:
        """The judge's reply to ``messages``; ``key`` names the item in the file."""
        # (the reply budget too: a reply cut short is asked again with a larger one)
        key = f"{key}:{cache_key([self.judge.model, self.judge.max_tokens, messages])}"
        if key not in self.rows:
            self.rows[key] = {"key": key, "reply": self.judge.ask(messages)}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(self.rows[key], ensure_ascii=False) + "\n")
        return self.rows[key]["reply"]
