"""The bad-input corpus: malformed requests over every runtime and protocol of `reliability_server`, each
sent and followed by a good request to the same model.

Shared by `tests/server/test_reliability_corpus.py` (one test per case) and `benchmarks/reliability.py`
(the counts in benchmarks/results/reliability.json). A case passes when the answer is a 4xx (gRPC:
INVALID_ARGUMENT or NOT_FOUND) carrying a message without a traceback, and the good request right
after it is served.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import requests

from .reliability_server import COLUMNS, GOOD_V2, IRIS_ROW

GRPC_OK = ("INVALID_ARGUMENT", "NOT_FOUND")


@dataclass(frozen=True)
class Case:
    id: str
    protocol: str  # v2-http, v2-grpc, v1, openai, invocations
    model: str  # the model whose good request follows
    path: str = ""  # HTTP: the route; gRPC: unused
    body: Any = None  # HTTP: a JSON value, or bytes sent as they are; gRPC: the ModelInferRequest fields
    headers: Dict[str, str] = field(default_factory=dict)
    needle: str = ""  # a fragment the message must hold (lower case compared)
    gap: str = ""  # KNOWN_GAPS only: why this case is not refused yet, and where the fix belongs


def _v2(model: str, inputs: List[dict], **more) -> dict:
    return {"inputs": inputs, **more}


def _t(shape, data, datatype="FP64", name="input-0") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _cols(values: Dict[str, Any], datatype="FP64", shape=(1,)) -> List[dict]:
    return [{"name": c, "shape": list(shape), "datatype": datatype, "data": v} for c, v in values.items()]


ROW = dict(zip(COLUMNS, ([v] for v in IRIS_ROW)))
BIG = b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[' + b",".join([b"1.5"] * 3_000_000) + b"]}]}"
"""An oversize body (~12 MB): three million numbers for a [1, 4] tensor."""


def _http_cases() -> List[Case]:
    iris, mlf, lm = "/v2/models/iris/infer", "/v2/models/iris-mlflow/infer", "/v2/models/minilm/infer"
    c = [
        # V2 REST, sklearn
        Case("v2-malformed-json", "v2-http", "iris", iris, b'{"inputs": [', {"Content-Type": "application/json"}),
        Case("v2-empty-body", "v2-http", "iris", iris, b"", {"Content-Type": "application/json"}),
        Case("v2-body-is-a-list", "v2-http", "iris", iris, [1, 2, 3]),
        Case("v2-not-utf8", "v2-http", "iris", iris, b"\xff\xfe{\x00", {"Content-Type": "application/json"}),
        Case("v2-unknown-datatype", "v2-http", "iris", iris, _v2("iris", [_t([1, 4], IRIS_ROW, "FP128")]), needle="datatype"),
        Case("v2-bytes-for-numbers", "v2-http", "iris", iris, _v2("iris", [_t([1, 4], list("abcd"), "BYTES")]), needle="bytes"),
        Case("v2-string-in-numbers", "v2-http", "iris", iris, _v2("iris", [_t([1, 4], ["a", 1, 2, 3])]), needle="'a'"),
        Case("v2-numbers-as-strings", "v2-http", "iris", iris, _v2("iris", [_t([1, 4], ["5.1", "3.5", "1.4", "0.2"])])),
        Case("v2-shape-data-mismatch", "v2-http", "iris", iris, _v2("iris", [_t([2, 4], [1, 2, 3, 4, 5])]), needle="needs 8"),
        Case("v2-wrong-width", "v2-http", "iris", iris, _v2("iris", [_t([1, 3], [1, 2, 3])]), needle="4 features"),
        Case("v2-nan", "v2-http", "iris", iris,
             b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[NaN,1,2,3]}]}',
             {"Content-Type": "application/json"}),
        Case("v2-infinity", "v2-http", "iris", iris,
             b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[Infinity,1,2,-Infinity]}]}',
             {"Content-Type": "application/json"}),
        Case("v2-nan-as-string", "v2-http", "iris", iris, _v2("iris", [_t([1, 4], ["NaN", 1, 2, 3])])),
        Case("v2-huge-shape", "v2-http", "iris", iris, _v2("iris", [_t([1_000_000_000, 4], IRIS_ROW)]), needle="needs"),
        Case("v2-huge-shape-overflow", "v2-http", "iris", iris, _v2("iris", [_t([2 ** 62, 2 ** 62], IRIS_ROW)])),
        Case("v2-many-dimensions", "v2-http", "iris", iris, _v2("iris", [_t([1] * 64, [1.0])])),
        Case("v2-negative-shape", "v2-http", "iris", iris, _v2("iris", [_t([-1, 4], IRIS_ROW)]), needle="negative"),
        Case("v2-oversize-body", "v2-http", "iris", iris, BIG, {"Content-Type": "application/json"}, needle="needs 4"),
        Case("v2-int-overflow", "v2-http", "iris", iris, _v2("iris", [_t([1, 4], [10 ** 400, 1, 2, 3], "INT64")])),
        Case("v2-no-inputs", "v2-http", "iris", iris, {"inputs": []}, needle="no inputs"),
        Case("v2-input-without-name", "v2-http", "iris", iris, {"inputs": [{"shape": [1, 4], "datatype": "FP64",
                                                                            "data": IRIS_ROW}]}),
        Case("v2-data-is-an-object", "v2-http", "iris", iris, _v2("iris", [_t([1, 4], {"a": 1})])),
        Case("v2-unknown-output", "v2-http", "iris", iris, {**GOOD_V2["iris"], "outputs": [{"name": "explain"}]},
             needle="unknown output"),
        Case("v2-unknown-model", "v2-http", "iris", "/v2/models/no-such-model/infer", GOOD_V2["iris"],
             needle="no-such-model"),
        Case("v2-unknown-version", "v2-http", "iris", "/v2/models/iris/versions/v9/infer", GOOD_V2["iris"]),
        Case("v2-id-not-a-string", "v2-http", "iris", iris, {**GOOD_V2["iris"], "id": {"x": 1}}),
        Case("v2-parameters-not-an-object", "v2-http", "iris", iris, {**GOOD_V2["iris"], "parameters": [1]}),
        # V2 REST, MLflow (column signature)
        Case("mlflow-v2-missing-column", "v2-http", "iris-mlflow", mlf,
             _v2("iris-mlflow", _cols({k: v for k, v in ROW.items() if k != "petal_width"}))),
        Case("mlflow-v2-strings-for-doubles", "v2-http", "iris-mlflow", mlf,
             _v2("iris-mlflow", _cols({k: ["x"] for k in ROW}, "BYTES"))),
        Case("mlflow-v2-columns-of-different-lengths", "v2-http", "iris-mlflow", mlf,
             _v2("iris-mlflow", _cols({**ROW, "sepal_length": [1.0, 2.0]}, shape=(1,))[:3]
                 + [_t([2], [1.0, 2.0], name="petal_width")])),
        Case("mlflow-v2-unknown-parameter", "v2-http", "iris-mlflow", mlf,
             {**GOOD_V2["iris-mlflow"], "parameters": {"temperature_of_the_sun": 5}}),
        Case("mlflow-v2-nan", "v2-http", "iris-mlflow", mlf,
             json.dumps({"inputs": _cols({**ROW, "sepal_length": [float("nan")]})}).encode(),
             {"Content-Type": "application/json"}),
        # V2 REST, HuggingFace embeddings
        Case("hf-v2-numbers-for-text", "v2-http", "minilm", lm, _v2("minilm", [_t([1], [1.0], "FP32", "text")]),
             needle="bytes"),
        Case("hf-v2-empty-string", "v2-http", "minilm", lm, _v2("minilm", [_t([1], [""], "BYTES", "text")]),
             needle="empty"),
        Case("hf-v2-empty-batch", "v2-http", "minilm", lm, _v2("minilm", [_t([0], [], "BYTES", "text")])),
        Case("hf-v2-shape-mismatch", "v2-http", "minilm", lm, _v2("minilm", [_t([3], ["a", "b"], "BYTES", "text")])),
        Case("hf-v2-3d-text", "v2-http", "minilm", lm, _v2("minilm", [_t([1, 1, 1], ["a"], "BYTES", "text")])),
        Case("hf-v2-unknown-output", "v2-http", "minilm", lm, {**GOOD_V2["minilm"], "outputs": [{"name": "logits"}]}),
        # V1
        Case("v1-malformed-json", "v1", "iris", "/v1/models/iris:predict", b'{"instances": [[1,2', needle="json"),
        Case("v1-not-an-object", "v1", "iris", "/v1/models/iris:predict", [[1, 2, 3, 4]], needle="instances"),
        Case("v1-no-instances", "v1", "iris", "/v1/models/iris:predict", {"inputs": [[1, 2, 3, 4]]}),
        Case("v1-empty-instances", "v1", "iris", "/v1/models/iris:predict", {"instances": []}),
        Case("v1-ragged", "v1", "iris", "/v1/models/iris:predict", {"instances": [[1, 2, 3, 4], [1]]}),
        Case("v1-strings-for-numbers", "v1", "iris", "/v1/models/iris:predict", {"instances": [["a", "b", "c", "d"]]}),
        Case("v1-wrong-width", "v1", "iris", "/v1/models/iris:predict", {"instances": [[1, 2]]}),
        Case("v1-nan", "v1", "iris", "/v1/models/iris:predict", b'{"instances": [[NaN, 1, 2, 3]]}'),
        Case("v1-unknown-field", "v1", "iris", "/v1/models/iris:predict", {"instances": [IRIS_ROW], "foo": 1},
             needle="foo"),
        Case("v1-parameters-not-an-object", "v1", "iris", "/v1/models/iris:predict",
             {"instances": [IRIS_ROW], "parameters": True}, needle="parameters"),
        Case("v1-empty-objects", "v1", "iris", "/v1/models/iris:predict", {"instances": [{}, {}]}),
        Case("v1-unknown-model", "v1", "iris", "/v1/models/no-such-model:predict", {"instances": [IRIS_ROW]}),
        Case("v1-numbers-for-text", "v1", "minilm", "/v1/models/minilm:predict", {"instances": [1, 2]}),
        # OpenAI routes (MiniLM embeddings)
        Case("openai-malformed-json", "openai", "minilm", "/v1/embeddings", b'{"model": "minilm", "input": '),
        Case("openai-body-is-a-list", "openai", "minilm", "/v1/embeddings", ["minilm"]),
        Case("openai-no-model", "openai", "minilm", "/v1/embeddings", {"input": "hello"}),
        Case("openai-unknown-model", "openai", "minilm", "/v1/embeddings", {"model": "gpt-9", "input": "hello"},
             needle="gpt-9"),
        Case("openai-no-input", "openai", "minilm", "/v1/embeddings", {"model": "minilm"}),
        Case("openai-input-a-number", "openai", "minilm", "/v1/embeddings", {"model": "minilm", "input": 3.5}),
        Case("openai-input-nested-objects", "openai", "minilm", "/v1/embeddings",
             {"model": "minilm", "input": [{"text": "a"}]}),
        Case("openai-empty-input-list", "openai", "minilm", "/v1/embeddings", {"model": "minilm", "input": []}),
        Case("openai-bad-encoding-format", "openai", "minilm", "/v1/embeddings",
             {"model": "minilm", "input": "a", "encoding_format": "hex"}),
        Case("openai-unknown-parameter", "openai", "minilm", "/v1/embeddings",
             {"model": "minilm", "input": "a", "frobnicate": True}),
        Case("openai-chat-on-an-embedding-model", "openai", "minilm", "/v1/chat/completions",
             {"model": "minilm", "messages": [{"role": "user", "content": "hi"}]}),
        Case("openai-completions-on-an-embedding-model", "openai", "minilm", "/v1/completions",
             {"model": "minilm", "prompt": "hi"}),
        # MLflow's scoring protocol
        Case("invocations-malformed-json", "invocations", "iris-mlflow", "/invocations", b'{"dataframe_split": {'),
        Case("invocations-no-format-key", "invocations", "iris-mlflow", "/invocations", {"rows": [IRIS_ROW]},
             needle="exactly one of"),
        Case("invocations-two-format-keys", "invocations", "iris-mlflow", "/invocations",
             {"instances": [IRIS_ROW], "inputs": [IRIS_ROW]}),
        Case("invocations-wrong-columns", "invocations", "iris-mlflow", "/invocations",
             {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}),
        Case("invocations-strings-for-doubles", "invocations", "iris-mlflow", "/invocations",
             {"dataframe_records": [{c: "x" for c in COLUMNS}]}),
        Case("invocations-params-not-an-object", "invocations", "iris-mlflow", "/invocations",
             {"dataframe_records": [dict(zip(COLUMNS, IRIS_ROW))], "params": [1]}),
        Case("invocations-unknown-param", "invocations", "iris-mlflow", "/invocations",
             {"dataframe_records": [dict(zip(COLUMNS, IRIS_ROW))], "params": {"nope": 1}}),
        Case("invocations-unknown-model", "invocations", "iris-mlflow", "/models/no-such-model/invocations",
             {"dataframe_records": [dict(zip(COLUMNS, IRIS_ROW))]}),
    ]
    return c


def _grpc_cases() -> List[Case]:
    def req(model, inputs, version="", raw=None, outputs=None, parameters=None):
        return {"model_name": model, "model_version": version, "inputs": inputs, "raw": raw or [],
                "outputs": outputs or [], "parameters": parameters or {}}

    def t(name, shape, datatype, **contents):
        return {"name": name, "shape": shape, "datatype": datatype, "contents": contents}

    row = t("input-0", [1, 4], "FP64", fp64_contents=IRIS_ROW)
    return [
        Case("grpc-unknown-model", "v2-grpc", "iris", body=req("no-such-model", [row]), needle="no-such-model"),
        Case("grpc-unknown-version", "v2-grpc", "iris", body=req("iris", [row], version="v9")),
        Case("grpc-shape-mismatch", "v2-grpc", "iris", body=req("iris", [t("input-0", [2, 4], "FP64",
                                                                          fp64_contents=IRIS_ROW)])),
        Case("grpc-wrong-width", "v2-grpc", "iris", body=req("iris", [t("input-0", [1, 2], "FP64",
                                                                       fp64_contents=[1.0, 2.0])])),
        Case("grpc-bytes-for-numbers", "v2-grpc", "iris", body=req("iris", [t("input-0", [1, 4], "BYTES",
                                                                             bytes_contents=[b"a"] * 4)])),
        Case("grpc-nan", "v2-grpc", "iris", body=req("iris", [t("input-0", [1, 4], "FP64",
                                                               fp64_contents=[float("nan"), 1, 2, 3])])),
        Case("grpc-infinity", "v2-grpc", "iris", body=req("iris", [t("input-0", [1, 4], "FP64",
                                                                    fp64_contents=[float("inf"), 1, 2, 3])])),
        Case("grpc-huge-shape", "v2-grpc", "iris", body=req("iris", [t("input-0", [1_000_000_000, 4], "FP64",
                                                                      fp64_contents=IRIS_ROW)])),
        Case("grpc-no-inputs", "v2-grpc", "iris", body=req("iris", [])),
        Case("grpc-raw-contents-wrong-length", "v2-grpc", "iris",
             body=req("iris", [t("input-0", [1, 4], "FP64")], raw=[struct.pack("<3d", 1, 2, 3)]),
             needle="raw_input_contents"),
        Case("grpc-fewer-raw-contents-than-inputs", "v2-grpc", "iris-mlflow",
             body=req("iris-mlflow", [t(c, [1], "FP64") for c in COLUMNS], raw=[struct.pack("<d", 1.0)]),
             needle="raw_input_contents"),
        Case("grpc-unknown-output", "v2-grpc", "iris", body=req("iris", [row], outputs=["explain"])),
        Case("grpc-mlflow-missing-column", "v2-grpc", "iris-mlflow",
             body=req("iris-mlflow", [t(c, [1], "FP64", fp64_contents=[1.0]) for c in COLUMNS[:3]])),
        Case("grpc-hf-numbers-for-text", "v2-grpc", "minilm",
             body=req("minilm", [t("text", [1], "FP32", fp32_contents=[1.0])])),
        Case("grpc-hf-empty-string", "v2-grpc", "minilm",
             body=req("minilm", [t("text", [1], "BYTES", bytes_contents=[b""])])),
    ]


CASES: List[Case] = _http_cases() + _grpc_cases() + [
    # fixed after the fuzzing and this corpus found them (were a 200 and 500s)
    Case("hf-v2-unknown-parameter", "v2-http", "minilm", "/v2/models/minilm/infer",
         {**GOOD_V2["minilm"], "parameters": {"nope": 1}}, needle="nope"),
    Case("grpc-hf-unknown-parameter", "v2-grpc", "minilm",
         body={"model_name": "minilm", "model_version": "", "raw": [], "outputs": [], "parameters": {"nope": "1"},
               "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                           "contents": {"bytes_contents": [b"hello"]}}]}, needle="nope"),
    Case("v2-empty-tensor-of-impossible-shape", "v2-http", "iris", "/v2/models/iris/infer",
         _v2("iris", [_t([0, 2 ** 62, 2 ** 62], [])])),
    Case("hf-v2-empty-tensor-of-impossible-shape", "v2-http", "minilm", "/v2/models/minilm/infer",
         _v2("minilm", [_t([0, 2 ** 62, 2 ** 62], [], "BYTES", "text")])),
]

def _binary(header: dict, raw: bytes, length: Optional[int] = None) -> bytes:
    """A binary tensor extension body: the JSON header, then ``raw``; ``length`` (default: the header's) goes in
    the Inference-Header-Content-Length header by _binary_case."""
    return json.dumps(header).encode() + raw


def _binary_case(id_: str, model: str, header: dict, raw: bytes, length: Optional[int] = None,
                 needle: str = "") -> Case:
    body = _binary(header, raw)
    size = len(json.dumps(header).encode()) if length is None else length
    return Case(id_, "v2-http", model, f"/v2/models/{model}/infer", body,
                {"Inference-Header-Content-Length": str(size), "Content-Type": "application/octet-stream"},
                needle=needle)


def _binary_input(name: str, shape: list, datatype: str, size: int) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}


NUMERIC_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                     "FP16", "FP32", "FP64"]


def _front_door_cases() -> List[Case]:
    """The front door (modelserve.frontdoor, binary_tensors): binary garbage on every runtime, broken binary
    extension bodies, compressed bodies that are not, and JSON values whose type does not fit the datatype."""
    garbage = struct.pack("<8f", *range(8))
    # a raw body: sklearn takes none (the V2 message); MLflow takes it as ModelHub's byte_stream upload, which its
    # signature refuses; a text model takes it as its text, which these bytes are not
    c = [Case(f"{m}-raw-float32-bytes", "v2-http", m, f"/v2/models/{m}/infer", garbage,
              {"Content-Type": "application/octet-stream"}, needle=needle)
         for m, needle in (("iris", "binary"), ("iris-mlflow", "rejected the input"), ("minilm", "utf-8"))]
    row = _binary_input("input-0", [1, 4], "FP64", 32)
    c += [
        _binary_case("binary-header-beyond-the-body", "iris", {"inputs": [row]}, b"\0" * 32, length=5000,
                     needle="beyond"),
        _binary_case("binary-truncated-tensor", "iris", {"inputs": [row]}, struct.pack("<3d", 1, 2, 3),
                     needle="body ended"),
        _binary_case("binary-size-does-not-fit-the-shape", "iris",
                     {"inputs": [_binary_input("input-0", [1, 4], "FP64", 24)]}, struct.pack("<3d", 1, 2, 3),
                     needle="does not fit"),
        _binary_case("binary-bytes-after-the-tensors", "iris", {"inputs": [row]}, struct.pack("<5d", *range(5)),
                     needle="after the binary inputs"),
        _binary_case("binary-header-not-json", "iris", {"inputs": [row]}, b"", length=3, needle="not valid json"),
        _binary_case("binary-negative-header-length", "iris", {"inputs": [row]}, b"\0" * 32, length=-3),
        _binary_case("binary-bytes-element-overruns", "minilm",
                     {"inputs": [_binary_input("text", [1], "BYTES", 8)]}, struct.pack("<I", 99) + b"abcd",
                     needle="claims 99 bytes"),
        _binary_case("binary-unknown-datatype", "iris", {"inputs": [_binary_input("input-0", [1, 4], "FP128", 32)]},
                     b"\0" * 32, needle="unknown datatype"),
        Case("gzip-body-that-is-not", "v2-http", "iris", "/v2/models/iris/infer", b"\x1f\x8b not gzip at all",
             {"Content-Type": "application/json", "Content-Encoding": "gzip"}, needle="gzip"),
        Case("deflate-body-truncated", "v2-http", "iris", "/v2/models/iris/infer",
             zlib.compress(json.dumps(GOOD_V2["iris"]).encode())[:20],
             {"Content-Type": "application/json", "Content-Encoding": "deflate"}, needle="truncated"),
        Case("unsupported-content-encoding", "v2-http", "iris", "/v2/models/iris/infer", b"{}",
             {"Content-Type": "application/json", "Content-Encoding": "br"}, needle="not supported"),
        Case("v2-wrong-json-types", "v2-http", "iris", "/v2/models/iris/infer",
             {"inputs": [{"name": "input-0", "shape": "1x4", "datatype": 7, "data": IRIS_ROW}]}, needle="shape"),
        Case("v2-missing-inputs-key", "v2-http", "iris", "/v2/models/iris/infer", {"id": "x"}, needle="'inputs'"),
    ]
    for dt in NUMERIC_DATATYPES:
        if dt != "BOOL":
            c.append(Case(f"v2-booleans-in-{dt.lower()}", "v2-http", "iris", "/v2/models/iris/infer",
                          _v2("iris", [_t([1, 4], [True, True, True, True], dt)]), needle="boolean"))
        c.append(Case(f"v2-null-in-{dt.lower()}", "v2-http", "iris", "/v2/models/iris/infer",
                      _v2("iris", [_t([1, 4], [None, 1, 0, 1] if dt == "BOOL" else [None, 1, 2, 3], dt)]),
                      needle="null"))
    c.append(Case("v2-numbers-in-bool", "v2-http", "iris", "/v2/models/iris/infer",
                  _v2("iris", [_t([1, 4], [1, 0, 1, 0], "BOOL")]), needle="holds 1"))
    c.append(Case("v2-fractions-in-int32", "v2-http", "iris", "/v2/models/iris/infer",
                  _v2("iris", [_t([1, 4], [1.5, 2, 3, 4], "INT32")]), needle="integers"))
    return c


CASES += _front_door_cases()

KNOWN_GAPS: List[Case] = []
"""Bad inputs that are not refused cleanly yet, each with the reason; sent and counted apart."""


# -- sending -----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    case: str
    protocol: str
    status: str  # the HTTP status as text, or the gRPC code's name
    message: str
    followup_ok: bool

    @property
    def server_error(self) -> bool:
        return self.status.startswith("5") or self.status in ("INTERNAL", "UNKNOWN", "UNAVAILABLE")

    needle: str = ""

    @property
    def refused_cleanly(self) -> bool:
        ok_status = self.status in GRPC_OK if self.protocol == "v2-grpc" else self.status.startswith("4")
        return (ok_status and bool(self.message.strip()) and "Traceback" not in self.message
                and self.needle.lower() in self.message.lower())


def _message(r: requests.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", ""))
        if isinstance(err, dict):
            err = err.get("message", "")
        return err if isinstance(err, str) else json.dumps(err)
    return r.text


def _http(url: str, case: Case) -> tuple:
    headers = dict(case.headers)
    if isinstance(case.body, bytes):
        data = case.body
    else:
        data = json.dumps(case.body).encode()
        headers.setdefault("Content-Type", "application/json")
    r = requests.post(url + case.path, data=data, headers=headers, timeout=120)
    return str(r.status_code), _message(r)


def grpc_request(fields: dict):
    from mlserver.grpc import dataplane_pb2 as pb

    inputs = [pb.ModelInferRequest.InferInputTensor(
        name=i["name"], datatype=i["datatype"], shape=i["shape"],
        contents=pb.InferTensorContents(**i["contents"]) if i["contents"] else None) for i in fields["inputs"]]
    return pb.ModelInferRequest(
        model_name=fields["model_name"], model_version=fields["model_version"], inputs=inputs,
        raw_input_contents=fields["raw"],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in fields["outputs"]],
        parameters={k: pb.InferParameter(string_param=v) for k, v in fields["parameters"].items()})


def _grpc(grpc_url: str, case: Case) -> tuple:
    import grpc
    from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

    with grpc.insecure_channel(grpc_url) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request(case.body), timeout=120)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
    return "OK", ""


def good(server, model: str) -> bool:
    r = requests.post(f"{server.url}/v2/models/{model}/infer", json=GOOD_V2[model], timeout=60)
    return r.status_code == 200


def good_grpc(server, model: str) -> bool:
    fields = {"model_name": model, "model_version": "", "raw": [], "outputs": [], "parameters": {},
              "inputs": [{"name": i["name"], "shape": i["shape"], "datatype": i["datatype"],
                          "contents": ({"bytes_contents": [v.encode() for v in i["data"]]} if i["datatype"] == "BYTES"
                                       else {"fp64_contents": i["data"]})} for i in GOOD_V2[model]["inputs"]]}
    return _grpc(server.grpc_url, Case("good", "v2-grpc", model, body=fields))[0] == "OK"


def send(server, case: Case) -> Outcome:
    """The case, then a good request to its model over the same protocol family."""
    if case.protocol == "v2-grpc":
        status, message = _grpc(server.grpc_url, case)
        ok = good_grpc(server, case.model)
    else:
        status, message = _http(server.url, case)
        ok = good(server, case.model)
    return Outcome(case.id, case.protocol, status, message, ok, case.needle)


def run_all(server, cases: Optional[List[Case]] = None) -> List[Outcome]:
    return [send(server, c) for c in (cases or CASES)]
