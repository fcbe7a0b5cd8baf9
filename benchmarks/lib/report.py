"""What the benchmarks write: the shared options, the machine, the results JSON and PNG, README sections.

A benchmark's ``report(result) -> (text, section)`` gives the printed text and its README section from a
result alone, so that ``finish`` (after a run) and ``replot`` (from a committed results file) write the
same thing. The README sections are the text between ``<!-- results:NAME:start -->`` and ``:end -->``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

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
