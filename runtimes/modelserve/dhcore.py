"""Our images as drop-ins for DHCore's defaults: the names DHCore's generated commands and model-settings.json use,
written as small modules that hand over to our runtimes, installed only when an image opts in.

    modelserve-dhcore-shims [--target DIR] [huggingfaceserver] [mlserver_sklearn] [mlserver_mlflow]

- ``huggingfaceserver``: ``python -m huggingfaceserver ...`` (DHCore's huggingfaceserve command) runs
  :mod:`modelserve.hfserver`;
- ``mlserver_sklearn``: ``mlserver_sklearn.SKLearnModel`` (DHCore's sklearnserve model-settings.json) is
  SKLearnRuntime;
- ``mlserver_mlflow``: ``mlserver_mlflow.MLflowRuntime`` (mlflowserve) is our MLflowRuntime.

Written into DIR (default: this interpreter's site-packages). A name a real installed package already holds is
refused, never shadowed; our own shim may be rewritten.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List, Optional

MARKER = ".modelserve-shim"
SHIMS: Dict[str, Dict[str, str]] = {
    "huggingfaceserver": {
        "__init__.py": '"""modelserve\'s stand-in for KServe huggingfaceserver\'s command line."""\n',
        "__main__.py": "from modelserve.hfserver import main\n\nraise SystemExit(main())\n"},
    "mlserver_sklearn": {
        "__init__.py": '"""mlserver_sklearn\'s class name, served by modelserve (DHCore\'s sklearnserve settings)."""\n'
                       "from modelserve.sklearn import SKLearnRuntime as SKLearnModel\n\n"
                       "__all__ = [\"SKLearnModel\"]\n"},
    "mlserver_mlflow": {
        "__init__.py": '"""mlserver_mlflow\'s class name, served by modelserve (DHCore\'s mlflowserve settings)."""\n'
                       "from modelserve.mlflow import MLflowRuntime\n\n__all__ = [\"MLflowRuntime\"]\n"},
}


class ShimError(RuntimeError):
    """A shim that would shadow a real package."""


def install(names: List[str], target: Optional[Path] = None) -> List[Path]:
    """Write the shims; refuses (before writing any) where a real package of that name is importable."""
    target = Path(target or sysconfig.get_paths()["purelib"])
    for name in names:
        if name not in SHIMS:
            raise ShimError(f"unknown shim {name!r}; known: {', '.join(SHIMS)}")
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).parent if spec is not None and spec.origin else None
        if spec is not None and not (origin and (origin / MARKER).exists()):
            raise ShimError(f"a real {name} is installed ({spec.origin or spec.submodule_search_locations}): "
                            "not shadowing it")
    return [write(name, target) for name in names]


def write(name: str, target: Path) -> Path:
    """The shim's files under ``target``, unchecked (install() checks first)."""
    folder = Path(target) / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname, text in SHIMS[name].items():
        (folder / fname).write_text(text)
    (folder / MARKER).write_text("written by modelserve-dhcore-shims\n")
    return folder


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="modelserve-dhcore-shims", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=list(SHIMS), help=f"default: all of {', '.join(SHIMS)}")
    parser.add_argument("--target", type=Path, help="default: site-packages")
    args = parser.parse_args(argv)
    try:
        for folder in install(args.names, args.target):
            print(f"wrote {folder}", file=sys.stderr)
    except ShimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
