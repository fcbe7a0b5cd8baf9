"""Reranking benchmark: 1 query × 32 documents per request through our V2 and /v1/rerank, on the Infinity engine
(against Infinity's own /rerank on the same engine process) and on transformers in-process (against a raw
``CrossEncoder.predict`` of the same 32 pairs in this process).

    .venv/bin/python benchmarks/rerank_bench.py                    # full run (~5 min on a quiet machine): writes results/rerank.{json,png} and the README table
    .venv/bin/python benchmarks/rerank_bench.py --quick            # ~2 min smoke run (3 s windows, 1 repeat), prints the table, writes nothing
    .venv/bin/python benchmarks/rerank_bench.py --duration 10 --repeats 5 --concurrency 8 --quiet-wait 5 --retries 0
    .venv/bin/python benchmarks/rerank_bench.py --replot benchmarks/results/rerank.json   # redraw the PNG and the table only

The model: a cross-encoder with all-MiniLM-L6-v2's encoder (6 layers, 384 wide; ``tests.support.hf_models.minilm_dir()``,
read offline) and a seeded random one-logit head (``BertForSequenceClassification.from_pretrained(minilm, num_labels=1)``),
saved with MiniLM's tokenizer by sentence-transformers' ``CrossEncoder(...).save`` (no hub downloads here; the
figures are those of a real MiniLM-sized cross-encoder, the scores are not meaningful). One ``mlserver start``
(parallel_workers 0, gzip off, as infinity_bench.py) serves it twice:

- ``rr-infinity``: ``modelserve.kubeai.KubeAIRuntime`` ``{"engine": "Infinity", "features": ["Reranking"]}``, which
  starts ``infinity_emb v2`` from .venv-infinity (``$MODELSERVE_INFINITY_COMMAND``; Infinity's defaults: torch on CPU,
  batch size 32) on a loopback port (the mlserver log line "engine ready on port N");
- ``rr-hf``: ``modelserve.huggingface.HuggingFaceRuntime`` task ``text_reranking`` (transformers inside MLServer,
  pairs coalesced).

Sides, each request 1 query (4 queries round-robin) × the same 32 documents:

- ``direct``: Infinity's own server, ``POST /v1/rerank`` on the engine's port (the very process our runtime uses);
- ``v2`` / ``rerank``: ours on the Infinity engine, V2 ``infer`` (BYTES ``query`` [1] + ``documents`` [32] ->
  FP32 ``scores`` [32]) / ``POST /v1/rerank`` (Cohere/Jina shape, ``top_n`` 32);
- ``raw``: ``CrossEncoder(folder).predict(32 pairs)`` called back to back by 1 thread of this process (no server);
  ``raw_threads``: the same by C threads at once (context);
- ``hf_v2`` / ``hf_rerank``: ours on transformers, V2 / ``/v1/rerank`` as above.

Before the load every side's scores are compared with ``CrossEncoder.predict`` on every query (within 1e-3). Under
load every answer is parsed and must hold 32 scores; a failed request (status, body, timeout) is counted as an
error of its side and left out of the throughput and latency, and the run goes on.

- Throughput: lib.loadgen's closed loop (C aiohttp workers back to back, keep-alive, a new session per run; threads
  for ``raw``), the requests that finish inside a fixed window after a warm-up: requests/s, pairs/s (32 × requests/s),
  p50/p99 latency. A discarded round per side first; then each repeat runs every side, the order rotated by the
  repeat index; the ratios are taken within each repeat (``v2``/``rerank`` over ``direct``, ``hf_v2``/``hf_rerank``
  over ``raw``), then the median over the repeats.
- CPU (cores) over each window: this process (the load generator; for ``raw`` the model itself), the mlserver
  process (for ``hf_*`` the model), Infinity's processes, everything else, and the share of the window the mlserver
  and load-generator main threads waited for a CPU. Each run waits for the machine to be quiet first and is
  repeated when other processes took more than --max-other-cpu cores during it; the load average is noted per run.
- Scheduling: the engine's processes get nice 10 by default (--engine-nice), as in infinity_bench.py and for the
  same reason; the same engine serves ``direct``, ``v2`` and ``rerank``.

See benchmarks/README.md ("Reranking").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lib import engines, wrk  # noqa: E402  (importing lib puts the repository on sys.path)
from lib.cpu import CPU, deprioritise, roles  # noqa: E402
from lib.loadgen import closed_loop, closed_loop_threads, latency, measured, new_session, post_json, rotate  # noqa: E402
from lib.report import (  # noqa: E402
    bars, finish, log, machine_info, md_table, out_dir, paired_ratio, pyplot, repeat_stats, replot, save, shared_options)
from tests.support.harness import Server, write_model  # noqa: E402

INF, HF = "rr-infinity", "rr-hf"
SIDES = ("direct", "v2", "rerank", "raw", "raw_threads", "hf_v2", "hf_rerank")
PAIRS = {"v2": "direct", "rerank": "direct", "hf_v2": "raw", "hf_rerank": "raw"}  # ours -> the side it is compared to
TARGETS = {"v2_vs_direct": 0.95, "rerank_vs_direct": 0.95, "hf_v2_vs_raw": 0.9, "hf_rerank_vs_raw": 0.9}
QUERIES = ["how does a model server answer requests", "what delays trains in winter",
           "how do I bake a simple cake", "what does a reranker do with a query and its documents"]
SUBJECTS = ["A model server", "The Kubernetes scheduler", "Our team", "A small brown dog", "The city council",
            "An old night train", "The new recipe", "A cross-encoder"]
TAILS = ["answers inference requests over HTTP and gRPC for many clients at once.",
         "was delayed by snow and ice for most of the cold morning.",
         "scores each pair of a query and a document with one forward pass.",
         "needs three eggs, some flour, sugar and a pinch of salt."]
DOCUMENTS = [f"{s} {t}" for s in SUBJECTS for t in TAILS]  # 32 documents of 11-16 words
N = len(DOCUMENTS)
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WHAT = {"direct": "Infinity's own server, `/v1/rerank` on the engine's port",
        "v2": "ours on Infinity, V2 `infer` (`query` + `documents` -> `scores`)",
        "rerank": "ours on Infinity, `/v1/rerank`",
        "raw": "`CrossEncoder.predict(32 pairs)`, 1 thread in-process, no server",
        "raw_threads": "`CrossEncoder.predict(32 pairs)`, C threads in-process (context)",
        "hf_v2": "ours on transformers (`HuggingFaceRuntime` text_reranking), V2",
        "hf_rerank": "ours on transformers, `/v1/rerank`"}


# -- the model, the server -------------------------------------------------------------------------
def build_minilm_cross_encoder(out: Path) -> Path:
    """MiniLM's encoder with a seeded random one-logit head, saved by sentence-transformers' CrossEncoder (so its
    config says CrossEncoder, activation Sigmoid), MiniLM's tokenizer beside it."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertForSequenceClassification

    from tests.support.hf_models import _save_tokenizer, minilm_dir

    tmp = out.with_name(out.name + ".tmp")
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=1, local_files_only=True).eval() \
        .save_pretrained(tmp)
    _save_tokenizer(tmp)
    CrossEncoder(str(tmp), device="cpu").save(str(out))
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def start(tmp: Path, command: str, folder: Path):
    root = tmp / "server"
    write_model(root, INF, {"implementation": "modelserve.kubeai.KubeAIRuntime", "parallel_workers": 0,
                            "parameters": {"extra": {"engine": "Infinity", "features": ["Reranking"], "url": str(folder),
                                                     "start_timeout": 300, "cache_dir": str(tmp / "cache")}}})
    write_model(root, HF, {"implementation": "modelserve.huggingface.HuggingFaceRuntime", "parallel_workers": 0,
                           "parameters": {"uri": str(folder), "extra": {"task": "text_reranking"}}})
    srv = Server(root, parallel_workers=0, debug=False, extra={"gzip_enabled": False},
                 env={"MODELSERVE_INFINITY_COMMAND": command, **ENV})
    return (srv, *engines.start(srv))


# -- requests --------------------------------------------------------------------------------------
class Sides:
    def __init__(self, mlserver_url: str, engine_url: str):
        self.mlserver, self.engine = mlserver_url, engine_url

    def request(self, side: str, query: str):
        if side in ("v2", "hf_v2"):
            body = {"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": [query]},
                               {"name": "documents", "datatype": "BYTES", "shape": [N], "data": DOCUMENTS}],
                    "outputs": [{"name": "scores"}]}
            url = f"{self.mlserver}/v2/models/{INF if side == 'v2' else HF}/infer"
        else:
            body = {"model": HF if side == "hf_rerank" else INF, "query": query, "documents": DOCUMENTS, "top_n": N}
            url = (self.engine if side == "direct" else self.mlserver) + "/v1/rerank"
            if side == "direct":
                body["return_documents"] = False
        return url, json.dumps(body).encode()

    @staticmethod
    def scores(side: str, doc: dict) -> list:
        """The 32 scores of an answer, in document order, checked for count."""
        if side in ("v2", "hf_v2"):
            out = next(o for o in doc["outputs"] if o["name"] == "scores")
            got = list(out["data"])
        else:
            got = [None] * N
            for item in doc["results"]:
                got[int(item["index"])] = item["relevance_score"]
        if len(got) != N or any(s is None for s in got):
            raise AssertionError(f"{side}: {sum(s is not None for s in got)} scores, expected {N}")
        return got


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def pairs_of(paths) -> dict:
    """PAIRS among the sides measured."""
    return {o: b for o, b in PAIRS.items() if o in paths and b in paths}


async def verify(sides: Sides, raw, log, active) -> dict:
    """Every query on every HTTP side: the scores of CrossEncoder.predict (within 1e-3). A mismatch is recorded
    (and logged), not raised: the load still runs."""
    import numpy as np

    worst = {s: 0.0 for s in active if not s.startswith("raw")}
    failures = []
    async with new_session() as session:
        for query in QUERIES:
            want = np.asarray(raw.predict([(query, d) for d in DOCUMENTS], batch_size=N, show_progress_bar=False))
            for side in worst:
                try:
                    got = np.asarray(sides.scores(side, await post_json(session, *sides.request(side, query))))
                    worst[side] = max(worst[side], float(np.abs(got - want).max()))
                except Exception as exc:  # noqa: BLE001 - recorded
                    failures.append(f"{side}: {error_text(exc)}")
    bad = [s for s, d in worst.items() if d > 1e-3]
    if bad or failures:
        log(f"VERIFY: scores differ from CrossEncoder.predict by more than 1e-3 on {bad}; failures {failures}")
    return {"max_abs_diff_vs_cross_encoder": worst, "tolerance": 1e-3, "ok": not bad and not failures,
            "failures": failures}


# -- one run ---------------------------------------------------------------------------------------
def stats(done, usage: dict, duration: float) -> dict:
    ok = [d for d in done if d[2] is None]
    errors = [d[2] for d in done if d[2] is not None]
    return {"pairs_per_s": len(ok) * N / duration, "requests_per_s": len(ok) / duration, "requests": len(ok),
            "errors": len(errors), "error_samples": sorted(set(errors))[:3], **latency(ok, allow_empty=True),
            "cpu": usage}


async def run_http(sides: Sides, side: str, conc: int, warmup: float, duration: float, cpu: CPU) -> dict:
    reqs = [sides.request(side, q) for q in QUERIES]

    async def call(session, k: int):
        try:
            sides.scores(side, await post_json(session, *reqs[k % len(reqs)]))
        except Exception as exc:  # noqa: BLE001 - counted as an error of this side
            await asyncio.sleep(0.05)  # no hot loop against a failing server
            return error_text(exc)
        return None

    return stats(*await closed_loop(call, conc, warmup, duration, cpu), duration)


def run_raw(raw, threads: int, warmup: float, duration: float, cpu: CPU) -> dict:
    batches = [[(q, d) for d in DOCUMENTS] for q in QUERIES]

    def call(k: int):
        try:
            if len(raw.predict(batches[k % len(batches)], batch_size=N, show_progress_bar=False)) != N:
                raise AssertionError(f"raw: not {N} scores")
        except Exception as exc:  # noqa: BLE001 - counted as an error of this side
            return error_text(exc)
        return None

    return stats(*closed_loop_threads(call, threads, warmup, duration, cpu), duration)


async def run_one(ctx: dict, side: str, conc: int, warmup: float, duration: float) -> dict:
    if side.startswith("raw"):  # threads in this process; the event loop has nothing else to do meanwhile
        return run_raw(ctx["raw"], 1 if side == "raw" else conc, warmup, duration, ctx["cpu"])
    return await run_http(ctx["sides"], side, conc, warmup, duration, ctx["cpu"])


async def measure(srv, port: int, raw, args, log) -> dict:
    cpu = CPU(roles(srv.proc.pid, lambda comm: "engine", ("engine",)))  # Infinity: every descendant of mlserver
    sched = deprioritise(srv.proc.pid, cpu.pids["engine"], args.engine_nice)
    log(f"engine pids {cpu.pids['engine']}; scheduling: {sched['applied']}")
    ctx = {"cpu": cpu, "raw": raw, "sides": Sides(srv.url, f"http://127.0.0.1:{port}")}
    checked = await verify(ctx["sides"], raw, log, args.sides)
    log(f"verified against CrossEncoder.predict: {checked['max_abs_diff_vs_cross_encoder']}")
    for side in args.sides:  # the first batches are slow: a discarded round first
        await run_one(ctx, side, args.concurrency, 0.0, max(2.0, args.warmup))
    runs = []
    for rep in range(args.repeats):
        for side in rotate(args.sides, rep):
            res = await measured(lambda: run_one(ctx, side, args.concurrency, args.warmup, args.duration),
                                 f"{side} c={args.concurrency}", args, log, cpu, side=side,
                                 concurrency=args.concurrency, repeat=rep)
            res["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            runs.append(res)
            c = res["cpu"]
            log(f"repeat {rep + 1}/{args.repeats} {side:11}: {res['requests_per_s']:6.2f} req/s "
                f"{res['pairs_per_s']:7.1f} pairs/s (p50 {res['latency_p50_ms']:.0f} / p99 "
                f"{res['latency_p99_ms']:.0f} ms, {res['errors']} errors); cores: loadgen {c['loadgen']:.2f} "
                f"mlserver {c['mlserver']:.2f} engine {c['engine']:.2f} other {c['other']:.2f}; load {res['loadavg'][0]}")
    return {"runs": runs, "verified": checked, "processes": cpu.pids, "scheduling": sched}


# -- summary, table, plot --------------------------------------------------------------------------
def summarise(result: dict) -> dict:
    reps = result["config"]["repeats"]
    tp = []
    for side in result["paths"]:
        rs = [r for r in result["runs"] if r["side"] == side]
        tp.append({"side": side, **repeat_stats(rs, "pairs_per_s", 1, 1,
                                                lambda med: {"requests_per_s_median": round(med / N, 2)}),
                   "errors": sum(r["errors"] for r in rs),
                   "loadgen_runqueue_wait": round(max(r["cpu"]["loadgen_runqueue_wait"] for r in rs), 3)})
    by = {(r["side"], r["repeat"]): r["pairs_per_s"] or float("nan") for r in result["runs"]}
    paired = {f"{ours}_vs_{base}": paired_ratio(by, ours, base, reps)
              for ours, base in pairs_of(result["paths"]).items()}
    return {"throughput": tp, "paired_ratios": paired}


def cpu_cost(result: dict) -> dict:
    """CPU ms per successful request of each side (median over the repeats), of the roles that do its work (this
    process, mlserver, Infinity), and ours' cost over the baseline's, a figure that other processes' load does not
    move as much as throughput: ``cost_ratios`` = baseline's ms over ours (1: no overhead, as the throughput
    ratios)."""
    import statistics

    dur = result["config"]["duration_s"]
    ms = {}
    for side in result["paths"]:
        each = [sum(r["cpu"][k] for k in ("loadgen", "mlserver", "engine")) * dur * 1e3 / r["requests"]
                for r in result["runs"] if r["side"] == side and r["requests"]]
        ms[side] = round(statistics.median(each), 1) if each else None
    ratios = {f"{o}_vs_{b}": round(ms[b] / ms[o], 3) if ms[o] and ms[b] else None
              for o, b in pairs_of(result["paths"]).items()}
    return {"cpu_ms_per_request": ms, "cost_ratios": ratios}


def lookup(summary: dict, side: str) -> dict:
    return next(s for s in summary["throughput"] if s["side"] == side)


def table(result: dict) -> str:
    summary, pr = result["summary"], result["summary"]["paired_ratios"]
    head = ["side", "what", "pairs/s (min–max)", "req/s", "p50 / p99 ms", "spread", "errors", "vs", "ratio (each repeat)",
            "CPU loadgen / mlserver / engine / other"]
    rows = []
    for side in result["paths"]:
        s = lookup(summary, side)
        base = pairs_of(result["paths"]).get(side)
        ratio = pr[f"{side}_vs_{base}"] if base else None
        c = s["cpu"]
        rows.append([f"`{side}`", WHAT[side], f"**{s['pairs_per_s_median']:,.0f}** ({s['pairs_per_s_min']:,.0f}–"
                     f"{s['pairs_per_s_max']:,.0f})", f"{s['requests_per_s_median']:.2f}",
                     f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f}", f"{s['spread']:.0%}", str(s["errors"]),
                     f"`{base}`" if base else "", (f"**{ratio['median']:.3f}** ("
                                                   + ", ".join(f"{x:.2f}" for x in ratio["each_repeat"]) + ")")
                     if ratio else "", f"{c['loadgen']:.2f} / {c['mlserver']:.2f} / {c['engine']:.2f} / {c['other']:.2f}"])
    return md_table(head, rows)


def plot(result: dict, path: Path) -> None:
    summary, cfg, m, r = result["summary"], result["config"], result["machine"], result["ratios"]
    fig, ax = pyplot().subplots(figsize=(10, 4.8))
    sides = result["paths"]
    bars(ax, 0, 1, [lookup(summary, s) for s in sides], "pairs_per_s", "median of repeats (whiskers min–max)")
    ax.set_xticks(range(len(sides)))
    ax.set_xticklabels(sides)
    ax.set_ylabel(f"pairs scored / s (1 query × {N} documents per request)")
    ax.legend(fontsize=8)
    ax.margins(y=0.12)
    fig.suptitle(f"Reranking, MiniLM-L6 cross-encoder on CPU, 1 query × {N} documents, c={cfg['concurrency']}\n"
                 "ours over the baseline: " + ", ".join(f"{k} {x:.3f}" for k, x in r.items())
                 + f"\n{m['cores']} cores {m['cpu']}, "
                 f"{cfg['duration_s']:g} s windows, {cfg['repeats']} interleaved repeats, engine nice "
                 f"{result['scheduling']['engine_nice']}, load average {result['loadavg_before'][0]:.1f} before, "
                 f"{result['date'][:10]}", fontsize=9)
    save(fig, path)


def report(result: dict) -> tuple:
    summary, cfg, m = result["summary"], result["config"], result["machine"]
    http = [s for s in result["paths"] if not s.startswith("raw")]
    loadgen = max((r["cpu"]["loadgen"] for r in result["runs"] if r["side"] in http), default=0.0)
    wait = max((lookup(summary, s)["loadgen_runqueue_wait"] for s in http), default=0.0)
    other = max(r["cpu"]["other"] for r in result["runs"])
    loads = [r["loadavg"][0] for r in result["runs"]]
    disturbed = sum(r["disturbed"] for r in result["runs"])
    errors = sum(r["errors"] for r in result["runs"])
    v, cost = result["verified"], cpu_cost(result)
    text = (f"{table(result)}\n\nRatios ({result['ratios_basis']}): {wrk.verdict(result)}.\n\n"
            f"The load generator (this process) used at most {loadgen:.3f} of a core on an HTTP side (its main thread "
            f"waited for a CPU at most {wait:.0%} of a window); other processes at most {other:.2f} cores during a "
            f"window ({disturbed} of {len(result['runs'])} run(s) still marked disturbed after retries); load average "
            f"{min(loads):.1f}–{max(loads):.1f} over the runs ({result['loadavg_before'][0]:.2f} before, "
            f"{result['loadavg_after'][0]:.2f} after); {errors} failed request(s) in all; largest spread of a side over "
            f"the repeats {max(s['spread'] for s in summary['throughput']):.0%}. Scores before the load: largest "
            "difference from `CrossEncoder.predict` " + ", ".join(
                f"{k} {d:.1e}" for k, d in v["max_abs_diff_vs_cross_encoder"].items())
            + ("" if v["ok"] else f" (NOT within {v['tolerance']}: {v['failures']})") + ".\n\n"
            "CPU per request (ms of this process + mlserver + Infinity, median of repeats): "
            + ", ".join(f"{k} {x}" for k, x in cost["cpu_ms_per_request"].items())
            + "; baseline's over ours: " + ", ".join(f"{k} {x}" for k, x in cost["cost_ratios"].items()) + ".")
    section = (f"Last run {result['date']} on {m['cores']} cores ({m['cpu']}), infinity-emb "
               f"{result['versions']['infinity_emb']}, MLServer {result['versions']['mlserver']}; 1 query ({len(QUERIES)} "
               f"round-robin) × {N} documents per request, {cfg['concurrency']} clients; {cfg['duration_s']:g} s windows "
               f"after a {cfg['warmup_s']:g} s warm-up, {cfg['repeats']} interleaved repeats; "
               f"{result['scheduling']['applied']}. Cells: median pairs/s (min–max of repeats) and requests/s, median "
               "p50 / p99 request latency, spread (max−min over the median); *ratio*: ours over the side in *vs* within "
               "each repeat, median (each repeat); CPU in cores (median of repeats; for `raw*` the loadgen column is "
               f"the model).\n\n{text}\n\n![rerank](results/rerank.png)")
    return text, section


def versions(command: str, machine: dict) -> dict:
    """The packages measured: infinity-emb as installed in the engine's environment (read from its site-packages,
    beside its command), the others as in this one."""
    from importlib.metadata import distributions, version

    site = [str(p) for p in Path(command.split()[0]).parent.parent.glob("lib/python*/site-packages")]
    infinity = next((d.version for d in distributions(name="infinity_emb", path=site)), "?")
    return {"infinity_emb": infinity, "mlserver": machine["packages"]["mlserver"], "infinity_command": command,
            **{p: version(p) for p in ("aiohttp", "torch", "transformers", "sentence-transformers")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of each counted window (default 8)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each window (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--concurrency", type=int, default=8, help="clients (raw_threads: threads) (default 8)")
    ap.add_argument("--engine-nice", type=int, default=10,
                    help="nice value given to Infinity's processes; 0: as shipped (default 10)")
    ap.add_argument("--sides", default=",".join(SIDES),
                    help=f"comma-separated sides to measure, a subset of {','.join(SIDES)} (default all)")
    shared_options(ap, "smoke run: 3 s windows, 1 s warm-up, 1 repeat; writes nothing")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.replot, "rerank", plot, report)
    args.sides = tuple(args.sides.split(","))
    if set(args.sides) - set(SIDES):
        ap.error(f"--sides: unknown {sorted(set(args.sides) - set(SIDES))}")
    if args.quick:
        args.duration, args.warmup, args.repeats, args.quiet_wait = 3.0, 1.0, 1, 5.0
    command = engines.command("MODELSERVE_INFINITY_COMMAND", ".venv-infinity/bin/infinity_emb", "Infinity")
    os.environ.update(ENV)  # this process too (the raw side): nothing from the hub
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below stops the server
    t_all, load_before = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="modelserve-rerank-bench-") as tmp:
        folder = build_minilm_cross_encoder(Path(tmp) / "minilm-rerank")
        from sentence_transformers import CrossEncoder

        raw = CrossEncoder(str(folder), device="cpu")
        srv, port, startup = start(Path(tmp), command, folder)
        try:
            log(f"mlserver on {srv.url}, Infinity on port {port} (ready in {startup:.0f} s)")
            result = asyncio.run(measure(srv, port, raw, args, log))
        finally:
            srv.stop()
    m = machine_info()
    result.update(benchmark="rerank", date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=m,
                  wall_s=round(time.monotonic() - t_all, 1), engine_startup_s=round(startup, 1),
                  loadavg_before=load_before, loadavg_after=os.getloadavg(), versions=versions(command, m),
                  model="cross-encoder: all-MiniLM-L6-v2's encoder + a seeded random 1-logit head "
                        "(BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=1), saved by "
                        "CrossEncoder.save; Sigmoid), Infinity defaults (torch, CPU, batch size 32)",
                  queries=QUERIES, documents=DOCUMENTS, paths=list(args.sides),
                  config={"duration_s": args.duration, "warmup_s": args.warmup, "repeats": args.repeats,
                          "concurrency": args.concurrency, "documents_per_request": N,
                          "max_other_cpu": args.max_other_cpu, "retries": args.retries, "quiet_wait_s": args.quiet_wait,
                          "loadgen": "asyncio + aiohttp in the benchmark process, keep-alive, a new session per run; "
                                     "every answer parsed and checked for 32 scores; failures counted, not raised"})
    result["summary"] = summary = summarise(result)
    result["ratios"] = {k: v["median"] for k, v in summary["paired_ratios"].items()}
    result["ratios_basis"] = (f"pairs/s at c={args.concurrency}, ours over the baseline in the same repeat, median over "
                              "the repeats: v2/rerank over Infinity's own /rerank on the same engine process, "
                              "hf_v2/hf_rerank over CrossEncoder.predict of the same 32 pairs by 1 thread in-process")
    result["ratios_of_medians"] = {f"{o}_vs_{b}": round(lookup(summary, o)["pairs_per_s_median"]
                                                        / max(lookup(summary, b)["pairs_per_s_median"], 1e-9), 3)
                                   for o, b in pairs_of(args.sides).items()}
    result["targets"] = wrk.targets(result["ratios"], {k: v for k, v in TARGETS.items() if k in result["ratios"]})
    result["cpu_cost"] = cpu_cost(result)
    return finish(result, "rerank", plot, report, out_dir(args), log)


if __name__ == "__main__":
    raise SystemExit(main())
