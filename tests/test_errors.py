"""errors.py's additions to MLServer's gRPC side: our 503 and 504 get their own gRPC statuses (MLServer maps only
400/404/422/500), and raw_input_contents that do not fit their tensors are a BadRequest, not an INTERNAL."""

from __future__ import annotations

import struct

import pytest

from modelserve.errors import BadRequest


def test_grpc_statuses_for_503_and_504_and_raw_contents_that_do_not_fit():
    import grpc
    from mlserver.grpc import converters, dataplane_pb2 as pb
    from mlserver.grpc.utils import STATUS_CODE_MAPPING

    assert STATUS_CODE_MAPPING[503] == grpc.StatusCode.UNAVAILABLE
    assert STATUS_CODE_MAPPING[504] == grpc.StatusCode.DEADLINE_EXCEEDED
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1, 4])
    short = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[struct.pack("<3d", 1, 2, 3)])
    with pytest.raises(BadRequest, match="raw_input_contents"):
        converters.ModelInferRequestConverter.to_types(short)
    missing = pb.ModelInferRequest(model_name="m", inputs=[tensor, tensor],
                                   raw_input_contents=[struct.pack("<4d", 1, 2, 3, 4)])
    with pytest.raises(BadRequest, match="raw_input_contents"):
        converters.ModelInferRequestConverter.to_types(missing)
    good = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[struct.pack("<4d", 1, 2, 3, 4)])
    assert converters.ModelInferRequestConverter.to_types(good).inputs[0].data.root == [1, 2, 3, 4]
