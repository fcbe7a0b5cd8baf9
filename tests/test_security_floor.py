"""security-floor.toml holds for every environment modelserve ships (scripts/security_floor.py does the reading)."""

from __future__ import annotations

import copy
import importlib.util
import sys

import pytest

from .support.deploy_files import ROOT

spec = importlib.util.spec_from_file_location("security_floor", ROOT / "scripts" / "security_floor.py")
floor_check = importlib.util.module_from_spec(spec)
sys.modules["security_floor"] = floor_check
spec.loader.exec_module(floor_check)


@pytest.fixture(scope="module")
def envs():
    return floor_check.environments()


def test_every_environment_we_ship_is_at_or_above_the_floor(envs):
    floor = floor_check.load()
    # the environments this machine has: the MLServer one and the images' pins always, the engines' where built
    assert {"mlserver", "image:mlserver", "image:vllm", "image:infinity"} <= set(envs)
    found = floor_check.check(floor, envs)
    assert not floor_check.violations(found), [vars(f) for f in floor_check.violations(found)]
    # every floor package the MLServer environment has is judged there (none skipped by a name mismatch)
    judged = {f.package for f in found if f.environment == "mlserver"}
    assert {"starlette", "transformers", "torch", "h11"} <= judged, judged


def test_an_exception_is_there_only_while_it_is_needed(envs):
    """An [[exception]] that no environment on this machine needs any more is stale: the floor file must drop it."""
    floor = floor_check.load()
    found = floor_check.check(floor, envs)
    for exc in floor.get("exception", []):
        envs_named = [e for e in envs if e.split(":", 1)[-1] == exc["environment"]]
        hits = [f for f in found if f.excepted and f.package == exc["package"] and f.environment in envs_named]
        assert hits and any(f.below for f in hits), f"stale exception: {exc['environment']} {exc['package']}"


def test_a_floor_raised_above_what_is_installed_fails(envs):
    floor = copy.deepcopy(floor_check.load())
    for item in floor["floor"]:
        if item["package"] == "starlette":
            item["minimum"] = "99.0"
    bad = floor_check.violations(floor_check.check(floor, envs))
    assert {(f.environment, f.package) for f in bad} >= {("mlserver", "starlette"), ("image:mlserver", "starlette")}
    assert all(f.package == "starlette" for f in bad)
    # and an exception covers exactly its own environment (and that environment's images) and package
    floor["exception"].append({"environment": "mlserver", "package": "starlette", "why": "test"})
    left = {(f.environment, f.package) for f in floor_check.violations(floor_check.check(floor, envs))}
    assert not {("mlserver", "starlette"), ("image:mlserver", "starlette")} & left
    assert {e for e, _ in left} == {f.environment for f in bad} - {"mlserver", "image:mlserver"}


def test_the_floor_file_names_an_advisory_for_every_minimum():
    floor = floor_check.load()
    for item in floor["floor"]:
        assert item["advisories"] and all("CVE-" in a or "advisor" in a for a in item["advisories"]), item
    for exc in floor.get("exception", []):
        assert len(exc["why"]) > 40, exc
