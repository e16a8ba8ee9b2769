#!/usr/bin/env python3
"""A fault-injecting stand-in for llama-server, used through a profile's ``server_binary:``.

It takes the argv llamactl renders (``--host``, ``--port``, ``--parallel``, ``--ctx-size``,
``--model``, ``--cache-type-k/v``, ... ; the rest is ignored), answers ``--help`` and
``--version`` with a real upstream build's text (llamactl/serve/recorded_help/), and serves /health,
/props, /slots, /metrics, /v1/messages (plain and SSE), /v1/chat/completions (plain and SSE)
like llama-server, except for the one fault chosen by the environment variable FAKE_FAULT:

  ok               no fault (a control)
  invalid_json     POST answers are 200 with a body that is not JSON
  wrong_shape      POST answers are 200 JSON without content/choices/usage
  sse_order        the /v1/messages stream sends content_block_delta before content_block_start
  sse_cut          the /v1/messages stream stops after a few events (no message_stop)
  hang             POST requests never answer
  never_healthy    /health answers 503 "Loading model" for ever
  exit             exits at once with code 1 and an error line
  garbage_metrics  /metrics is not Prometheus text
  bad_slots        /slots is JSON but not a list of slot objects

Standard library only, so it runs under any python3.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HELP = Path(__file__).resolve().parents[1] / "llamactl" / "serve" / "recorded_help" / "upstream.txt"
VERSION = HELP.with_name("upstream.version.txt")
FAULT = os.environ.get("FAKE_FAULT", "ok")


def arg(argv: list[str], *names: str, default: str | None = None) -> str | None:
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            return argv[i + 1]
    return default


class State:
    def __init__(self, argv: list[str]) -> None:
        self.parallel = int(arg(argv, "--parallel", "-np", default="1") or 1)
        self.ctx = int(arg(argv, "--ctx-size", "-c", default="4096") or 4096)
        self.model = arg(argv, "--model", "-m", default="model.gguf") or ""
        self.alias = arg(argv, "--alias", default=Path(self.model).name) or ""
        self.spec = arg(argv, "--spec-type") not in (None, "none")
        self.kv_k = arg(argv, "--cache-type-k", "-ctk", default="f16")
        self.kv_v = arg(argv, "--cache-type-v", "-ctv", default="f16")
        self.active = 0
        self.lock = threading.Lock()


STATE: State


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"      # one request per connection; a body ends when the socket closes

    def log_message(self, fmt: str, *args) -> None:   # noqa: D102 - llama-server style access log
        sys.stdout.write(f"srv  log_server_r: {self.command} {self.path} {fmt % args}\n")
        sys.stdout.flush()

    def _send(self, code: int, body: bytes | str, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, obj: object, code: int = 200) -> None:
        self._send(code, json.dumps(obj))

    # ---- GET -------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path == "/health":
            if FAULT == "never_healthy":
                return self._json({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, 503)
            return self._json({"status": "ok"})
        if path == "/props":
            return self._json({"default_generation_settings": {"n_ctx": STATE.ctx // STATE.parallel, "params": {}},
                               "total_slots": STATE.parallel, "model_path": STATE.model, "model_alias": STATE.alias,
                               "build_info": "b0-fake"})
        if path == "/slots":
            if FAULT == "bad_slots":
                return self._json({"slots": "none here", "n": "two"})
            with STATE.lock:
                busy = STATE.active
            return self._json([{"id": i, "n_ctx": STATE.ctx // STATE.parallel, "speculative": STATE.spec,
                                "is_processing": i < busy} for i in range(STATE.parallel)])
        if path == "/metrics":
            if FAULT == "garbage_metrics":
                return self._send(200, "<html>{{ not prometheus }} 12 34 ###\x00\n", "text/plain")
            with STATE.lock:
                busy = STATE.active
            return self._send(200, "# HELP llamacpp:requests_processing Number of requests processing.\n"
                                   "# TYPE llamacpp:requests_processing gauge\n"
                                   f"llamacpp:requests_processing {busy}\n", "text/plain; version=0.0.4")
        return self._json({"error": {"code": 404, "message": "File Not Found"}}, 404)

    # ---- POST ------------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            return self._json({"error": {"code": 400, "message": "invalid JSON"}}, 400)
        if FAULT == "hang":
            while True:
                time.sleep(3600)
        path = self.path.split("?")[0]
        if path in ("/tokenize", "/completion") and FAULT not in ("invalid_json", "wrong_shape"):
            return self._completion(path, body)
        with STATE.lock:
            STATE.active += 1
        try:
            time.sleep(0.3)      # long enough that concurrent requests are seen processing together
            self._answer(path, body)
        finally:
            with STATE.lock:
                STATE.active -= 1

    def _answer(self, path: str, body: dict) -> None:
        if path not in ("/v1/messages", "/v1/chat/completions"):
            return self._json({"error": {"code": 404, "message": "File Not Found"}}, 404)
        if FAULT == "invalid_json":
            return self._send(200, '{"id": "msg_1", "content": [ {"type": "text", "text": "hi"')
        if FAULT == "wrong_shape":
            return self._json({"id": "msg_1", "object": "whatever", "model": STATE.alias})
        timings = {"prompt_n": 5, "prompt_ms": 10.0, "predicted_n": 4, "predicted_ms": 290.0}
        if body.get("stream"):
            return self._stream(path, timings)
        if path == "/v1/messages":
            return self._json({"id": "msg_1", "type": "message", "role": "assistant", "model": STATE.alias,
                               "content": [{"type": "text", "text": "Hello there."}], "stop_reason": "end_turn",
                               "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 4}})
        logprobs = {"content": [{"id": 9, "token": "Hello", "logprob": -0.1, "top_logprobs": [
            {"id": 9, "token": "Hello", "logprob": -0.1}]}, {"id": 10, "token": " there.", "logprob": -0.1,
            "top_logprobs": [{"id": 10, "token": " there.", "logprob": -0.1}]}]} if body.get("logprobs") else None
        return self._json({"id": "chatcmpl-1", "object": "chat.completion", "model": STATE.alias,
                           "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                                        "message": {"role": "assistant", "content": "Hello there."}}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
                           "timings": timings})

    def _completion(self, path: str, body: dict) -> None:
        """/tokenize (one token per byte) and /completion: greedy answers that depend on the prompt
        only, with token ids (return_tokens) and top-2 probabilities (n_probs), whole or streamed."""
        prompt = body.get("content") if path == "/tokenize" else body.get("prompt")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))
        if path == "/tokenize":
            return self._json({"tokens": [b + 1 for b in text.encode()]})
        n = int(body.get("n_predict") or 16)
        seed = sum(text.encode()) % 97
        tokens = [300 + (seed + i) % 50 for i in range(n)]
        pieces = [f" w{t}" for t in tokens]
        probs = [{"id": t, "token": p, "logprob": -0.1,
                  "top_logprobs": [{"id": t, "token": p, "logprob": -0.1}, {"id": t + 1, "token": " x", "logprob": -2.5}]}
                 for t, p in zip(tokens, pieces, strict=True)]
        timings = {"prompt_n": len(text), "prompt_ms": 5.0, "predicted_n": n, "predicted_ms": 5.0 * n, "cache_n": 0}
        final = {"content": "".join(pieces), "tokens": tokens, "stop": True, "stop_type": "limit", "truncated": False,
                 "tokens_evaluated": len(text), "timings": timings}
        if body.get("n_probs"):
            final["completion_probabilities"] = probs
        if not body.get("stream"):
            return self._json(final)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for t, p in zip(tokens, pieces, strict=True):
            self.wfile.write(f"data: {json.dumps({'content': p, 'tokens': [t], 'stop': False})}\n\n".encode())
        self.wfile.write(f"data: {json.dumps({**final, 'content': '', 'tokens': []})}\n\n".encode())

    def _stream(self, path: str, timings: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if path == "/v1/chat/completions":
            chunks = [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in ("Hel", "lo")]
            chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "timings": timings})
            for c in chunks:
                self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        events = [
            ("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                                     "content": [], "usage": {"input_tokens": 5, "output_tokens": 0}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        if FAULT == "sse_order":
            events[1], events[2] = events[2], events[1]
        if FAULT == "sse_cut":
            events = events[:3]
        for name, data in events:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()


def main(argv: list[str]) -> int:
    global STATE
    if "--help" in argv or "-h" in argv:
        sys.stdout.write(HELP.read_text())
        return 0
    if "--list-devices" in argv:     # the run fingerprint asks; a real CPU build lists none
        sys.stdout.write("Available devices:\n")
        return 0
    if "--version" in argv:
        sys.stderr.write(VERSION.read_text() if VERSION.exists() else "version: 0 (fake)\n")
        return 0
    if FAULT == "exit":
        sys.stderr.write("E main: fake fault: exiting at once (FAKE_FAULT=exit)\nerror: fake fault: exiting at once\n")
        return 1
    STATE = State(argv)
    host = arg(argv, "--host", default="127.0.0.1") or "127.0.0.1"
    port = int(arg(argv, "--port", default="8080") or 8080)
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print(f"llama_kv_cache: size = 8.00 MiB ({STATE.ctx} cells, 4 layers, {STATE.parallel}/{STATE.parallel} seqs), "
          f"K ({STATE.kv_k}): 4.00 MiB, V ({STATE.kv_v}): 4.00 MiB", flush=True)
    print(f"main: server is listening on http://{host}:{port} (fake, FAKE_FAULT={FAULT})", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
