"""SKLearnRuntime: a joblib, pickle or skops estimator or pipeline; the requested outputs pick its methods."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
from mlserver.codecs import PandasCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, RequestInput
from pydantic import Field

from . import storage
from .batching import MODEL_FILE_LOCK, Coalescer
from .codecs import decode_array, decode_column, encode_array
from .codecs.requests import one_input, wanted_outputs
from .errors import BadRequest, ModelLoadError
from .options import RuntimeOptions, _CaseInsensitiveEnum
from .runtime import Runtime

WELLKNOWN = ("model.joblib", "model.pkl", "model.pickle", "model.skops")
PICKLE_WARNING = ("model '%s': %s is a pickle (joblib/pickle): loading it runs any code the file holds, so "
                  "serve only files you trust; skops (skops.io.dump to model.skops) loads without running code")
logger = logging.getLogger("mlserver.modelserve.sklearn")


class Method(_CaseInsensitiveEnum):
    PREDICT = "predict"
    PREDICT_PROBA = "predict_proba"
    PREDICT_LOG_PROBA = "predict_log_proba"
    DECISION_FUNCTION = "decision_function"
    TRANSFORM = "transform"


class SKLearnOptions(RuntimeOptions):
    default_outputs: List[Method] = Field(default_factory=list)
    """Methods run when a request names no outputs; default: predict (transform for a transformer)."""
    skops_trusted_types: List[str] = Field(default_factory=list)
    """Types a .skops file may instantiate beyond skops' safe defaults (see skops.io.get_untrusted_types)."""
    coalesce: bool = True
    """Merge requests that arrive while the model is busy into one call (each gets its own rows back)."""
    max_coalesced_rows: int = Field(default=4096, ge=1)
    """The most rows one shared (coalesced) model call may hold."""


def _load_estimator(path: Path, trusted: List[str]):
    with MODEL_FILE_LOCK:
        return _read_estimator(path, trusted)


def _read_estimator(path: Path, trusted: List[str]):
    if path.suffix == ".skops":
        import skops.io as sio

        untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in trusted]
        if untrusted:
            raise ValueError(
                f"{path.name} holds types that are not trusted: {', '.join(untrusted)}; "
                "list them in skops_trusted_types if you trust this file"
            )
        return sio.load(path, trusted=trusted or None)
    import joblib  # reads joblib files and plain pickles alike

    return joblib.load(path)


class SKLearnRuntime(Runtime):
    """Serves a fitted scikit-learn estimator or pipeline.

    Outputs are named after methods (``predict``, ``predict_proba``, ...). Estimators fitted on a
    DataFrame get one from V2 inputs named after their columns (or a pandas-codec request).
    """

    options_class = SKLearnOptions

    async def _load(self) -> None:
        opts: SKLearnOptions = self.options
        path = await asyncio.to_thread(storage.resolve, self.settings, WELLKNOWN, opts.cache_dir, opts.pvc_root)
        if path.is_dir():
            raise ModelLoadError(self.name, f"no model file in {path} (looked for {', '.join(WELLKNOWN)})")
        if path.suffix != ".skops":
            logger.warning(PICKLE_WARNING, self.name, path.name)
        try:
            model = await asyncio.to_thread(_load_estimator, path, opts.skops_trusted_types)
        except Exception as exc:
            raise ModelLoadError(self.name, f"cannot read model file {path.name}: {type(exc).__name__}: {exc}")
        self.methods = [m.value for m in Method if callable(getattr(model, m.value, None))]
        if not self.methods:
            raise ModelLoadError(self.name, f"{path.name} holds a {type(model).__name__}, not a fitted estimator")
        defaults = [m.value for m in opts.default_outputs]
        missing = [m for m in defaults if m not in self.methods]
        if missing:
            raise ModelLoadError(
                self.name,
                f"option 'default_outputs': {', '.join(missing)} not offered by {type(model).__name__} "
                f"(it has {', '.join(self.methods)})",
            )
        self.default_outputs = tuple(defaults or ["predict" if "predict" in self.methods else self.methods[0]])
        self.model = model
        names = getattr(model, "feature_names_in_", None)
        self.columns: Optional[List[str]] = [str(c) for c in names] if names is not None else None
        self.n_features: Optional[int] = getattr(model, "n_features_in_", None)
        self._coalescer = Coalescer(self._call, self._concat, opts.max_coalesced_rows, opts.coalesce)
        self._set_metadata()

    def _set_metadata(self) -> None:
        if not self.inputs:
            if self.columns is not None:
                self.inputs = [MetadataTensor(name=c, datatype="FP64", shape=[-1]) for c in self.columns]
            else:
                width = [self.n_features] if self.n_features else []
                self.inputs = [MetadataTensor(name="input-0", datatype="FP64", shape=[-1, *width])]
        if not self.outputs:
            classes = getattr(self.model, "classes_", None)
            label = "FP64"
            if classes is not None:
                label = "BYTES" if np.asarray(classes).dtype.kind in "OUS" else "INT64"
            n_classes = [len(classes)] if classes is not None else []
            self.outputs = [
                MetadataTensor(
                    name=m,
                    datatype=label if m == "predict" else "FP64",
                    shape=[-1] if m == "predict" else [-1, *n_classes] if m != "transform" else [-1, -1],
                )
                for m in self.methods
            ]

    # -- request -> rows ---------------------------------------------------------------------------
    def _rows(self, payload: InferenceRequest) -> Tuple[object, int, Hashable]:
        inputs = payload.inputs
        if self.columns is not None and inputs and (len(inputs) > 1 or inputs[0].name in self.columns
                                                    or _is_pandas(payload)):
            return self._frame(inputs)
        inp = one_input(payload, "one input tensor" if self.columns is None else
                        f"one input tensor or one per column ({', '.join(self.columns)})")
        arr = decode_array(inp)
        name = inp.name
        if arr.ndim == 1 and self.n_features == 1:
            arr = arr.reshape(-1, 1)
        if self.n_features is not None:
            if arr.ndim != 2:
                raise BadRequest(
                    f"input '{name}': expected shape [rows, {self.n_features}], got {list(arr.shape)}"
                )
            if arr.shape[1] != self.n_features:
                raise BadRequest(
                    f"input '{name}': expected {self.n_features} features per row, got {arr.shape[1]}"
                )
        if arr.shape[0] == 0:
            raise BadRequest(f"input '{name}': empty batch (shape {list(arr.shape)})")
        if arr.dtype == object and self.n_features is not None:
            raise BadRequest(f"input '{name}': this model takes numbers, got datatype BYTES")
        if self.columns is not None:  # a plain 2-d tensor for a DataFrame model: columns by position
            import pandas as pd

            frame = pd.DataFrame(arr, columns=self.columns)
            return frame, len(frame), ("df", tuple(str(d) for d in frame.dtypes))
        return arr, arr.shape[0], ("nd", arr.dtype.str, arr.shape[1:])

    def _frame(self, inputs: Sequence[RequestInput]):
        import pandas as pd

        names = [i.name for i in inputs]
        missing = [c for c in self.columns if c not in names]
        extra = [n for n in names if n not in self.columns]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing column(s): {', '.join(missing)}")
            if extra:
                parts.append(f"unknown column(s): {', '.join(extra)}")
            raise BadRequest(f"{'; '.join(parts)} (the model was fitted on: {', '.join(self.columns)})")
        cols = {i.name: decode_column(i) for i in inputs}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) != 1:
            raise BadRequest(f"columns have different lengths: {', '.join(f'{k}={len(v)}' for k, v in cols.items())}")
        n = lengths.pop()
        if n == 0:
            raise BadRequest("empty batch: the columns have no rows")
        frame = pd.DataFrame({c: cols[c] for c in self.columns})
        return frame, n, ("df", tuple(str(d) for d in frame.dtypes))

    # -- the model call (in the model thread) ------------------------------------------------------
    def _call(self, key: Hashable, rows) -> Dict[str, np.ndarray]:
        outputs, _ = key
        return {m: np.asarray(getattr(self.model, m)(rows)) for m in outputs}

    @staticmethod
    def _concat(parts):
        if hasattr(parts[0], "iloc"):
            import pandas as pd

            return pd.concat(parts, ignore_index=True)
        return np.concatenate(parts)

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        wanted = wanted_outputs(payload, self.methods, self.default_outputs)
        rows, n, shape_key = self._rows(payload)
        try:
            results = await self._coalescer((wanted, shape_key), rows, n)
        except ValueError as exc:  # sklearn's own input validation: the caller's data is at fault
            raise BadRequest(f"the model rejected the input: {exc}") from None
        # every field is already typed: skip a second validation on this per-request path
        return InferenceResponse.model_construct(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[encode_array(m, results[m]) for m in wanted],
        )

    async def _unload(self) -> None:
        coalescer = getattr(self, "_coalescer", None)  # never loaded: the main-process copy under workers
        if coalescer is not None:
            coalescer.close()


def _is_pandas(payload: InferenceRequest) -> bool:
    params = payload.parameters
    return bool(params and getattr(params, "content_type", None) == PandasCodec.ContentType)
