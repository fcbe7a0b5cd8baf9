"""A stand-in engine server for the supervision tests: answers /health, logs, and misbehaves on request.

python tests/fakes/engine.py PORT [--child] [--never-ready] [--crash-if FILE] [--ignore-term] [--start-delay S]
  --child        also starts a grandchild (`sleep`) and prints its pid, to test that the tree is stopped
  --never-ready  /health answers 503 for ever
  --crash-if F   exits with status 3 at once while file F exists (a crash loop)
  --ignore-term  ignores SIGTERM, so only SIGKILL stops it
  --start-delay S  waits S seconds before it listens (an engine loading its model)
Only the standard library: it stands for an engine in another Python environment.
"""

import http.server
import os
import signal
import subprocess
import sys
import time

args = sys.argv[1:]
port = int(args[0])
if "--crash-if" in args and os.path.exists(args[args.index("--crash-if") + 1]):
    print("fake engine: crash file present, exiting", flush=True)
    sys.exit(3)
if "--ignore-term" in args:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "--child" in args:
    child = subprocess.Popen(["sleep", "600"])
    print(f"fake engine: child pid {child.pid}", flush=True)
ready = "--never-ready" not in args
if "--start-delay" in args:
    time.sleep(float(args[args.index("--start-delay") + 1]))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = 200 if ready or self.path != "/health" else 503
        body = f'{{"path": "{self.path}", "pid": {os.getpid()}}}'.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *a):
        print("fake engine: " + fmt % a, flush=True)


print(f"fake engine: pid {os.getpid()} listening on {port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
