"""jsonschema validators for the CRDs in a folder (the served versions' openAPIV3Schema, unknown fields refused)."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Dict, Tuple

import jsonschema
import yaml


def strict(schema):
    """The schema refusing unknown fields where it does not preserve them (the API server would drop them)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@lru_cache(maxsize=None)
def validators(folder: Path) -> Dict[Tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator, for every CRD in ``folder``."""
    out = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out
