"""Infinity benchmark: sentences embedded per second through our KubeAIRuntime vs Infinity's own server.

    .venv/bin/python benchmarks/infinity_bench.py                  # full run (~7 min): writes results/infinity.{json,png} and the README table
    .venv/bin/python benchmarks/infinity_bench.py --quick          # ~1 min smoke run (c=32, 3 s, 1 repeat), prints the table, writes nothing
    .venv/bin/python benchmarks/infinity_bench.py --engine-nice 0  # as shipped: the engine's CPU priority left alone
    .venv/bin/python benchmarks/infinity_bench.py --points 32x1,8x1,1x1,8x8 --duration 8 --repeats 5 --no-hf

One ``mlserver start`` (parallel_workers 0, gzip off, as tests/server/test_infinity_server.py) serves the real
all-MiniLM-L6-v2 (``tests.support.hf_models.minilm_dir()``, read offline) with ``modelserve.kubeai.KubeAIRuntime``
``{"engine": "Infinity", "url": <folder>}``, which starts ``infinity_emb v2 --model-id <folder>
--served-model-name emb --url-prefix /v1 --port P --log-level warning`` from .venv-infinity
(``$MODELSERVE_INFINITY_COMMAND``; Infinity's defaults otherwise: torch on CPU, batch size 32). That one engine
answers every Infinity path, so both sides run the very same engine set up the very same way:

- ``direct``: Infinity's own server, on the port our runtime started it on (the mlserver log line "engine
  ready on port N"): ``POST /v1/embeddings``;
- ``openai``: our ``/v1/embeddings`` on MLServer's port (passed through to that engine as bytes);
- ``v2``: our ``/v2/models/emb/infer``, BYTES input ``text`` (answers FP32 ``embedding``);
- ``hf`` (context, --no-hf leaves it out): our ``HuggingFaceRuntime`` on the same folder in the same server
  (``task: text_embedding`` as settings/minilm-embedding), V2 as ``v2``: torch inside MLServer, coalescing on.

Workload: 16 sentences of 5–20 words, round-robin; each request carries B of them (``--points`` CxB: C clients,
B sentences per request; default 32x1, 8x1, 1x1 and 8x8). OpenAI requests ask for ``encoding_format: float``;
every answer is parsed and must hold B vectors of 384 floats; before the load the vectors of every path are
checked against ``direct`` (within 1e-5; ``hf``: 1e-4).

- Throughput: an asyncio + aiohttp load generator in this process; C workers send requests back to back
  (keep-alive, a new session per run); after a warm-up the requests that finish inside a fixed window count:
  sentences/s = B x requests / window; latency p50/p99 of those requests. A discarded round per path first;
  then each repeat runs every (point, path), the path order rotated by the repeat index; the ratios are taken
  within each repeat (ours over direct), then the median over the repeats.
- CPU (cores) over each window: this process (the load generator), the mlserver process, Infinity's processes
  and everything else, plus the share of the window the mlserver and load-generator main threads waited for a
  CPU. The machine's 2 cores are shared by all of them. Each run waits for the machine to be quiet first and
  is repeated when other processes took more than --max-other-cpu cores during it.
- Scheduling: as in vllm_bench.py, the engine's processes get nice 10 by default (--engine-nice): under load
  Infinity's torch threads take both cores, and the load generator (a client on another machine in real life)
  and MLServer would wait behind them at every wake-up; at nice 10 the engine still gets every idle cycle.
  The same engine serves both sides, so the treatment is the same for both. --engine-nice 0 measures it as
  shipped.

See benchmarks/README.md ("Infinity").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lib import engines  # noqa: E402  (importing lib puts the repository on sys.path)
from lib.cpu import CPU, deprioritise, roles  # noqa: E402
from lib.loadgen import closed_loop, latency, measured, new_session, post_json, rotate  # noqa: E402
from lib.report import (  # noqa: E402
    bars, finish, log, machine_info, md_table, out_dir, paired_ratio, pyplot, repeat_stats, replot, save, shared_options)
from tests.support.harness import Server, write_model  # noqa: E402

MODEL, HF = "emb", "minilm"
PATHS = ("direct", "openai", "v2", "hf")
OURS = ("openai", "v2")
DIM = 384
SENTENCES = [
    "A man is eating food.", "A man rides a horse.", "The new movie is awesome.",
    "A model server loads a model and answers requests over HTTP and gRPC.",
    "The weather was cold and windy all week long.", "Scientists study nature to understand how the world works.",
    "Breakfast usually includes coffee, bread and a piece of fruit.", "She plays the piano every evening.",
    "Embeddings map sentences to vectors so that similar meanings land close together.",
    "The train to the airport leaves every fifteen minutes.", "Two dogs are running through a field of snow.",
    "Please remember to water the plants while I am away on holiday.", "Stock markets fell sharply on Monday.",
    "A child is reading a book under a tree in the park on a sunny afternoon.",
    "The recipe needs three eggs.", "Our team shipped the new release after two weeks of testing and fixes."]


def start(tmp: Path, command: str, hf: bool):
    from tests.support.hf_models import minilm_dir

    root = tmp / "server"
    folder = minilm_dir()
    write_model(root, MODEL, {"implementation": "modelserve.kubeai.KubeAIRuntime", "parallel_workers": 0,
                              "parameters": {"extra": {"engine": "Infinity", "url": str(folder), "start_timeout": 300,
                                                       "cache_dir": str(tmp / "cache")}}})
    if hf:
        write_model(root, HF, {"implementation": "modelserve.huggingface.HuggingFaceRuntime", "parallel_workers": 0,
                               "parameters": {"uri": str(folder), "extra": {"task": "text_embedding",
                                                                            "backend": "HUGGINGFACE",
                                                                            "max_length": 256}}})
    srv = Server(root, parallel_workers=0, debug=False, extra={"gzip_enabled": False},
                 env={"MODELSERVE_INFINITY_COMMAND": command, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return (srv, *engines.start(srv), folder)


# -- requests --------------------------------------------------------------------------------------
class Paths:
    def __init__(self, mlserver_url: str, engine_url: str):
        self.base = {"direct": engine_url, "openai": mlserver_url, "v2": mlserver_url, "hf": mlserver_url}

    def request(self, path: str, rows: list):
        if path in ("v2", "hf"):
            body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(rows)], "data": rows}]}
            route = f"/v2/models/{MODEL if path == 'v2' else HF}/infer"
        else:
            body = {"model": MODEL, "input": rows, "encoding_format": "float"}
            route = "/v1/embeddings"
        return self.base[path] + route, json.dumps(body).encode()

    @staticmethod
    def vectors(path: str, doc: dict, n: int) -> list:
        """The n vectors of an answer (flat, for V2), checked for count and size."""
        if path in ("v2", "hf"):
            out = doc["outputs"][0]
            if out["shape"] != [n, DIM] or len(out["data"]) != n * DIM:
                raise AssertionError(f"{path}: shape {out['shape']} ({len(out['data'])} values), expected [{n}, {DIM}]")
            return [out["data"][i * DIM:(i + 1) * DIM] for i in range(n)]
        data = sorted(doc["data"], key=lambda d: d["index"])
        if len(data) != n or any(len(d["embedding"]) != DIM for d in data):
            raise AssertionError(f"{path}: {len(data)} vectors, expected {n} of {DIM}")
        return [d["embedding"] for d in data]


async def verify(session, paths: Paths, active: tuple) -> dict:
    """Every sentence on every path (and 8 at once): the same vectors as Infinity's own answer."""
    import numpy as np

    worst = {p: 0.0 for p in active if p != "direct"}
    for rows in [[s] for s in SENTENCES] + [SENTENCES[:8]]:
        url, data = paths.request("direct", rows)
        want = np.array(paths.vectors("direct", await post_json(session, url, data), len(rows)))
        for path in worst:
            url, data = paths.request(path, rows)
            got = np.array(paths.vectors(path, await post_json(session, url, data), len(rows)))
            diff = float(np.abs(got - want).max())
            worst[path] = max(worst[path], diff)
            if diff > (1e-4 if path == "hf" else 1e-5):
                raise AssertionError(f"{path}: vectors differ from Infinity's by {diff} for {rows[:2]}")
    return {f"{p}_max_abs_diff": v for p, v in worst.items()}


# -- throughput ------------------------------------------------------------------------------------
async def load(paths: Paths, path: str, conc: int, batch: int, warmup: float, duration: float, cpu: CPU) -> dict:
    reqs = [paths.request(path, [SENTENCES[(i + j) % len(SENTENCES)] for j in range(batch)])
            for i in range(0, len(SENTENCES), batch if len(SENTENCES) % batch == 0 else 1)]

    async def call(session, k: int) -> None:
        url, data = reqs[k % len(reqs)]
        paths.vectors(path, await post_json(session, url, data), batch)

    inside, usage = await closed_loop(call, conc, warmup, duration, cpu)
    n = len(inside)
    return {"sentences_per_s": n * batch / duration, "requests_per_s": n / duration, "requests": n,
            **latency(inside, allow_empty=True), "cpu": usage}


def point_name(conc: int, batch: int) -> str:
    return f"c={conc} b={batch}"


async def measure(srv, port: int, args, log) -> dict:
    paths = Paths(srv.url, f"http://127.0.0.1:{port}")
    active = tuple(p for p in PATHS if p != "hf" or args.hf)
    cpu = CPU(roles(srv.proc.pid, lambda comm: "engine", ("engine",)))  # Infinity: every descendant of mlserver
    sched = deprioritise(srv.proc.pid, cpu.pids["engine"], args.engine_nice)
    log(f"engine pids {cpu.pids['engine']}; scheduling: {sched['applied']}")
    async with new_session() as session:
        checked = await verify(session, paths, active)
    log(f"verified: {len(SENTENCES)} sentences and a batch of 8 on {', '.join(active)}: {checked}")
    for path in active:  # the first batches of each size are slow: a discarded round first
        await load(paths, path, args.points[0][0], args.points[0][1], 0.0, max(2.0, args.warmup), cpu)
    runs = []
    for rep in range(args.repeats):
        for conc, batch in args.points:
            for path in rotate(active, rep):
                res = await measured(lambda: load(paths, path, conc, batch, args.warmup, args.duration, cpu),
                                     f"{path} {point_name(conc, batch)}", args, log, cpu,
                                     path=path, concurrency=conc, batch=batch, repeat=rep)
                runs.append(res)
                c = res["cpu"]
                log(f"repeat {rep + 1}/{args.repeats} {point_name(conc, batch):9} {path:6}: "
                    f"{res['sentences_per_s']:7.1f} sent/s (p50 {res['latency_p50_ms']:.1f} ms); cores: loadgen "
                    f"{c['loadgen']:.2f} mlserver {c['mlserver']:.2f} engine {c['engine']:.2f} other {c['other']:.2f}; "
                    f"waiting for a CPU: mlserver {c['mlserver_runqueue_wait']:.0%} loadgen {c['loadgen_runqueue_wait']:.0%}")
    return {"runs": runs, "verified": checked, "processes": cpu.pids, "scheduling": sched, "paths": list(active)}


# -- summary, table, plot --------------------------------------------------------------------------
def summarise(result: dict) -> dict:
    tp, paired = [], {}
    points, reps = result["config"]["points"], result["config"]["repeats"]
    for conc, batch in points:
        for path in result["paths"]:
            rs = [r for r in result["runs"] if r["path"] == path and r["concurrency"] == conc and r["batch"] == batch]
            tp.append({"path": path, "concurrency": conc, "batch": batch, **repeat_stats(rs, "sentences_per_s", 1, 2)})
        by = {(r["path"], r["repeat"]): r["sentences_per_s"] for r in result["runs"]
              if r["concurrency"] == conc and r["batch"] == batch}
        for path in result["paths"][1:]:
            paired[f"{path}_vs_direct_c{conc}_b{batch}"] = paired_ratio(by, path, "direct", reps)
    return {"throughput": tp, "paired_ratios": paired}


def lookup(summary: dict, path: str, conc: int, batch: int) -> dict:
    return next(s for s in summary["throughput"] if s["path"] == path and s["concurrency"] == conc and s["batch"] == batch)


WHAT = {"direct": "Infinity's own server, `/v1/embeddings`", "openai": "ours, `/v1/embeddings` (passed through)",
        "v2": "ours, V2 `infer` (BYTES `text`)", "hf": "ours, `HuggingFaceRuntime` V2 (torch in MLServer; context)"}


def table(result: dict) -> str:
    summary, points = result["summary"], result["config"]["points"]
    top = points[0]
    head = (["path", "what"] + [point_name(c, b) for c, b in points]
            + ["vs direct: " + " / ".join(point_name(c, b) for c, b in points),
               f"CPU at {point_name(*top)}: loadgen / mlserver / engine"])
    rows = []
    pr = summary["paired_ratios"]
    for path in result["paths"]:
        cells = [f"`{path}`", WHAT[path]]
        for c, b in points:
            s = lookup(summary, path, c, b)
            cells.append(f"**{s['sentences_per_s_median']:,.0f}** ({s['sentences_per_s_min']:,.0f}–"
                         f"{s['sentences_per_s_max']:,.0f})<br>p50 {s['p50_ms']:.1f} / p99 {s['p99_ms']:.1f} ms")
        cells.append(" / ".join("1" if path == "direct" else f"{pr[f'{path}_vs_direct_c{c}_b{b}']['median']:.3f}"
                                for c, b in points))
        s = lookup(summary, path, *top)
        cells.append(f"{s['cpu']['loadgen']:.2f} / {s['cpu']['mlserver']:.2f} / {s['cpu']['engine']:.2f}")
        rows.append(cells)
    return md_table(head, rows)


def plot(result: dict, path: Path) -> None:
    summary, points, cfg = result["summary"], result["config"]["points"], result["config"]
    fig, ax = pyplot().subplots(figsize=(11, 4.8))
    for i, p in enumerate(result["paths"]):
        bars(ax, i, len(result["paths"]), [lookup(summary, p, c, b) for c, b in points], "sentences_per_s", p)
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels([f"{c} clients,\n{b} sentence(s)/request" for c, b in points])
    ax.set_ylabel("sentences / s (median of repeats; whiskers min–max)")
    ax.legend(fontsize=8)
    ax.margins(y=0.12)
    m, r = result["machine"], result["ratios"]
    fig.suptitle(f"Infinity {result['versions']['infinity_emb']} (all-MiniLM-L6-v2, CPU): its own server vs ours "
                 f"(KubeAIRuntime Infinity); vs_raw {r['vs_raw']:.3f} (V2), {r['openai_vs_raw']:.3f} (OpenAI) at "
                 f"{point_name(*points[0])}\n{m['cores']} cores {m['cpu']}, {cfg['duration_s']:g} s windows, "
                 f"{cfg['repeats']} interleaved repeats, engine nice {result['scheduling']['engine_nice']}, "
                 f"{result['date'][:10]}", fontsize=9)
    save(fig, path)


def report(result: dict) -> tuple:
    summary, cfg, m = result["summary"], result["config"], result["machine"]
    top = cfg["points"][0]
    lg = {p: lookup(summary, p, *top)["cpu"]["loadgen"] for p in result["paths"]}
    loadgen = max(r["cpu"]["loadgen"] for r in result["runs"])
    other = max(r["cpu"]["other"] for r in result["runs"])
    disturbed = sum(r["disturbed"] for r in result["runs"])
    spread = max(s["spread"] for s in summary["throughput"])
    text = (f"{table(result)}\n\nRatios ({result['ratios_basis']}): **vs_raw = {result['ratios']['vs_raw']}** (V2), "
            f"**openai_vs_raw = {result['ratios']['openai_vs_raw']}** (target ≥ 0.95).\n\n"
            f"The load generator (this process) used "
            + ", ".join(f"{v:.2f}" for v in lg.values()) + f" of a core at {point_name(*top)} on "
            + ", ".join(lg) + f" (at most {loadgen:.2f} in any run); other processes at most {other:.2f} cores during "
            f"a window ({disturbed} run(s) still marked disturbed after retries); largest spread of a path over the "
            f"repeats {spread:.0%}; load average {result['loadavg_before'][0]:.2f} before, "
            f"{result['loadavg_after'][0]:.2f} after.")
    section = (f"Last run {result['date']} on {m['cores']} cores ({m['cpu']}), infinity-emb "
               f"{result['versions']['infinity_emb']}, MLServer {result['versions']['mlserver']}; {len(SENTENCES)} "
               f"sentences round-robin; {cfg['duration_s']:g} s windows after a {cfg['warmup_s']:g} s warm-up, "
               f"{cfg['repeats']} interleaved repeats; {result['scheduling']['applied']}. Cells: median sentences/s "
               "(min–max of repeats), median p50 / p99 request latency; *vs direct*: ours over Infinity's own server "
               "within each repeat, median over the repeats; CPU in cores (median of repeats).\n\n"
               f"{text}\n\n![infinity](results/infinity.png)")
    return text, section


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=6.0, help="seconds of each counted window (default 6)")
    ap.add_argument("--warmup", type=float, default=1.5, help="seconds of load before each window (default 1.5)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--points", default="32x1,8x1,1x1,8x8",
                    help="comma-separated CxB: C clients, B sentences per request; the first is the ratios' "
                         "(default 32x1,8x1,1x1,8x8)")
    ap.add_argument("--no-hf", dest="hf", action="store_false", help="leave out our HuggingFaceRuntime (context)")
    ap.add_argument("--engine-nice", type=int, default=10,
                    help="nice value given to Infinity's processes; 0: as shipped (default 10)")
    shared_options(ap, "smoke run: the first point, 3 s, 1 repeat; writes nothing")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.replot, "infinity", plot, report)
    args.points = [tuple(int(x) for x in p.split("x")) for p in args.points.split(",")]
    if args.quick:
        args.duration, args.warmup, args.repeats, args.quiet_wait = 3.0, 1.0, 1, 5.0
        args.points = args.points[:1]
    command = engines.command("MODELSERVE_INFINITY_COMMAND", ".venv-infinity/bin/infinity_emb", "Infinity")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below stops the server
    t_all, load_before = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="modelserve-infinity-bench-") as tmp:
        srv, port, startup, folder = start(Path(tmp), command, args.hf)
        try:
            log(f"mlserver on {srv.url}, Infinity on port {port} (ready in {startup:.0f} s)")
            result = asyncio.run(measure(srv, port, args, log))
            import requests

            health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
            result["engine_health"] = health.json() if health.ok else health.status_code
        finally:
            srv.stop()
    import subprocess

    import aiohttp

    py = Path(command.split()[0]).with_name("python")
    version = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('infinity_emb'))"],
                             capture_output=True, text=True).stdout.strip() or "?"
    m = machine_info()
    result.update(benchmark="infinity", date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=m,
                  wall_s=round(time.monotonic() - t_all, 1), engine_startup_s=round(startup, 1),
                  loadavg_before=load_before, loadavg_after=os.getloadavg(),
                  versions={"infinity_emb": version, "mlserver": m["packages"]["mlserver"],
                            "aiohttp": aiohttp.__version__, "infinity_command": command},
                  model=f"all-MiniLM-L6-v2 ({folder}), Infinity defaults (torch, CPU, batch size 32)",
                  sentences=SENTENCES,
                  config={"duration_s": args.duration, "warmup_s": args.warmup, "repeats": args.repeats,
                          "points": args.points, "max_other_cpu": args.max_other_cpu, "retries": args.retries,
                          "loadgen": "asyncio + aiohttp in the benchmark process, keep-alive, a new session per run; "
                                     "every answer parsed and checked for count and size"})
    result["summary"] = summary = summarise(result)
    c, b = args.points[0]
    pr = summary["paired_ratios"]
    result["ratios"] = {"vs_raw": pr[f"v2_vs_direct_c{c}_b{b}"]["median"],
                        "openai_vs_raw": pr[f"openai_vs_direct_c{c}_b{b}"]["median"]}
    result["ratios_basis"] = (f"sentences/s at {point_name(c, b)} (the busiest concurrency measured): ours over Infinity's "
                              "own server (the same engine process) in the same repeat, median over the repeats; "
                              "vs_raw is V2, openai_vs_raw our /v1/embeddings")
    result["ratios_of_medians"] = {
        k: round(lookup(summary, p, c, b)["sentences_per_s_median"] / lookup(summary, "direct", c, b)["sentences_per_s_median"], 3)
        for k, p in (("vs_raw", "v2"), ("openai_vs_raw", "openai"))}
    return finish(result, "infinity", plot, report, out_dir(args), log)


if __name__ == "__main__":
    raise SystemExit(main())
