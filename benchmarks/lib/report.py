"""What the benchmarks write: the shared options, the machine, the results JSON and PNG, README sections.

A benchmark's ``report(result) -> (text, section)`` gives the printed text and its README section from a
result alone, so that ``finish`` (after a run) and ``replot`` (from a committed results file) write the
same thing. The README sections are the text between ``<!-- results:NAME:start -->`` and ``:end -->``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from lib import BENCHMARKS, REPO

RESULTS = BENCHMARKS / "results"
README = BENCHMARKS / "README.md"
REPLOT_HELP = "redraw the PNG and the README table from a results file"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- options ---------------------------------------------------------------------------------------
def shared_options(ap, quick_help: str, max_other_cpu: float = 0.3, retries: int = 1, quiet_wait: float = 30.0,
                   replot: Optional[str] = REPLOT_HELP) -> None:
    """--max-other-cpu, --retries, --quiet-wait (with these defaults), --quick, --write, --out and, unless
    ``replot`` is None, --replot (``replot`` is its help)."""
    ap.add_argument("--max-other-cpu", type=float, default=max_other_cpu,
                    help=f"a run during which other processes used more cores than this is repeated "
                         f"(default {max_other_cpu:g})")
    ap.add_argument("--retries", type=int, default=retries, help=f"repeats of a disturbed run (default {retries})")
    ap.add_argument("--quiet-wait", type=float, default=quiet_wait,
                    help=f"seconds to wait for the machine to go quiet before each run (default {quiet_wait:g})")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--write", action="store_true", help="with --quick: write the results files anyway")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    if replot is not None:
        ap.add_argument("--replot", type=Path, metavar="JSON", help=replot)


def out_dir(args) -> Optional[Path]:
    """Where the results go: ``--out``, unless a --quick run without --write (then nowhere)."""
    return args.out if args.write or not args.quick else None


# -- writing ---------------------------------------------------------------------------------------
def write_json(result: Dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
    tmp.replace(path)


def replace_section(path: Path, name: str, text: str) -> None:
    """Replace the text between <!-- name:start --> and <!-- name:end --> markers (append if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.exists() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc and end in doc:
        pre, rest = doc.split(start, 1)
        _, post = rest.split(end, 1)
        doc = pre + block + post
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


def replot(path: Path, name: str, plot: Optional[Callable], report: Callable) -> int:
    """From a results file: its PNG (beside it) and its README section, as ``finish`` wrote them."""
    result = json.loads(path.read_text())
    if plot is not None:
        plot(result, path.with_suffix(".png"))
    replace_section(README, f"results:{name}", report(result)[1])
    return 0


def finish(result: dict, name: str, plot: Optional[Callable], report: Callable, out: Optional[Path],
           log: Callable[[str], None] = log) -> int:
    """Prints the text; with ``out``: NAME.json and NAME.png (no ``plot``: no PNG) there, and benchmarks/README.md's
    section when ``out`` is benchmarks/results (the README shows the committed results only)."""
    text, section = report(result)
    print(text)
    if out is not None:
        written = [out / f"{name}.json"]
        write_json(result, written[0])
        if plot is not None:
            written.append(out / f"{name}.png")
            plot(result, written[1])
        readme = out.resolve() == RESULTS
        if readme:
            replace_section(README, f"results:{name}", section)
        log("wrote " + ", ".join(map(str, written)) + (", benchmarks/README.md" if readme else ""))
    return 0


# -- summaries, tables, plots ---------------------------------------------------------------------
def repeat_stats(runs: List[dict], metric: str, digits: int, latency_digits: int,
                 extra: Optional[Callable[[float], dict]] = None) -> dict:
    """The summary of one point over its repeats (runs as ``lib.loadgen.measured`` returns them): how many, the
    median/min/max of ``metric`` rounded to ``digits``, ``extra(unrounded median)``'s entries, the spread (max−min
    over the median), the median p50/p99 latency, the median CPU of each role, how many are marked disturbed."""
    xs = [r[metric] for r in runs]
    med = statistics.median(xs)
    return {"n": len(runs), f"{metric}_median": round(med, digits), f"{metric}_min": round(min(xs), digits),
            f"{metric}_max": round(max(xs), digits), **(extra(med) if extra else {}),
            "spread": round((max(xs) - min(xs)) / med, 3),
            "p50_ms": round(statistics.median(r["latency_p50_ms"] for r in runs), latency_digits),
            "p99_ms": round(statistics.median(r["latency_p99_ms"] for r in runs), latency_digits),
            "cpu": {k: round(statistics.median(r["cpu"][k] for r in runs), 3) for k in runs[0]["cpu"]},
            "disturbed": sum(r["disturbed"] for r in runs)}


def paired_ratio(by: Dict[tuple, float], ours: str, base: str, repeats: int) -> dict:
    """``ours`` over ``base`` within each repeat (they ran back to back), and the median of those; ``by``:
    (side, repeat) -> figure."""
    each = [by[ours, rep] / by[base, rep] for rep in range(repeats)]
    return {"median": round(statistics.median(each), 3), "each_repeat": [round(x, 3) for x in each]}


def md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table: the header row, the separator, one line per row of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot, drawing to files only (the Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars(ax, i: int, n: int, rows: Sequence[Optional[dict]], prefix: str, label: str, fmt: str = "{:,.0f}") -> None:
    """Series ``i`` of ``n`` in a grouped bar chart: in group g, the bar of ``rows[g]`` (None: none) at the height
    of its PREFIX_median, whiskers to its PREFIX_min and PREFIX_max, labelled with ``fmt``."""
    width = 0.8 / max(1, n)
    xs, ys, lo, hi = [], [], [], []
    for g, s in enumerate(rows):
        if s is None:
            continue
        y = s[f"{prefix}_median"]
        xs.append(g - 0.4 + width * (i + 0.5))
        ys.append(y)
        lo.append(y - s[f"{prefix}_min"])
        hi.append(s[f"{prefix}_max"] - y)
    drawn = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label)
    ax.bar_label(drawn, labels=[fmt.format(y) for y in ys], fontsize=7, padding=2)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


# -- the machine -----------------------------------------------------------------------------------
def _wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"


def machine_info() -> Dict[str, Any]:
    def version(mod: str) -> Optional[str]:
        try:
            from importlib.metadata import version as v

            return v(mod)
        except Exception:
            return None

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    return {
        "hostname": platform.node(), "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
        "mem_gib": mem, "python": platform.python_version(), "wrk": _wrk_version(), "git_commit": commit,
        "loadavg_at_end": os.getloadavg(),
        "packages": {p: version(p) for p in ("mlserver", "mlserver-sklearn", "scikit-learn", "numpy",
                                             "fastapi", "uvicorn", "pydantic", "modelserve")},
    }
