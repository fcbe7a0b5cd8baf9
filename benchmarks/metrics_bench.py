"""What metrics cost: the sklearn benchmark's server with modelserve's and MLServer's metrics on (the default)
and off, interleaved in one run.

    .venv/bin/python benchmarks/metrics_bench.py                 # full run, writes benchmarks/results/metrics.json
    .venv/bin/python benchmarks/metrics_bench.py --quick         # a short smoke run, writes nothing

Both variants serve the sklearn benchmark's iris model and request (benchmarks/sklearn_bench.py). "off" is
``metrics_endpoint: null`` (MLServer then adds neither its REST nor its gRPC metrics middleware) and
``MODELSERVE_METRICS=0`` (modelserve records nothing); "on" is the default, with the metrics port scraped
once a second during the run as a Prometheus would. The goal: on/off >= 0.97 at c=16.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lib import wrk  # noqa: E402  (importing lib puts the repository on sys.path)
from lib.report import finish, out_dir, shared_options  # noqa: E402
from lib.wrk import MODES, Target, Variant  # noqa: E402
from sklearn_bench import REQUEST, _check_predict, build_model  # noqa: E402
from tests.support.harness import write_model  # noqa: E402

TARGETS = {"on_vs_off": 0.97, "ours_on_vs_off": 0.97}
RATIO_CONC = 16


class Scraper:
    """GETs the metrics port of every "metrics_on" server under ``workdir`` once a second, as a Prometheus
    scraping the pod would (the ports are read from the servers' settings.json)."""

    def __init__(self, workdir: Path):
        self.workdir, self.scrapes, self._stop = workdir, 0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        import json

        import requests

        while not self._stop.wait(1.0):
            for settings in [*self.workdir.glob("metrics_on-*/settings.json"),
                             *self.workdir.glob("modelserve_off-*/settings.json")]:
                try:
                    port = json.loads(settings.read_text())["metrics_port"]
                    requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                    self.scrapes += 1
                except (ValueError, KeyError, OSError, requests.RequestException):
                    continue  # not written yet, or the server is stopped

    def stop(self):
        self._stop.set()


def variants(model_file: Path):
    def prepare(root: Path) -> Target:
        write_model(root, "iris", {"implementation": "modelserve.sklearn.SKLearnRuntime",
                                   "parameters": {"uri": "./model.joblib"}}, {"model.joblib": model_file})
        return Target("iris", REQUEST, check=_check_predict)

    return [
        Variant("metrics_on", prepare, "modelserve.sklearn.SKLearnRuntime, metrics on (defaults), scraped every 1 s"),
        Variant("modelserve_off", prepare, "MLServer's metrics on, modelserve's off (MODELSERVE_METRICS=0), "
                "scraped every 1 s", {"MODELSERVE_METRICS": "0"}),
        Variant("metrics_off", prepare, "the same with metrics_endpoint null and MODELSERVE_METRICS=0",
                {"MODELSERVE_METRICS": "0"}, {"metrics_endpoint": None}),
    ]


def ratios(summary, modes) -> dict:
    """on/off: everything's cost; ours: modelserve's share (MLServer's metrics on in both)."""
    out = {}
    for mode in modes:
        on = wrk.lookup(summary, "metrics_on", mode, RATIO_CONC)
        suffix = "" if mode == "inprocess" else f"_{mode}"
        for key, other in (("on_vs_off", "metrics_off"), ("ours_on_vs_off", "modelserve_off")):
            theirs = wrk.lookup(summary, other, mode, RATIO_CONC)
            if on and theirs:
                out[key + suffix] = round(on["rps_median"] / theirs["rps_median"], 3)
    return out


def report(result: dict) -> tuple:
    text = (f"{wrk.markdown_table(result, result['summary'])}\n\nRatios ({result['ratios_basis']}): "
            f"{wrk.verdict(result)}.\n\n{wrk.load_note(result)}.")
    section = f"{wrk.section_head(result)}; cells are the median req/s with median p50 / p99 latency.\n\n{text}"
    return text, section


def plot(result: dict, path: Path) -> None:
    wrk.plot(result, path, "metrics on vs off, sklearn iris V2 [1,4]", result["summary"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded wrk warm-up per run (default 2)")
    ap.add_argument("--concurrency", default="16", help="comma-separated wrk connection counts (default 16)")
    ap.add_argument("--modes", default="inprocess,workers", help="inprocess,workers (default both)")
    shared_options(ap, "smoke run: 3 s, 1 repeat, 1 s warm-up; writes no files unless --write",
                   max_other_cpu=0.25, retries=3, quiet_wait=180.0, replot=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 3.0, 1, 1.0
    wrk.require_wrk()
    concs = [int(c) for c in args.concurrency.split(",")]
    mode_names = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="modelserve-metrics-bench-") as tmp:
        model_file = build_model(Path(tmp) / "iris.joblib")
        scraper = Scraper(Path(tmp) / "servers")
        result = wrk.run(variants(model_file), [MODES[m] for m in mode_names], concs, args.duration,
                         args.repeats, args.warmup, workdir=Path(tmp) / "servers", inprocess=[],
                         max_other_cpu=args.max_other_cpu, retries=args.retries, quiet_wait=args.quiet_wait)
    scraper.stop()
    summary = wrk.summarise(result)
    result["benchmark"] = "metrics"
    result["request"] = REQUEST
    result["scrapes"] = scraper.scrapes
    result["ratios"] = ratios(summary, mode_names)
    result["ratios_basis"] = f"req/s with metrics on over off, median of repeats, c={RATIO_CONC}"
    result["targets"] = wrk.targets(result["ratios"], TARGETS)
    result["summary"] = summary
    result["wrk_bottleneck"] = {**wrk.bottleneck(result),
                                "note": "wrk -t1 can use at most 1.0 core; well below that it is not the bottleneck"}
    return finish(result, "metrics", plot, report, out_dir(args))


if __name__ == "__main__":
    raise SystemExit(main())
