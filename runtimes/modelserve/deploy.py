"""Deployment helpers: the runtime table behind docker/ and servingruntimes/, and a render command.

    python -m modelserve.deploy render <model-settings.json> [--storage-uri URI] [--runtime-name NAME]
        [--mode Serverless|RawDeployment|ModelMesh] [--replicas N] [--min-replicas N] [--max-replicas N]
        [--autoscaling-disabled] [--target-request N] [--scale-down-delay-seconds N]
        [--processors PROFILE:COUNT] [-o FILE]

prints a KServe ``InferenceService`` for the model (and, when ``scaling.load_balancing`` is set, the
``InferencePool`` and ``HTTPRoute`` that put llm-d's endpoint picker in front of it: :func:`epp_config`).
KubeAI models pick their image by ``engine`` (one ServingRuntime per engine), their ``url`` becomes the
``storageUri`` and ``processors`` the GPU limits.
Import-light on purpose: no runtime, MLServer or numpy import, and PyYAML only when present (without it
the output is JSON, which is YAML too).

Adding a runtime: one ``Image`` entry below, ``docker/<key>/{Dockerfile,Dockerfile.dockerignore,
requirements.txt}``, ``servingruntimes/<key>.yaml``, ``servingruntimes/<key>-modelmesh.yaml`` and
examples in ``servingruntimes/examples/<key>-*.yaml``; tests/test_deploy.py checks that they all agree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class Image:
    """One image: its Dockerfile, ServingRuntime(s) and example must agree with this entry (tests/test_deploy.py)."""

    key: str  # docker/<key>/, servingruntimes/<key>.yaml, the pip extra
    implementation: str  # MLSERVER_MODEL_IMPLEMENTATION
    model_format: Tuple[str, str]  # (name, version) an InferenceService asks for
    engine: Optional[str] = None  # KubeAI images: $MODELSERVE_KUBEAI_ENGINE (one image per engine)
    engine_env: Optional[Tuple[str, str]] = None  # (variable, path) of an engine in its own environment
    gpu: bool = False  # a CUDA image whose ServingRuntime asks for nvidia.com/gpu
    openai: bool = False  # serves the OpenAI-compatible routes

    @property
    def serving_runtime(self) -> str:
        return f"modelserve-{self.key}"

    @property
    def modelmesh_runtime(self) -> str:
        return f"modelserve-{self.key}-modelmesh"


KUBEAI = "modelserve.kubeai.KubeAIRuntime"

# Model formats: (name, major version of the format's reader); "1" where the format has no version of its own.
RUNTIMES: Dict[str, Image] = {
    r.key: r
    for r in (
        Image("sklearn", "modelserve.sklearn.SKLearnRuntime", ("sklearn", "1")),
        Image("mlflow", "modelserve.mlflow.MLflowRuntime", ("mlflow", "3")),
        Image("huggingface", "modelserve.huggingface.HuggingFaceRuntime", ("huggingface", "1"), gpu=True,
                openai=True),
        Image("vllm", KUBEAI, ("vllm", "1"), engine="VLLM", engine_env=("MODELSERVE_VLLM_COMMAND",
                "/opt/vllm/bin/python"), gpu=True, openai=True),
        Image("whisper", KUBEAI, ("faster-whisper", "1"), engine="FasterWhisper", gpu=True, openai=True),
        Image("infinity", KUBEAI, ("infinity", "1"), engine="Infinity", engine_env=(
                "MODELSERVE_INFINITY_COMMAND", "/opt/infinity/bin/infinity_emb"), gpu=True, openai=True),
        Image("ollama", KUBEAI, ("ollama", "1"), engine="OLlama", gpu=True, openai=True),
    )
}

# KServe's storage initializer fetches these into /mnt/models (a KubeAI url of another scheme stays an option)
STORAGE_SCHEMES = ("s3", "gs", "pvc", "hf", "https", "http", "oci")
# KubeAI resource profiles (`<profile>:<count>`) by prefix -> the Kubernetes resource a count of them asks for
PROCESSOR_RESOURCES = (("nvidia-gpu", "nvidia.com/gpu"), ("amd-gpu", "amd.com/gpu"), ("google-tpu", "google.com/tpu"),
                       ("cpu", "cpu"))

MODES = ("Serverless", "RawDeployment", "ModelMesh")
SCALING_KEYS = ("replicas", "min_replicas", "max_replicas", "autoscaling_disabled", "target_request",
                "scale_down_delay_seconds")
# model-settings.json fields that MLServer also reads from MLSERVER_MODEL_<FIELD>
MODEL_ENV_FIELDS = ("max_batch_size", "max_batch_time", "parallel_workers")
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class RenderError(ValueError):
    """A model-settings.json or option that cannot become an InferenceService; the message says why."""


def runtime_for(implementation: Optional[str], key: Optional[str], engine: Optional[str] = None) -> Image:
    """The image a model runs in: --runtime, else its implementation (KubeAI: and its engine)."""
    if key:
        if key not in RUNTIMES:
            raise RenderError(f"unknown runtime {key!r}; known: {', '.join(RUNTIMES)}")
        return RUNTIMES[key]
    found = [rt for rt in RUNTIMES.values() if rt.implementation == implementation]
    if len(found) > 1:  # KubeAI: one image per engine
        engines = ", ".join(rt.engine for rt in found if rt.engine)
        if not isinstance(engine, str) or not engine:
            raise RenderError(f"{implementation} has one image per engine: set parameters.extra.engine "
                              f"({engines}) or pass --runtime")
        found = [rt for rt in found if rt.engine and rt.engine.lower() == engine.lower()]
        if not found:
            raise RenderError(f"engine {engine!r} has no modelserve image; known: {engines}")
    if found:
        return found[0]
    known = ", ".join(dict.fromkeys(rt.implementation for rt in RUNTIMES.values()))
    raise RenderError(f"model-settings implementation {implementation!r} has no modelserve image; "
                      f"known: {known} (or pass --runtime)")


def go_template_literal(text: str) -> str:
    """``text`` as KServe's Go-template pass over the merged container (ReplacePlaceholders, for {{.Name}})
    gives it back: each ``{{``/``}}`` (a Jinja chat template in a KubeAI ``files`` entry) as a raw-string
    action; backquotes because that pass runs over the container's JSON, where '"' is escaped."""
    return re.sub(r"\{\{|\}\}", lambda m: "{{`" + m.group(0) + "`}}", text)


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def processor_resources(processors: Any) -> Dict[str, Dict[str, str]]:
    """KubeAI's `<profile>:<count>` (e.g. nvidia-gpu-l4:1) -> the container's resources: a count of GPUs
    as their limit; `cpu:<n>` as n CPUs requested and allowed. The GPU type is left to node selection."""
    m = re.fullmatch(r"([a-z0-9][a-z0-9-]*):([1-9][0-9]*)", processors) if isinstance(processors, str) else None
    if not m:
        raise RenderError(f"processors {processors!r} is not `<profile>:<count>` (e.g. nvidia-gpu-l4:1)")
    profile, count = m.group(1), m.group(2)
    for prefix, resource in PROCESSOR_RESOURCES:
        if profile == prefix or profile.startswith(prefix + "-"):
            if resource == "cpu":
                return {"requests": {"cpu": count}, "limits": {"cpu": count}}
            return {"limits": {resource: count}}
    known = ", ".join(f"{p}[-<type>]" for p, _ in PROCESSOR_RESOURCES)
    raise RenderError(f"processors profile {profile!r} is unknown; known: {known}")


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RenderError(f"scaling option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def scaling_spec(scaling: Dict[str, Any], mode: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """KServe predictor fields and InferenceService annotations for the scaling options (load_balancing is
    not the InferenceService's: :func:`load_balancing_objects`)."""
    scaling = {k: v for k, v in scaling.items() if k != "load_balancing"}
    unknown = sorted(set(scaling) - set(SCALING_KEYS) - {"load_balancing"})
    if unknown:
        raise RenderError(f"unknown scaling option(s) {', '.join(unknown)}; allowed: {', '.join(SCALING_KEYS)}")
    scaling = {k: v for k, v in scaling.items() if v is not None}
    if not scaling:
        return {}, {}
    if mode == "ModelMesh":
        raise RenderError("scaling options do not apply to ModelMesh: it scales the ServingRuntime's pods "
                          "(spec.replicas), not one InferenceService")
    fields: Dict[str, Any] = {}
    annotations: Dict[str, str] = {}
    lo = scaling.get("min_replicas")
    hi = scaling.get("max_replicas")
    if "replicas" in scaling:
        n = _int("replicas", scaling["replicas"], 1)
        if (lo is not None and lo != n) or (hi is not None and hi != n):
            raise RenderError("replicas fixes min_replicas and max_replicas: give one or the other")
        lo = hi = n
    if lo is not None:
        fields["minReplicas"] = _int("min_replicas", lo, 0)
    if hi is not None:
        fields["maxReplicas"] = _int("max_replicas", hi, 1)
    if lo is not None and hi is not None and lo > hi:
        raise RenderError(f"min_replicas ({lo}) is above max_replicas ({hi})")
    disabled = scaling.get("autoscaling_disabled", False)
    if not isinstance(disabled, bool):
        raise RenderError(f"scaling option autoscaling_disabled must be true or false, got {disabled!r}")
    if disabled:
        if "target_request" in scaling:
            raise RenderError("target_request needs autoscaling; autoscaling_disabled turns it off")
        n = lo if lo is not None else (hi if hi is not None else 1)
        if hi is not None and n != hi:
            raise RenderError("autoscaling_disabled needs one replica count: min_replicas == max_replicas")
        n = max(n, 1)
        fields["minReplicas"] = fields["maxReplicas"] = n
        if mode == "RawDeployment":
            annotations["serving.kserve.io/autoscalerClass"] = "none"  # no HPA: a fixed Deployment
    if "target_request" in scaling:
        if mode != "Serverless":
            raise RenderError("target_request (concurrent requests per replica) needs Serverless mode; "
                              "RawDeployment's HPA scales on cpu or memory")
        fields["scaleMetric"] = "concurrency"
        fields["scaleTarget"] = _int("target_request", scaling["target_request"], 1)
    if "scale_down_delay_seconds" in scaling:
        if mode != "Serverless":
            raise RenderError("scale_down_delay_seconds is Knative's scale-down-delay: Serverless mode only")
        secs = _int("scale_down_delay_seconds", scaling["scale_down_delay_seconds"], 0)
        annotations["autoscaling.knative.dev/scale-down-delay"] = f"{secs}s"
    return fields, annotations


def render(settings: Dict[str, Any], *, storage_uri: Optional[str] = None, runtime_name: Optional[str] = None,
           runtime: Optional[str] = None, mode: str = "Serverless", namespace: Optional[str] = None,
           service_account: Optional[str] = None, scaling: Optional[Dict[str, Any]] = None,
           processors: Optional[str] = None) -> Dict[str, Any]:
    """An InferenceService (as a dict) serving the model that ``settings`` (model-settings.json) describes.

    KubeAI models: the engine picks the ServingRuntime (whose env sets $MODELSERVE_KUBEAI_ENGINE; the
    InferenceService repeats it, so a custom --runtime-name gets it too), a ``url`` that KServe's storage
    initializer fetches becomes the storageUri (the model is then /mnt/models), an ``ollama://`` url stays
    an option (Ollama pulls it), and ``processors`` becomes the container's GPU limit."""
    if mode not in MODES:
        raise RenderError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    name = settings.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 63:
        raise RenderError(f"model name {name!r} cannot name an InferenceService: lowercase letters, digits "
                          "and '-', starting with a letter, at most 63 characters")
    params = dict(settings.get("parameters") or {})
    extra = dict(params.get("extra") or {})
    rt = runtime_for(settings.get("implementation"), runtime, extra.get("engine"))
    merged = dict(extra.pop("scaling", None) or {})
    merged.update({k: v for k, v in (scaling or {}).items() if v is not None})
    fields, annotations = scaling_spec(merged, mode)
    processors = processors or extra.pop("processors", None)
    resources = processor_resources(processors) if processors else None

    uri = storage_uri or params.get("uri")
    url = extra.get("url") if rt.engine else None
    pulled = isinstance(url, str) and _scheme(url) == "ollama"
    if pulled:  # Ollama pulls the model itself: a storage URI, if any, brings only files beside it
        if rt.engine != "OLlama":
            raise RenderError(f"url {url!r} is for engine OLlama, not {rt.engine}")
        uri = storage_uri
    elif url is not None:  # the storage URI replaces it: KServe fetches the model to /mnt/models
        uri = storage_uri or url
        del extra["url"]
    if (uri is not None or not pulled) and (not isinstance(uri, str) or _scheme(uri) not in STORAGE_SCHEMES):
        raise RenderError(f"model uri {uri!r} is not one KServe can fetch: pass --storage-uri "
                          f"({', '.join(s + '://' for s in STORAGE_SCHEMES)})")

    model: Dict[str, Any] = {
        "modelFormat": {"name": rt.model_format[0], "version": rt.model_format[1]},
        "runtime": runtime_name or (rt.modelmesh_runtime if mode == "ModelMesh" else rt.serving_runtime),
    }
    if uri:
        model["storageUri"] = uri
    env: List[Dict[str, str]] = []
    if rt.engine:
        env.append({"name": "MODELSERVE_KUBEAI_ENGINE", "value": rt.engine})
    if params.get("version") is not None:
        env.append({"name": "MLSERVER_MODEL_VERSION", "value": str(params["version"])})
    if extra:
        env.append({"name": "MLSERVER_MODEL_EXTRA", "value": go_template_literal(json.dumps(extra, sort_keys=True))})
    for field in MODEL_ENV_FIELDS:
        if settings.get(field) is not None:
            env.append({"name": f"MLSERVER_MODEL_{field.upper()}", "value": str(settings[field])})
    if mode == "ModelMesh":
        if resources:
            raise RenderError("processors do not apply to ModelMesh: set resources on its ServingRuntime, "
                              "whose pods all models share")
        names = ", ".join(e["name"] for e in env if e["name"] != "MODELSERVE_KUBEAI_ENGINE")
        if names:
            print(f"warning: ModelMesh shares one runtime between models; not passed: {names}", file=sys.stderr)
    else:
        model["protocolVersion"] = "v2"
        if env:
            model["env"] = env
    if resources:
        model["resources"] = resources

    predictor: Dict[str, Any] = {**fields, "model": model}
    if service_account:
        predictor["serviceAccountName"] = service_account
    metadata: Dict[str, Any] = {"name": name,
                                "annotations": {"serving.kserve.io/deploymentMode": mode, **annotations},
                                "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "modelserve"}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": metadata,
            "spec": {"predictor": predictor}}


# -- load balancing on KServe: an InferencePool and llm-d's endpoint picker (EPP) ------------------------------
EPP_PORT = 9002  # the endpoint picker's ext-proc port (llm-d-router's default)
LB_STRATEGIES = ("LeastLoad", "PrefixHash")
PREFIX_HASH_DEFAULTS = {"mean_load_factor": 125, "replication": 256, "prefix_char_length": 100}


def _load_balancing(lb: Any) -> Tuple[str, Dict[str, int]]:
    """(strategy, prefix_hash) of KubeAI's load_balancing, checked, with KubeAI's defaults."""
    if not isinstance(lb, dict):
        raise RenderError(f"scaling.load_balancing must be a mapping, got {lb!r}")
    unknown = sorted(set(lb) - {"strategy", "prefix_hash"})
    if unknown:
        raise RenderError(f"unknown load_balancing option {unknown[0]}; allowed: strategy, prefix_hash")
    strategy = next((s for s in LB_STRATEGIES if str(lb.get("strategy", "LeastLoad")).lower() == s.lower()), None)
    if strategy is None:
        raise RenderError(f"load_balancing.strategy {lb.get('strategy')!r}; allowed: {', '.join(LB_STRATEGIES)}")
    ph = dict(PREFIX_HASH_DEFAULTS)
    given = lb.get("prefix_hash") or {}
    unknown = sorted(set(given) - set(ph))
    if unknown:
        raise RenderError(f"unknown load_balancing.prefix_hash option {unknown[0]}; allowed: {', '.join(ph)}")
    ph.update({k: _int(f"prefix_hash.{k}", v, 100 if k == "mean_load_factor" else 1) for k, v in given.items()})
    return strategy, ph


def epp_config(lb: Dict[str, Any]) -> Dict[str, Any]:
    """llm-d-router's EndpointPickerConfig for KubeAI's strategy. Our pods run MLServer, not vLLM: the default
    vLLM metrics scraping is off (dataLayer.injectDefaults false), so load is what the picker itself counts
    (active-request-scorer: requests in flight per pod, KubeAI's LeastLoad). PrefixHash adds the approximate
    prefix-cache producer and its scorer over the OpenAI bodies (openai-parser); the passthrough parser, last,
    forwards every other path (V2 infer, audio uploads) unparsed instead of refusing it."""
    strategy, _ = _load_balancing(lb)
    plugins: List[Dict[str, Any]] = [{"type": "openai-parser"}, {"type": "passthrough-parser"},
                                     {"type": "active-request-scorer"}]
    profile: List[Dict[str, Any]] = [{"pluginRef": "active-request-scorer", "weight": 1}]
    if strategy == "PrefixHash":
        plugins += [{"type": "approx-prefix-cache-producer"}, {"type": "prefix-cache-scorer",
                     "parameters": {"prefixMatchInfoProducerName": "approx-prefix-cache-producer"}}]
        profile = [{"pluginRef": "prefix-cache-scorer", "weight": 2}] + profile
    plugins.append({"type": "max-score-picker"})
    profile.append({"pluginRef": "max-score-picker"})
    return {"apiVersion": "llm-d.ai/v1alpha1", "kind": "EndpointPickerConfig", "plugins": plugins,
            "schedulingProfiles": [{"name": "default", "plugins": profile}],
            "requestHandler": {"parsers": [{"pluginRef": "openai-parser"}, {"pluginRef": "passthrough-parser"}]},
            "dataLayer": {"injectDefaults": False}}


def load_balancing_objects(name: str, lb: Dict[str, Any], namespace: Optional[str] = None,
                           gateway: Optional[str] = None) -> List[Dict[str, Any]]:
    """The InferencePool over the InferenceService's predictor pods (its endpoint picker is `<name>-epp`,
    installed with :func:`epp_values`) and the HTTPRoute that sends a Gateway's traffic to it."""
    _load_balancing(lb)
    meta: Dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": name,
                                                     "app.kubernetes.io/part-of": "modelserve"}}
    if namespace:
        meta["namespace"] = namespace
    pool = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": meta,
            "spec": {"selector": {"matchLabels": {"serving.kserve.io/inferenceservice": name}},
                     "targetPorts": [{"number": 8080}], "appProtocol": "http",
                     "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": EPP_PORT},
                                           "failureMode": "FailOpen"}}}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": dict(meta),
             "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                      "name": gateway or "inference-gateway"}],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                 "backendRefs": [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                                                  "name": name}]}]}}
    return [pool, route]


def epp_values(name: str, lb: Dict[str, Any]) -> Dict[str, Any]:
    """Helm values for llm-d-router's chart (release `<name>`, so its picker is `<name>-epp`): our config,
    the pool rendered by :func:`load_balancing_objects` (inferencePool.create false)."""
    return {"router": {"modelServers": {"matchLabels": {"serving.kserve.io/inferenceservice": name},
                                        "targetPorts": [{"number": 8080}], "protocol": "http"},
                       "inferencePool": {"create": False},
                       "epp": {"pluginsConfigFile": "modelserve.yaml",
                               "pluginsCustomConfig": {"modelserve.yaml": dump(epp_config(lb))}}}}


def dump(obj: Dict[str, Any]) -> str:
    try:
        import yaml
    except ImportError:  # JSON is YAML: kubectl apply -f reads either
        return json.dumps(obj, indent=2) + "\n"
    return yaml.safe_dump(obj, sort_keys=False)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelserve.deploy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="print a KServe InferenceService for a model-settings.json")
    r.add_argument("settings", type=Path, help="a model-settings.json")
    r.add_argument("--storage-uri", help="where KServe fetches the model (default: parameters.uri if remote)")
    r.add_argument("--runtime-name", help="the ServingRuntime (default: modelserve-<runtime>[-modelmesh])")
    r.add_argument("--runtime", choices=sorted(RUNTIMES), help="default: from the implementation")
    r.add_argument("--mode", choices=MODES, default="Serverless", help="KServe deployment mode")
    r.add_argument("--namespace")
    r.add_argument("--service-account", help="service account with the storage credentials")
    r.add_argument("--replicas", type=int, help="a fixed replica count (min = max)")
    r.add_argument("--min-replicas", type=int)
    r.add_argument("--max-replicas", type=int)
    r.add_argument("--autoscaling-disabled", action="store_true", default=None)
    r.add_argument("--target-request", type=int, help="concurrent requests per replica (Serverless)")
    r.add_argument("--scale-down-delay-seconds", type=int, help="Knative scale-down delay (Serverless)")
    r.add_argument("--processors", help="KubeAI resource profile and count, e.g. nvidia-gpu-l4:1 (GPU limit)")
    r.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)

    try:
        settings = json.loads(args.settings.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.settings}: {exc}", file=sys.stderr)
        return 2
    scaling = {k: getattr(args, k) for k in SCALING_KEYS}
    try:
        isvc = render(settings, storage_uri=args.storage_uri, runtime_name=args.runtime_name,
                      runtime=args.runtime, mode=args.mode, namespace=args.namespace,
                      service_account=args.service_account, scaling=scaling, processors=args.processors)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = dump(isvc)
    lb = ((settings.get("parameters") or {}).get("extra") or {}).get("scaling", {}).get("load_balancing")
    if lb is not None:  # KubeAI's load_balancing: an InferencePool + its picker
        if args.mode == "ModelMesh":
            print("error: scaling.load_balancing does not apply to ModelMesh (its service routes to the model's "
                  "placement); use Serverless or RawDeployment", file=sys.stderr)
            return 2
        try:
            extra = load_balancing_objects(isvc["metadata"]["name"], lb, namespace=args.namespace)
        except RenderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        text += "".join("---\n" + dump(o) for o in extra)
    return write_out(text, args.output)


def write_out(text: str, output: Optional[Path]) -> int:
    """``text`` into ``output``, or to stdout; 0, the commands' exit status."""
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
