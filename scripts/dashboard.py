"""The Grafana dashboard (dashboards/modelserve.json) rendered as a picture from a real Prometheus.

    .venv/bin/python scripts/dashboard.py demo --duration 90        # docs/dashboard.png from a real load run
    .venv/bin/python scripts/dashboard.py render --prometheus http://127.0.0.1:9090 --minutes 15

``demo`` serves every example in settings/ (built by settings/build_examples.py) with ``mlserver start``, starts
Debian's ``prometheus`` scraping its metrics port every second, sends a mixed load (V2, V1, OpenAI chat and
completion streams, embeddings, reranking, speech, some bad requests) for ``--duration`` seconds, then renders.
``render`` draws each panel of the dashboard JSON with its own PromQL (``$model`` as every model,
``$__rate_interval`` as ``--rate``) from Prometheus' range queries, so the picture is the dashboard's queries on
real data: no Grafana needed (none can be installed here).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DASHBOARD = REPO / "dashboards" / "modelserve.json"


def range_query(prometheus: str, expr: str, start: float, end: float, step: float) -> list:
    r = requests.get(f"{prometheus}/api/v1/query_range",
                     params={"query": expr, "start": start, "end": end, "step": step}, timeout=30)
    r.raise_for_status()
    return r.json()["data"]["result"]


def legend(template: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def render(prometheus: str, start: float, end: float, out: Path, rate: str = "10s", step: float = 2.0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = json.loads(DASHBOARD.read_text())["panels"]
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(15, 3.3 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        drawn = 0
        for target in panel["targets"]:
            expr = target["expr"].replace("$model", ".*").replace("$__rate_interval", rate)
            for series in range_query(prometheus, expr, start, end, step):
                points = [(float(t) - start, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")]
                if points:
                    ax.plot(*zip(*points), label=legend(target.get("legendFormat", ""), series["metric"]), lw=1.2)
                    drawn += 1
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_ylabel(panel["fieldConfig"]["defaults"].get("unit", ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=6, ncol=2, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("modelserve dashboard (dashboards/modelserve.json), rendered from Prometheus range queries",
                 fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out


# -- demo: the examples under load -----------------------------------------------------------------------
def _load(url: str, stop: threading.Event, counts: dict) -> None:
    """One client thread: a weighted mix of every example's requests."""
    import openai

    from tests.support.whisper_models import encode_audio, speech_like

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    flac = encode_audio(speech_like(1.0), "flac")
    iris = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}

    def v2_iris():
        requests.post(f"{url}/v2/models/iris-sklearn/infer", json=iris, timeout=30)

    def v1_iris():
        requests.post(f"{url}/v1/models/iris-sklearn:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)

    def bad():  # a wrong shape: a 400
        requests.post(f"{url}/v2/models/iris-sklearn/infer", json={"inputs": [
            {"name": "input-0", "datatype": "FP64", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}, timeout=30)

    def embed():
        client.embeddings.create(model=random.choice(["minilm-embedding", "minilm-infinity"]),
                                 input=["a quiet town by the sea"] * random.randint(1, 8))

    def chat():
        for _ in client.chat.completions.create(model=random.choice(["tiny-llama", "tiny-lora"]), stream=True,
                                                messages=[{"role": "user", "content": "Hello"}], max_tokens=16):
            pass

    def generate():
        client.completions.create(model="tiny-generation", prompt="Once upon a time", max_tokens=8)

    def rerank():
        requests.post(f"{url}/v1/rerank", json={"model": "tiny-rerank", "query": "a town",
                                                "documents": ["a town by the sea", "bananas", "a harbour"]}, timeout=60)

    def speech():
        requests.post(f"{url}/v2/models/tiny-whisper/infer", data=flac, headers={"Content-Type": "audio/flac"},
                      params={"temperature": 0, "beam_size": 1}, timeout=120)

    mix = [(v2_iris, 20), (v1_iris, 4), (bad, 1), (embed, 4), (chat, 3), (generate, 2), (rerank, 2), (speech, 1)]
    calls, weights = zip(*mix)
    while not stop.is_set():
        call = random.choices(calls, weights)[0]
        try:
            call()
            counts[call.__name__] = counts.get(call.__name__, 0) + 1
        except Exception as exc:  # noqa: BLE001 - a failed request is part of the picture, not the end of it
            counts["errors"] = counts.get("errors", 0) + 1
            print(f"{call.__name__}: {exc}", file=sys.stderr)


def demo(duration: float, out: Path, clients: int) -> Path:
    import subprocess
    import tempfile

    from tests.support.engine_envs import ENGINE_ENVS, engine_command
    from tests.support.harness import Server, eventually
    from tests.support.prometheus import Prometheus

    settings = REPO / "settings"
    subprocess.run([sys.executable, str(settings / "build_examples.py")], check=True, cwd=REPO)
    with tempfile.TemporaryDirectory(prefix="modelserve-dashboard-") as tmp:
        root = Path(tmp) / "models"
        root.mkdir()
        for folder in sorted(p.parent for p in settings.glob("*/model-settings.json")):
            (root / folder.name).symlink_to(folder, target_is_directory=True)
        shipped = json.loads((settings / "settings.json").read_text())
        server = Server(root, env={v: engine_command(v) for v in ENGINE_ENVS},
                        extra={k: v for k, v in shipped.items() if not k.endswith("_port")})
        server.start(timeout=480)
        prom = Prometheus(Path(tmp) / "prometheus", [f"127.0.0.1:{server.metrics_port}"]).start()
        try:
            assert eventually(prom.targets_up, timeout=30)
            start = time.time()
            stop, counts = threading.Event(), {}
            threads = [threading.Thread(target=_load, args=(server.url, stop, counts)) for _ in range(clients)]
            for t in threads:
                t.start()
            time.sleep(duration)
            stop.set()
            for t in threads:
                t.join(timeout=180)
            time.sleep(3)  # the last scrape
            print("requests sent:", json.dumps(counts, sort_keys=True))
            return render(prom.url, start, time.time(), out)
        finally:
            prom.stop()
            server.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="serve settings/, load it, render docs/dashboard.png")
    d.add_argument("--duration", type=float, default=90.0)
    d.add_argument("--clients", type=int, default=4)
    d.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    r = sub.add_parser("render", help="render from a running Prometheus")
    r.add_argument("--prometheus", required=True)
    r.add_argument("--minutes", type=float, default=15.0)
    r.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = ap.parse_args(argv)
    if args.command == "demo":
        print(demo(args.duration, args.out, args.clients))
    else:
        end = time.time()
        print(render(args.prometheus.rstrip("/"), end - 60 * args.minutes, end, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
