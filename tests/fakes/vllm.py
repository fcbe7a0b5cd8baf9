#!/usr/bin/env python3
"""A stand-in for the `vllm` CLI (`tests/fakes/vllm.py serve MODEL --port P --served-model-name N ...`): serves
/health, /v1/models (the served name and LoRA modules) and an echoing /v1/completions, and /debug with the
argv, working folder, its files and the environment, so tests can check the command line the runtime builds
without starting vLLM. Standard library only."""

import http.server
import json
import os
import sys

argv = sys.argv[1:]
opts, i = {}, 2
while i < len(argv):
    key = argv[i]
    values = []
    while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        values.append(argv[i + 1])
        i += 1
    opts[key] = values
    i += 1
name = opts["--served-model-name"][0]
loras = [m.split("=", 1)[0] for m in opts.get("--lora-modules", [])]


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, {})
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": m} for m in [name, *loras]]})
        if self.path == "/debug":
            files = sorted(os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk(".") for f in fs)
            return self._send(200, {"argv": argv, "cwd": os.getcwd(), "files": files, "env": dict(os.environ)})
        self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("model") not in [name, *loras]:
            return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                              "type": "NotFoundError", "code": 404}})
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        self._send(200, {"choices": [{"index": k, "text": f"{body['model']}:{p}:{body.get('max_tokens')}",
                                      "finish_reason": "stop"} for k, p in enumerate(prompts)]})

    def log_message(self, *a):
        pass


print(f"fake vllm serving {argv[1]} as {name} on {opts['--port'][0]}", flush=True)
http.server.ThreadingHTTPServer((opts["--host"][0], int(opts["--port"][0])), Handler).serve_forever()
