"""MLflowRuntime on its own: signature decoding, params, output encoding, the scoring protocol and load errors."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlserver.settings import ModelParameters, ModelSettings

from modelserve.mlflow import MLflowRuntime, _load_pyfunc, pickled_flavors

from .support.mlflow_models import build, dict_inputs, echo_frame, params_frame
from .support.models import iris_xy
from .support.runtimes import bad_request, infer, load_error, loaded, make_runtime

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="session")
def mlflow_arts(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("mlflow-unit-art"))


def col(name, values, datatype="FP64"):
    return {"name": name, "datatype": datatype, "shape": [len(values)], "data": list(values)}


def iris_columns(rows=slice(0, 5)):
    Xf, _ = iris_xy(frame=True)
    part = Xf.iloc[rows]
    return part, [col(c, part[c].tolist()) for c in COLUMNS]


def outputs_by_name(response) -> dict:
    return {o.name: o for o in response.outputs}


def direct(path: Path, data, params=None):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(path)).predict(data, params=params)


# -- column-based signatures -------------------------------------------------------------------------
def test_column_signature_becomes_v2_metadata(mlflow_arts):
    rt = loaded(MLflowRuntime, mlflow_arts["columns"])
    assert [(i.name, i.datatype, i.shape) for i in rt.inputs] == [(c, "FP64", [-1]) for c in COLUMNS]
    assert [(o.name, o.datatype, o.shape) for o in rt.outputs] == [("predict", "INT64", [-1])]


def test_metadata_from_model_settings_is_kept(mlflow_arts):
    from mlserver.types import MetadataTensor

    given = [MetadataTensor(name="sepal_length", datatype="FP64", shape=[-1])]
    settings = ModelSettings(name="given", implementation=MLflowRuntime, inputs=given,
                             parameters=ModelParameters(uri=str(mlflow_arts["columns"])))
    rt = MLflowRuntime(settings)
    asyncio.run(rt.load())
    assert rt.inputs == given and [o.name for o in rt.outputs] == ["predict"]


def test_columns_become_a_frame_and_match_direct_predict(mlflow_arts):
    frame, inputs = iris_columns(slice(45, 105, 5))
    out = infer(loaded(MLflowRuntime, mlflow_arts["columns"]), inputs).outputs
    assert [o.name for o in out] == ["predict"]
    assert out[0].datatype == "INT64" and out[0].shape == [len(frame)]
    assert out[0].data.root == direct(mlflow_arts["columns"], frame).tolist()


def test_integer_data_for_a_double_column_is_cast(mlflow_arts):
    frame, inputs = iris_columns()
    inputs[0] = col("sepal_length", [5, 5, 5, 5, 5], "INT64")
    frame = frame.assign(sepal_length=5.0)
    out = infer(loaded(MLflowRuntime, mlflow_arts["columns"]), inputs).outputs[0]
    assert out.data.root == direct(mlflow_arts["columns"], frame).tolist()


def test_bytes_for_a_double_column_is_a_400_naming_input_and_type(mlflow_arts):
    _, inputs = iris_columns()
    inputs[2] = col("petal_length", ["a", "b", "c", "d", "e"], "BYTES")
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["columns"]), inputs)
    assert msg.startswith("input 'petal_length': expected double") and "got BYTES" in msg


def test_bool_for_a_double_column_is_a_400(mlflow_arts):
    _, inputs = iris_columns()
    inputs[1] = col("sepal_width", [True] * 5, "BOOL")
    assert "input 'sepal_width': expected double" in bad_request(infer, loaded(MLflowRuntime, mlflow_arts["columns"]),
                                                                  inputs)


def test_missing_column_is_a_400_naming_it(mlflow_arts):
    _, inputs = iris_columns()
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["columns"]), inputs[:3])
    assert "missing input 'petal_width'" in msg and "sepal_length" in msg


def test_unknown_column_is_a_400_naming_it(mlflow_arts):
    _, inputs = iris_columns()
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["columns"]), inputs + [col("colour", [1, 2, 3, 4, 5])])
    assert "unknown input 'colour'" in msg and "petal_width" in msg


def test_a_single_unnamed_tensor_for_a_column_model_is_a_400(mlflow_arts):
    X, _ = iris_xy()
    tensor = {"name": "input-0", "datatype": "FP64", "shape": [2, 4], "data": X[:2].reshape(-1).tolist()}
    assert "unknown input 'input-0'" in bad_request(infer, loaded(MLflowRuntime, mlflow_arts["columns"]), [tensor])


def test_columns_of_different_lengths_are_a_400(mlflow_arts):
    _, inputs = iris_columns()
    inputs[3] = col("petal_width", [0.1, 0.2])
    assert "different lengths" in bad_request(infer, loaded(MLflowRuntime, mlflow_arts["columns"]), inputs)


def test_data_that_does_not_fit_the_shape_is_a_400(mlflow_arts):
    _, inputs = iris_columns()
    inputs[0] = {**inputs[0], "shape": [7]}
    assert "input 'sepal_length'" in bad_request(infer, loaded(MLflowRuntime, mlflow_arts["columns"]), inputs)


def test_a_duplicated_input_is_a_400(mlflow_arts):
    _, inputs = iris_columns()
    assert "more than once" in bad_request(infer, loaded(MLflowRuntime, mlflow_arts["columns"]), inputs + inputs[:1])


def test_each_column_type_is_decoded_and_encoded_back(mlflow_arts):
    rt = loaded(MLflowRuntime, mlflow_arts["echo"])
    meta = {i.name: (i.datatype, i.shape) for i in rt.inputs}
    assert meta == {"text": ("BYTES", [-1]), "count": ("INT32", [-1]), "flag": ("BOOL", [-1]),
                    "vector": ("FP64", [-1, -1]), "when": ("BYTES", [-1]), "extra": ("BYTES", [-1])}
    inputs = [
        col("text", ["x", "y"], "BYTES"),
        col("count", [7, 8], "INT64"),
        col("flag", [False, True], "BOOL"),
        {"name": "vector", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]},
        col("when", ["2024-05-01", "2024-06-01T12:30:00"], "BYTES"),
        col("extra", ['{"k": 5}', '{"k": 6}'], "BYTES"),
    ]
    out = outputs_by_name(infer(rt, inputs))
    assert out["text"].datatype == "BYTES" and out["text"].data.root == [b"x", b"y"]
    assert out["count"].datatype == "INT32" and out["count"].data.root == [7, 8]
    assert out["flag"].datatype == "BOOL" and out["flag"].data.root == [False, True]
    assert out["vector"].datatype == "FP64" and out["vector"].shape == [2, 2]
    assert out["vector"].data.root == [1.0, 2.0, 3.0, 4.0]
    assert out["when"].data.root == [b"2024-05-01T00:00:00", b"2024-06-01T12:30:00"]
    assert [json.loads(v) for v in out["extra"].data.root] == [{"k": 5}, {"k": 6}]


def test_integers_that_do_not_fit_an_integer_column_are_a_400(mlflow_arts):
    frame = echo_frame()
    inputs = [col(c, frame[c].tolist(), "BYTES") for c in ("text",)]
    inputs += [col("count", [1, 2**40], "INT64"), col("flag", [True, False], "BOOL"),
               {"name": "vector", "datatype": "FP64", "shape": [2, 2], "data": [1, 2, 3, 4]},
               col("when", ["2024-05-01", "2024-05-02"], "BYTES"), col("extra", ["{}", "{}"], "BYTES")]
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["echo"]), inputs)
    assert "input 'count'" in msg and "int32" in msg


def test_a_float_for_an_integer_column_or_bad_json_is_a_400(mlflow_arts):
    rt = loaded(MLflowRuntime, mlflow_arts["echo"])
    base = [col("text", ["x"], "BYTES"), col("count", [1], "INT32"), col("flag", [True], "BOOL"),
            {"name": "vector", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]},
            col("when", ["2024-05-01"], "BYTES"), col("extra", ['{"k": 1}'], "BYTES")]
    float_count = base[:1] + [col("count", [1.5], "FP64")] + base[2:]
    assert "input 'count': expected integer" in bad_request(infer, rt, float_count)
    bad_json = base[:5] + [col("extra", ["{not json"], "BYTES")]
    assert "input 'extra'" in bad_request(infer, rt, bad_json)
    bad_date = base[:4] + [col("when", ["yesterday"], "BYTES")] + base[5:]
    assert "input 'when': expected ISO 8601" in bad_request(infer, rt, bad_date)


# -- tensor-based signatures -------------------------------------------------------------------------
def test_tensor_signature_becomes_v2_metadata(mlflow_arts):
    rt = loaded(MLflowRuntime, mlflow_arts["tensor"])
    assert [(i.name, i.datatype, i.shape) for i in rt.inputs] == [("input-0", "FP32", [-1, 4])]
    assert [(o.name, o.datatype, o.shape) for o in rt.outputs] == [("predict", "FP32", [-1, 3])]


def test_tensor_is_decoded_to_the_signature_dtype(mlflow_arts):
    X, _ = iris_xy()
    rows = X[::30]
    tensor = {"name": "features", "datatype": "FP64", "shape": list(rows.shape), "data": rows.reshape(-1).tolist()}
    out = infer(loaded(MLflowRuntime, mlflow_arts["tensor"]), [tensor]).outputs
    assert [o.name for o in out] == ["predict"] and out[0].datatype == "FP32"
    assert out[0].shape == [len(rows), 3]
    expected = direct(mlflow_arts["tensor"], rows.astype(np.float32))
    np.testing.assert_allclose(np.asarray(out[0].data.root).reshape(out[0].shape), expected, rtol=1e-6)


def test_tensor_shape_mismatch_is_a_400(mlflow_arts):
    tensor = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1.0] * 6}
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["tensor"]), [tensor])
    assert "input 'x': expected shape [-1, 4]" in msg and "[2, 3]" in msg


def test_tensor_datatype_mismatch_is_a_400(mlflow_arts):
    tensor = {"name": "x", "datatype": "BYTES", "shape": [1, 4], "data": ["a", "b", "c", "d"]}
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["tensor"]), [tensor])
    assert "input 'x': expected float32 (FP32)" in msg and "got BYTES" in msg


def test_two_tensors_for_a_one_tensor_model_is_a_400(mlflow_arts):
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4}
    two = [tensor, {**tensor, "name": "y"}]
    assert "one input tensor" in bad_request(infer, loaded(MLflowRuntime, mlflow_arts["tensor"]), two)


def test_named_tensors_become_a_dict_and_a_dict_output_one_output_per_key(mlflow_arts):
    rt = loaded(MLflowRuntime, mlflow_arts["dict"])
    assert [(i.name, i.datatype, i.shape) for i in rt.inputs] == [("x", "FP32", [-1, 3]), ("w", "FP32", [-1, 3])]
    assert [(o.name, o.datatype) for o in rt.outputs] == [("weighted", "FP32"), ("count", "INT64")]
    arrays = dict_inputs()
    inputs = [{"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.reshape(-1).tolist()}
              for k, v in arrays.items()]
    out = outputs_by_name(infer(rt, inputs))
    expected = direct(mlflow_arts["dict"], arrays)
    assert set(out) == {"weighted", "count"}
    assert out["weighted"].data.root == expected["weighted"].tolist()
    assert out["count"].datatype == "INT64" and out["count"].data.root == [3, 3]


def test_a_missing_named_tensor_is_a_400_naming_it(mlflow_arts):
    x = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0] * 3}
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["dict"]), [x])
    assert "missing input 'w'" in msg


# -- params ------------------------------------------------------------------------------------------
def params_inputs():
    frame = params_frame()
    return frame, [col("a", frame["a"].tolist()), col("b", frame["b"].tolist())]


def test_params_come_from_the_request_parameters(mlflow_arts):
    frame, inputs = params_inputs()
    rt = loaded(MLflowRuntime, mlflow_arts["params"])
    out = outputs_by_name(infer(rt, inputs, parameters={"scale": 2.0, "mode": "product"}))
    expected = direct(mlflow_arts["params"], frame, {"scale": 2.0, "mode": "product"})
    assert out["total"].data.root == expected["total"].tolist() == [8.0, 2.0, -7.0]
    assert out["label"].data.root == [b"product"] * 3


def test_params_default_to_the_schema_defaults(mlflow_arts):
    frame, inputs = params_inputs()
    out = outputs_by_name(infer(loaded(MLflowRuntime, mlflow_arts["params"]), inputs))
    assert out["total"].data.root == (frame["a"] + frame["b"]).tolist()
    assert out["label"].data.root == [b"sum"] * 3


def test_an_integer_param_for_a_double_is_accepted(mlflow_arts):
    _, inputs = params_inputs()
    out = outputs_by_name(infer(loaded(MLflowRuntime, mlflow_arts["params"]), inputs, {"scale": 3}))
    assert out["total"].data.root == [15.0, 7.5, 7.5]


def test_a_param_sent_as_text_is_read_as_its_type(mlflow_arts):
    _, inputs = params_inputs()
    out = outputs_by_name(infer(loaded(MLflowRuntime, mlflow_arts["params"]), inputs, {"scale": "0.5"}))
    assert out["total"].data.root == [2.5, 1.25, 1.25]


def test_a_param_without_value_is_a_400(mlflow_arts):
    _, inputs = params_inputs()
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["params"]), inputs, {"scale": None})
    assert "parameter 'scale' has no value" in msg


def test_an_unknown_param_is_a_400_listing_the_known_ones(mlflow_arts):
    _, inputs = params_inputs()
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["params"]), inputs, {"temperature": 0.5})
    assert "unknown parameter 'temperature'" in msg and "scale, mode" in msg


def test_a_param_of_the_wrong_type_is_a_400(mlflow_arts):
    _, inputs = params_inputs()
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["params"]), inputs, {"scale": "big"})
    assert msg == "parameter 'scale': expected double, got 'big'"


def test_params_for_a_model_without_params_are_a_400(mlflow_arts):
    _, inputs = iris_columns()
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["columns"]), inputs, {"scale": 2})
    assert "unknown parameter 'scale'" in msg and "no params" in msg


def test_content_type_is_not_a_param(mlflow_arts):
    _, inputs = iris_columns()
    assert infer(loaded(MLflowRuntime, mlflow_arts["columns"]), inputs, {"content_type": "pd"}).outputs


# -- outputs -----------------------------------------------------------------------------------------
def test_a_dataframe_result_is_one_output_per_column(mlflow_arts):
    rt = loaded(MLflowRuntime, mlflow_arts["params"])
    assert [(o.name, o.datatype) for o in rt.outputs] == [("total", "FP64"), ("label", "BYTES")]
    out = infer(rt, params_inputs()[1]).outputs
    assert [(o.name, o.datatype, o.shape) for o in out] == [("total", "FP64", [3]), ("label", "BYTES", [3])]


def test_requested_outputs_are_the_ones_returned(mlflow_arts):
    out = infer(loaded(MLflowRuntime, mlflow_arts["params"]), params_inputs()[1], outputs=[{"name": "label"}]).outputs
    assert [o.name for o in out] == ["label"]


def test_an_unknown_requested_output_is_a_400(mlflow_arts):
    msg = bad_request(infer, loaded(MLflowRuntime, mlflow_arts["params"]), params_inputs()[1], None, [{"name": "nope"}])
    assert "unknown output 'nope'" in msg and "total, label" in msg


def test_without_a_signature_one_input_is_an_array_and_several_a_frame(mlflow_arts):
    rt = loaded(MLflowRuntime, mlflow_arts["nosig"])
    assert rt.inputs == [] and rt.outputs == []
    tensor = {"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}
    out = infer(rt, [tensor]).outputs
    assert [(o.name, o.datatype, o.shape, o.data.root) for o in out] == [
        ("predict", "INT64", [2, 2], [1, 2, 3, 4])]
    out = outputs_by_name(infer(rt, [col("a", [1.5, 2.5]), col("b", ["u", "v"], "BYTES")]))
    assert out["a"].data.root == [1.5, 2.5] and out["b"].data.root == [b"u", b"v"]


# -- MLflow's scoring protocol -----------------------------------------------------------------------
def invoke(rt: MLflowRuntime, body):
    return asyncio.run(rt._invocations(body))


def test_invocations_accept_the_four_body_formats(mlflow_arts):
    frame, _ = iris_columns(slice(48, 53))
    rt = loaded(MLflowRuntime, mlflow_arts["columns"])
    expected = {"predictions": direct(mlflow_arts["columns"], frame).tolist()}
    bodies = [
        {"dataframe_split": frame.to_dict(orient="split", index=False)},
        {"dataframe_records": frame.to_dict(orient="records")},
        {"instances": frame.to_dict(orient="records")},
        {"inputs": frame.to_dict(orient="list")},
    ]
    for body in bodies:
        assert invoke(rt, body) == expected, body


def test_invocations_take_params_and_answer_records(mlflow_arts):
    frame = params_frame()
    body = {"dataframe_split": frame.to_dict(orient="split", index=False), "params": {"scale": 10.0}}
    preds = invoke(loaded(MLflowRuntime, mlflow_arts["params"]), body)["predictions"]
    assert preds == [{"total": 50.0, "label": "sum"}, {"total": 25.0, "label": "sum"},
                     {"total": 25.0, "label": "sum"}]


def test_invocations_ignore_fields_they_do_not_know_as_mlflow_does(mlflow_arts):
    body = {"inputs": {"a": [1.0], "b": [2.0]}, "client_request_id": "abc"}
    assert invoke(loaded(MLflowRuntime, mlflow_arts["params"]), body) == {
        "predictions": [{"total": 3.0, "label": "sum"}]}


def test_invocations_on_a_tensor_model(mlflow_arts):
    X, _ = iris_xy()
    expected = direct(mlflow_arts["tensor"], X[:2].astype(np.float32))
    for body in ({"instances": X[:2].tolist()}, {"inputs": X[:2].tolist()}):
        np.testing.assert_allclose(invoke(loaded(MLflowRuntime, mlflow_arts["tensor"]), body)["predictions"], expected,
                                   rtol=1e-6)


@pytest.mark.parametrize("body, words", [
    ([1, 2], "JSON object"),
    (None, "JSON object"),
    ({"data": [[1, 2]]}, "exactly one of"),
    ({"inputs": [], "instances": []}, "exactly one of"),
    ({"inputs": {"a": [1.0], "b": [2.0]}, "params": [1]}, '"params" must be a JSON object'),
    ({"inputs": {"a": [1.0], "b": [2.0]}, "params": {"nope": 1}}, "unknown parameter 'nope'"),
    ({"inputs": {"a": [1.0], "b": [2.0]}, "params": {"scale": "x"}}, "parameter 'scale'"),
    ({"dataframe_split": {"columns": ["a", "b"], "data": [["x", 1.0]]}}, "dataframe_split"),
    ({"dataframe_split": "nonsense"}, "dataframe_split"),
    ({"inputs": {"a": [1.0]}}, "b"),
])
def test_a_bad_invocations_body_is_a_400(mlflow_arts, body, words):
    msg = bad_request(invoke, loaded(MLflowRuntime, mlflow_arts["params"]), body)
    assert words in msg


def test_the_bare_invocations_route_can_be_left_to_another_model(mlflow_arts):
    assert hasattr(make_runtime(MLflowRuntime, mlflow_arts["columns"]), "mlflow_invocations")
    rt = make_runtime(MLflowRuntime, mlflow_arts["columns"], name="quiet", root_invocations=False)
    assert not hasattr(rt, "mlflow_invocations") and hasattr(rt, "mlflow_model_invocations")


# -- loading -----------------------------------------------------------------------------------------
def test_a_folder_without_mlmodel_fails_the_load_naming_it(tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"x")
    msg = load_error(MLflowRuntime, tmp_path)
    assert "no MLmodel file in" in msg and str(tmp_path) in msg


def test_a_file_uri_fails_the_load(tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"x")
    assert "is a file" in load_error(MLflowRuntime, tmp_path / "model.pkl")


def test_a_missing_path_fails_the_load(tmp_path):
    assert "not found" in load_error(MLflowRuntime, tmp_path / "nowhere")


def test_a_broken_mlmodel_fails_the_load_on_one_line(tmp_path, mlflow_arts):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(mlflow_arts["columns"], model)
    (model / "MLmodel").write_text("flavors: [unclosed\n  : - :\n")
    msg = load_error(MLflowRuntime, model)
    assert f"{model / 'MLmodel'} is not valid YAML" in msg and "line 2" in msg


def test_an_mlmodel_without_pyfunc_flavour_fails_the_load(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors:\n  keras: {}\n")
    assert "python_function" in load_error(MLflowRuntime, model)


def test_an_unknown_option_fails_the_load_naming_it(mlflow_arts):
    msg = load_error(MLflowRuntime, mlflow_arts["columns"], root_invocation=False)
    assert "unknown option 'root_invocation'" in msg and "root_invocations" in msg


def test_the_uri_may_name_the_mlmodel_file(mlflow_arts):
    rt = loaded(MLflowRuntime, mlflow_arts["columns"] / "MLmodel")
    assert [i.name for i in rt.inputs] == COLUMNS


# -- pickles ----------------------------------------------------------------------------------------
def test_mlflow_flavours_that_unpickle_are_named():
    assert pickled_flavors({"flavors": {"sklearn": {"serialization_format": "cloudpickle"},
                                        "python_function": {"loader_module": "mlflow.sklearn"}}}) == [
        "sklearn: cloudpickle"]
    assert pickled_flavors({"flavors": {"python_function": {"python_model": "python_model.pkl"}}}) == [
        "python_function: cloudpickled python_model"]
    assert pickled_flavors({"flavors": {"sklearn": {"serialization_format": "skops"}}}) == []
    assert pickled_flavors({"flavors": {"python_function": {"model_code_path": "m.py"}}}) == []
    assert pickled_flavors(None) == [] and pickled_flavors({"flavors": "junk"}) == []


def test_mlflow_pickled_model_is_logged_as_unsafe_before_loading(tmp_path, caplog):
    (tmp_path / "MLmodel").write_text("flavors:\n  sklearn:\n    serialization_format: pickle\n"
                                      "    pickled_model: model.pkl\n")
    with caplog.at_level(logging.WARNING, logger="mlserver.modelserve"), pytest.raises(Exception):
        _load_pyfunc("m", tmp_path)  # no loadable model here: only the warning is looked at
    assert any("pickle" in r.getMessage() and "skops" in r.getMessage() for r in caplog.records)


def test_importing_the_runtime_does_not_import_mlflow():
    code = "import sys, modelserve.mlflow; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
