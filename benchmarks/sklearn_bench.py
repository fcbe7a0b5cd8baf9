"""sklearn runtime benchmark: ours vs MLServer's mlserver_sklearn vs a no-op model vs raw predict().

    .venv/bin/python benchmarks/sklearn_bench.py                 # full run, writes benchmarks/results/
    .venv/bin/python benchmarks/sklearn_bench.py --quick         # a short smoke run, writes nothing
    .venv/bin/python benchmarks/sklearn_bench.py --duration 12 --repeats 3

All variants serve the same iris LogisticRegression (joblib) and get the same V2 request: one FP64
input of shape [1, 4] asking for the output ``predict``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lib import wrk  # noqa: E402  (importing lib puts the repository on sys.path)
from lib.report import finish, out_dir, shared_options  # noqa: E402
from lib.wrk import MODES, InProcess, Target, Variant  # noqa: E402
from tests.support.harness import write_model  # noqa: E402

ROW = [5.1, 3.5, 1.4, 0.2]
REQUEST = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": ROW}],
           "outputs": [{"name": "predict"}]}
TARGETS = {"vs_mlserver_sklearn": 1.3, "vs_noop": 0.75}
RATIO_MODE, RATIO_CONC = "inprocess", 16


def build_model(path: Path) -> Path:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(X, y), path)
    return path


def _check_predict(doc: dict) -> None:
    outs = {o["name"]: o for o in doc.get("outputs", [])}
    if "predict" not in outs or len(outs["predict"]["data"]) != 1:
        raise AssertionError(f"expected one 'predict' value, got {json.dumps(doc)[:500]}")


def variants(model_file: Path):
    def folder(name: str, implementation: str):
        def prepare(root: Path) -> Target:
            write_model(root, name, {"implementation": implementation, "parameters": {"uri": "./model.joblib"}},
                        {"model.joblib": model_file})
            return Target(name, REQUEST, check=_check_predict)
        return prepare

    def noop(root: Path) -> Target:
        write_model(root, "noop", {"implementation": "noop.NoopModel"})
        return Target("noop", REQUEST, check=_check_predict)

    env = {"PYTHONPATH": str(HERE)}  # noop.py, for the server and its worker processes
    return [
        Variant("modelserve", folder("iris", "modelserve.sklearn.SKLearnRuntime"),
                "ours: modelserve.sklearn.SKLearnRuntime (defaults: request coalescing on)", env),
        Variant("mlserver_sklearn", folder("iris", "mlserver_sklearn.SKLearnModel"),
                "MLServer's built-in mlserver_sklearn.SKLearnModel", env),
        Variant("noop", noop, "benchmarks/noop.py NoopModel: returns a fixed response, the stack's ceiling", env),
    ]


def raw_predict(model_file: Path) -> InProcess:
    def setup():
        import joblib
        import numpy as np

        model = joblib.load(model_file)
        x = np.asarray([ROW], dtype=np.float64)
        return lambda: model.predict(x)

    return InProcess("raw_predict", setup, "model.predict(one row) timed in-process with timeit (no server)")


def ratios(summary) -> dict:
    ours = wrk.lookup(summary, "modelserve", RATIO_MODE, RATIO_CONC)
    out = {}
    for key, other in (("vs_mlserver_sklearn", "mlserver_sklearn"), ("vs_noop", "noop")):
        theirs = wrk.lookup(summary, other, RATIO_MODE, RATIO_CONC)
        out[key] = round(ours["rps_median"] / theirs["rps_median"], 3) if ours and theirs else None
    return out


def all_ratios(summary) -> dict:
    """Our req/s over theirs in every (mode, concurrency) cell, for the record."""
    out = {}
    for s in summary:
        if s["variant"] != "modelserve":
            continue
        for other in ("mlserver_sklearn", "noop"):
            theirs = wrk.lookup(summary, other, s["mode"], s["concurrency"])
            if theirs:
                out[f"{s['mode']} c={s['concurrency']} vs {other}"] = round(s["rps_median"] / theirs["rps_median"], 3)
    return out


def report(result: dict) -> tuple:
    """The printed text (table, ratios, the load generator's CPU) and the README section, from a result."""
    text = (f"{wrk.markdown_table(result, result['summary'])}\n\nRatios ({result['ratios_basis']}): "
            f"{wrk.verdict(result)}.\n\n{wrk.load_note(result)}.")
    section = (f"{wrk.section_head(result)}; cells are the median req/s with median p50 / p99 latency.\n\n{text}\n\n"
               "![sklearn](results/sklearn.png)")
    return text, section


def plot(result: dict, path: Path) -> None:
    wrk.plot(result, path, "sklearn iris LogisticRegression, V2 [1,4] → predict", result["summary"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded wrk warm-up per run (default 2)")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated wrk connection counts (default 1,16)")
    ap.add_argument("--modes", default="inprocess,workers", help="inprocess,workers (default both)")
    shared_options(ap, "smoke run: 3 s, 1 repeat, 1 s warm-up; writes no files unless --write",
                   max_other_cpu=0.25, retries=3, quiet_wait=180.0, replot=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 3.0, 1, 1.0
    wrk.require_wrk()

    concs = [int(c) for c in args.concurrency.split(",")]
    modes = [MODES[m] for m in args.modes.split(",")]
    with tempfile.TemporaryDirectory(prefix="modelserve-sklearn-bench-") as tmp:
        model_file = build_model(Path(tmp) / "iris.joblib")
        result = wrk.run(variants(model_file), modes, concs, args.duration, args.repeats, args.warmup,
                         workdir=Path(tmp) / "servers", inprocess=[raw_predict(model_file)],
                         max_other_cpu=args.max_other_cpu, retries=args.retries, quiet_wait=args.quiet_wait)

    summary = wrk.summarise(result)
    result["benchmark"] = "sklearn"
    result["request"] = REQUEST
    result["ratios"] = ratios(summary)
    result["ratios_basis"] = (f"modelserve req/s over theirs, median of repeats, mode {RATIO_MODE}, "
                              f"c={RATIO_CONC}")
    result["ratios_all"] = all_ratios(summary)
    result["targets"] = wrk.targets(result["ratios"], TARGETS)
    raw = result["inprocess"]
    if raw:
        us = statistics.median(t["us_per_call"] for t in raw)
        result["raw_predict"] = {"us_per_call": round(us, 2), "calls_per_s": round(1e6 / us)}
    result["summary"] = summary
    result["wrk_bottleneck"] = {**wrk.bottleneck(result),
                                "note": "wrk -t1 can use at most 1.0 core; well below that it is not the bottleneck"}
    return finish(result, "sklearn", plot, report, out_dir(args))


if __name__ == "__main__":
    raise SystemExit(main())
