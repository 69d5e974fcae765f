"""Models of a running `tunery serve` (or any OpenAI-compatible server) in the studio's chat pane.

Plain HTTP through the standard library: the studio needs no client package for two routes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from tunery.errors import TuneryError


@dataclass(frozen=True)
class Server:
    url: str  # the server's root, e.g. http://127.0.0.1:8000 (routes are under /v1)
    key: str | None = None

    def _request(self, path: str, body: dict | None = None, timeout: float = 300.0) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:500]
            raise TuneryError(f"the server at {self.url} answered {exc.code} to {path}", why=detail) from None
        except (urllib.error.URLError, OSError) as exc:
            raise TuneryError(f"cannot reach the server at {self.url}", why=str(exc),
                              fix="start it with `tunery serve RUN...`, or check --serve") from None

    def models(self) -> list[str]:
        """The names the server answers for (GET /v1/models)."""
        return [m["id"] for m in self._request("/v1/models", timeout=10).get("data", [])]

    def answer(self, model: str, conversation: list[dict], max_new_tokens: int) -> dict:
        """One greedy chat completion: {"label", "target", "answer", "seconds"} like a local answer."""
        started = time.monotonic()
        reply = self._request("/v1/chat/completions", {"model": model, "messages": conversation,
                                                      "max_tokens": max_new_tokens, "temperature": 0})
        text = reply["choices"][0]["message"]["content"] or ""
        return {"label": f"served: {model}", "target": f"{self.url} {model}", "answer": text.strip(),
                "seconds": round(time.monotonic() - started, 3)}
