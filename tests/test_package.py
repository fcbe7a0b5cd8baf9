"""The package stays light: importing it or the sklearn runtime loads no torch."""

import subprocess
import sys


def _modules_after(stmt: str) -> set:
    code = f"import sys; {stmt}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_modelserve_loads_no_heavy_library():
    mods = _modules_after("import modelserve")
    assert not {"torch", "sklearn", "mlflow", "transformers"} & mods


def test_sklearn_runtime_imports_no_torch():
    mods = _modules_after("import modelserve.sklearn")
    assert "torch" not in mods and "mlflow" not in mods
