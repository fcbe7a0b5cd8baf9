"""What the benchmarks share; no benchmark script imports another.

- ``lib.wrk``: the wrk harness (real ``mlserver start`` processes, interleaved repeats; sklearn_bench.py,
  huggingface_bench.py, generation_bench.py);
- ``lib.loadgen``: the asyncio + aiohttp closed-loop load generator and the measurement rule (wait for quiet,
  repeat a disturbed run) of vllm_bench.py, whisper_bench.py and infinity_bench.py;
- ``lib.cpu``: CPU accounting from /proc (per role, the rest of the machine, run-queue waits), waiting for a
  quiet machine, lowering an engine's priority;
- ``lib.engines``: the engine environments and ports of the KubeAI benchmarks;
- ``lib.report``: the shared options, machine info, the results JSON, README sections, table and plot pieces.

Importing it puts the repository root on sys.path, so that the test support modules (``tests.support.harness`` ...)
import.
"""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
REPO = BENCHMARKS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
