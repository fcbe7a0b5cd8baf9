"""HuggingFace generation benchmark: tokens/s through our runtime vs a raw ``model.generate`` in one process.

    .venv/bin/python benchmarks/generation_bench.py              # full run (~2 min), writes benchmarks/results/generation.json
    .venv/bin/python benchmarks/generation_bench.py --quick      # a short smoke run, writes nothing
    .venv/bin/python benchmarks/generation_bench.py --max-new-tokens 64 --concurrency 1,4,8

The model is the tiny random GPT-2 of the tests (``tests.support.hf_models.build_causal_lm``: 2 layers, 32-d, over
MiniLM's WordPiece vocabulary), written into a temporary folder, so the figures measure the serving path
around ``model.generate`` far more than the model itself. Both sides run the same prompt greedily with the
same ``max_new_tokens``:

- ``modelserve``: ours, ``modelserve.huggingface.HuggingFaceRuntime`` (task text_generation) in a real
  ``mlserver start`` process, one prompt per V2 request with ``parameters.max_new_tokens``, driven by wrk;
- ``raw_generate``: ``model.generate(**tokenizer([prompt], return_tensors="pt"), do_sample=False,
  max_new_tokens=N)`` under ``torch.inference_mode()``, timed in this process with timeit (best of 5).

New tokens per request are counted on the raw side (``output length - prompt length``); greedy output is
deterministic and the server's text equals the raw decode (tested in tests/, and checked here before the load:
the server's answer must be the raw side's text), so each server request carries the same number of new
tokens. A random model may emit EOS early: the prompt is chosen so that it does not, and the count is
recorded either way. See benchmarks/README.md ("Generation").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lib import wrk  # noqa: E402  (importing lib puts the repository on sys.path)
from lib.report import finish, out_dir, shared_options  # noqa: E402
from lib.wrk import MODES, InProcess, Target, Variant  # noqa: E402

PROMPT = "Once upon a time"
MAX_NEW_TOKENS = 32
RATIO_MODE = "inprocess"
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class Raw:
    """The model and tokenizer loaded once in this process; the raw greedy generate and its new-token count."""

    def __init__(self, folder: Path, max_new_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        self.enc = self.tokenizer([PROMPT], return_tensors="pt")
        self.prompt_len = int(self.enc["input_ids"].shape[1])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.kw = {"do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": pad}
        out = self.generate()
        self.new_ids = out[0, self.prompt_len:].tolist()
        self.new_tokens = len(self.new_ids)
        self.text = self.tokenizer.decode(self.new_ids, skip_special_tokens=True)

    def generate(self):
        with self.torch.inference_mode():
            return self.model.generate(**self.enc, **self.kw)


def variants(folder: Path, raw: Raw, max_new_tokens: int):
    request = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [PROMPT]}],
               "parameters": {"max_new_tokens": max_new_tokens}}

    def check(doc: dict) -> None:
        outs = {o["name"]: o for o in doc.get("outputs", [])}
        text = outs.get("text", {}).get("data")
        if text != [raw.text]:
            raise AssertionError(f"the server's greedy text differs from the raw generate's {raw.text!r}: "
                                 f"{json.dumps(doc)[:500]}")

    def ours(root: Path) -> Target:
        d = root / "gpt2"
        d.mkdir(parents=True, exist_ok=True)
        (d / "model-settings.json").write_text(json.dumps({
            "name": "gpt2", "implementation": "modelserve.huggingface.HuggingFaceRuntime",
            "parameters": {"uri": str(folder), "version": "v1",
                           "extra": {"task": "text_generation", "backend": "HUGGINGFACE"}}}))
        return Target("gpt2", request, check=check)

    return [Variant("modelserve", ours, "ours: modelserve.huggingface.HuggingFaceRuntime, text_generation, one "
                    f"prompt per request, greedy, parameters.max_new_tokens={max_new_tokens}", dict(ENV))]


def tokens_summary(result, summary, raw: Raw):
    for s in summary:
        k = raw.new_tokens
        s["new_tokens_per_request"] = k
        s["tps_median"], s["tps_min"], s["tps_max"] = s["rps_median"] * k, s["rps_min"] * k, s["rps_max"] * k
    ts = [t for t in result["inprocess"] if t["variant"] == "raw_generate"]
    us = statistics.median(t["us_per_call"] for t in ts)
    return {"new_tokens": raw.new_tokens, "ms_per_generate": round(us / 1e3, 3),
            "tokens_per_s": round(raw.new_tokens * 1e6 / us, 1),
            "ms_per_generate_each_repeat": [round(t["us_per_call"] / 1e3, 3) for t in ts]}


def table(result: dict) -> str:
    raw_row = result["raw_generate"]
    cell = (f"**{raw_row['tokens_per_s']:,.0f}** tok/s ({raw_row['ms_per_generate']:.1f} ms per generate, one at a "
            "time; in-process, no server)")
    return wrk.grid_table(result, result["summary"],
                          lambda s: f"**{s['tps_median']:,.0f}** tok/s ({s['rps_median']:,.1f} req/s)<br>"
                                    f"p50 {s['p50_ms']:.1f} / p99 {s['p99_ms']:.1f} ms",
                          extra=("new tokens/request", lambda v: str(raw_row["new_tokens"])),
                          others=[["`raw_generate`", str(raw_row["new_tokens"]), cell]])


def report(result: dict) -> tuple:
    """The printed text (table, ratios, the load generator's CPU) and the README section, from a result."""
    wb = result["wrk_bottleneck"]
    text = (f"{table(result)}\n\nRatios ({result['ratios_basis']}): "
            + ", ".join(f"{k} = {v}" for k, v in result["ratios"].items()) + ".\n\n"
            f"{wrk.load_note(result)} ({wb['disturbed_runs']} run(s) and {wb['raw_disturbed']} raw timing(s) still "
            "marked disturbed after retries).")
    section = (f"{wrk.section_head(result)}; prompt {result['prompt']!r} ({result['prompt_tokens']} tokens), greedy, "
               f"max_new_tokens {result['max_new_tokens']}; cells are the median new tokens/s (req/s) with median "
               f"p50 / p99 latency.\n\n{text}")
    return text, section


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured wrk run (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded wrk warm-up per run (default 2)")
    ap.add_argument("--concurrency", default="1,4", help="comma-separated wrk connection counts (default 1,4)")
    ap.add_argument("--modes", default="inprocess", help="inprocess and/or workers (default inprocess)")
    ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="default 32")
    shared_options(ap, "smoke run: 3 s, 1 repeat, 1 s warm-up; writes no files unless --write",
                   max_other_cpu=0.25, retries=3, quiet_wait=60.0, replot=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 3.0, 1, 1.0
    wrk.require_wrk()
    os.environ.update(ENV)
    from tests.support.hf_models import build_causal_lm

    concs = [int(c) for c in args.concurrency.split(",")]
    modes = [MODES[m] for m in args.modes.split(",")]
    with tempfile.TemporaryDirectory(prefix="modelserve-gen-bench-") as tmp:
        folder = build_causal_lm(Path(tmp) / "gpt2")
        raw = Raw(folder, args.max_new_tokens)
        if raw.new_tokens < args.max_new_tokens:
            print(f"note: the raw greedy generate stopped at EOS after {raw.new_tokens} new tokens", file=sys.stderr)
        raw_ip = InProcess("raw_generate", lambda: raw.generate,
                           f"model.generate(prompt, do_sample=False, max_new_tokens={args.max_new_tokens}) "
                           "timed in-process with timeit (no server)")
        result = wrk.run(variants(folder, raw, args.max_new_tokens), modes, concs, args.duration, args.repeats,
                         args.warmup, workdir=Path(tmp) / "servers", inprocess=[raw_ip],
                         max_other_cpu=args.max_other_cpu, retries=args.retries, quiet_wait=args.quiet_wait)

    summary = wrk.summarise(result)
    raw_row = tokens_summary(result, summary, raw)
    result["benchmark"] = "generation"
    result["model"] = ("tiny random GPT2LMHeadModel (tests.support.hf_models.build_causal_lm: 2 layers, n_embd 32, "
                       "vocab 30522, MiniLM's tokenizer)")
    result["prompt"], result["prompt_tokens"] = PROMPT, raw.prompt_len
    result["max_new_tokens"] = args.max_new_tokens
    result["new_tokens_per_request"] = raw.new_tokens
    result["generated_text"] = raw.text
    result["retokenized_count"] = len(raw.tokenizer(raw.text, add_special_tokens=False)["input_ids"])
    result["raw_generate"] = raw_row
    ratios = {}
    for c in concs:
        s = wrk.lookup(summary, "modelserve", RATIO_MODE, c)
        if s:
            key = "vs_raw" if c == concs[0] else f"vs_raw_c{c}"
            ratios[key] = round(s["tps_median"] / raw_row["tokens_per_s"], 3)
    result["ratios"] = ratios
    result["ratios_basis"] = (f"new tokens/s, median of repeats, mode {RATIO_MODE}: modelserve at c={concs[0]} "
                              "(vs_raw) and at each other concurrency (vs_raw_c<N>) over the raw greedy "
                              "model.generate run one at a time in one process")
    result["summary"] = summary
    result["wrk_bottleneck"] = {**wrk.bottleneck(result),
                                "disturbed_runs": sum(bool(r.get("disturbed")) for r in result["runs"]),
                                "raw_disturbed": sum(bool(t.get("disturbed")) for t in result["inprocess"])}
    return finish(result, "generation", None, report, out_dir(args))


if __name__ == "__main__":
    raise SystemExit(main())
