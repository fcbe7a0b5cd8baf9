"""The docs cannot drift from the code.

- Every option table in docs/ is what scripts/option_docs.py renders from its class, and every options
  class has one.
- Every model-settings.json example in the README and docs/ loads: its JSON parses and its
  ``parameters.extra`` passes its runtime's ``options_class``.
- Relative links between the Markdown files lead to files (and headings) that exist.
- The README stays a page a newcomer reads in a minute.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from pydantic import BaseModel, Field

from modelserve.errors import ModelLoadError
from modelserve.options import RuntimeOptions, parse_options

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MARKDOWN = [README, ROOT / "DEVELOPERS.md", *sorted(DOCS.rglob("*.md"))]

_spec = importlib.util.spec_from_file_location("option_docs", ROOT / "scripts" / "option_docs.py")
option_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(option_docs)

PUBLIC_CLASSES = [
    "modelserve.options.RuntimeOptions",
    "modelserve.sklearn.SKLearnOptions",
    "modelserve.mlflow.MLflowOptions",
    "modelserve.huggingface.HuggingFaceOptions",
    "modelserve.kubeai.KubeAIOptions",
    "modelserve.kubeai.Scaling",
    "modelserve.adapters.AdapterSpec",
    "modelserve.kubeai.FileSpec",
]



# -- option tables ------------------------------------------------------------------------------------------

def test_every_option_table_in_docs_is_what_its_class_renders():
    found = option_docs.problems(DOCS)
    assert not found, "\n".join(found)


def test_every_options_class_has_a_table():
    documented = {path for _, path, _ in option_docs.tables(DOCS)}
    assert set(PUBLIC_CLASSES) <= documented
    classes = option_docs.options_classes()
    # the discovery finds at least the public classes, so the check above is not vacuous
    assert {option_docs.resolve(p) for p in PUBLIC_CLASSES} <= set(classes)
    tabled = {option_docs.resolve(p) for p in documented}
    missing = [f"{c.__module__}.{c.__qualname__}" for c in classes if c not in tabled]
    assert not missing, f"options classes without a table in docs/: {missing}"


def test_a_runtime_table_lists_only_its_own_options_and_the_common_table_the_shared_ones():
    common = set(option_docs.resolve("modelserve.options.RuntimeOptions").model_fields)
    written = {path: table for _, path, table in option_docs.tables(DOCS)}
    for path, table in written.items():
        names = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
        assert names, f"the table of {path} has no rows"
        if path == "modelserve.options.RuntimeOptions":
            assert names == common
        else:
            assert not names & common, f"{path}'s table repeats common options {names & common}"


@pytest.fixture
def docs_copy(tmp_path) -> Path:
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy)
    return copy


def test_a_table_edited_by_hand_is_caught_and_regenerated(docs_copy):
    page = docs_copy / "runtimes" / "sklearn.md"
    text = page.read_text()
    table = text.split("<!-- options:modelserve.sklearn.SKLearnOptions -->")[1]
    row = re.search(r"^(\| `\w+` \| [^|]+ \| )[^|]+( \|)", table, re.MULTILINE)  # its first row's default
    page.write_text(text.replace(row.group(0), row.group(1) + "`a default by hand`" + row.group(2), 1))

    found = option_docs.problems(docs_copy)
    assert len(found) == 1 and "modelserve.sklearn.SKLearnOptions" in found[0] and "a default by hand" in found[0]
    assert option_docs.main(["--check", "--docs", str(docs_copy)]) == 1

    assert option_docs.rewrite(docs_copy) == [page]
    assert page.read_text() == text
    assert option_docs.main(["--check", "--docs", str(docs_copy)]) == 0


def test_a_table_that_is_missing_or_names_no_class_is_caught(docs_copy):
    page = docs_copy / "runtimes" / "mlflow.md"
    text = page.read_text()
    table = re.search(r"<!-- options:modelserve\.mlflow\.MLflowOptions -->.*?<!-- /options -->\n", text, re.DOTALL)
    page.write_text(text.replace(table.group(0), "<!-- options:modelserve.mlflow.NoSuchOptions -->\n"
                                                 "<!-- /options -->\n"))
    found = option_docs.problems(docs_copy)
    assert any("modelserve.mlflow.NoSuchOptions" in p and "cannot be imported" in p for p in found)
    assert any(p.startswith("modelserve.mlflow.MLflowOptions has no table") for p in found)


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Nested(BaseModel):
    size: int = Field(default=3, ge=1)
    """How big, read from the source: a plain BaseModel has no use_attribute_docstrings."""
    label: Optional[str] = None


class DemoOptions(RuntimeOptions):
    colour: Colour = Colour.RED
    """The colour."""
    limit: Optional[int] = Field(default=None, ge=1)
    names: List[str] = Field(default_factory=list)
    nested: Optional[Nested] = None


def test_a_class_without_a_table_is_caught(docs_copy):
    found = option_docs.problems(docs_copy, classes=[DemoOptions])
    assert [p for p in found if p.startswith(f"{__name__}.DemoOptions has no table")]


def test_rows_show_type_bounds_enum_values_default_and_docstring():
    rows = option_docs.render(DemoOptions).splitlines()
    assert rows[:2] == ["| option | type | default | description |", "| --- | --- | --- | --- |"]
    assert rows[2:] == [
        "| `colour` | enum: `red`, `blue` | `red` | The colour. |",
        "| `limit` | int, ≥ 1 | unset |  |",
        "| `names` | list of string | `[]` |  |",
        "| `nested` | `Nested` object | unset |  |",
    ]  # no row for the inherited cache_dir, pvc_root, request_timeout
    nested = option_docs.render(Nested).splitlines()[2:]
    assert nested == [
        "| `size` | int, ≥ 1 | `3` | How big, read from the source: a plain BaseModel has no use_attribute_docstrings. |",
        "| `label` | string | unset |  |",
    ]
    assert option_docs.undocumented(DemoOptions) == ["limit", "names", "nested"]


# -- model-settings.json examples ---------------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def model_settings_blocks(md: Path) -> List[str]:
    """The JSON code blocks of ``md`` that name an implementation: model-settings.json examples."""
    return [body for lang, body in FENCE.findall(md.read_text()) if lang == "json" and '"implementation"' in body]


def load_options(text: str):
    """What MLServer and the runtime do with a model-settings.json at load, up to the options."""
    from mlserver.settings import ModelParameters, ModelSettings

    doc = json.loads(text)
    module, _, name = doc["implementation"].rpartition(".")
    runtime = getattr(importlib.import_module(module), name)
    settings = ModelSettings(name=doc["name"], implementation=runtime,
                             parameters=ModelParameters(**doc.get("parameters", {})))
    return parse_options(runtime.options_class, settings)


EXAMPLES = [pytest.param(md, i, body, id=f"{md.relative_to(ROOT)}-{i}")
            for md in MARKDOWN for i, body in enumerate(model_settings_blocks(md))]


@pytest.mark.parametrize("md,index,body", EXAMPLES)
def test_every_model_settings_example_loads_its_options(md, index, body, monkeypatch):
    monkeypatch.delenv("MODELSERVE_KUBEAI_ENGINE", raising=False)  # an example must name its engine
    load_options(body)


def test_the_readme_has_a_model_settings_example_per_flavour():
    implementations = {json.loads(b)["implementation"] for b in model_settings_blocks(README)}
    assert implementations >= set(option_docs.IMPLEMENTATIONS)
    assert any(json.loads(b)["parameters"].get("uri", "").startswith("hf://") for b in model_settings_blocks(README))
    kubeai = [json.loads(b) for b in model_settings_blocks(README) if "KubeAIRuntime" in b]
    assert all(doc.get("parallel_workers") == 0 for doc in kubeai)


def test_an_example_with_a_bad_option_is_refused():
    with pytest.raises(ModelLoadError, match="unknown option 'colour'"):
        load_options('{"name": "x", "implementation": "modelserve.sklearn.SKLearnRuntime",'
                     ' "parameters": {"extra": {"colour": "red"}}}')
    with pytest.raises(json.JSONDecodeError):
        load_options('{"name": "x", "implementation": "modelserve.sklearn.SKLearnRuntime", ...}')


# -- links --------------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without fenced blocks and code spans, where brackets are code, not links or headings."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(md: Path) -> set:
    """GitHub's heading ids of ``md``: lower case, punctuation dropped, spaces to dashes, -1 for repeats."""
    seen: Dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", md.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(md: Path, root: Path = ROOT) -> List[str]:
    out = []
    for target in LINK.findall(_prose(md.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        rel = dest.relative_to(root) if root in dest.parents else dest
        if not dest.exists():
            out.append(f"{md.relative_to(root)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{md.relative_to(root)}: {target} (no heading #{anchor} in {rel})")
    return out


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings_that_exist(md):
    assert not broken_links(md)


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    (tmp_path / "other.md").write_text("# Other\n## A section (`code`)\n")
    page.write_text("# Page\n[ok](../other.md#a-section-code) [ok](#page) `[not a link](x.md)`\n"
                    "[gone](missing.md) [no heading](../other.md#nowhere) [web](https://example.com/x.md)\n")
    assert broken_links(page, tmp_path) == [
        "docs/page.md: missing.md (no such file)",
        "docs/page.md: ../other.md#nowhere (no heading #nowhere in other.md)",
    ]


# -- the README ---------------------------------------------------------------------------------------------

def test_the_readme_is_short_and_starts_with_serving_your_own_model():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    sections = re.findall(r"^## (.+)$", FENCE.sub("", text), re.MULTILINE)
    assert sections[0] == "Serve your own model"
    assert "mlserver start mymodels" in text and "'.[sklearn]'" in text and "--override docker/overrides.txt" in text
    # the project's two commands, as CI runs the second
    assert "bash scripts/dev.sh serve" in text and "bash scripts/dev.sh test" in text
    assert "bash scripts/dev.sh test" in (ROOT / ".ci" / "run").read_text()


def test_no_project_process_wording_in_the_docs():
    for md in MARKDOWN:
        text = md.read_text()
        for pattern in (r"\bissue \d+", r"the deployment issue", r"target[^.\n]*: met", r"lent to this issue"):
            assert not re.search(pattern, text, re.IGNORECASE), f"{md.relative_to(ROOT)}: {pattern}"
