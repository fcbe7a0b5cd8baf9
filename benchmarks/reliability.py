"""Reliability figures (issue 8) in one command: bad input, load and soak against real `mlserver start` processes.

    .venv/bin/python benchmarks/reliability.py            # full: corpus, 10,000 requests x 2 models, 10-min soak
    .venv/bin/python benchmarks/reliability.py --quick    # ~2 min: corpus, 1,000 requests x 2, 1-min soak
    .venv/bin/python benchmarks/reliability.py --requests 2000 --soak-minutes 3 --out /tmp/r.json

- Bad input: every case of tests/support/reliability_corpus.py (V2 REST and gRPC, V1, OpenAI routes, /invocations over
  the sklearn, MLflow and HuggingFace runtimes), each followed by a good request, against the server of
  tests/support/reliability_server.py (sklearn and MLflow in MLServer's parallel worker, MiniLM in the main process).
  Counted: requests tried, 4xx/INVALID_ARGUMENT/NOT_FOUND with a message, 5xx, accepted, failed follow-ups.
- Load: ``--requests`` V2 requests at concurrency ``--concurrency`` against the iris LogisticRegression (one
  row) and all-MiniLM-L6-v2 (one sentence), on a server run as settings/ runs them (``parallel_workers: 0``,
  debug off). The client is one aiohttp event loop (uvloop); its CPU share and the server's are recorded so
  that a saturated client would show.
- Soak: both models under load together (c=8 sklearn, c=4 MiniLM) for ``--soak-minutes``; the RSS of the
  server's process tree sampled every ``--sample-seconds``; the least-squares slope (MB/min) after the
  warm-up, with its standard error: "flat" when the growth it implies over the window is within twice the
  standard error, or below 1 MB over the whole window.

Writes benchmarks/results/reliability.json (``--quick``: /tmp unless ``--out``) and reliability.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import psutil  # noqa: E402

from lib.cpu import machine_busy  # noqa: E402
from lib.report import machine_info  # noqa: E402
from tests.support import reliability_corpus as corpus  # noqa: E402
from tests.support.harness import Server  # noqa: E402
from tests.support.reliability_load import RSSSampler, load, slope_mb_per_min, tree_rss_mb  # noqa: E402
from tests.support.reliability_server import GOOD_V2, OFFLINE, build_artefacts, start, write_models  # noqa: E402

RESULTS = HERE / "results"
LOAD_MODELS = ("iris", "minilm")
SOAK_CONCURRENCY = {"iris": 8, "minilm": 4}
RULE_TESTS = {
    "bad input: 4xx with a message, no 5xx, served right after": "tests/server/test_reliability_corpus.py",
    "fuzzing: codecs, sampling parameters, MLflow signatures": "tests/test_fuzz_codecs.py",
    "fuzzing: every runtime's options": "tests/test_fuzz_options.py",
    "OpenAPI (schemathesis): MLServer's /infer spec and ours (V1, /invocations, OpenAI), no 5xx":
        "tests/server/test_reliability_corpus.py::test_generated_requests_never_get_a_5xx",
    "load: 500 requests at c=32 per model, zero errors": "tests/server/test_reliability_corpus.py",
    "request_timeout: 504 / DEADLINE_EXCEEDED": "tests/server/test_reliability_faults.py, tests/test_runtime.py",
    "reload through the repository API keeps answering": "tests/server/test_reliability_faults.py",
    "SIGTERM under load: in-flight finish, exit 0, no process left": "tests/server/test_reliability_faults.py",
    "a failed load leaves the others serving":
        "tests/server/test_bad_input.py::test_bad_models_fail_to_load_with_a_reason_and_the_rest_keeps_serving",
    "engine killed: clean failure, 503 until back, then served": "tests/server/test_kubeai_server.py, "
                                                                 "tests/test_engines_process.py",
    "interrupted or corrupt download never cached": "tests/test_storage.py (atomic downloads)",
    "files cannot escape the model folder": "tests/test_kubeai.py",
    "trust_remote_code off unless asked": "tests/test_huggingface.py::test_trust_remote_code_is_off_by_default",
    "URI schemes outside the allowlist refused":
        "tests/test_storage.py::test_other_schemes_are_refused_listing_the_supported_ones",
    "pickle loads logged as unsafe, skops named": "tests/test_sklearn.py, tests/test_mlflow.py",
    "no secret in the logs": "tests/server/test_reliability_security.py, tests/server/test_openai_auth_server.py",
    "OpenAI bearer key": "tests/server/test_openai_auth_server.py",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tree_cpu_s(pid: int) -> float:
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


# -- bad input ---------------------------------------------------------------------------------------------
def bad_inputs(arts: dict, workdir: Path) -> dict:
    srv = start(workdir / "corpus", arts)
    try:
        outcomes = [(c, corpus.send(srv, c)) for c in corpus.CASES + corpus.KNOWN_GAPS]
        alive = srv.proc.poll() is None
    finally:
        srv.stop()
    statuses = Counter(o.status for _, o in outcomes)
    unclean = [{"case": c.id, "protocol": c.protocol, "status": o.status, "message": o.message[:200],
                "known_gap": c.gap or None} for c, o in outcomes if not o.refused_cleanly]
    return {
        "bad_inputs": len(outcomes),
        "bad_input_5xx": sum(o.server_error for _, o in outcomes),
        "bad_input_refused_cleanly": sum(o.refused_cleanly for _, o in outcomes),
        "bad_input_accepted": sum(o.status in ("200", "OK") for _, o in outcomes),
        "bad_input_followup_failures": sum(not o.followup_ok for _, o in outcomes),
        "bad_input_by_protocol": dict(Counter(c.protocol for c, _ in outcomes)),
        "bad_input_by_model": dict(Counter(c.model for c, _ in outcomes)),
        "bad_input_statuses": dict(sorted(statuses.items())),
        "bad_input_not_refused_cleanly": unclean,
        "server_alive_after_corpus": alive,
    }


# -- load and soak -----------------------------------------------------------------------------------------
def load_server(arts: dict, workdir: Path) -> Server:
    root = workdir / "load"
    write_models(root, arts)
    return Server(root, parallel_workers=0, debug=False, env=OFFLINE).start(timeout=240)


def load_runs(srv: Server, n: int, concurrency: int) -> dict:
    out = {}
    for model in LOAD_MODELS:
        url = f"{srv.url}/v2/models/{model}/infer"
        load(url, GOOD_V2[model], requests=min(500, n), concurrency=concurrency)  # warm-up, discarded
        busy = machine_busy(1.0)
        cpu0 = tree_cpu_s(srv.proc.pid)
        res = load(url, GOOD_V2[model], requests=n, concurrency=concurrency)
        res["server_cpu_share"] = round((tree_cpu_s(srv.proc.pid) - cpu0) / res["wall_s"], 3)
        res["machine_busy_before_cores"] = round(busy, 2)
        res["request"] = GOOD_V2[model]
        out[model] = res
        log(f"  {model}: {res['requests']} requests, {res['errors']} errors, {res['throughput_rps']} req/s, "
            f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms (client {res['client_cpu_share']} cores, "
            f"server {res['server_cpu_share']} cores)")
    return out


def soak(srv: Server, minutes: float, sample_s: float, warmup_s: float) -> dict:
    results: dict = {}

    def run(model: str) -> None:
        results[model] = load(f"{srv.url}/v2/models/{model}/infer", GOOD_V2[model],
                              concurrency=SOAK_CONCURRENCY[model], seconds=minutes * 60)

    threads = [threading.Thread(target=run, args=(m,)) for m in LOAD_MODELS]
    with RSSSampler(srv.proc.pid, sample_s) as sampler:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(sample_s)  # one sample after the load
    fit = slope_mb_per_min(sampler.samples[:-1], warmup_s)
    window_min = max(0.0, minutes - warmup_s / 60)
    slope, stderr = fit.get("slope_mb_per_min"), fit.get("stderr")
    flat = slope is not None and (abs(slope) <= 2 * stderr or abs(slope) * window_min < 1.0)
    return {
        "minutes": minutes, "warmup_s": warmup_s, "sample_seconds": sample_s, **fit,
        "flat_within_noise": flat,
        "flat_rule": "|slope| <= 2 x its standard error, or |slope| x window < 1 MB",
        "requests": {m: r["requests"] for m, r in results.items()},
        "errors": {m: r["errors"] for m, r in results.items()},
        "throughput_rps": {m: r["throughput_rps"] for m, r in results.items()},
        "p99_ms": {m: r["p99_ms"] for m, r in results.items()},
        "samples": sampler.samples,
    }


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    samples = result["soak"]["samples"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([t / 60 for t, _ in samples], [mb for _, mb in samples], marker=".", lw=1)
    ax.axvline(result["soak"]["warmup_s"] / 60, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("minutes under load (sklearn c=8 + MiniLM c=4)")
    ax.set_ylabel("server RSS, MB (process tree)")
    ax.set_title(f"soak: {result['soak_rss_mb_per_min']:+.4f} MB/min after warm-up "
                 f"(± {result['soak']['stderr']:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 requests per model, a 1-minute soak")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--soak-minutes", type=float, default=None)
    ap.add_argument("--sample-seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    n = args.requests or (1000 if args.quick else 10_000)
    minutes = args.soak_minutes if args.soak_minutes is not None else (1.0 if args.quick else 10.0)
    warmup_s = min(60.0, minutes * 60 / 5)
    out = args.out or (Path(tempfile.gettempdir()) / "reliability-quick.json" if args.quick
                       else RESULTS / "reliability.json")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        workdir = Path(tmp)
        log("building the models")
        arts = build_artefacts(workdir / "art")
        log(f"bad input: {len(corpus.CASES) + len(corpus.KNOWN_GAPS)} requests")
        bad = bad_inputs(arts, workdir)
        log(f"  {bad['bad_input_refused_cleanly']} refused cleanly, {bad['bad_input_5xx']} 5xx, "
            f"{bad['bad_input_accepted']} accepted, {bad['bad_input_followup_failures']} failed follow-ups")
        log(f"load: {n} requests at c={args.concurrency} per model")
        srv = load_server(arts, workdir)
        try:
            rss_start = tree_rss_mb(srv.proc.pid)
            runs = load_runs(srv, n, args.concurrency)
            log(f"soak: {minutes:g} min, RSS every {args.sample_seconds:g} s")
            soaked = soak(srv, minutes, args.sample_seconds, warmup_s)
            log(f"  slope {soaked['slope_mb_per_min']} MB/min (± {soaked['stderr']}), "
                f"flat: {soaked['flat_within_noise']}, errors {soaked['errors']}")
        finally:
            srv.stop()
    result = {
        "bad_inputs": bad["bad_inputs"], "bad_input_5xx": bad["bad_input_5xx"],
        "load_requests": sum(r["requests"] for r in runs.values()),
        "load_errors": sum(r["errors"] for r in runs.values()),
        "p50_ms": {m: r["p50_ms"] for m, r in runs.items()},
        "p99_ms": max(r["p99_ms"] for r in runs.values()),
        "p99_ms_by_model": {m: r["p99_ms"] for m, r in runs.items()},
        "throughput_rps": {m: r["throughput_rps"] for m, r in runs.items()},
        "soak_rss_mb_per_min": soaked["slope_mb_per_min"],
        "soak_flat_within_noise": soaked["flat_within_noise"],
        "soak_errors": sum(soaked["errors"].values()),
        **{k: v for k, v in bad.items() if k not in ("bad_inputs", "bad_input_5xx")},
        "load": runs, "load_server": "parallel_workers: 0, debug off (as settings/ runs)",
        "server_rss_mb_at_start": round(rss_start, 1),
        "soak": soaked,
        "rules_and_tests": RULE_TESTS,
        "command": " ".join(["benchmarks/reliability.py", *sys.argv[1:]]),
        "quick": args.quick, "duration_s": round(time.monotonic() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    log(f"wrote {out}")
    headline = {k: result[k] for k in ("bad_inputs", "bad_input_5xx", "load_requests", "load_errors", "p99_ms",
                                       "soak_rss_mb_per_min")}
    print(json.dumps(headline))
    ok = (result["bad_input_5xx"] == 0 and result["load_errors"] == 0 and result["soak_errors"] == 0
          and result["soak_flat_within_noise"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
