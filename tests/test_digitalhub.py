"""digitalhub specs -> model-settings.json, KServe objects and KubeAI Models (modelserve.digitalhub), the
load-balancing objects (modelserve.deploy), KServe huggingfaceserver's command line (modelserve.hfserver) and
the rendered examples in servingruntimes/examples/digitalhub/.

Every rendered object is validated: KServe's against tests/kserve-crds (via test_deploy.validate), KubeAI's
Model and the InferencePool against tests/digitalhub-crds (unknown fields refused), core objects with
kubernetes-validate, the endpoint picker's configuration against llm-d-router's EndpointPickerConfig fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from modelserve import deploy, digitalhub, hfserver
from modelserve.digitalhub import SpecError, read_specs, render_kserve, render_kubeai
from modelserve.kubeai import KubeAIOptions

from .support import crds
from .test_deploy import validate as validate_kserve

HERE = Path(__file__).resolve().parent
SPECS = HERE / "digitalhub"
PROFILES = digitalhub.load_profiles(SPECS / "profiles.yaml")
EXAMPLES = HERE.parent / "servingruntimes" / "examples" / "digitalhub"
KINDS = sorted(p.name for p in SPECS.iterdir() if p.is_dir())
KUBEAI_KINDS = ["kubeai-speech", "kubeai-text"]


def crd_validators():
    return crds.validators(HERE / "digitalhub-crds")


# llm-d-router v0.10 apix/config/v1alpha1 EndpointPickerConfig (the fields we write), unknown keys refused
_REF = {"type": "object", "required": ["pluginRef"], "additionalProperties": False,
        "properties": {"pluginRef": {"type": "string"}}}
EPP_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "plugins"],
    "properties": {
        "apiVersion": {"const": "llm-d.ai/v1alpha1"}, "kind": {"const": "EndpointPickerConfig"},
        "plugins": {"type": "array", "items": {"type": "object", "required": ["type"], "additionalProperties": False,
                                               "properties": {"name": {"type": "string"}, "type": {"type": "string"},
                                                              "parameters": {"type": "object"}}}},
        "schedulingProfiles": {"type": "array", "items": {
            "type": "object", "required": ["name", "plugins"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "plugins": {"type": "array", "items": {
                "type": "object", "required": ["pluginRef"], "additionalProperties": False,
                "properties": {"pluginRef": {"type": "string"}, "weight": {"type": "number"}}}}}}},
        "requestHandler": {"type": "object", "additionalProperties": False,
                           "properties": {"parsers": {"type": "array", "items": _REF}}},
        "dataLayer": {"type": "object", "additionalProperties": False,
                      "properties": {"injectDefaults": {"type": "boolean"}}}}}
# the plugin types llm-d-router v0.10 registers that the configuration uses
EPP_PLUGINS = {"openai-parser", "passthrough-parser", "active-request-scorer", "approx-prefix-cache-producer",
               "prefix-cache-scorer", "max-score-picker"}


def validate(obj: dict) -> None:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in crd_validators():
        errors = list(crd_validators()[key].iter_errors(obj))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])
        assert len(obj["metadata"]["name"]) <= (40 if key[1] == "Model" else 63)
    elif key == ("gateway.networking.k8s.io/v1", "HTTPRoute"):  # no Gateway API CRD vendored: its shape
        rule = obj["spec"]["rules"][0]
        assert obj["spec"]["parentRefs"][0]["kind"] == "Gateway"
        assert rule["backendRefs"][0]["kind"] == "InferencePool"
    else:
        validate_kserve(obj)


def validate_epp(config: dict) -> None:
    jsonschema.validate(config, EPP_SCHEMA)
    names = [p.get("name", p["type"]) for p in config["plugins"]]
    assert {p["type"] for p in config["plugins"]} <= EPP_PLUGINS
    refs = [r["pluginRef"] for prof in config["schedulingProfiles"] for r in prof["plugins"]]
    refs += [r["pluginRef"] for r in config["requestHandler"]["parsers"]]
    assert set(refs) <= set(names), (refs, names)
    assert config["requestHandler"]["parsers"][-1]["pluginRef"] == "passthrough-parser"  # the fallback, last


def docs_of(kind: str):
    return [json.loads((SPECS / kind / f"{part}.json").read_text()) for part in ("function", "task", "run")]


def specs(kind: str, *overrides: dict, **kw):
    return read_specs(docs_of(kind) + list(overrides), **kw)


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


# -- scaling.load_balancing in our KubeAI options (a model with it loads) ------------------------------------
def test_kubeai_options_take_load_balancing_with_kubeais_defaults():
    opts = KubeAIOptions.model_validate({"engine": "VLLM", "scaling": {"load_balancing": {"strategy": "prefixhash"}}})
    lb = opts.scaling.load_balancing
    assert lb.strategy.value == "PrefixHash"
    assert (lb.prefix_hash.mean_load_factor, lb.prefix_hash.replication, lb.prefix_hash.prefix_char_length) == (
        125, 256, 100)
    assert KubeAIOptions.model_validate({"engine": "VLLM", "scaling": {"load_balancing": {}}}
                                        ).scaling.load_balancing.strategy.value == "LeastLoad"


@pytest.mark.parametrize("lb,fragment", [
    ({"strategy": "RoundRobin"}, "strategy"),
    ({"prefix_hash": {"mean_load_factor": 50}}, "mean_load_factor"),
    ({"prefix_hash": {"replicas": 3}}, "replicas"),
    ({"stratgy": "LeastLoad"}, "stratgy"),
])
def test_kubeai_options_refuse_a_bad_load_balancing(lb, fragment):
    from mlserver.settings import ModelParameters, ModelSettings

    from modelserve.errors import ModelLoadError
    from modelserve.options import parse_options

    settings = ModelSettings(name="m", implementation="modelserve.kubeai.KubeAIRuntime",
                             parameters=ModelParameters(extra={"engine": "VLLM", "scaling": {"load_balancing": lb}}))
    with pytest.raises(ModelLoadError) as err:
        parse_options(KubeAIOptions, settings)
    assert fragment in str(err.value) and "load_balancing" in str(err.value)


# -- reading specs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_reads_and_makes_model_settings_its_runtime_accepts(kind, tmp_path):
    s = specs(kind)
    settings = digitalhub.model_settings(s, tmp_path)
    impl = settings["implementation"]
    assert impl == deploy.RUNTIMES[s.info.runtime].implementation
    if impl == deploy.KUBEAI:
        opts = KubeAIOptions.model_validate(settings["parameters"]["extra"])
        assert [f.value for f in opts.features] == list(settings["parameters"]["extra"]["features"])
        assert settings["parallel_workers"] == 0
    elif kind == "huggingfaceserve":
        from modelserve.huggingface import HuggingFaceOptions

        opts = HuggingFaceOptions.model_validate(settings["parameters"]["extra"])
        assert opts.task.value == "text_embedding" and opts.backend.value == "HUGGINGFACE"
        assert settings["parameters"]["uri"] == "hf://sentence-transformers/all-MiniLM-L6-v2"


def test_both_spellings_where_sdk_and_core_disagree():
    fn = docs_of("kubeai-text")[0]
    a = read_specs([fn, {"scaling": {"target_requests": 7}, "envs": {"X": "1"}}])
    b = read_specs([fn, {"scaling": {"target_request": 7}, "env": {"X": "1"}}])
    assert a.spec.scaling.target_request == b.spec.scaling.target_request == 7
    assert {(e.name, e.value) for e in a.spec.envs} == {(e.name, e.value) for e in b.spec.envs}
    assert ("X", "1") in {(e.name, e.value) for e in a.spec.envs}
    with pytest.raises(SpecError, match="'scaling.target_request' and 'scaling.target_requests' are one field"):
        specs("kubeai-text", {"scaling": {"target_request": 7, "target_requests": 8}})


def test_enums_in_any_case():
    s = specs("huggingfaceserve", {"huggingface_task": "Text_Embedding", "backend": "HuggingFace", "dtype": "float32"})
    assert (s.spec.huggingface_task.value, s.spec.backend.value, s.spec.dtype.value) == (
        "text_embedding", "HUGGINGFACE", "FLOAT32")
    s = specs("kubeai-text", {"engine": "vllm", "features": ["TEXTEMBEDDING"], "service_type": None})
    assert s.spec.engine.value == "VLLM" and s.spec.features[0].value == "TextEmbedding"
    assert specs("sklearnserve", {"service_type": "loadbalancer"}).spec.service_type.value == "LoadBalancer"


@pytest.mark.parametrize("override,fragment", [
    ({"huggingface_task": "text_embedding"}, "spec field 'huggingface_task' does not apply to kind sklearnserve"),
    ({"pathh": "x"}, "spec field 'pathh' is unknown for kind sklearnserve"),
    ({"replicas": "two"}, "spec field 'replicas'"),
    ({"resources": {"gpu": "lots"}}, "spec field 'resources.gpu'"),
    ({"volumes": [{"name": "v", "volume_type": "nfs", "mount_path": "/v"}]}, "spec field 'volumes.0.volume_type'"),
    ({"volumes": [{"name": "v", "volume_type": "empty_dir"}]}, "spec field 'volumes.0.mount_path'"),
    ({"service_type": "Ingress"}, "spec field 'service_type'"),
    ({"node_selector": [{"k": "x"}]}, "spec field 'node_selector'"),
    (None, "spec field 'path' is required"),
])
def test_a_wrong_field_is_one_line_naming_it(override, fragment):
    with pytest.raises(SpecError) as err:
        if override is None:
            read_specs([{"model_name": "m"}], kind="sklearnserve")
        specs("sklearnserve", override)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("docs,fragment", [
    ([{"kind": "tensorflowserve", "spec": {"path": "x"}}], "unknown kind 'tensorflowserve'; known: sklearnserve"),
    ([{"kind": "mlflowserve+build", "spec": {}}], "task action 'build'"),
    ([{"kind": "sklearnserve", "spec": {"path": "x"}}, {"kind": "mlflowserve+serve", "spec": {}}], "disagree"),
    ([{"path": "x"}], "give whole entities"),
])
def test_kinds_are_checked(docs, fragment):
    with pytest.raises(SpecError, match=fragment):
        read_specs(docs)


def test_bare_specs_take_the_kind_from_the_command_line():
    s = read_specs([{"path": "s3://b/m.joblib"}], kind="sklearnserve")
    assert s.kind == "sklearnserve" and s.model_name == "model"  # DHCore's default name


def test_the_command_line_refuses_in_one_line_without_a_traceback(tmp_path):
    bad = tmp_path / "function.yaml"
    bad.write_text("kind: sklearnserve\nspec:\n  path: s3://b/m.joblib\n  model_nme: x\n")
    for argv, fragment in ((["render", str(bad), "--target", "kserve"], "spec field 'model_nme' is unknown"),
                           (["settings", str(tmp_path / "missing.json")], "cannot read"),
                           (["render", str(SPECS / "sklearnserve" / "function.json"), "--target", "kubeai"],
                            "not a KubeAI model")):
        res = subprocess.run([sys.executable, "-m", "modelserve.digitalhub", *argv], capture_output=True, text=True)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
        assert fragment in lines[0]


def test_without_pyyaml_json_specs_still_render(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "yaml" else real(name, *a, **k))
    s = specs("sklearnserve")
    out = json.loads(digitalhub.dump_all(render_kserve(s, profiles=PROFILES)))
    assert out["kind"] == "List" and [o["kind"] for o in out["items"]] == ["InferenceService", "Service"]
    bad = tmp_path / "f.yaml"
    bad.write_text("kind: sklearnserve\n")
    with pytest.raises(SpecError, match="PyYAML, which reads YAML, is not installed"):
        digitalhub.load_document(bad)


# -- KServe ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_for_kserve_valid_against_the_crds(kind, mode):
    s = specs(kind)
    knative = {"target_request", "scale_down_delay_seconds"} & set(s.spec.scaling.model_fields_set if s.spec.scaling
                                                                    else ())
    if mode == "RawDeployment" and knative:  # Knative's autoscaler knobs: refused, not dropped
        with pytest.raises(SpecError, match="Serverless"):
            render_kserve(s, profiles=PROFILES, mode=mode)
        s = specs(kind, {"scaling": {"min_replicas": 1, "max_replicas": 2}})
    objects = render_kserve(s, profiles=PROFILES, mode=mode)
    for obj in objects:
        validate(obj)
    isvc = by_kind(objects, "InferenceService")[0]
    assert isvc["metadata"]["name"] == specs(kind).model_name  # so invoke's /v2/models/<model_name> answers
    assert by_kind(objects, "Service")[0]["spec"]["type"] == (specs(kind).spec.service_type or
                                                              digitalhub.ServiceType.NODE_PORT).value


def test_kserve_carries_the_tasks_kubernetes_parameters():
    objects = render_kserve(specs("mlflowserve", {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]}]}]}}}}), profiles=PROFILES)
    isvc = by_kind(objects, "InferenceService")[0]
    validate(isvc)
    pred = isvc["spec"]["predictor"]
    model = pred["model"]
    assert (pred["minReplicas"], pred["maxReplicas"]) == (2, 2)  # replicas
    assert {"name": "USER", "value": "test"} in model["env"]  # envs
    assert model["envFrom"] == [{"secretRef": {"name": "secret-key"}}]  # secrets
    assert model["resources"] == {"requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                                  "limits": {"memory": "1Gi"}}
    assert [v["name"] for v in pred["volumes"]] == ["scratch", "data"]
    assert pred["volumes"][1]["persistentVolumeClaim"]["claimName"] == "iris-mlflow-dh-data"
    assert model["volumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"},
                                     {"name": "data", "mountPath": "/data"}]
    assert pred["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert pred["tolerations"][0]["key"] == "dedicated"
    assert pred["affinity"]["nodeAffinity"]
    svc = by_kind(objects, "Service")[0]
    assert svc["spec"]["selector"] == {"serving.kserve.io/inferenceservice": "iris-mlflow-dh"}


def test_a_sklearn_file_keeps_its_name_under_mnt_models():
    for path, uri in (("s3://b/dir/my-model.pkl", "/mnt/models/my-model.pkl"), ("s3://b/dir/", None)):
        isvc = by_kind(render_kserve(specs("sklearnserve", {"path": path}), profiles=PROFILES), "InferenceService")[0]
        env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["model"]["env"]}
        assert env.get("MLSERVER_MODEL_URI") == uri


def test_profiles_fill_in_under_the_tasks_own_fields_and_scale_with_processors():
    objects = render_kserve(specs("huggingfaceserve", {"resources": {"gpu": "2"}}), profiles=PROFILES)
    pred = by_kind(objects, "InferenceService")[0]["spec"]["predictor"]
    assert pred["model"]["resources"]["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert pred["model"]["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "2"}
    assert pred["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pred["runtimeClassName"] == "nvidia" and pred["tolerations"][0]["key"] == "nvidia.com/gpu"
    two = render_kserve(specs("kubeai-speech"), profiles=PROFILES)  # profile cpu, processors 2
    assert by_kind(two, "InferenceService")[0]["spec"]["predictor"]["model"]["resources"]["requests"] == {
        "cpu": "2", "memory": "4Gi"}
    with pytest.raises(SpecError, match="'profile': '1xa100' is not in the profiles file; pass --profiles"):
        render_kserve(specs("huggingfaceserve"), profiles={})


def test_kserve_refuses_what_it_has_no_place_for():
    with pytest.raises(SpecError, match="cache_profile"):
        render_kserve(specs("kubeai-text", {"cache_profile": "efs"}), profiles=PROFILES)
    with pytest.raises(SpecError, match="not one KServe can fetch"):
        render_kserve(specs("sklearnserve", {"path": "./model.joblib"}), profiles=PROFILES)
    with pytest.raises(SpecError, match="Serverless or RawDeployment"):
        render_kserve(specs("sklearnserve"), profiles=PROFILES, mode="ModelMesh")


# -- KubeAI ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KUBEAI_KINDS)
def test_kubeai_kinds_render_a_model_valid_against_kubeais_crd(kind):
    model = render_kubeai(specs(kind), profiles=PROFILES)
    validate(model)
    run_id = docs_of(kind)[2]["id"]
    assert model["metadata"]["name"] == f"{specs(kind).model_name}-{run_id}"[:39]  # DHCore's name


def test_kubeai_model_is_camel_case_as_kubeai_reads_it():
    spec = render_kubeai(specs("kubeai-text"), profiles=PROFILES)["spec"]
    assert spec["loadBalancing"] == {"strategy": "PrefixHash", "prefixHash": {
        "meanLoadFactor": 125, "replication": 256, "prefixCharLength": 100}}
    assert (spec["targetRequests"], spec["scaleDownDelaySeconds"], spec["minReplicas"], spec["maxReplicas"]) == (
        32, 60, 1, 4)
    assert spec["resourceProfile"] == "nvidia-gpu-l4:1"
    assert "image" not in spec  # the function's empty image
    image = render_kubeai(specs("kubeai-text", {"image": "vllm/vllm-openai:v0.9"}))["spec"]["image"]
    assert image == "vllm/vllm-openai:v0.9"
    assert spec["env"] == {"VLLM_LOGGING_LEVEL": "WARNING", "HF_HUB_ENABLE_HF_TRANSFER": "0"}
    assert spec["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert spec["files"] == [{"path": "/config/chat.jinja", "content": "{{ messages }}"}]
    assert "prefix_hash" not in json.dumps(spec) and "target_request" not in json.dumps(spec)
    least = render_kubeai(specs("kubeai-text", {"scaling": {"load_balancing": {"strategy": "leastload"}}}))
    validate(least)
    assert least["spec"]["loadBalancing"]["strategy"] == "LeastLoad"
    speech = render_kubeai(specs("kubeai-speech"), profiles=PROFILES)["spec"]
    assert (speech["engine"], speech["features"], speech["resourceProfile"], speech["targetRequests"]) == (
        "FasterWhisper", ["SpeechToText"], "cpu:2", 10)


@pytest.mark.parametrize("override,fragment", [
    ({"node_selector": {"a": "b"}}, "'node_selector': a KubeAI Model cannot carry it"),
    ({"tolerations": [{"key": "k", "operator": "Exists"}]}, "'tolerations': a KubeAI Model cannot carry it"),
    ({"volumes": [{"name": "v", "volume_type": "empty_dir", "mount_path": "/v"}]}, "'volumes'"),
    ({"resources": {"gpu": "1"}}, "'resources': a KubeAI Model cannot carry it"),
    ({"service_type": "NodePort"}, "own OpenAI proxy"),
    ({"url": "store://demo/model/huggingface/llama"}, "resolve the store:// model"),
    ({"url": "hf://org/model:main"}, "no revision"),
    ({"adapters": [{"name": "a", "url": "./adapter"}]}, "adapter urls"),
    ({"engine": "Infinity", "adapters": [{"name": "a", "url": "hf://o/a"}]}, "engine VLLM only"),
    ({"url": "gs://b/m"}, "needs a cache_profile"),
    ({"files": [{"path": "chat.jinja", "content": "x"}]}, "spec field 'files.0.path'"),
])
def test_kubeai_refuses_what_a_model_cannot_carry(override, fragment):
    with pytest.raises(SpecError) as err:
        render_kubeai(specs("kubeai-text", override), profiles=PROFILES)
    assert fragment in str(err.value)


def test_kubeai_is_for_kubeai_kinds_only():
    with pytest.raises(SpecError, match="not a KubeAI model"):
        render_kubeai(specs("sklearnserve"))


# -- load balancing on KServe: InferencePool + endpoint picker ----------------------------------------------
@pytest.mark.parametrize("strategy", ["LeastLoad", "PrefixHash"])
def test_load_balancing_renders_an_inference_pool_and_an_endpoint_picker(strategy):
    s = specs("kubeai-text", {"scaling": {"load_balancing": {"strategy": strategy}}})
    objects = render_kserve(s, profiles=PROFILES, mode="RawDeployment", gateway="gw")
    for obj in objects:
        validate(obj)
    pool = by_kind(objects, "InferencePool")[0]["spec"]
    assert pool["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "llama-dh"}
    assert pool["targetPorts"] == [{"number": 8080}] and pool["endpointPickerRef"]["name"] == "llama-dh-epp"
    assert by_kind(objects, "HTTPRoute")[0]["spec"]["parentRefs"][0]["name"] == "gw"
    config = deploy.epp_config(s.spec.scaling.load_balancing.model_dump(mode="json"))
    validate_epp(config)
    types = [p["type"] for p in config["plugins"]]
    assert config["dataLayer"] == {"injectDefaults": False}  # no vLLM metrics scraping of MLServer pods
    assert "active-request-scorer" in types  # the load KubeAI's LeastLoad balances on
    assert ("approx-prefix-cache-producer" in types and "prefix-cache-scorer" in types) == (strategy == "PrefixHash")
    values = deploy.epp_values("llama-dh", s.spec.scaling.load_balancing.model_dump(mode="json"))
    assert values["router"]["inferencePool"] == {"create": False}
    assert yaml.safe_load(values["router"]["epp"]["pluginsCustomConfig"]["modelserve.yaml"]) == config


def test_deploy_render_writes_the_pool_for_load_balancing_and_refuses_it_on_modelmesh(tmp_path):
    settings = tmp_path / "model-settings.json"
    settings.write_text(json.dumps({"name": "llm", "implementation": deploy.KUBEAI, "parameters": {"extra": {
        "engine": "VLLM", "url": "hf://o/m", "scaling": {"load_balancing": {"strategy": "PrefixHash"}}}}}))
    out = tmp_path / "out.yaml"
    assert deploy.main(["render", str(settings), "--mode", "RawDeployment", "-o", str(out)]) == 0
    objects = list(yaml.safe_load_all(out.read_text()))
    assert [o["kind"] for o in objects] == ["InferenceService", "InferencePool", "HTTPRoute"]
    for obj in objects:
        validate(obj)
    assert "load_balancing" not in json.dumps(objects[0])  # not an option of the pod: the pool's
    assert deploy.main(["render", str(settings), "--mode", "ModelMesh"]) == 2
    with pytest.raises(deploy.RenderError, match="strategy"):
        deploy.epp_config({"strategy": "Random"})


def test_epp_values_from_the_command_line(tmp_path):
    values = tmp_path / "values.yaml"
    kt = [str(SPECS / "kubeai-text" / f"{p}.json") for p in ("function", "task", "run")]
    assert digitalhub.main(["render", *kt, "--target", "kserve", "--profiles", str(SPECS / "profiles.yaml"),
                            "--epp-values", str(values), "-o", str(tmp_path / "o.yaml")]) == 0
    validate_epp(yaml.safe_load(yaml.safe_load(values.read_text())["router"]["epp"]["pluginsCustomConfig"][
        "modelserve.yaml"]))


# -- servingruntimes/examples/digitalhub: rendered from their specs, unchanged -------------------------------
def example_dirs():
    return sorted(p for p in EXAMPLES.iterdir() if p.is_dir())


def rerender(folder: Path) -> dict:
    """{file name: text} the example's render.json says to write, rendered now."""
    how = json.loads((folder / "render.json").read_text())
    out = {}
    for target, name in how["outputs"].items():
        argv = ["render", *[str(folder / f) for f in how["specs"]], "--target", target,
                "--profiles", str(folder / how["profiles"]), *how.get("args", {}).get(target, [])]
        res = subprocess.run([sys.executable, "-m", "modelserve.digitalhub", *argv], capture_output=True,
                             text=True, cwd=folder)
        assert res.returncode == 0, res.stderr
        out[name] = res.stdout
    if "epp_values" in how:
        out[how["epp_values"]] = digitalhub.dump_all([deploy.epp_values(
            how["epp_name"], read_specs([json.loads((folder / f).read_text()) for f in how["specs"]]
                                        ).spec.scaling.load_balancing.model_dump(mode="json"))])
    return out


def test_the_examples_are_what_their_specs_render_and_valid():
    assert example_dirs(), EXAMPLES
    kinds = set()
    for folder in example_dirs():
        for name, text in rerender(folder).items():
            stale = f"{folder.name}/{name} is stale: python -m tests.test_digitalhub rewrites it"
            assert (folder / name).read_text() == text, stale
            for obj in yaml.safe_load_all(text):
                if obj.get("kind") in (None,):
                    continue
                if "router" in obj:
                    validate_epp(yaml.safe_load(obj["router"]["epp"]["pluginsCustomConfig"]["modelserve.yaml"]))
                    continue
                validate(obj)
                kinds.add(obj["kind"])
    assert {"Model", "InferencePool", "InferenceService", "HTTPRoute"} <= kinds
    models = [o for f in example_dirs() for p in f.glob("*.yml") for o in yaml.safe_load_all(p.read_text())
              if o.get("kind") == "Model"]
    assert any(m["spec"].get("loadBalancing", {}).get("strategy") == "PrefixHash" for m in models)


# -- KServe huggingfaceserver's command line (the huggingface image as DHCore runs it) ----------------------
DHCORE_MINILM = ["--model_name", "minilm", "--protocol", "v2", "--enable_docs_url", "true", "--model_dir",
                 "/shared/model", "--trust_remote_code", "true", "--task", "text_embedding", "--backend",
                 "huggingface", "--dtype", "float32", "--max_length", "128", "--disable_lower_case", "false"]


def test_hfserver_reads_dhcores_arguments():
    flags, ignored = hfserver.parse(DHCORE_MINILM)
    settings, notes = hfserver.model_settings(flags, environ={})
    assert settings["name"] == "minilm" and settings["parameters"]["uri"] == "/shared/model"
    assert settings["parameters"]["extra"] == {"task": "text_embedding", "backend": "HUGGINGFACE",
                                               "dtype": "FLOAT32", "max_length": 128, "disable_lower_case": False}
    assert ignored == [] and "trust_remote_code" in notes[0]  # DHCore's default true is not the operator's
    opted, _ = hfserver.model_settings(flags, environ={hfserver.REMOTE_CODE_ENV: "true"})
    assert opted["parameters"]["extra"]["trust_remote_code"] is True


@pytest.mark.parametrize("argv,expect", [
    (["--model_id", "org/m", "--model_revision", "v2"], {"uri": "hf://org/m@v2"}),
    (["--model_id", "hf://org/m"], {"uri": "hf://org/m"}),
    (["--model_dir", "/m", "--return_probabilities"], {"return_probabilities": True}),
    (["--model_dir", "/m", "--return_probabilities=false"], {"return_probabilities": False}),
    (["--model_dir", "/m", "--disable_special_tokens", "--max_length", "9"], {"disable_special_tokens": True,
                                                                             "max_length": 9}),
    (["--model_dir", "/m", "--tensor_input_names", "input_ids,attention_mask"],
     {"tensor_input_names": ["input_ids", "attention_mask"]}),
])
def test_hfserver_flags_mean_what_their_words_say(argv, expect):
    flags, _ = hfserver.parse(argv)
    settings, _ = hfserver.model_settings(flags, environ={})
    got = {**settings["parameters"], **settings["parameters"].get("extra", {})}
    assert {k: got[k] for k in expect} == expect


def test_hfserver_tolerates_unknown_flags_and_refuses_bad_values():
    flags, ignored = hfserver.parse(["--model_dir", "/m", "--workers", "2", "--predictor_host=x", "--enable_x"])
    assert ignored == ["--workers 2", "--predictor_host=x", "--enable_x"] and flags == {"model_dir": "/m"}
    for argv, fragment in ((["--model_dir", "/m", "--dtype", "int3"], "--dtype"),
                           (["--model_dir", "/m", "--max_length", "x"], "--max_length"),
                           (["--model_dir", "/m", "--model_id", "o/m"], "give one"),
                           (["--task", "text_embedding"], "--model_id or --model_dir is required")):
        with pytest.raises(hfserver.ArgError, match=fragment):
            hfserver.model_settings(hfserver.parse(argv)[0], environ={})


def test_huggingfaceserve_run_args_are_huggingfaceserver_flags():
    s = specs("huggingfaceserve", {"args": ["--max_length", "64", "--return_probabilities"], "max_length": None})
    extra = digitalhub.model_settings(s)["parameters"]["extra"]
    assert extra["max_length"] == 256 and extra["return_probabilities"] is False  # the spec's own fields win
    s = specs("huggingfaceserve", {"args": ["--tokenizer_revision", "abc"]})
    assert digitalhub.model_settings(s)["parameters"]["extra"]["tokenizer_revision"] == "abc"
    with pytest.raises(SpecError, match="'args': --workers 2 is not a huggingfaceserver flag"):
        digitalhub.model_settings(specs("huggingfaceserve", {"args": ["--workers", "2"]}))


if __name__ == "__main__":  # python -m tests.test_digitalhub: rewrite the examples from their specs
    for _folder in example_dirs():
        for _name, _text in rerender(_folder).items():
            (_folder / _name).write_text(_text)
            print(f"wrote {_folder / _name}")
