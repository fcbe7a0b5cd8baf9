"""Runtime, the base of every runtime, without a server: the request_timeout option turns a slow call into a 504
and cancels its work; a timeout raised inside the call stays the call's own; the option is checked at load."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from modelserve.errors import ModelLoadError, RequestTimeout

from .support.runtimes import nap, sleepy


def test_a_request_past_request_timeout_is_a_504_and_its_work_is_cancelled():
    rt = sleepy(0.2)

    async def run():
        with pytest.raises(RequestTimeout) as exc:
            await rt.predict(nap(5))
        return exc.value

    err = asyncio.run(run())
    assert err.status_code == 504 and "request_timeout (0.2 s)" in str(err) and "'slow'" in str(err)
    assert rt.cancelled == 1 and rt.finished == 0
    assert pickle.loads(pickle.dumps(err)).status_code == 504  # crosses MLServer's worker boundary


def test_requests_within_the_timeout_and_without_one_are_served():
    assert asyncio.run(sleepy(2).predict(nap(0.01))).model_name == "slow"
    assert asyncio.run(sleepy().predict(nap(0.05))).model_name == "slow"


def test_a_timeout_raised_inside_the_call_is_not_taken_for_ours():
    rt = sleepy(5)
    with pytest.raises(TimeoutError, match="engine's own"):
        asyncio.run(rt.within_timeout(rt._raises_timeout()))


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_request_timeout_must_be_a_positive_number(value):
    with pytest.raises(ModelLoadError, match="request_timeout"):
        sleepy(value)
