"""digitalhub's function, task and run specs served as written: locally, on KServe, on KubeAI.

    python -m modelserve.digitalhub serve  FUNCTION [TASK] [RUN] [--models-dir DIR] [-- MLSERVER START ARGS]
    python -m modelserve.digitalhub render FUNCTION [TASK] [RUN] --target kserve|kubeai [--profiles FILE]
        [--mode Serverless|RawDeployment] [--name NAME] [--namespace NS] [--gateway NAME] [--epp-values FILE] [-o FILE]
    python -m modelserve.digitalhub settings FUNCTION [TASK] [RUN] [--models-dir DIR]

Each file is JSON or YAML: a whole digitalhub entity (``kind`` + ``spec``, as the SDK and DHCore store them)
or a bare spec (then ``--kind``). The specs are merged as DHCore merges them (run over task over function)
and read with the SDK's field names; where the SDK and DHCore spell a field differently both are accepted
(``env``/``envs``, ``target_request``/``target_requests``), enums in any case. A field the kind does not
have, or a value of the wrong type, is refused in one line naming the field. The field table:
docs/digitalhub.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import deploy, hfserver
from .deploy import RenderError
from .kubeai import Scaling
from .options import Backend, Dtype, Engine, Feature, Task, _CaseInsensitiveEnum

KUBEAI_IMPL = deploy.KUBEAI


@dataclass(frozen=True)
class Kind:
    """One digitalhub function kind: the runtime that serves it and what its spec may say."""

    runtime: str  # deploy.RUNTIMES key (KubeAI kinds: the image of their engine)
    source: str  # the spec field naming the model: path (modelserve kinds) or url (KubeAI/vLLM kinds)
    engine: Optional[Engine] = None  # KubeAI kinds: the engine, None where the spec must name it
    features: Tuple[Feature, ...] = ()
    fields: frozenset = frozenset()


K8S_FIELDS = frozenset({
    "task", "function", "workflow", "local_execution", "model_name", "image", "volumes", "resources", "envs",
    "env", "secrets", "profile", "replicas", "service_type", "service_name", "node_selector", "affinity",
    "tolerations", "runtime_class", "priority_class"})
HF_FIELDS = frozenset({
    "path", "args", "huggingface_task", "backend", "tokenizer_revision", "max_length", "disable_lower_case",
    "disable_special_tokens", "dtype", "trust_remote_code", "tensor_input_names", "return_token_type_ids",
    "return_probabilities", "disable_log_requests", "max_log_len"})
KUBEAI_FIELDS = frozenset({"url", "engine", "features", "adapters", "processors", "args", "cache_profile", "scaling",
                           "files"})
VLLM_FIELDS = frozenset({"url", "path", "adapters", "args", "enable_telemetry", "use_cpu_image", "storage_space"})

_GEN, _EMB, _STT = Feature.TEXT_GENERATION, Feature.TEXT_EMBEDDING, Feature.SPEECH_TO_TEXT
KINDS: Dict[str, Kind] = {
    "sklearnserve": Kind("sklearn", "path", fields=K8S_FIELDS | {"path"}),
    "mlflowserve": Kind("mlflow", "path", fields=K8S_FIELDS | {"path"}),
    "huggingfaceserve": Kind("huggingface", "path", fields=K8S_FIELDS | HF_FIELDS),
    "kubeaiserve": Kind("vllm", "url", fields=K8S_FIELDS | KUBEAI_FIELDS),
    "kubeai-text": Kind("vllm", "url", Engine.VLLM, (_GEN,), K8S_FIELDS | KUBEAI_FIELDS),
    "kubeai-speech": Kind("whisper", "url", Engine.FASTER_WHISPER, (_STT,), K8S_FIELDS | KUBEAI_FIELDS),
    "vllmserve": Kind("vllm", "url", Engine.VLLM, (_GEN,), K8S_FIELDS | VLLM_FIELDS),
    "vllmserve-text": Kind("vllm", "url", Engine.VLLM, (_GEN,), K8S_FIELDS | VLLM_FIELDS),
    "vllmserve-pooling": Kind("vllm", "url", Engine.VLLM, (_EMB,), K8S_FIELDS | VLLM_FIELDS),
    "vllmserve-speech": Kind("whisper", "url", Engine.FASTER_WHISPER, (_STT,), K8S_FIELDS | VLLM_FIELDS),
}
ENGINE_RUNTIME = {Engine.VLLM: "vllm", Engine.FASTER_WHISPER: "whisper", Engine.INFINITY: "infinity",
                  Engine.OLLAMA: "ollama"}
# fields digitalhub keeps for its own bookkeeping or for images we replace (task, function, enable_telemetry,
# service_name, ...) are in Kind.fields but not in Spec: read, never used
POD_FIELDS = ("volumes", "resources", "node_selector", "affinity", "tolerations", "runtime_class",
              "priority_class", "service_type")
HTTP_PORT, GRPC_PORT = 8080, 8081
QUANTITY = r"^\d+(\.\d+)?([a-zA-Z]+)?$"


class SpecError(ValueError):
    """A spec that cannot be served or rendered; the message names the field."""


# -- the spec's types -----------------------------------------------------------------------------------------
class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VolumeType(_CaseInsensitiveEnum):
    PERSISTENT_VOLUME_CLAIM = "persistent_volume_claim"
    EMPTY_DIR = "empty_dir"
    EPHEMERAL = "ephemeral"
    SHARED_VOLUME = "shared_volume"


class ServiceType(_CaseInsensitiveEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class Volume(_M):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    volume_type: VolumeType
    mount_path: str = Field(pattern=r"^/")
    spec: Dict[str, str] = Field(default_factory=dict)


class Resources(_M):
    cpu: Optional[str] = Field(default=None, pattern=QUANTITY)
    mem: Optional[str] = Field(default=None, pattern=QUANTITY)
    gpu: Optional[str] = Field(default=None, pattern=r"^\d+$")
    disk: Optional[str] = Field(default=None, pattern=QUANTITY)

    @field_validator("cpu", "mem", "gpu", "disk", mode="before")
    @classmethod
    def _number_as_text(cls, v):
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class EnvVar(_M):
    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str


class Adapter(_M):
    name: str = Field(max_length=63, pattern=r"^[a-z0-9-]+$")
    url: str


class KubeAIFile(_M):
    path: str = Field(min_length=2, max_length=1024, pattern=r"^/[^:]*$")
    content: str = Field(max_length=100_000)


class Spec(_M):
    """The merged spec (function + task + run), every kind's fields; Kind.fields says which a kind has."""

    model_name: Optional[str] = None
    image: Optional[str] = None  # KubeAI: the engine's image, as written; elsewhere our image serves
    path: Optional[str] = None
    url: Optional[str] = None
    # Kubernetes (task)
    volumes: List[Volume] = Field(default_factory=list)
    resources: Optional[Resources] = None
    envs: List[EnvVar] = Field(default_factory=list)
    secrets: List[str] = Field(default_factory=list)
    profile: Optional[str] = None
    replicas: Optional[int] = Field(default=None, ge=0)
    service_type: Optional[ServiceType] = None
    node_selector: Dict[str, str] = Field(default_factory=dict)
    affinity: Optional[Dict[str, Any]] = None
    tolerations: List[Dict[str, Any]] = Field(default_factory=list)
    runtime_class: Optional[str] = None
    priority_class: Optional[str] = None
    # huggingfaceserve (task)
    huggingface_task: Optional[Task] = None
    backend: Optional[Backend] = None
    tokenizer_revision: Optional[str] = None
    max_length: Optional[int] = Field(default=None, ge=1)
    disable_lower_case: Optional[bool] = None
    disable_special_tokens: Optional[bool] = None
    dtype: Optional[Dtype] = None
    trust_remote_code: Optional[bool] = None
    tensor_input_names: Optional[List[str]] = None
    return_token_type_ids: Optional[bool] = None
    return_probabilities: Optional[bool] = None
    disable_log_requests: Optional[bool] = None
    max_log_len: Optional[int] = Field(default=None, ge=0)
    # KubeAI / vLLM (function and run)
    engine: Optional[Engine] = None
    features: Optional[List[Feature]] = Field(default=None, min_length=1)
    adapters: List[Adapter] = Field(default_factory=list)
    processors: Optional[int] = Field(default=None, ge=1)
    args: List[str] = Field(default_factory=list)
    cache_profile: Optional[str] = None
    scaling: Optional[Scaling] = None
    files: List[KubeAIFile] = Field(default_factory=list)


# -- reading the specs ----------------------------------------------------------------------------------------
def load_document(path: Path) -> Dict[str, Any]:
    """A JSON or YAML file holding one mapping."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        try:
            import yaml
        except ImportError:  # PyYAML is not a dependency of every image
            raise SpecError(f"{path} is not JSON ({exc}), and PyYAML, which reads YAML, is not installed") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:  # YAML's errors carry a position; keep the first line
            raise SpecError(f"{path} is not JSON or YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path} does not hold a mapping (a digitalhub entity or its spec)")
    return doc


def _entity(doc: Dict[str, Any]) -> Tuple[Optional[str], Dict[str, Any], Optional[str]]:
    """(kind, spec, id) of an entity, or (None, doc, None) for a bare spec."""
    if isinstance(doc.get("spec"), dict) and isinstance(doc.get("kind"), str):
        return doc["kind"], doc["spec"], doc.get("id")
    return None, doc, None


def _kind_of(kinds: List[str], given: Optional[str]) -> str:
    """The function kind that the entities' kinds (`k`, `k+serve`, `k+serve:run`) and --kind agree on."""
    found = []
    for k in kinds:
        base, _, rest = k.partition("+")
        action = rest.split(":", 1)[0]
        if rest and action != "serve":
            raise SpecError(f"task action '{action}' ({k}) is not served; only the 'serve' action is")
        found.append(base)
    if given:
        found.append(given)
    names = sorted(set(found))
    if not names:
        raise SpecError("the kind is unknown: give whole entities (with 'kind') or --kind")
    if len(names) > 1:
        raise SpecError(f"the specs disagree on the kind: {', '.join(names)}")
    if names[0] not in KINDS:
        raise SpecError(f"unknown kind '{names[0]}'; known: {', '.join(KINDS)}")
    return names[0]


def _empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


def _both(data: Dict[str, Any], where: str, a: str, b: str) -> None:
    """Fold spelling ``b`` into ``a`` (the SDK's and DHCore's names for one field)."""
    if b in data:
        other = data.pop(b)
        if a in data and not _empty(data[a]) and not _empty(other) and data[a] != other:
            raise SpecError(f"spec fields '{where}{a}' and '{where}{b}' are one field (SDK and DHCore spell it "
                            "both ways) and disagree")
        if a not in data or _empty(data[a]):
            data[a] = other


def _env_items(name: str, value: Any) -> List[Dict[str, str]]:
    if isinstance(value, dict):
        return [{"name": str(k), "value": v if isinstance(v, str) else json.dumps(v)} for k, v in value.items()]
    if isinstance(value, list):
        return value
    raise SpecError(f"spec field '{name}' must be a list of {{name, value}} or a mapping, got {value!r}")


def _normalise(data: Dict[str, Any]) -> Dict[str, Any]:
    data = copy.deepcopy(data)
    envs = []
    for key in ("envs", "env"):  # the task's list and the run's mapping (SDK `env`, DHCore `envs`)
        if not _empty(data.get(key)):
            envs += _env_items(key, data[key])
        data.pop(key, None)
    if envs:
        data["envs"] = envs
    if isinstance(data.get("node_selector"), list):  # the docs' list of {key, value}
        try:
            data["node_selector"] = {str(i["key"]): str(i["value"]) for i in data["node_selector"]}
        except (TypeError, KeyError):
            raise SpecError("spec field 'node_selector' must be a mapping or a list of {key, value}") from None
    scaling = data.get("scaling")
    if isinstance(scaling, dict):
        scaling = dict(scaling)
        _both(scaling, "scaling.", "target_request", "target_requests")
        data["scaling"] = scaling
    if isinstance(data.get("path"), str) and data.get("path").startswith("huggingface://"):
        data["path"] = "hf://" + data["path"][len("huggingface://"):]
    return data


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        return f"spec field '{loc}' is unknown"
    return f"spec field '{loc}': {err.get('msg')} (got {err.get('input')!r})"


@dataclass
class Specs:
    kind: str
    spec: Spec
    given: frozenset  # the fields the specs set (non-empty)
    run_id: Optional[str] = None

    @property
    def info(self) -> Kind:
        return KINDS[self.kind]

    @property
    def model_name(self) -> str:
        return self.spec.model_name or "model"


def read_specs(docs: List[Dict[str, Any]], kind: Optional[str] = None) -> Specs:
    """The merged, typed spec of a function (+ task + run) in DHCore's order: later documents win."""
    kinds, merged, run_id = [], {}, None
    for doc in docs:
        k, spec, ident = _entity(doc)
        if k:
            kinds.append(k)
            if k.endswith(":run"):
                run_id = ident
        for key, value in spec.items():
            if not _empty(value) or key not in merged:
                merged[key] = value
    name = _kind_of(kinds, kind)
    info = KINDS[name]
    data = _normalise(merged)
    unknown = sorted(k for k in data if k not in info.fields and k not in Spec.model_fields)
    if unknown:
        raise SpecError(f"spec field '{unknown[0]}' is unknown for kind {name} "
                        f"(its fields: {', '.join(sorted(info.fields))})")
    wrong = sorted(k for k in data if k not in info.fields and not _empty(data[k]))
    if wrong:
        raise SpecError(f"spec field '{wrong[0]}' does not apply to kind {name} "
                        f"(its fields: {', '.join(sorted(info.fields))})")
    data = {k: v for k, v in data.items() if k in Spec.model_fields and not _empty(v)}
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError("; ".join(_describe(e) for e in exc.errors()[:3])) from None
    if info.engine and spec.engine and spec.engine != info.engine and name != "kubeai-text":
        raise SpecError(f"spec field 'engine': kind {name} runs {info.engine.value}, not {spec.engine.value}")
    if name == "kubeai-text" and spec.engine == Engine.FASTER_WHISPER:
        raise SpecError("spec field 'engine': FasterWhisper is kind kubeai-speech")
    if info.source == "url" and not (spec.url or spec.path):
        raise SpecError(f"spec field 'url' is required for kind {name} (the model: hf://, s3://, pvc://, ...)")
    if info.source == "path" and not spec.path:
        raise SpecError(f"spec field 'path' is required for kind {name}")
    return Specs(name, spec, frozenset(data), run_id)


# -- model-settings.json --------------------------------------------------------------------------------------
def hf_uri(uri: str) -> str:
    """DHCore's `hf://org/name:revision` as our `hf://org/name@revision`."""
    if uri.startswith("hf://"):
        body = uri[len("hf://"):]
        if ":" in body and "@" not in body:
            body = body.replace(":", "@", 1)
        return "hf://" + body.rstrip("/")
    return uri


def _engine(s: Specs) -> Engine:
    eng = s.spec.engine or s.info.engine
    if eng is None:
        raise SpecError(f"spec field 'engine' is required for kind {s.kind} "
                        f"({', '.join(e.value for e in Engine)})")
    return eng


def _features(s: Specs) -> List[str]:
    feats = s.spec.features or list(s.info.features)
    return [f.value for f in feats]


def _local_files(files: List[KubeAIFile], args: List[str]) -> Tuple[List[dict], List[str]]:
    """KubeAI mounts files at absolute paths; locally they go under the model's working folder, and args
    that name them are rewritten to the relative path."""
    out, mapping = [], {}
    for f in files:
        rel = f.path.lstrip("/")
        out.append({"path": rel, "content": f.content})
        mapping[f.path] = rel
    return out, [mapping.get(a, a) for a in args]


def model_settings(s: Specs, base: Optional[Path] = None) -> Dict[str, Any]:
    """model-settings.json for the spec; a local path is made absolute against ``base`` (default: cwd)."""
    sp, info = s.spec, s.info
    base = Path(base or Path.cwd())

    def local(uri: str) -> str:
        return str((base / uri).resolve()) if "://" not in uri else uri

    settings: Dict[str, Any] = {"name": s.model_name}
    extra: Dict[str, Any] = {}
    if info.runtime in ("sklearn", "mlflow", "huggingface"):
        settings["implementation"] = deploy.RUNTIMES[info.runtime].implementation
        settings["parameters"] = {"uri": local(hf_uri(sp.path))}
        if info.runtime == "huggingface":
            hf = {"task": sp.huggingface_task, "backend": sp.backend, "dtype": sp.dtype,
                  "tokenizer_revision": sp.tokenizer_revision, "max_length": sp.max_length,
                  "disable_lower_case": sp.disable_lower_case, "disable_special_tokens": sp.disable_special_tokens,
                  "trust_remote_code": sp.trust_remote_code, "tensor_input_names": sp.tensor_input_names,
                  "return_token_type_ids": sp.return_token_type_ids,
                  "return_probabilities": sp.return_probabilities,
                  "disable_log_requests": sp.disable_log_requests, "max_log_len": sp.max_log_len}
            extra = hf_args(sp.args)  # huggingfaceserver flags in `args`; the spec's own fields win, as in DHCore
            extra.update({k: (v.value if isinstance(v, _CaseInsensitiveEnum) else v) for k, v in hf.items()
                          if not _empty(v)})
    else:
        engine = _engine(s)
        settings["implementation"] = KUBEAI_IMPL
        settings["parallel_workers"] = 0  # KubeAI models load in MLServer's process (DEVELOPERS.md)
        files, args = _local_files(sp.files, sp.args)
        extra = {"engine": engine.value, "features": _features(s), "url": local(hf_uri(sp.url or sp.path))}
        if sp.adapters:
            extra["adapters"] = [{"name": a.name, "url": local(hf_uri(a.url))} for a in sp.adapters]
        if args:
            extra["args"] = args
        if files:
            extra["files"] = files
        if sp.scaling is not None:
            extra["scaling"] = sp.scaling.model_dump(exclude_none=True, exclude_defaults=True, mode="json")
            if sp.scaling.load_balancing is not None:  # keep the strategy even when it is the default
                extra["scaling"]["load_balancing"] = sp.scaling.load_balancing.model_dump(mode="json")
    if extra:
        settings.setdefault("parameters", {})["extra"] = extra
    return settings


def hf_args(args: List[str]) -> Dict[str, Any]:
    """HuggingFaceRuntime options from huggingfaceserver flags (a huggingfaceserve run's `args`)."""
    if not args:
        return {}
    try:
        flags, ignored = hfserver.parse(list(args))
        flags.pop("model_id", None)
        settings, _ = hfserver.model_settings({**flags, "model_dir": "."}, environ={})
    except hfserver.ArgError as exc:
        raise SpecError(f"spec field 'args': {exc}") from None
    if ignored:
        raise SpecError(f"spec field 'args': {' '.join(ignored)} is not a huggingfaceserver flag this runtime "
                        "reads (task, backend, dtype, max_length, tokenizer_revision, ...)")
    if flags.get("trust_remote_code"):
        raise SpecError("spec field 'args': set trust_remote_code as the spec's own field, not as a flag")
    return settings["parameters"].get("extra", {})


def write_settings(s: Specs, models_dir: Path, base: Optional[Path] = None) -> Path:
    """<models_dir>/<model_name>/model-settings.json; returns the folder."""
    folder = Path(models_dir) / s.model_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-settings.json").write_text(json.dumps(model_settings(s, base), indent=2) + "\n")
    return folder


def local_notes(s: Specs) -> List[str]:
    """What a local serve leaves aside, one line each."""
    notes = []
    unused = [f for f in POD_FIELDS + ("profile", "cache_profile", "processors") if f in s.given]
    if unused:
        notes.append(f"not used locally (Kubernetes only): {', '.join(unused)}")
    if s.spec.secrets:
        notes.append(f"secrets {', '.join(s.spec.secrets)}: a local serve reads no Kubernetes Secret; "
                     "set their variables in the environment")
    return notes


# -- Kubernetes -----------------------------------------------------------------------------------------------
def load_profiles(path: Optional[Path]) -> Dict[str, Dict[str, Any]]:
    """The profiles file (docs/digitalhub.md#profiles): `profiles: {name: {resources, node_selector,
    tolerations, affinity, runtime_class, priority_class, kubeai_resource_profile}}`."""
    if path is None:
        env = os.environ.get("MODELSERVE_DH_PROFILES")
        if not env:
            return {}
        path = Path(env)
    doc = load_document(Path(path))
    profiles = doc.get("profiles")
    if not isinstance(profiles, dict):
        raise SpecError(f"{path}: a profiles file holds `profiles: {{<name>: {{...}}}}`")
    allowed = {"resources", "node_selector", "tolerations", "affinity", "runtime_class", "priority_class",
               "kubeai_resource_profile"}
    for name, prof in profiles.items():
        if not isinstance(prof, dict):
            raise SpecError(f"{path}: profile '{name}' must be a mapping")
        extra = sorted(set(prof) - allowed)
        if extra:
            raise SpecError(f"{path}: profile '{name}' field '{extra[0]}' is unknown "
                            f"(known: {', '.join(sorted(allowed))})")
    return profiles


def _profile(s: Specs, profiles: Dict[str, Dict[str, Any]], target: str) -> Dict[str, Any]:
    name = s.spec.profile
    if not name:
        return {}
    if name in profiles:
        return profiles[name]
    if target == "kubeai":  # a KubeAI resource profile's own name
        return {"kubeai_resource_profile": name}
    where = f" (known: {', '.join(profiles)})" if profiles else "; pass --profiles FILE or $MODELSERVE_DH_PROFILES"
    raise SpecError(f"spec field 'profile': '{name}' is not in the profiles file{where}")


def _scaled(quantity: str, times: int) -> str:
    m = re.fullmatch(r"(\d+)(\.\d+)?([a-zA-Z]*)", quantity)
    if times == 1 or not m or m.group(2):
        return quantity
    return f"{int(m.group(1)) * times}{m.group(3)}"


def pod_resources(s: Specs, profile: Dict[str, Any]) -> Dict[str, Dict[str, str]]:
    """requests from the task's resources over the profile's (times `processors`, as KubeAI scales its resource
    profiles); limits: nvidia.com/gpu and memory equal their request, cpu stays unlimited."""
    times = s.spec.processors or 1
    try:
        base = Resources.model_validate(profile.get("resources") or {})
    except ValidationError as exc:
        raise SpecError(f"profile '{s.spec.profile}': " + _describe(exc.errors()[0])) from None
    own = s.spec.resources or Resources()
    requests: Dict[str, str] = {}
    for field, key in (("cpu", "cpu"), ("mem", "memory"), ("gpu", "nvidia.com/gpu")):
        value = getattr(own, field) or (_scaled(getattr(base, field), times) if getattr(base, field) else None)
        if value:
            requests[key] = value
    if (own.disk or base.disk):
        requests["ephemeral-storage"] = own.disk or base.disk
    if not requests:
        return {}
    limits = {k: v for k, v in requests.items() if k in ("memory", "nvidia.com/gpu")}
    return {"requests": requests, **({"limits": limits} if limits else {})}


def pod_volumes(s: Specs, name: str) -> Tuple[List[dict], List[dict]]:
    """(volumes, volumeMounts) for the task's volumes, as DHCore builds them."""
    volumes, mounts = [], []
    for v in s.spec.volumes:
        spec = v.spec
        if v.volume_type == VolumeType.SHARED_VOLUME:
            src = {"persistentVolumeClaim": {"claimName": spec.get("claimName", v.name)}}
        elif v.volume_type == VolumeType.PERSISTENT_VOLUME_CLAIM:
            src = {"persistentVolumeClaim": {"claimName": spec.get("claimName", f"{name}-{v.name}")}}
        elif v.volume_type == VolumeType.EMPTY_DIR:
            src = {"emptyDir": {k: spec[k] for k in ("medium", "sizeLimit") if k in spec}}
        else:  # ephemeral: a PVC per pod from a template
            claim: Dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                                     "resources": {"requests": {"storage": spec.get("size", "1Gi")}}}
            if "storageClass" in spec:
                claim["storageClassName"] = spec["storageClass"]
            src = {"ephemeral": {"volumeClaimTemplate": {"spec": claim}}}
        volumes.append({"name": v.name, **src})
        mount = {"name": v.name, "mountPath": v.mount_path}
        if "subPath" in spec:
            mount["subPath"] = spec["subPath"]
        mounts.append(mount)
    return volumes, mounts


def _scaling_dict(s: Specs) -> Dict[str, Any]:
    sc = s.spec.scaling
    out = sc.model_dump(exclude={"load_balancing"}, exclude_none=True) if sc else {}
    if out.get("autoscaling_disabled") is False:
        out.pop("autoscaling_disabled")
    if s.spec.replicas is not None and "replicas" not in out and not {"min_replicas", "max_replicas"} & set(out):
        out["replicas"] = s.spec.replicas
    return out


def render_kserve(s: Specs, *, profiles: Optional[Dict[str, Dict[str, Any]]] = None, mode: str = "Serverless",
                  name: Optional[str] = None, namespace: Optional[str] = None, gateway: Optional[str] = None
                  ) -> List[Dict[str, Any]]:
    """InferenceService (+ a Service of the task's service_type, + InferencePool and HTTPRoute when the spec
    asks for load balancing) on our ServingRuntime, with the task's Kubernetes parameters."""
    if mode not in ("Serverless", "RawDeployment"):
        raise SpecError(f"--mode {mode}: a digitalhub spec renders to Serverless or RawDeployment")
    sp = s.spec
    if sp.cache_profile:
        raise SpecError("spec field 'cache_profile': a KubeAI cache profile; KServe has none (its storage "
                        "initializer fetches the model into each pod): drop it for --target kserve")
    profile = _profile(s, profiles or {}, "kserve")
    name = name or s.model_name
    settings = model_settings(s)
    uri = (sp.path or sp.url) if s.info.source == "path" else (sp.url or sp.path)
    uri = hf_uri(uri)
    settings.get("parameters", {}).pop("uri", None)
    extra = settings.get("parameters", {}).get("extra", {})
    if "url" in extra:
        extra["url"] = uri
    if "adapters" in extra:
        extra["adapters"] = [{"name": a.name, "url": hf_uri(a.url)} for a in sp.adapters]
    settings["name"] = name
    try:
        isvc = deploy.render(settings, storage_uri=None if "url" in extra else uri, runtime=_runtime_key(s),
                             mode=mode, namespace=namespace, scaling=_scaling_dict(s))
    except RenderError as exc:
        raise SpecError(str(exc)) from None
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    env = model.setdefault("env", [])
    env += [{"name": e.name, "value": e.value} for e in sp.envs]
    if s.model_name != name:  # invoke URLs name the model, not the InferenceService
        env.append({"name": "MLSERVER_MODEL_NAME", "value": s.model_name})
    leaf = uri.rstrip("/").rsplit("/", 1)[-1]
    if s.kind == "sklearnserve" and not uri.endswith("/") and "." in leaf:
        # KServe's storage initializer puts a single file under /mnt/models by its own name (my-model.pkl)
        env.append({"name": "MLSERVER_MODEL_URI", "value": f"/mnt/models/{leaf}"})
    if not env:
        model.pop("env")
    if sp.secrets:
        model["envFrom"] = [{"secretRef": {"name": n}} for n in sp.secrets]
    resources = pod_resources(s, profile)
    if resources:
        model["resources"] = resources
    volumes, mounts = pod_volumes(s, name)
    if volumes:
        predictor["volumes"] = volumes
        model["volumeMounts"] = mounts
    selector = {**(profile.get("node_selector") or {}), **sp.node_selector}
    if selector:
        predictor["nodeSelector"] = {str(k): str(v) for k, v in selector.items()}
    tolerations = list(profile.get("tolerations") or []) + list(sp.tolerations)
    if tolerations:
        predictor["tolerations"] = tolerations
    affinity = sp.affinity or profile.get("affinity")
    if affinity:
        predictor["affinity"] = affinity
    for field, key in (("runtime_class", "runtimeClassName"), ("priority_class", "priorityClassName")):
        value = getattr(sp, field) or profile.get(field)
        if value:
            predictor[key] = value
    objects = [isvc]
    service_type = sp.service_type or ServiceType.NODE_PORT
    objects.append(extra_service(name, service_type.value, namespace))
    lb = sp.scaling.load_balancing if sp.scaling else None
    if lb is not None:
        objects += deploy.load_balancing_objects(name, lb.model_dump(mode="json"), namespace=namespace,
                                                 gateway=gateway)
    return objects


def _runtime_key(s: Specs) -> str:
    if s.info.runtime in ("sklearn", "mlflow", "huggingface"):
        return s.info.runtime
    return ENGINE_RUNTIME[_engine(s)]


def extra_service(name: str, service_type: str, namespace: Optional[str]) -> Dict[str, Any]:
    """The Service digitalhub adds in front of a served model (`service_type`), on the predictor pods."""
    meta: Dict[str, Any] = {"name": f"{name}-{service_type.lower()}",
                            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "modelserve"}}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"type": service_type, "selector": {"serving.kserve.io/inferenceservice": name},
                     "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": HTTP_PORT, "protocol": "TCP"},
                               {"name": "grpc", "port": GRPC_PORT, "targetPort": GRPC_PORT, "protocol": "TCP"}]}}


def kubeai_name(s: Specs, name: Optional[str]) -> str:
    """DHCore's name (`<model_name>-<run id>`, cut to 39 characters) unless --name says otherwise."""
    if name:
        out = name
    else:
        out = re.sub(r"[^a-z0-9-]+", "", (s.model_name + (f"-{s.run_id}" if s.run_id else "")).lower())[:39]
        out = out.rstrip("-")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", out) or len(out) > 40:
        raise SpecError(f"KubeAI Model name '{out}': lowercase letters, digits and '-', at most 40 characters")
    return out


KUBEAI_URL_SCHEMES = ("hf://", "pvc://", "ollama://", "s3://", "gs://", "oss://")
KUBEAI_ADAPTER_SCHEMES = ("hf://", "s3://", "gs://", "oss://")


def render_kubeai(s: Specs, *, profiles: Optional[Dict[str, Dict[str, Any]]] = None, name: Optional[str] = None,
                  namespace: Optional[str] = None) -> Dict[str, Any]:
    """The `kubeai.org/v1 Model` exactly as KubeAI reads it (camelCase), refusing what a Model cannot carry."""
    sp = s.spec
    if s.info.source != "url":
        raise SpecError(f"kind {s.kind} is not a KubeAI model: use --target kserve")
    cannot = [f for f in POD_FIELDS if f in s.given]
    if cannot == ["service_type"]:
        raise SpecError("spec field 'service_type': a KubeAI Model cannot carry it (KubeAI serves every model "
                        "through its own OpenAI proxy Service)")
    if cannot:
        raise SpecError(f"spec field '{cannot[0]}': a KubeAI Model cannot carry it (pods are shaped by KubeAI's "
                        "resource profiles: set it there, and pick the profile with 'profile' + 'processors')")
    engine = _engine(s)
    url = hf_uri(sp.url or sp.path)
    if url.startswith("hf://") and "@" in url:
        raise SpecError(f"spec field 'url': KubeAI takes no revision in an hf:// url ({url})")
    if not url.startswith(KUBEAI_URL_SCHEMES):
        raise SpecError(f"spec field 'url': KubeAI reads {', '.join(KUBEAI_URL_SCHEMES)} urls, not {url!r}"
                        + (" (resolve the store:// model to its path first)" if url.startswith("store://") else ""))
    for a in sp.adapters:
        if not a.url.startswith(KUBEAI_ADAPTER_SCHEMES):
            raise SpecError(f"spec field 'adapters.{a.name}.url': KubeAI reads "
                            f"{', '.join(KUBEAI_ADAPTER_SCHEMES)} adapter urls, not {a.url!r}")
    if sp.adapters and engine != Engine.VLLM:
        raise SpecError("spec field 'adapters': KubeAI supports adapters with engine VLLM only")
    if sp.cache_profile and not url.startswith(("hf://", "s3://", "gs://", "oss://")):
        raise SpecError("spec field 'cache_profile': KubeAI caches hf://, s3://, gs:// and oss:// urls only")
    if url.startswith(("gs://", "oss://")) and not sp.cache_profile:
        raise SpecError(f"spec field 'url': KubeAI needs a cache_profile for {url.split(':')[0]}:// urls")
    paths = [f.path for f in sp.files]
    if len(paths) != len(set(paths)):
        raise SpecError("spec field 'files': KubeAI needs every file path unique")
    profile = _profile(s, profiles or {}, "kubeai")
    resource_profile = profile.get("kubeai_resource_profile") or sp.profile or "cpu"
    spec: Dict[str, Any] = {"url": url, "engine": engine.value, "features": _features(s)}
    if sp.image:
        spec["image"] = sp.image
    if sp.adapters:
        spec["adapters"] = [{"name": a.name, "url": a.url} for a in sp.adapters]
    if sp.args:
        spec["args"] = list(sp.args)
    env = {e.name: e.value for e in sp.envs}
    if env:
        spec["env"] = env
    if sp.secrets:
        spec["envFrom"] = [{"secretRef": {"name": n}} for n in sp.secrets]
    if sp.files:
        spec["files"] = [{"path": f.path, "content": f.content} for f in sp.files]
    spec["resourceProfile"] = f"{resource_profile}:{sp.processors or 1}"
    if sp.cache_profile:
        spec["cacheProfile"] = sp.cache_profile
    sc = sp.scaling or Scaling()
    replicas = sc.replicas if sc.replicas is not None else sp.replicas
    if replicas is not None:
        spec["replicas"] = replicas
    if sc.min_replicas is not None:
        spec["minReplicas"] = sc.min_replicas
    if sc.max_replicas is not None:
        spec["maxReplicas"] = sc.max_replicas
    if sc.autoscaling_disabled:
        spec["autoscalingDisabled"] = True
    spec["targetRequests"] = sc.target_request if sc.target_request is not None else 100
    spec["scaleDownDelaySeconds"] = sc.scale_down_delay_seconds if sc.scale_down_delay_seconds is not None else 30
    if sc.load_balancing is not None:
        lb = sc.load_balancing
        ph = lb.prefix_hash
        spec["loadBalancing"] = {"strategy": lb.strategy.value,
                                 "prefixHash": {"meanLoadFactor": ph.mean_load_factor,
                                                "replication": ph.replication,
                                                "prefixCharLength": ph.prefix_char_length}}
    meta: Dict[str, Any] = {"name": kubeai_name(s, name)}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "kubeai.org/v1", "kind": "Model", "metadata": meta, "spec": spec}


# -- the command ----------------------------------------------------------------------------------------------
def dump_all(objects: List[Dict[str, Any]]) -> str:
    """YAML documents; multi-line strings (a file's content, the picker's config) as literal blocks. Without
    PyYAML: one JSON `List` (kubectl reads it)."""
    try:
        import yaml
    except ImportError:
        return json.dumps(objects[0] if len(objects) == 1 else {"apiVersion": "v1", "kind": "List",
                                                                 "items": objects}, indent=2) + "\n"

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return "---\n".join(yaml.dump(o, Dumper=Dumper, sort_keys=False) for o in objects)


def _specs(args) -> Specs:
    docs = [load_document(p) for p in args.specs]
    return read_specs(docs, args.kind)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelserve.digitalhub", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("specs", nargs="+", type=Path, help="function, task and run (entities or bare specs)")
    common.add_argument("--kind", help="the function kind, for bare specs")
    for cmd, text in (("serve", "write the model folder and run mlserver start"),
                      ("settings", "write the model folder only")):
        p = sub.add_parser(cmd, parents=[common], help=text)
        p.add_argument("--models-dir", type=Path, default=Path("models"), help="default ./models")
    r = sub.add_parser("render", parents=[common], help="print Kubernetes objects for the spec")
    r.add_argument("--target", choices=("kserve", "kubeai"), required=True)
    r.add_argument("--profiles", type=Path, help="profiles file (default $MODELSERVE_DH_PROFILES)")
    r.add_argument("--mode", choices=("Serverless", "RawDeployment"), default="Serverless")
    r.add_argument("--name", help="the object name (default: model_name; KubeAI: DHCore's <model_name>-<run id>)")
    r.add_argument("--namespace")
    r.add_argument("--gateway", help="the Gateway an HTTPRoute attaches to (load balancing on KServe)")
    r.add_argument("--epp-values", type=Path, help="write llm-d-router Helm values for the endpoint picker here")
    r.add_argument("-o", "--output", type=Path)
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = parser.parse_args(argv)
    try:
        s = _specs(args)
        if args.command in ("serve", "settings"):
            folder = write_settings(s, args.models_dir)
            for note in local_notes(s):
                print(f"note: {note}", file=sys.stderr)
            print(f"wrote {folder / 'model-settings.json'}", file=sys.stderr)
            if args.command == "settings":
                return 0
            mlserver = hfserver.mlserver_command()
            env = {**os.environ, **{e.name: e.value for e in s.spec.envs}}
            sys.stdout.flush()
            os.execve(mlserver, [mlserver, "start", str(args.models_dir), *rest], env)
        profiles = load_profiles(args.profiles)
        if args.target == "kubeai":
            objects = [render_kubeai(s, profiles=profiles, name=args.name, namespace=args.namespace)]
        else:
            objects = render_kserve(s, profiles=profiles, mode=args.mode, name=args.name,
                                    namespace=args.namespace, gateway=args.gateway)
        if args.epp_values:
            lb = s.spec.scaling.load_balancing if s.spec.scaling else None
            if lb is None:
                raise SpecError("--epp-values: the spec sets no scaling.load_balancing")
            if args.target != "kserve":
                raise SpecError("--epp-values: KubeAI balances with its own proxy; only --target kserve needs it")
            values = deploy.epp_values(args.name or s.model_name, lb.model_dump(mode="json"))
            args.epp_values.write_text(dump_all([values]))
    except (SpecError, RenderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return deploy.write_out(dump_all(objects), args.output)


if __name__ == "__main__":
    sys.exit(main())
