"""vLLM benchmark: output tokens/s and time to first token through our KubeAIRuntime vs vLLM's own server.

    .venv/bin/python benchmarks/vllm_bench.py                  # full run (~5 min): writes results/vllm.{json,png} and the README table
    .venv/bin/python benchmarks/vllm_bench.py --quick          # ~80 s smoke run (c=8, 1 repeat), prints the table, writes nothing
    .venv/bin/python benchmarks/vllm_bench.py --engine-nice 0  # as shipped: the engine's CPU priority left alone
    .venv/bin/python benchmarks/vllm_bench.py --duration 12 --repeats 5 --concurrency 8,4,1 --ttft-samples 50

One ``mlserver start`` (parallel_workers 0, gzip off, as tests/server/test_kubeai_server.py) serves the tiny
random Llama of the tests (``tests.support.llama_models.build_tiny_llama``, built offline into a temporary folder) with
``modelserve.kubeai.KubeAIRuntime``, which starts vLLM (``$MODELSERVE_VLLM_COMMAND``, default .venv-vllm's
python; float32, a 64 MB KV cache). That one engine answers all three paths, so the comparison is exact:

- ``direct``: vLLM's own OpenAI server, on the port our runtime started it on (the mlserver log line
  "engine ready on port N"): ``/v1/completions``;
- ``openai``: our ``/v1/completions`` on MLServer's port (proxied to that engine);
- ``v2``: our ``/v2/models/llm/infer`` (BYTES ``prompt``, parameters max_tokens/temperature) for throughput,
  ``/v2/models/llm/generate_stream`` for the time to first token.

Workload: 8 prompts, greedy (temperature 0), max_tokens 64. ``direct`` and ``openai`` also send
``ignore_eos`` (V2 refuses parameters it does not know), and before the load every prompt is checked to run to
the length limit without it: on every path the text must be identical, usage must say 64 completion tokens and
V2's finish_reason must be "length". So every request is the same work for the engine; V2 tokens are counted
as that verified number, the OpenAI paths' from each response's ``usage``.

- Throughput: an asyncio + aiohttp load generator in this process; N workers send requests back to back
  (keep-alive, a new client session per run, prompts round-robin); after a warm-up, the requests that finish
  inside a fixed window are counted: tokens/s = their completion tokens / window. A discarded round on every
  path comes first; then each repeat runs every (concurrency, path), the path order rotated by the repeat
  index (interleaved, as the wrk benchmarks: lib/wrk.py).
- Time to first token (TTFT): sequential streaming requests (``stream: true``; V2 generate_stream), the three
  paths alternating request by request; TTFT = from sending to the first SSE event that carries text. Every
  stream's text is checked against the expected text.
- CPU (cores) over each window: this process (the load generator), the mlserver process, vLLM's API server
  process, vLLM's engine (EngineCore + worker) and everything else, plus the share of the window the mlserver
  and load-generator main threads spent waiting for a CPU (/proc schedstat). The machine's 2 cores are shared
  by all of them. As in lib/wrk.py: each run waits for the machine to be quiet first and is repeated when other
  processes took more than --max-other-cpu cores during it.
- Scheduling: while it generates, vLLM's CPU engine keeps both cores busy (the worker runs the model, the
  EngineCore spin-waits with sched_yield for it). With autogroup scheduling (one group per session; the runtime
  starts the engine in a session of its own) every process outside the engine's group then waits tens of ms
  for a CPU at each wake-up: the client cannot even see the first token before the answer is complete, and
  throughput flips between two regimes. So by default the engine's autogroup (or, when it shares MLServer's,
  each of its threads) gets nice 10 (--engine-nice): it still gets every idle cycle, but the load generator
  (a client on another machine, in real life) and MLServer run as soon as they wake. --engine-nice 0 measures
  it as shipped.

See benchmarks/README.md ("vLLM").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lib import engines  # noqa: E402  (importing lib puts the repository on sys.path)
from lib.cpu import CPU, deprioritise, roles, wait_quiet  # noqa: E402
from lib.loadgen import HEADERS, closed_loop, latency, measured, new_session, post_json, rotate  # noqa: E402
from lib.report import (  # noqa: E402
    bars, finish, log, machine_info, md_table, out_dir, paired_ratio, pyplot, repeat_stats, replot, save, shared_options)
from tests.support.harness import Server, write_model  # noqa: E402

MODEL = "llm"
PATHS = ("direct", "openai", "v2")
PROMPTS = ["The quick brown fox", "Once upon a time", "Hello! How are you today?", "Computers follow instructions",
           "The weather was often cold", "Scientists study nature", "Breakfast usually includes",
           "A model server loads a model"]
ENGINE_ARGS = ["--max-model-len", "512", "--kv-cache-memory-bytes", "64M", "--dtype", "float32"]


# -- the server and its processes ------------------------------------------------------------------
def start(tmp: Path, command: str):
    from tests.support.llama_models import build_tiny_llama

    root = tmp / "server"
    write_model(root, MODEL, {"implementation": "modelserve.kubeai.KubeAIRuntime", "parallel_workers": 0,
                              "parameters": {"extra": {"engine": "VLLM", "url": str(build_tiny_llama(tmp / "llama")),
                                                       "args": ENGINE_ARGS, "start_timeout": 300,
                                                       "cache_dir": str(tmp / "cache")}}})
    srv = Server(root, parallel_workers=0, debug=False, extra={"gzip_enabled": False},
                 env={"MODELSERVE_VLLM_COMMAND": command, "HF_HUB_OFFLINE": "1"})
    return (srv, *engines.start(srv))


def role(comm: str) -> str:
    """vLLM's engine (EngineCore, its worker) by its process name; the API server, its guard and the resource
    tracker otherwise."""
    return "vllm_engine" if comm.startswith("VLLM") else "vllm_api"


# -- requests --------------------------------------------------------------------------------------
class Paths:
    def __init__(self, mlserver_url: str, engine_url: str, max_tokens: int):
        self.base = {"direct": engine_url, "openai": mlserver_url, "v2": mlserver_url}
        self.max_tokens = max_tokens
        self.expected: dict = {}  # prompt -> greedy text (filled by verify)

    def request(self, path: str, prompt: str, stream: bool = False, ignore_eos: bool = True):
        if path == "v2":
            body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [prompt]}],
                    "parameters": {"max_tokens": self.max_tokens, "temperature": 0}}
            if not stream:
                body["outputs"] = [{"name": "text"}, {"name": "finish_reason"}]
            route = f"/v2/models/{MODEL}/{'generate_stream' if stream else 'infer'}"
        else:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": self.max_tokens, "temperature": 0,
                    "ignore_eos": ignore_eos, "stream": stream}
            route = "/v1/completions"
        return self.base[path] + route, json.dumps(body).encode()

    def answer(self, path: str, doc: dict, prompt: str):
        """(text, completion tokens, finish reason) of a non-streamed answer."""
        if path == "v2":
            outs = {o["name"]: o["data"][0] for o in doc["outputs"]}
            return outs["text"], self.expected[prompt][1], outs.get("finish_reason")
        return doc["choices"][0]["text"], doc["usage"]["completion_tokens"], doc["choices"][0]["finish_reason"]


async def verify(session, paths: Paths) -> dict:
    """Every prompt greedy to the length limit; the same text and token count on every path."""
    report = {}
    for prompt in PROMPTS:
        url, data = paths.request("direct", prompt, ignore_eos=False)
        doc = await post_json(session, url, data)
        text, n, finish = doc["choices"][0]["text"], doc["usage"]["completion_tokens"], doc["choices"][0]["finish_reason"]
        if n != paths.max_tokens or finish != "length":
            raise AssertionError(f"prompt {prompt!r} stops after {n} tokens ({finish}) without ignore_eos: pick another")
        paths.expected[prompt] = (text, n)
        got = {}
        for path in PATHS:
            url, data = paths.request(path, prompt)
            got[path] = paths.answer(path, await post_json(session, url, data), prompt)
        if any(g != (text, n, "length") for g in got.values()):
            raise AssertionError(f"prompt {prompt!r}: the paths differ: {got} (direct without ignore_eos: {text!r})")
        report[prompt] = {"completion_tokens": n, "text": text}
    return report


# -- throughput ------------------------------------------------------------------------------------
async def load(paths: Paths, path: str, conc: int, warmup: float, duration: float, cpu: CPU) -> dict:
    reqs = [(p, *paths.request(path, p)) for p in PROMPTS]

    async def call(session, k: int) -> int:
        prompt, url, data = reqs[k % len(reqs)]
        text, n, _ = paths.answer(path, await post_json(session, url, data), prompt)
        if n != paths.max_tokens or text != paths.expected[prompt][0]:
            raise AssertionError(f"{path}: {n} tokens, text {text[:80]!r} for {prompt!r} under load")
        return n

    inside, usage = await closed_loop(call, conc, warmup, duration, cpu)
    return {"tokens_per_s": sum(n for *_, n in inside) / duration, "requests_per_s": len(inside) / duration,
            "requests": len(inside), **latency(inside), "cpu": usage}


# -- time to first token ---------------------------------------------------------------------------
async def stream_once(session, paths: Paths, path: str, prompt: str) -> dict:
    url, data = paths.request(path, prompt, stream=True)
    s = time.perf_counter()
    first, pieces = None, []
    async with session.post(url, data=data, headers=HEADERS) as r:
        if r.status != 200:
            raise RuntimeError(f"{url} answered {r.status}: {(await r.read())[:500]!r}")
        async for line in r.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            ev = json.loads(payload)
            if "error" in ev:
                raise RuntimeError(f"{path} stream failed: {ev['error']}")
            text = ev["outputs"][0]["data"][0] if path == "v2" else "".join(c["text"] for c in ev["choices"])
            if text and first is None:
                first = time.perf_counter() - s
            pieces.append(text)
    total = time.perf_counter() - s
    if "".join(pieces) != paths.expected[prompt][0]:
        raise AssertionError(f"{path}: the streamed text for {prompt!r} differs from the expected one")
    return {"ttft_ms": round(first * 1e3, 3), "total_ms": round(total * 1e3, 3), "events": len(pieces)}


# -- the run ---------------------------------------------------------------------------------------
async def measure(srv, port: int, args, log) -> dict:
    paths = Paths(srv.url, f"http://127.0.0.1:{port}", args.max_tokens)
    cpu = CPU(roles(srv.proc.pid, role, ("vllm_api", "vllm_engine")))
    sched = deprioritise(srv.proc.pid, cpu.pids["vllm_api"] + cpu.pids["vllm_engine"], args.engine_nice)
    log(f"scheduling: {sched['applied']}")
    runs, ttft, blocks = [], [], []
    async with new_session() as session:
        checked = await verify(session, paths)
        async with session.get(paths.base["direct"] + "/version") as r:
            engine_version = (await r.json(content_type=None)).get("version")
    log(f"verified: {len(PROMPTS)} prompts, {args.max_tokens} tokens each, identical text on {', '.join(PATHS)}")
    for path in PATHS:  # the engine's first batches of each size are slow: a discarded round first
        await load(paths, path, args.concurrency[0], 0.0, args.warmup, cpu)
    for rep in range(args.repeats):
        for conc in args.concurrency:
            for path in rotate(PATHS, rep):
                res = await measured(lambda: load(paths, path, conc, args.warmup, args.duration, cpu),
                                     f"{path} c={conc}", args, log, cpu, path=path, concurrency=conc, repeat=rep)
                runs.append(res)
                c = res["cpu"]
                log(f"repeat {rep + 1}/{args.repeats} c={conc} {path:6}: {res['tokens_per_s']:6.0f} tok/s "
                    f"({res['requests_per_s']:.1f} req/s, p50 {res['latency_p50_ms']:.0f} ms); cores: loadgen "
                    f"{c['loadgen']:.2f} mlserver {c['mlserver']:.2f} vllm api {c['vllm_api']:.2f} engine "
                    f"{c['vllm_engine']:.2f} other {c['other']:.2f}; waiting for a CPU: mlserver "
                    f"{c['mlserver_runqueue_wait']:.0%} loadgen {c['loadgen_runqueue_wait']:.0%}")
        await asyncio.to_thread(wait_quiet, args.max_other_cpu, args.quiet_wait, log, cpu)
        async with new_session() as session:
            cpu.start()
            for i in range(args.ttft_samples):
                for path in rotate(PATHS, rep + i):
                    prompt = PROMPTS[i % len(PROMPTS)]
                    ttft.append({"path": path, "repeat": rep, "prompt": prompt,
                                 **await stream_once(session, paths, path, prompt)})
            blocks.append({"repeat": rep, "cpu": cpu.stop()})
        meds = {p: statistics.median(t["ttft_ms"] for t in ttft if t["path"] == p and t["repeat"] == rep) for p in PATHS}
        log(f"repeat {rep + 1}/{args.repeats} TTFT medians: " + ", ".join(f"{p} {v:.1f} ms" for p, v in meds.items())
            + f" (other processes {blocks[-1]['cpu']['other']:.2f} cores)")
    return {"runs": runs, "ttft_samples": ttft, "ttft_cpu": blocks, "verified": checked,
            "engine_version": engine_version, "processes": cpu.pids, "scheduling": sched}


def summarise(result: dict) -> dict:
    tp = []
    for conc in result["config"]["concurrencies"]:
        for path in PATHS:
            rs = [r for r in result["runs"] if r["path"] == path and r["concurrency"] == conc]
            tp.append({"path": path, "concurrency": conc, **repeat_stats(rs, "tokens_per_s", 1, 1)})
    tt = {}
    for path in PATHS:
        xs = sorted(t["ttft_ms"] for t in result["ttft_samples"] if t["path"] == path)
        per_rep = [statistics.median(t["ttft_ms"] for t in result["ttft_samples"]
                                     if t["path"] == path and t["repeat"] == r) for r in range(result["config"]["repeats"])]
        tt[path] = {"n": len(xs), "median_ms": round(statistics.median(xs), 2), "p10_ms": round(xs[len(xs) // 10], 2),
                    "p90_ms": round(xs[(9 * len(xs)) // 10], 2), "median_each_repeat_ms": [round(v, 2) for v in per_rep],
                    "total_median_ms": round(statistics.median(t["total_ms"] for t in result["ttft_samples"]
                                                               if t["path"] == path), 2)}
    paired = {}  # ours over direct within each repeat (the paths ran back to back), then the median
    for conc in result["config"]["concurrencies"]:
        by = {(r["path"], r["repeat"]): r["tokens_per_s"] for r in result["runs"] if r["concurrency"] == conc}
        for path in PATHS[1:]:
            paired[f"{path}_vs_direct_c{conc}"] = paired_ratio(by, path, "direct", result["config"]["repeats"])
    return {"throughput": tp, "ttft": tt, "paired_ratios": paired}


def lookup(summary: dict, path: str, conc: int) -> dict:
    return next(s for s in summary["throughput"] if s["path"] == path and s["concurrency"] == conc)


def table(result: dict) -> str:
    summary, concs, top = result["summary"], result["config"]["concurrencies"], result["config"]["concurrencies"][0]
    what = {"direct": "vLLM's own server, `/v1/completions`", "openai": "ours, `/v1/completions` (proxied)",
            "v2": "ours, V2 `infer` (tokens/s), `generate_stream` (TTFT)"}
    head = ["path", "what"] + [f"tokens/s c={c}" for c in concs] + ["vs direct: " + " / ".join(f"c={c}" for c in concs),
                                                                     "TTFT median (p10–p90)",
                                                                     f"CPU at c={top}: mlserver / vLLM API / engine"]
    rows = []
    for path in PATHS:
        cells = [f"`{path}`", what[path]]
        for c in concs:
            s = lookup(summary, path, c)
            cells.append(f"**{s['tokens_per_s_median']:,.0f}** ({s['tokens_per_s_min']:,.0f}–{s['tokens_per_s_max']:,.0f})"
                         f"<br>p50 {s['p50_ms']:.0f} ms")
        s, t = lookup(summary, path, top), summary["ttft"][path]
        pr = summary["paired_ratios"]
        ratio = " / ".join("1" if path == "direct" else f"{pr[f'{path}_vs_direct_c{c}']['median']:.3f}" for c in concs)
        cells += [ratio, f"**{t['median_ms']:.1f}** ms ({t['p10_ms']:.1f}–{t['p90_ms']:.1f})",
                  f"{s['cpu']['mlserver']:.2f} / {s['cpu']['vllm_api']:.2f} / {s['cpu']['vllm_engine']:.2f}"]
        rows.append(cells)
    return md_table(head, rows)


def plot(result: dict, path: Path) -> None:
    summary, concs = result["summary"], result["config"]["concurrencies"]
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(11, 4.6),
                                      gridspec_kw={"width_ratios": [max(2, len(concs)), 1.3]})
    for i, p in enumerate(PATHS):
        bars(a1, i, len(PATHS), [lookup(summary, p, c) for c in concs], "tokens_per_s", p)
    a1.set_xticks(range(len(concs)))
    a1.set_xticklabels([f"c={c}" for c in concs])
    a1.set_ylabel("output tokens / s (median of repeats; whiskers min–max)")
    a1.legend(fontsize=8)
    a1.margins(y=0.12)
    tt = [summary["ttft"][p] for p in PATHS]
    ys = [t["median_ms"] for t in tt]
    drawn = a2.bar(PATHS, ys, 0.6, color=["C0", "C1", "C2"], capsize=3,
                   yerr=[[y - t["p10_ms"] for y, t in zip(ys, tt)], [t["p90_ms"] - y for y, t in zip(ys, tt)]])
    a2.bar_label(drawn, labels=[f"{y:.1f}" for y in ys], fontsize=7, padding=2)
    a2.set_ylabel("time to first token, ms (median; whiskers p10–p90)")
    a2.margins(y=0.12)
    m, cfg = result["machine"], result["config"]
    fig.suptitle(f"vLLM {result['versions']['vllm']} (tiny random Llama, greedy, {cfg['max_tokens']} tokens): "
                 f"direct vs ours\n{m['cores']} cores {m['cpu']}, {cfg['duration_s']:g} s windows, "
                 f"{cfg['repeats']} interleaved repeats, {cfg['ttft_samples'] * cfg['repeats']} sequential streams "
                 f"per path, engine nice {result['scheduling']['engine_nice']}, {result['date'][:10]}", fontsize=9)
    save(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=6.0, help="seconds of each counted window (default 6)")
    ap.add_argument("--warmup", type=float, default=1.5,
                    help="seconds of load before each window, and of the discarded first round per path (default 1.5)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    ap.add_argument("--concurrency", default="8,1", help="comma-separated; the first is the ratios' (default 8,1)")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens per request (default 64)")
    ap.add_argument("--ttft-samples", type=int, default=20, help="sequential streams per path per repeat (default 20)")
    ap.add_argument("--engine-nice", type=int, default=10,
                    help="nice value given to vLLM's processes (their autogroup); 0: as shipped (default 10)")
    shared_options(ap, "smoke run: c=8, 3 s, 1 repeat, 5 streams; writes nothing",
                   max_other_cpu=0.25, retries=2, quiet_wait=60.0)
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.replot, "vllm", plot, report)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.duration, args.warmup, args.repeats, args.ttft_samples = 3.0, 1.0, 1, 5
        args.concurrency = args.concurrency[:1]
    command = engines.command("MODELSERVE_VLLM_COMMAND", ".venv-vllm/bin/python", "vLLM")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below stops the server
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="modelserve-vllm-bench-") as tmp:
        srv, port, startup = start(Path(tmp), command)
        try:
            log(f"mlserver on {srv.url}, vLLM engine on port {port} (ready in {startup:.0f} s)")
            result = asyncio.run(measure(srv, port, args, log))
        finally:
            srv.stop()
    import aiohttp

    m = machine_info()
    result.update(benchmark="vllm", date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  machine=m, wall_s=round(time.monotonic() - t_all, 1), engine_startup_s=round(startup, 1),
                  versions={"vllm": result.pop("engine_version"), "mlserver": m["packages"]["mlserver"],
                            "aiohttp": aiohttp.__version__, "vllm_command": command},
                  model="tiny random LlamaForCausalLM (tests.support.llama_models.build_tiny_llama), float32",
                  prompts=PROMPTS,
                  config={"duration_s": args.duration, "warmup_s": args.warmup, "repeats": args.repeats,
                          "concurrencies": args.concurrency, "max_tokens": args.max_tokens, "temperature": 0,
                          "ignore_eos": "direct and openai (V2 takes no such parameter; prompts verified to run to "
                                        "the limit without it)", "ttft_samples": args.ttft_samples,
                          "engine_args": ENGINE_ARGS, "max_other_cpu": args.max_other_cpu, "retries": args.retries,
                          "loadgen": "asyncio + aiohttp in the benchmark process, keep-alive, a new session per run"})
    result["summary"] = summary = summarise(result)
    top = args.concurrency[0]
    direct = lookup(summary, "direct", top)["tokens_per_s_median"]
    result["ratios"] = {f"{p}_vs_direct": summary["paired_ratios"][f"{p}_vs_direct_c{top}"]["median"] for p in PATHS[1:]}
    result["ratios_basis"] = (f"output tokens/s at c={top} over direct (vLLM's own server) in the same repeat, "
                              "median over the repeats")
    result["ratios_of_medians"] = {f"{p}_vs_direct": round(lookup(summary, p, top)["tokens_per_s_median"] / direct, 3)
                                   for p in PATHS[1:]}
    tt = summary["ttft"]
    result["ttft_overhead_ms"] = round(tt["openai"]["median_ms"] - tt["direct"]["median_ms"], 2)
    result["ttft_overhead_v2_ms"] = round(tt["v2"]["median_ms"] - tt["direct"]["median_ms"], 2)
    return finish(result, "vllm", plot, report, out_dir(args), log)


def report(result: dict) -> tuple:
    """The printed text (table, ratios, checks) and the README section, from a result."""
    summary, cfg, m = result["summary"], result["config"], result["machine"]
    spread = ", ".join(f"c={c} {max(s['spread'] for s in summary['throughput'] if s['concurrency'] == c):.0%}"
                       for c in cfg["concurrencies"])
    loadgen = max(r["cpu"]["loadgen"] for r in result["runs"])
    other = max(r["cpu"]["other"] for r in result["runs"])
    disturbed = sum(r["disturbed"] for r in result["runs"])
    text = (f"{table(result)}\n\nRatios ({result['ratios_basis']}): openai_vs_direct = "
            f"{result['ratios']['openai_vs_direct']}, v2_vs_direct = {result['ratios']['v2_vs_direct']}. TTFT "
            f"overhead (median, ours minus direct): OpenAI SSE {result['ttft_overhead_ms']:+.1f} ms, V2 "
            f"generate_stream {result['ttft_overhead_v2_ms']:+.1f} ms.\n\nLargest spread of tokens/s over the repeats "
            f"of a path (max−min over median): {spread}; the load generator used at most {loadgen:.2f} of a core; other "
            f"processes at most {other:.2f} cores during a window ({disturbed} run(s) still marked disturbed after "
            "retries).")
    section = (f"Last run {result['date']} on {m['cores']} cores ({m['cpu']}), vLLM {result['versions']['vllm']}, "
               f"MLServer {result['versions']['mlserver']}; {len(result['prompts'])} prompts, greedy, "
               f"{cfg['max_tokens']} tokens each; {cfg['duration_s']:g} s windows after a {cfg['warmup_s']:g} s "
               f"warm-up, {cfg['repeats']} interleaved repeats; TTFT over {cfg['ttft_samples'] * cfg['repeats']} "
               f"sequential streams per path; {result['scheduling']['applied']}. Cells: median output tokens/s "
               "(min–max of repeats) and median request latency; *vs direct*: ours over direct within each repeat, "
               f"median over the repeats; CPU in cores (median of repeats).\n\n{text}\n\n![vllm](results/vllm.png)")
    return text, section


if __name__ == "__main__":
    raise SystemExit(main())
