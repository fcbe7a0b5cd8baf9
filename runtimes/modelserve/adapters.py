"""LoRA adapters of a running generation model, loaded, listed and unloaded at run time: our API, which stays
the same whichever engine serves the model and whatever that engine's own adapter API becomes.

Routes (REST, on MLServer's HTTP port, added by each model whose runtime takes adapters):

- ``GET /v2/models/{model}/adapters``: ``{"adapters": [{"name", "url", "source": "settings"|"runtime"}]}``;
- ``POST /v2/models/{model}/adapters`` with ``{"name", "url"}`` (``url`` as the ``adapters`` option takes it:
  hf://, s3://, pvc://, store://, a local path): 201 with the adapter's entry;
- ``DELETE /v2/models/{model}/adapters/{name}``: 200; an unknown name is a 404 naming the adapters there are;
- vLLM's own shapes as aliases: ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` and
  ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``; ``"model"`` in the body names the base model where more
  than one model of this process takes adapters.

Loading and unloading need the model's option ``runtime_adapters: true`` (listing does not); with
``$MODELSERVE_OPENAI_API_KEY`` set they need the key, as the OpenAI routes do. A loaded adapter is at once in
``/v1/models`` (with ``parent``) and usable by OpenAI ``model`` and the V2 ``adapter`` parameter. Adapters
loaded at run time live as long as the model's copy in memory: a reload or a server restart serves the
adapters of model-settings.json again (it is the declared state; in KServe the model folder is read-only).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadRequest, ModelLoadError
from .mlserver_compat import add_custom_handler, raw_body

NAME_PATTERN = r"^[a-z0-9-]+$"


class AdapterSpec(BaseModel):
    """One adapter, as the ``adapters`` option and ``POST .../adapters`` take it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    """As KubeAI: lowercase letters, digits and dashes. Requests pick it by parameter `adapter` or OpenAI `model`."""
    url: str = Field(min_length=1)
    """The adapter's PEFT folder, resolved like the model's url (hf://, s3://, pvc://, store://, local path)."""


class NotFound(BadRequest):
    def __init__(self, msg: str):
        super().__init__(msg, 404)


class Forbidden(BadRequest):
    def __init__(self, msg: str):
        super().__init__(msg, 403)


class Conflict(BadRequest):
    def __init__(self, msg: str):
        super().__init__(msg, 409)


def parse_spec(raw: bytes, aliases: Dict[str, str]) -> AdapterSpec:
    """The body as an AdapterSpec; ``aliases`` maps vLLM's field names onto ours."""
    body = {aliases.get(k, k): v for k, v in _body_object(raw).items() if k != "model"}
    body.pop("load_inplace", None)  # vLLM's: a name already loaded is refused here (unload it first)
    try:
        return AdapterSpec.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise BadRequest(f"adapter field '{where}': {err.get('msg')}") from None


def _body_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object (e.g. {"name": ..., "url": ...})')
    return body


async def _authorization(request: Request) -> str:
    return request.headers.get("authorization", "")


def add_routes(model: Any) -> None:
    """The adapter routes of ``model`` (a runtime.Runtime whose ``adapter_routes`` is set)."""
    from .openai.routes import check_key

    base = f"/v2/models/{model.name}/adapters"

    async def listed(authorization: str = Depends(_authorization)) -> Any:
        check_key(authorization)
        return {"adapters": model.adapters_listed()}

    async def load(body: bytes = Depends(raw_body), authorization: str = Depends(_authorization)) -> Any:
        check_key(authorization)
        return JSONResponse(await model.adapter_load(parse_spec(body, {})), status_code=201)

    async def unload(adapter: str, authorization: str = Depends(_authorization)) -> Any:
        check_key(authorization)
        return await model.adapter_unload(adapter)

    async def vllm_load(body: bytes = Depends(raw_body), authorization: str = Depends(_authorization)) -> Any:
        check_key(authorization)
        spec = parse_spec(body, {"lora_name": "name", "lora_path": "url"})
        await _target(_body_object(body)).adapter_load(spec)
        return f"Success: LoRA adapter '{spec.name}' added successfully."

    async def vllm_unload(body: bytes = Depends(raw_body), authorization: str = Depends(_authorization)) -> Any:
        check_key(authorization)
        given = _body_object(body)
        name = given.get("lora_name")
        if not isinstance(name, str) or not name:
            raise BadRequest("'lora_name' is required: the adapter to unload")
        await _target(given).adapter_unload(name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    add_custom_handler(model, base, "GET", "adapters_list_route", listed)
    add_custom_handler(model, base, "POST", "adapters_load_route", load)
    add_custom_handler(model, base + "/{adapter}", "DELETE", "adapters_unload_route", unload)
    add_custom_handler(model, "/v1/load_lora_adapter", "POST", "vllm_load_lora_route", vllm_load)
    add_custom_handler(model, "/v1/unload_lora_adapter", "POST", "vllm_unload_lora_route", vllm_unload)


def _target(body: dict) -> Any:
    """The model a vLLM-shaped call is for: ``body["model"]``, else the one model here that takes adapters."""
    from .openai.routes import REGISTRY

    hosts = {name: m for name, m in list(REGISTRY.items()) if getattr(m, "takes_adapters", lambda: False)()}
    wanted = body.get("model")
    if wanted is not None:
        if wanted in hosts:
            return hosts[wanted]
        raise NotFound(f"model {wanted!r} takes no adapters here (models that do: {', '.join(sorted(hosts)) or 'none'})")
    if len(hosts) == 1:
        return next(iter(hosts.values()))
    if not hosts:
        raise NotFound("no model of this server takes LoRA adapters at run time (option runtime_adapters)")
    raise BadRequest(f"several models take adapters ({', '.join(sorted(hosts))}): say which in 'model'")


def _tensor_shapes(path: Path) -> Dict[str, List[int]]:
    """Every tensor's shape in a safetensors file, from its header alone (8 bytes of length, then JSON)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size <= 0 or size > 100 * 2**20:
            raise ValueError(f"{path.name} is not a safetensors file")
        header = json.loads(f.read(size))
    return {k: v["shape"] for k, v in header.items() if isinstance(v, dict) and "shape" in v}


def misfit(base: Optional[Path], adapter: Path) -> Optional[str]:
    """Why a PEFT LoRA folder does not fit the base model's weights, or None: each ``lora_A`` must take its
    layer's input size and each ``lora_B`` give its output size, on a layer the model has. Checked from the
    safetensors headers (no weights read); a base or adapter without safetensors is not checked."""
    weights = adapter / "adapter_model.safetensors"
    if base is None or not weights.is_file():
        return None
    files = sorted(Path(base).glob("*.safetensors"))
    if not files:
        return None
    try:
        model: Dict[str, List[int]] = {}
        for f in files:
            model.update(_tensor_shapes(f))
        lora = _tensor_shapes(weights)
    except (OSError, ValueError) as exc:
        return f"cannot read the weights' headers: {exc}"
    for key, shape in sorted(lora.items()):
        for part, side in ((".lora_A.weight", 1), (".lora_B.weight", 0)):
            if not key.endswith(part):
                continue
            module = key[:-len(part)].removeprefix("base_model.model.")
            target = model.get(module + ".weight")
            if target is None:
                return f"it changes layer '{module}', which the model does not have"
            if len(shape) != 2 or len(target) != 2 or shape[side] != target[side]:
                what = "input" if side else "output"
                return (f"layer '{module}' has {what} size {target[side]}, the adapter's {part[1:7]} has "
                        f"{shape[side]} (an adapter trained for another base model)")
    return None


async def resolve_folder(model: str, settings: Any, url: str, what: str, **roots: Any) -> Path:
    """An adapter's (or model's) url as a local folder, resolved by storage as parameters.uri is; ``roots``:
    storage.resolve_uri's cache_dir, pvc_root, store_root, schemes. A load error names ``what``."""
    from . import storage

    try:
        path = await asyncio.to_thread(storage.resolve_uri, settings, url, **roots)
    except ModelLoadError as exc:
        raise ModelLoadError(model, f"{what}: {exc.reason}") from None
    if not path.is_dir():
        raise ModelLoadError(model, f"{what}: {path} is not a folder (expected a model folder)")
    return path


def requested(params: Dict[str, Any], names: List[str]) -> Optional[str]:
    """The V2 request parameter ``adapter`` (removed from ``params``): one of ``names``, or None for the base model;
    any other value is a 404 (a name) or 400 naming the adapters there are."""
    adapter = params.pop("adapter", None)
    if adapter is not None and adapter not in names:
        raise BadRequest(f"unknown adapter {adapter!r} (this model has: {', '.join(names) or 'none'})",
                         404 if isinstance(adapter, str) else 400)
    return adapter


def entry(name: str, url: str, source: str) -> Dict[str, str]:
    return {"name": name, "url": url, "source": source}


def unknown(model: str, name: str, names: List[str]) -> NotFound:
    return NotFound(f"model '{model}' has no adapter {name!r} (it has: {', '.join(names) or 'none'})")


class AdapterHost:
    """Mixed into a runtime (before ``runtime.Runtime``) whose backend may take adapters at run time: the
    routes above, and the calls they make. The backend implements ``adapter_entries()``,
    ``load_adapter(name, path, url)`` and ``unload_adapter(name)``; the runtime ``_adapter_path(spec)``."""

    _adapter_lock: Optional[asyncio.Lock] = None

    def __init__(self, settings):
        super().__init__(settings)
        add_routes(self)

    def takes_adapters(self) -> bool:
        """Loading and unloading are on (option runtime_adapters) and the backend can."""
        return bool(getattr(getattr(self, "options", None), "runtime_adapters", False)) \
            and hasattr(self.backend, "load_adapter")

    def adapters_listed(self) -> List[Dict[str, str]]:
        entries = getattr(self.backend, "adapter_entries", None)
        return entries() if entries is not None else []

    def _refuse_unless_taken(self) -> None:
        if self.backend is None:
            raise NotFound(f"model '{self.name}' is not loaded")
        if not self.takes_adapters():
            raise Forbidden(f"model '{self.name}' does not take adapters at run time (its option "
                            "runtime_adapters is off; on engine VLLM with TextGeneration it may be set)")

    async def adapter_load(self, spec: AdapterSpec) -> Dict[str, str]:
        self._refuse_unless_taken()
        if self._adapter_lock is None:
            self._adapter_lock = asyncio.Lock()
        async with self._adapter_lock:  # one change at a time: a name is checked and taken atomically
            if spec.name == self.name or spec.name in self.backend.adapters:
                raise Conflict(f"model '{self.name}' already serves {spec.name!r} (unload it first, or pick "
                               "another name)")
            try:
                path = await self._adapter_path(spec)
            except ModelLoadError as exc:
                raise BadRequest(exc.reason) from None
            await self.backend.load_adapter(spec.name, path, spec.url)
        return entry(spec.name, spec.url, "runtime")

    async def adapter_unload(self, name: str) -> Dict[str, Any]:
        self._refuse_unless_taken()
        if self._adapter_lock is None:
            self._adapter_lock = asyncio.Lock()
        async with self._adapter_lock:
            await self.backend.unload_adapter(name)
        return {"name": name, "unloaded": True, "adapters": self.backend.adapters}

    async def _adapter_path(self, spec: AdapterSpec) -> Path:
        raise NotImplementedError
