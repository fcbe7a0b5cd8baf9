"""metrics.py in-process: the documented table is the code's, and the gauges and counters move as a request's
life says (the server tests check the same against real scrapes)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import prometheus_client

from modelserve import metrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def value(name: str, **labels) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_documented_table_is_the_code():
    rows = re.findall(r"^\| `(modelserve_\w+)` \| (\w+) \| ([\w, ]+) \|", DOC.read_text(), re.M)
    documented = {name: (kind, tuple(label.strip() for label in labels.split(","))) for name, kind, labels in rows}
    assert documented == {name: (kind, labels) for name, (kind, _, labels, _) in metrics.DEFINITIONS.items()}


def test_a_stream_moves_from_waiting_to_running_and_counts_its_tokens():
    g = metrics.Generation("unit-llm", streamed=True)
    assert value("modelserve_num_requests_waiting", model="unit-llm") == 1
    assert value("modelserve_num_requests_running", model="unit-llm") == 0
    g.token()
    assert value("modelserve_num_requests_waiting", model="unit-llm") == 0
    assert value("modelserve_num_requests_running", model="unit-llm") == 1
    g.token()
    g.done(7, 5)
    g.done(7, 5)  # once only
    assert value("modelserve_num_requests_running", model="unit-llm") == 0
    assert value("modelserve_prompt_tokens_total", model="unit-llm", adapter="") == 7
    assert value("modelserve_generation_tokens_total", model="unit-llm", adapter="") == 5
    assert value("modelserve_time_to_first_token_seconds_count", model="unit-llm", adapter="") == 1
    assert value("modelserve_time_per_output_token_seconds_count", model="unit-llm", adapter="") == 1


def test_a_failed_generation_leaves_the_gauges_and_no_latency():
    g = metrics.Generation("unit-failed", streamed=True)
    g.failed()
    g.done(3, 3)
    assert value("modelserve_num_requests_waiting", model="unit-failed") == 0
    assert value("modelserve_e2e_request_latency_seconds_count", model="unit-failed", adapter="") == 0
    assert value("modelserve_generation_tokens_total", model="unit-failed", adapter="") == 0


def test_outcomes_are_status_classes():
    class Status(Exception):
        status_code = 422

    assert metrics.outcome(None) == "2xx"
    assert metrics.outcome(Status()) == "4xx"
    assert metrics.outcome(asyncio.CancelledError()) == "cancelled"
    assert metrics.outcome(ValueError()) == "5xx"
    r = metrics.Request("unit-req", "v1", "predict")
    r.failed(Status())
    r.done("2xx")  # a request is counted once
    assert value("modelserve_requests_total", model="unit-req", adapter="", protocol="v1", endpoint="predict",
                 code="4xx") == 1
    assert value("modelserve_requests_total", model="unit-req", adapter="", protocol="v1", endpoint="predict",
                 code="2xx") == 0


def test_modelserve_metrics_0_records_nothing():
    code = ("import prometheus_client\nfrom modelserve import metrics\n"
            "metrics.Request('off-model', 'v1', 'predict').done('2xx')\n"
            "metrics.Generation('off-model').done(3, 4)\n"
            "print(prometheus_client.REGISTRY.get_sample_value('modelserve_requests_total', {'model': 'off-model', "
            "'adapter': '', 'protocol': 'v1', 'endpoint': 'predict', 'code': '2xx'}))\n")
    for setting, expected in (("0", "None"), ("1", "1.0")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "MODELSERVE_METRICS": setting})
        assert out.returncode == 0, out.stderr[-1000:]
        assert out.stdout.strip().splitlines()[-1] == expected, (setting, out.stdout)
