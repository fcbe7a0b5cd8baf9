"""The option tables in docs/, generated from the runtimes' options classes.

A table sits between two markers that name the class by its public import path:

    <!-- options:modelserve.sklearn.SKLearnOptions -->
    | option | type | default | description |
    ...
    <!-- /options -->

Each row is one field: its name, its type (with its bounds; an enum lists its values), its default and its
docstring (the field's ``description``: ``RuntimeOptions`` sets ``use_attribute_docstrings``; for plain
``BaseModel`` classes the docstring is read from the source). A subclass's table lists only the fields it
adds or changes: the common options are in the table of ``modelserve.options.RuntimeOptions``.

    python scripts/option_docs.py            # rewrite the tables in docs/
    python scripts/option_docs.py --check    # exit 1 if a table differs from its class or a class has none

Run it with the runtimes importable (``PYTHONPATH=runtimes`` or an installed checkout).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import enum
import importlib
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMON = "modelserve.options.RuntimeOptions"
IMPLEMENTATIONS = (
    "modelserve.sklearn.SKLearnRuntime",
    "modelserve.mlflow.MLflowRuntime",
    "modelserve.huggingface.HuggingFaceRuntime",
    "modelserve.kubeai.KubeAIRuntime",
)
"""The runtimes whose ``options_class`` must have a table (``modelserve.deploy.RUNTIMES`` adds any other)."""

MARKER = re.compile(r"(<!-- options:([\w.]+) -->\n)(.*?)(<!-- /options -->)", re.DOTALL)
HEADER = "| option | type | default | description |\n| --- | --- | --- | --- |\n"
SCALARS = {bool: "bool", int: "int", float: "number", str: "string"}


def resolve(path: str) -> Any:
    """``a.b.C`` -> the object C of module a.b (ImportError/AttributeError if there is none)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# -- rendering ---------------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    """One table cell: one line, reST ``code`` as Markdown `code`, pipes escaped."""
    text = re.sub(r"``(.+?)``", r"`\1`", " ".join(text.split()))
    return text.replace("|", "\\|")


def _code(value: Any) -> str:
    return f"`{value}`"


def _enum_values(cls: Type[enum.Enum]) -> str:
    values = ", ".join(_code(m.value) for m in cls)
    case = " (any case)" if any(m.__name__ == "_CaseInsensitiveEnum" for m in cls.__mro__) else ""
    return f"enum: {values}{case}"


def _type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        kept = [a for a in args if a is not type(None)]
        return " or ".join(_type(a) for a in kept)
    if origin in (list, List, tuple, set, frozenset):
        if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return f"list of `{args[0].__name__}` objects"
        return f"list of {_type(args[0])}" if args else "list"
    if origin in (dict, Dict):
        return f"map of {_type(args[0])} to {_type(args[1])}" if args else "map"
    if origin is typing.Literal:
        return "one of " + ", ".join(_code(json.dumps(a)) for a in args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_values(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"`{tp.__name__}` object"
    if tp in SCALARS:
        return SCALARS[tp]
    return _code(getattr(tp, "__name__", str(tp)))


def _bounds(field: FieldInfo, kind: str) -> str:
    """The field's constraints in words: ≥ 1, > 0, at least 1 item, matching `^...$`."""
    words = []
    for m in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if getattr(m, attr, None) is not None:
                words.append(f"{sign} {getattr(m, attr)}")
        unit = "items" if kind.startswith("list") or kind.startswith("map") else "characters"
        lo, hi = getattr(m, "min_length", None), getattr(m, "max_length", None)
        if lo is not None:
            words.append(f"at least {lo} {unit[:-1] if lo == 1 else unit}")
        if hi is not None:
            words.append(f"at most {hi:,} {unit}")
        if getattr(m, "pattern", None):
            words.append(f"matching `{m.pattern}`")
    return ", ".join(words)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    value = _jsonable(value)
    return _code(value if isinstance(value, str) else json.dumps(value))


def source_docstrings(cls: type) -> Dict[str, str]:
    """Field docstrings (a string right after an annotated attribute) of ``cls`` and its bases, from source."""
    found: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                found[node.target.id] = inspect.cleandoc(nxt.value.value)
    return found


def own_fields(cls: Type[BaseModel]) -> Dict[str, FieldInfo]:
    """The fields ``cls`` adds to its bases, or declares again differently."""
    inherited: Dict[str, FieldInfo] = {}
    for base in reversed(cls.__mro__[1:]):
        if isinstance(base, type) and issubclass(base, BaseModel) and base is not BaseModel:
            inherited.update(base.model_fields)
    return {name: f for name, f in cls.model_fields.items()
            if name not in inherited or repr(inherited[name]) != repr(f)}


def description(cls: Type[BaseModel], name: str) -> str:
    field = cls.model_fields[name]
    return field.description or source_docstrings(cls).get(name, "")


def render(cls: Type[BaseModel]) -> str:
    """The Markdown table of ``cls``'s own fields."""
    rows = []
    for name, field in own_fields(cls).items():
        kind = _type(field.annotation)
        bounds = _bounds(field, kind)
        cells = [_code(field.alias or name), kind + (f", {bounds}" if bounds else ""), _default(field),
                 description(cls, name)]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |\n")
    return HEADER + "".join(rows)


def undocumented(cls: Type[BaseModel]) -> List[str]:
    """``cls``'s own fields that have no docstring (their description cell is empty)."""
    return [name for name in own_fields(cls) if not description(cls, name)]


# -- which classes need a table ----------------------------------------------------------------------------

def _nested_models(tp: Any) -> Iterator[type]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp
    for arg in typing.get_args(tp):
        yield from _nested_models(arg)


def implementations() -> List[str]:
    paths = list(IMPLEMENTATIONS)
    try:  # the deployment table names every runtime an image serves
        runtimes = importlib.import_module("modelserve.deploy").RUNTIMES
        paths += [rt.implementation for rt in runtimes.values() if getattr(rt, "implementation", None)]
    except (ImportError, AttributeError):
        pass
    return list(dict.fromkeys(paths))


def options_classes() -> List[type]:
    """Every options class of the package: the common one, each runtime's ``options_class``, every other
    ``modelserve`` subclass of RuntimeOptions, and the models nested in their fields (KubeAI's Scaling...)."""
    common = resolve(COMMON)
    found = [common] + [resolve(p).options_class for p in implementations()]
    todo = [common]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.split(".")[0] == "modelserve":
                found.append(sub)
    i = 0
    while i < len(found):
        for field in found[i].model_fields.values():
            found += [m for m in _nested_models(field.annotation) if m not in found]
        i += 1
    return list(dict.fromkeys(found))


# -- the docs ----------------------------------------------------------------------------------------------

def tables(docs: Path = DOCS) -> Iterator[Tuple[Path, str, str]]:
    """(file, class path, table as written) for every marked table under ``docs``."""
    for md in sorted(docs.rglob("*.md")):
        for m in MARKER.finditer(md.read_text()):
            yield md, m.group(2), m.group(3)


def problems(docs: Path = DOCS, classes: Optional[List[type]] = None) -> List[str]:
    """Why the docs and the code disagree: one line (with a diff) per table that differs from its class,
    names no class, or per options class that has no table. Empty when they agree."""
    out: List[str] = []
    documented = set()
    for md, path, written in tables(docs):
        where = md.relative_to(docs.parent) if docs.parent in md.parents else md
        try:
            cls = resolve(path)
        except (ImportError, AttributeError) as exc:
            out.append(f"{where}: table for {path}, which cannot be imported ({exc})")
            continue
        documented.add(cls)
        want = render(cls)
        if written != want:
            diff = "".join(difflib.unified_diff(written.splitlines(True), want.splitlines(True),
                                                "docs", "code", n=0))
            out.append(f"{where}: the table of {path} differs from the class "
                       f"(run scripts/option_docs.py):\n{diff}")
    for cls in classes if classes is not None else options_classes():
        if cls not in documented:
            out.append(f"{cls.__module__}.{cls.__qualname__} has no table in {docs.name}/: add "
                       f"<!-- options:PUBLIC.PATH --> <!-- /options --> where it is documented and run "
                       "scripts/option_docs.py")
    return out


def rewrite(docs: Path = DOCS) -> List[Path]:
    """Regenerate every marked table under ``docs``; returns the files that changed."""
    changed = []
    for md in sorted(docs.rglob("*.md")):
        text = md.read_text()
        def table(m: re.Match) -> str:
            try:
                cls = resolve(m.group(2))
            except (ImportError, AttributeError):
                return m.group(0)  # problems() names it
            return m.group(1) + render(cls) + m.group(4)

        new = MARKER.sub(table, text)
        if new != text:
            md.write_text(new)
            changed.append(md)
    return changed


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    ap.add_argument("--docs", type=Path, default=DOCS, help="the folder of Markdown files (default: docs/)")
    ap.add_argument("--no-docstring", action="store_true", help="also list the fields that have no docstring")
    args = ap.parse_args(argv)
    if not args.check:
        for md in rewrite(args.docs):
            print(f"rewrote {md}")
    found = problems(args.docs)
    for line in found:
        print(line, file=sys.stderr)
    for cls in options_classes() if args.no_docstring else ():
        missing = undocumented(cls)
        if missing:
            print(f"no docstring in {cls.__module__}.{cls.__qualname__}: {', '.join(missing)}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
