"""A small local server that follows the OpenAI chat-completions protocol, with a fake model that answers
deterministically, for the autointerp tests and benchmark (no network, no real model).

Models (the request's "model" field):
- "oracle": as explainer, names the marked span seen most often ("This neuron activates on the token
  'X'."); as scorer, returns the numbers of the excerpts that contain X as a whole word ("None" if none).
  delphi-style prompts get "[EXPLANATION]: the token 'X'" and a JSON list of 0/1, by the same rule.
  On a latent that fires exactly on one word this is the perfect explainer and scorer.
- "none": explains like "oracle", always answers "None" (delphi: all zeros) when scoring.
- "garbage": answers text that is neither an explanation nor a list of numbers.
- "slow": waits `server.delay` seconds (default 2), then answers like "oracle".
Usage counts are a deterministic function of the text (characters / 4).

Run standalone: `python tests/chat_server.py --port 8765` (prints the URL, serves until killed).
In-process: `with serve() as server: server.url, server.requests, server.fail_next = n` (the next n
requests get HTTP 503).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MARKED = re.compile(r"<<(.*?)>>", re.S)
TARGET = re.compile(r"the token '(.*?)'")
EXCERPT = re.compile(r"^(\d+)\. (.*)$", re.M)
DELPHI_EXCERPT = re.compile(r"^Excerpt (\d+): (.*)$", re.M)


def fake_answer(model: str, messages: list[dict[str, str]]) -> str:
    system = messages[0]["content"] if messages else ""
    user = messages[-1]["content"] if messages else ""
    if model == "garbage":
        return "I am not sure what you mean."
    if "[EXPLANATION]" in system:  # delphi-style explanation
        spans = Counter(span.strip() for span in MARKED.findall(user))
        best = sorted(spans.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if spans else "nothing"
        return f"They share one token.\n[EXPLANATION]: the token '{best}'"
    if "JSON list" in system:  # delphi-style detection
        found = TARGET.search(user)
        word = found.group(1) if found else None
        return json.dumps([int(model != "none" and word is not None and word in text.split())
                           for _, text in DELPHI_EXCERPT.findall(user)])
    if "<<" in user:  # an explanation request: the excerpts carry marks
        spans = Counter(span.strip() for span in MARKED.findall(user))
        best = sorted(spans.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if spans else "nothing"
        return f"This neuron activates on the token '{best}'."
    if "comma" in system:  # a detection request
        if model == "none":
            return "None"
        found = TARGET.search(user)
        word = found.group(1) if found else None
        hits = [number for number, text in EXCERPT.findall(user)
                if word is not None and word in text.split()]
        return ", ".join(hits) if hits else "None"
    return "I can only explain and score neurons."


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with self.server.lock:
            self.server.requests += 1
            self.server.bodies.append(body)
            self.server.auth.append(self.headers.get("Authorization"))
            failing = self.server.fail_next > 0
            if failing:
                self.server.fail_next -= 1
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if failing:
            self._send(503, {"error": {"message": "overloaded, try again"}})
            return
        if not body.get("model") or not isinstance(body.get("messages"), list):
            self._send(400, {"error": {"message": "model and messages are required"}})
            return
        if body["model"] == "slow":
            time.sleep(self.server.delay)
        answer = fake_answer(body["model"], body["messages"])
        prompt = sum(len(m.get("content", "")) for m in body["messages"]) // 4
        self._send(200, {
            "id": f"fake-{self.server.requests}", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(answer) // 4,
                      "total_tokens": prompt + len(answer) // 4}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.lock = threading.Lock()
        self.requests = 0
        self.fail_next = 0
        self.delay = 2.0
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout tests) closes its socket mid-answer; that is expected

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@contextlib.contextmanager
def serve(port: int = 0) -> Iterator[_Server]:
    server = _Server(port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = _Server(args.port)
    print(server.url, flush=True)
    server.serve_forever()
