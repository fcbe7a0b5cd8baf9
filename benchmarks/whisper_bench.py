"""FasterWhisper benchmark: transcriptions/s through our KubeAIRuntime vs faster-whisper called directly.

    .venv/bin/python benchmarks/whisper_bench.py            # full run (~8 min): writes results/whisper.{json,png} and the README table
    .venv/bin/python benchmarks/whisper_bench.py --quick    # ~1 min smoke run (c=4, 4 s, 1 repeat), prints the table, writes nothing
    .venv/bin/python benchmarks/whisper_bench.py --duration 12 --repeats 5 --concurrency 4,2,1 --num-workers 2

The model is the tiny random multilingual Whisper of the tests (``tests.support.whisper_models.build_tiny_whisper``:
transformers -> CTranslate2's own converter, float32), built offline into a temporary folder. The audio is
one ``speech_like`` clip (--clip-seconds, default 5 s) as a 16-bit WAV file. Every side decodes that file with
faster-whisper's own ``decode_audio`` (PyAV), as our runtime does, and transcribes it greedily: temperature 0
(no fallback), beam_size 1, language en. A random model writes garbage, but always the same garbage: before the
load the text of every side is checked to be identical, and under load every answer is checked again.

Sides (``WhisperModel(folder, device="cpu", compute_type="default", num_workers=W)`` on both; W = the concurrency
N of the run unless --num-workers fixes it: the server holds one model per W, ``whisper-w1``, ``whisper-w2`` ...):

- ``raw``: that model in this process, called from N threads (N = the concurrency), each looping
  ``decode_audio`` + ``transcribe`` + consuming the segments, no server (this process imports neither torch nor
  transformers: the model is built in a child process; after loading, ``gc.freeze()`` as our runtime does);
- ``v2``: one ``mlserver start`` (parallel_workers 0, gzip off) with ``modelserve.kubeai.KubeAIRuntime``
  ``{"engine": "FasterWhisper", "url": <folder>, "args": ["--num-workers", "W"]}``; N asyncio + aiohttp clients
  POST the WAV file itself to ``/v2/models/whisper-wW/infer`` (Content-Type application/octet-stream, query
  ``temperature=0&beam_size=1&language=en``);
- ``openai``: the same server's ``/v1/audio/transcriptions`` (multipart: file, model, language=en,
  temperature=0, response_format json). OpenAI's form has no beam size, so faster-whisper's default (5) applies:
  it is compared with ``raw_beam5``, the raw side with beam_size 5;
- ``noop``: ``benchmarks/noop.py``'s NoopModel in the same server, sent the V2 JSON request our raw-body route
  builds for this clip (the base64 WAV): the cost of MLServer's stack for such a body, no transcription.

Throughput: after a warm-up, the requests that finish inside a fixed window count: transcriptions/s and
audio-seconds/s (x clip length); latency p50/p99 of those requests. Each repeat runs every (concurrency, side),
the side order rotated by the repeat index; the ratios are taken within each repeat, then the median.
CPU (cores) over each window: this process (the load generator for the HTTP sides, the model itself for the
raw sides), the mlserver process (HTTP + the model's threads) and everything else. There is no engine process
to deprioritise here (faster-whisper runs inside MLServer), unlike vllm_bench.py / infinity_bench.py. As there,
each run waits for the machine to be quiet first and is repeated when other processes took more than
--max-other-cpu cores during it.

See benchmarks/README.md ("FasterWhisper").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
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

from lib import REPO  # noqa: E402  (importing lib puts the repository on sys.path)
from lib.cpu import CPU, roles  # noqa: E402
from lib.loadgen import closed_loop, closed_loop_threads, latency, measured, new_session, post_json, rotate  # noqa: E402
from lib.report import (  # noqa: E402
    bars, finish, log, machine_info, md_table, out_dir, paired_ratio, pyplot, repeat_stats, replot, save, shared_options)
from tests.support.harness import Server, write_model  # noqa: E402

MODEL, NOOP = "whisper", "noop"
SIDES = ("raw", "v2", "raw_beam5", "openai", "noop")
GREEDY = {"temperature": 0.0, "beam_size": 1, "language": "en"}
BEAM5 = {"temperature": 0.0, "language": "en"}  # what /v1/audio/transcriptions asks for (beam_size: the default 5)
PAIRS = {"v2": "raw", "openai": "raw_beam5"}  # ours -> the raw side doing the same work


# -- the model, the clip, the server ---------------------------------------------------------------
def build(tmp: Path, seconds: float):
    """The model is built in a child process: transformers and torch stay out of this one (the raw side)."""
    import subprocess

    from tests.support.whisper_models import encode_audio, speech_like

    out = subprocess.run([sys.executable, str(REPO / "tests" / "support" / "whisper_models.py"), str(tmp / "ct2")],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"building the tiny Whisper failed:\n{out.stderr[-3000:]}")
    folder = Path(json.loads(out.stdout.strip().splitlines()[-1])["model"])
    return folder, encode_audio(speech_like(seconds, seed=1), "wav")


def start(tmp: Path, folder: Path, workers):
    """One mlserver; a whisper model per worker count (``whisper-w2`` ...: idle ones cost only memory)."""
    root = tmp / "server"
    for w in sorted(set(workers)):
        write_model(root, f"{MODEL}-w{w}", {"implementation": "modelserve.kubeai.KubeAIRuntime", "parallel_workers": 0,
                                            "parameters": {"extra": {"engine": "FasterWhisper", "url": str(folder),
                                                                     "args": ["--num-workers", str(w)]}}})
    write_model(root, NOOP, {"implementation": "noop.NoopModel", "parallel_workers": 0})
    srv = Server(root, parallel_workers=0, debug=False, extra={"gzip_enabled": False},
                 env={"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
                      "HF_HUB_OFFLINE": "1"})
    t0 = time.monotonic()
    srv.start(timeout=300)
    return srv, time.monotonic() - t0


class Raw:
    """faster-whisper called directly in this process, as our runtime calls it."""

    def __init__(self, folder: Path, workers: int):
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(folder), device="cpu", compute_type="default", num_workers=workers)

    def transcribe(self, wav: bytes, opts: dict) -> str:
        from faster_whisper.audio import decode_audio

        pcm = decode_audio(io.BytesIO(wav), sampling_rate=16000)
        segments, _ = self.model.transcribe(pcm, **opts)
        return "".join(s.text for s in segments).strip()


class Requests:
    def __init__(self, url: str, wav: bytes, workers: int):
        self.url, model = url, f"{MODEL}-w{workers}"
        q = "&".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in GREEDY.items())
        self.v2 = (f"{url}/v2/models/{model}/infer?{q}", wav, {"Content-Type": "application/octet-stream"})
        boundary = "modelservebenchboundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in (("model", model), ("language", "en"), ("temperature", "0"), ("response_format", "json"))]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                     f"Content-Type: audio/wav\r\n\r\n".encode() + wav + b"\r\n")
        self.openai = (f"{url}/v1/audio/transcriptions", b"".join(parts) + f"--{boundary}--\r\n".encode(),
                       {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        noop = {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(wav).decode()]}],
                "parameters": {k: str(v) for k, v in GREEDY.items()}}
        self.noop = (f"{url}/v2/models/{NOOP}/infer", json.dumps(noop).encode(), {"Content-Type": "application/json"})

    @staticmethod
    def text(side: str, doc: dict) -> str:
        if side == "v2":
            return doc["outputs"][0]["data"][0]
        if side == "openai":
            return doc["text"]
        return ""


# -- one run ---------------------------------------------------------------------------------------
def stats(inside, duration: float, clip_s: float, usage: dict) -> dict:
    n = len(inside)
    return {"transcriptions_per_s": n / duration, "audio_s_per_s": n * clip_s / duration, "requests": n,
            **latency(inside), "cpu": usage}


def run_raw(raw: Raw, wav: bytes, opts: dict, expected: str, conc: int, warmup: float, duration: float,
            clip_s: float, cpu: CPU) -> dict:
    def call(k: int) -> None:
        text = raw.transcribe(wav, opts)
        if text != expected:
            raise AssertionError(f"raw: {text[:80]!r} under load, expected {expected[:80]!r}")

    inside, usage = closed_loop_threads(call, conc, warmup, duration, cpu)
    return stats(inside, duration, clip_s, usage)


async def run_http(reqs: Requests, side: str, expected: str, conc: int, warmup: float, duration: float,
                   clip_s: float, cpu: CPU) -> dict:
    req = getattr(reqs, side)

    async def call(session, k: int) -> None:
        doc = await post_json(session, *req)
        if side != "noop" and reqs.text(side, doc) != expected:
            raise AssertionError(f"{side}: {reqs.text(side, doc)[:80]!r} under load, expected {expected[:80]!r}")

    inside, usage = await closed_loop(call, conc, warmup, duration, cpu, timeout=300)
    return stats(inside, duration, clip_s, usage)


async def run_one(ctx: dict, side: str, conc: int, warmup: float, duration: float) -> dict:
    if side == "noop":  # milliseconds per request: a short window is plenty
        duration, warmup = min(duration, 3.0), min(warmup, 1.0)
    w = ctx["workers"](conc)
    if side.startswith("raw"):  # threads in this process; the event loop has nothing else to do meanwhile
        opts = GREEDY if side == "raw" else BEAM5
        return run_raw(ctx["raw"][w], ctx["wav"], opts, ctx["expected"][side], conc, warmup, duration, ctx["clip_s"],
                       ctx["cpu"])
    return await run_http(ctx["reqs"][w], side, ctx["expected"].get(side, ""), conc, warmup, duration,
                          ctx["clip_s"], ctx["cpu"])


async def verify(ctx: dict) -> dict:
    """One clip, every side and every model: the same text (v2 = raw greedy; openai = raw with OpenAI's options)."""
    wav = ctx["wav"]
    expected = None
    for w in ctx["raw"]:
        raw, reqs = ctx["raw"][w], ctx["reqs"][w]
        want = {"raw": raw.transcribe(wav, GREEDY), "raw_beam5": raw.transcribe(wav, BEAM5)}
        async with new_session(300) as s:
            got = {side: reqs.text(side, await post_json(s, *getattr(reqs, side))) for side in ("v2", "openai")}
        for side, base in PAIRS.items():
            if got[side] != want[base]:
                raise AssertionError(f"{side} (num_workers {w}) answered {got[side]!r}, faster-whisper directly "
                                     f"({base}) {want[base]!r}")
            if not got[side]:
                raise AssertionError(f"{side}: empty transcription; pick another clip")
        if expected is not None and {**want, **got} != expected:
            raise AssertionError(f"num_workers {w} transcribes differently: {want} vs {expected}")
        expected = {**want, **got}
    ctx["expected"] = expected
    return expected


async def measure(ctx: dict, args, log) -> dict:
    cpu = ctx["cpu"]
    checked = await verify(ctx)
    log(f"verified: v2 == raw ({checked['v2'][:40]!r}...), openai == raw_beam5 ({checked['openai'][:40]!r}...)")
    for side in SIDES:  # the first calls at a new concurrency are slow: a discarded round first
        await run_one(ctx, side, args.concurrency[0], 0.0, max(3.0, args.warmup))
    runs = []
    for rep in range(args.repeats):
        for conc in args.concurrency:
            for side in rotate(SIDES, rep):
                res = await measured(lambda: run_one(ctx, side, conc, args.warmup, args.duration),
                                     f"{side} c={conc}", args, log, cpu, side=side, concurrency=conc, repeat=rep)
                runs.append(res)
                c = res["cpu"]
                log(f"repeat {rep + 1}/{args.repeats} c={conc} {side:9}: {res['transcriptions_per_s']:7.2f}/s "
                    f"(p50 {res['latency_p50_ms']:.0f} ms, {res['requests']} req); cores: bench process "
                    f"{c['loadgen']:.2f} mlserver {c['mlserver']:.2f} other {c['other']:.2f}")
    return {"runs": runs, "verified": checked}


# -- summary, table, plot --------------------------------------------------------------------------
def summarise(result: dict) -> dict:
    out, paired = [], {}
    cfg = result["config"]
    for conc in cfg["concurrencies"]:
        for side in SIDES:
            rs = [r for r in result["runs"] if r["side"] == side and r["concurrency"] == conc]
            out.append({"side": side, "concurrency": conc,
                        **repeat_stats(rs, "transcriptions_per_s", 3, 1,
                                       lambda med: {"audio_s_per_s_median": round(med * cfg["clip_seconds"], 2)})})
        by = {(r["side"], r["repeat"]): r["transcriptions_per_s"] for r in result["runs"] if r["concurrency"] == conc}
        for ours, base in PAIRS.items():
            paired[f"{ours}_vs_{base}_c{conc}"] = paired_ratio(by, ours, base, cfg["repeats"])
    return {"throughput": out, "paired_ratios": paired}


def lookup(summary: dict, side: str, conc: int) -> dict:
    return next(s for s in summary["throughput"] if s["side"] == side and s["concurrency"] == conc)


WHAT = {"raw": "faster-whisper `transcribe` in one process, N threads (greedy)",
        "v2": "ours: raw WAV body on V2 `infer` (greedy)",
        "raw_beam5": "faster-whisper directly, beam_size 5 (OpenAI's options)",
        "openai": "ours: `/v1/audio/transcriptions` (beam 5: the form has no beam size)",
        "noop": "NoopModel, the same clip as V2 JSON (base64): MLServer's stack alone"}


def table(result: dict) -> str:
    summary, concs = result["summary"], result["config"]["concurrencies"]
    top = concs[0]
    head = ["side", "what"] + [f"c={c}" for c in concs] + ["vs raw: " + " / ".join(f"c={c}" for c in concs),
                                                          f"CPU at c={top}: bench process / mlserver"]
    rows = []
    pr = summary["paired_ratios"]
    for side in SIDES:
        cells = [f"`{side}`", WHAT[side]]
        for c in concs:
            s = lookup(summary, side, c)
            if side == "noop":
                cells.append(f"{s['transcriptions_per_s_median']:,.0f} req/s<br>p50 {s['p50_ms']:.1f} ms")
            else:
                cells.append(f"**{s['transcriptions_per_s_median']:.2f}**/s ({s['transcriptions_per_s_min']:.2f}–"
                             f"{s['transcriptions_per_s_max']:.2f}), {s['audio_s_per_s_median']:.1f} audio-s/s<br>"
                             f"p50 {s['p50_ms']:.0f} / p99 {s['p99_ms']:.0f} ms")
        if side in PAIRS:
            cells.append(" / ".join(f"{pr[f'{side}_vs_{PAIRS[side]}_c{c}']['median']:.3f}" for c in concs))
        else:
            cells.append("1" if side.startswith("raw") else "")
        s = lookup(summary, side, top)
        cells.append(f"{s['cpu']['loadgen']:.2f} / {s['cpu']['mlserver']:.2f}")
        rows.append(cells)
    return md_table(head, rows)


def plot(result: dict, path: Path) -> None:
    summary, concs, cfg = result["summary"], result["config"]["concurrencies"], result["config"]
    sides = [s for s in SIDES if s != "noop"]
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [2.2, 1]})
    order = sorted(concs)
    for i, side in enumerate(sides):
        bars(a1, i, len(sides), [lookup(summary, side, c) for c in order], "transcriptions_per_s", side, "{:.2f}")
    a1.set_xticks(range(len(order)))
    a1.set_xticklabels([f"c={c}" for c in order])
    a1.set_ylabel(f"transcriptions / s of a {cfg['clip_seconds']:g} s clip\n(median of repeats; whiskers min–max)")
    a1.legend(fontsize=8)
    a1.margins(y=0.15)
    for side in sides:
        a2.plot(order, [lookup(summary, side, c)["p50_ms"] for c in order], marker="o", label=side)
    a2.set_xticks(order)
    a2.set_xlabel("concurrency")
    a2.set_ylabel("p50 latency, ms")
    a2.legend(fontsize=8)
    m = result["machine"]
    r = result["ratios"]
    fig.suptitle(f"faster-whisper {result['versions']['faster_whisper']} (tiny random Whisper, CPU, "
                 f"num_workers {cfg['num_workers'] or '= concurrency'}): direct vs ours (KubeAIRuntime FasterWhisper)\n"
                 f"vs_raw {r['vs_raw']:.3f}, openai_vs_raw_beam5 {r['openai_vs_raw_beam5']:.3f} at c={concs[0]}; "
                 f"{m['cores']} cores {m['cpu']}, {cfg['duration_s']:g} s windows, {cfg['repeats']} interleaved "
                 f"repeats, {result['date'][:10]}", fontsize=9)
    save(fig, path)


def report(result: dict) -> tuple:
    summary, cfg, m = result["summary"], result["config"], result["machine"]
    top = cfg["concurrencies"][0]
    loadgen = max(r["cpu"]["loadgen"] for r in result["runs"] if r["side"] in ("v2", "openai"))
    lg_top = lookup(summary, "v2", top)["cpu"]["loadgen"]
    other = max(r["cpu"]["other"] for r in result["runs"])
    disturbed = sum(r["disturbed"] for r in result["runs"])
    spread = max(s["spread"] for s in summary["throughput"] if s["side"] != "noop")
    text = (f"{table(result)}\n\nRatios ({result['ratios_basis']}): **vs_raw = {result['ratios']['vs_raw']}** "
            f"(target ≥ 0.95), openai_vs_raw_beam5 = {result['ratios']['openai_vs_raw_beam5']}.\n\n"
            f"The load generator (this process, HTTP sides) used {lg_top:.2f} of a core at c={top} on V2 (at most "
            f"{loadgen:.2f} in any run); other processes at most {other:.2f} cores during a window ({disturbed} run(s) "
            f"still marked disturbed after retries); largest spread of a side over the repeats {spread:.0%}; load "
            f"average {result['loadavg_before'][0]:.2f} before, {result['loadavg_after'][0]:.2f} after.")
    section = (f"Last run {result['date']} on {m['cores']} cores ({m['cpu']}), faster-whisper "
               f"{result['versions']['faster_whisper']}, CTranslate2 {result['versions']['ctranslate2']}, MLServer "
               f"{result['versions']['mlserver']}; one {cfg['clip_seconds']:g} s WAV clip, num_workers "
               f"{cfg['num_workers'] or '= the concurrency'} on both sides; {cfg['duration_s']:g} s windows after a {cfg['warmup_s']:g} s "
               f"warm-up, {cfg['repeats']} interleaved repeats. Cells: median transcriptions/s (min–max of repeats), "
               "audio seconds transcribed per second, median p50 / p99 latency; *vs raw*: ours over the raw side "
               "doing the same work within each repeat, median over the repeats; CPU in cores (median).\n\n"
               f"{text}\n\n![whisper](results/whisper.png)")
    return text, section


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of each counted window (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each window (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--concurrency", default="4,2,1", help="comma-separated; the first is the ratios' (default 4,2,1)")
    ap.add_argument("--num-workers", type=int, default=0,
                    help="WhisperModel num_workers on both sides; 0 (default): the concurrency of the run")
    ap.add_argument("--clip-seconds", type=float, default=5.0, help="length of the clip (default 5)")
    shared_options(ap, "smoke run: c=4, 4 s, 1 repeat; writes nothing")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.replot, "whisper", plot, report)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.duration, args.warmup, args.repeats, args.quiet_wait = 4.0, 1.0, 1, 5.0
        args.concurrency = args.concurrency[:1]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below stops the server
    t_all, load_before = time.monotonic(), os.getloadavg()

    def wfor(conc: int) -> int:
        return args.num_workers or conc

    workers = [wfor(c) for c in args.concurrency]
    with tempfile.TemporaryDirectory(prefix="modelserve-whisper-bench-") as tmp:
        folder, wav = build(Path(tmp), args.clip_seconds)
        srv, startup = start(Path(tmp), folder, workers)
        try:
            log(f"mlserver on {srv.url} (ready in {startup:.0f} s); clip {args.clip_seconds:g} s, {len(wav)} bytes")
            raws = {w: Raw(folder, w) for w in sorted(set(workers))}
            gc.collect()
            gc.freeze()  # as our runtime does after a model is loaded: full collections skip what is loaded
            # the roles: the mlserver process (faster-whisper's threads included) and any children it has
            pids = roles(srv.proc.pid, lambda comm: "children", ("children",), descendants=False)
            ctx = {"raw": raws, "wav": wav, "clip_s": args.clip_seconds,
                   "reqs": {w: Requests(srv.url, wav, w) for w in sorted(set(workers))}, "cpu": CPU(pids),
                   "workers": wfor}
            result = asyncio.run(measure(ctx, args, log))
        finally:
            srv.stop()
    import aiohttp
    import ctranslate2
    import faster_whisper

    m = machine_info()
    result.update(benchmark="whisper", date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=m,
                  wall_s=round(time.monotonic() - t_all, 1), server_startup_s=round(startup, 1),
                  loadavg_before=load_before, loadavg_after=os.getloadavg(),
                  versions={"faster_whisper": faster_whisper.__version__, "ctranslate2": ctranslate2.__version__,
                            "mlserver": m["packages"]["mlserver"], "aiohttp": aiohttp.__version__},
                  model="tiny random multilingual Whisper (tests.support.whisper_models.build_tiny_whisper), CTranslate2 float32",
                  config={"duration_s": args.duration, "warmup_s": args.warmup, "repeats": args.repeats,
                          "concurrencies": args.concurrency, "num_workers": args.num_workers,
                          "clip_seconds": args.clip_seconds, "clip_bytes": len(wav), "greedy": GREEDY,
                          "openai_options": {**BEAM5, "beam_size": "faster-whisper's default (5)"},
                          "max_other_cpu": args.max_other_cpu, "retries": args.retries,
                          "loadgen": "asyncio + aiohttp in the benchmark process, keep-alive, a new session per run; "
                                     "raw sides: threads in the benchmark process"})
    result["summary"] = summary = summarise(result)
    top = args.concurrency[0]
    pr = summary["paired_ratios"]
    result["ratios"] = {"vs_raw": pr[f"v2_vs_raw_c{top}"]["median"],
                        "openai_vs_raw_beam5": pr[f"openai_vs_raw_beam5_c{top}"]["median"]}
    result["ratios_basis"] = (f"transcriptions/s at c={top} (the busiest concurrency measured): ours over faster-whisper "
                              "called directly with the same options, within each repeat, median over the repeats")
    result["ratios_of_medians"] = {
        "vs_raw": round(lookup(summary, "v2", top)["transcriptions_per_s_median"]
                        / lookup(summary, "raw", top)["transcriptions_per_s_median"], 3),
        "openai_vs_raw_beam5": round(lookup(summary, "openai", top)["transcriptions_per_s_median"]
                                     / lookup(summary, "raw_beam5", top)["transcriptions_per_s_median"], 3)}
    return finish(result, "whisper", plot, report, out_dir(args), log)


if __name__ == "__main__":
    raise SystemExit(main())
