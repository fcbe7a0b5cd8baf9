"""The stack's ceiling: an MLModel that does no work and returns a fixed tiny response.

Served as ``noop.NoopModel`` (the benchmark puts benchmarks/ on the server's PYTHONPATH). Whatever a
real runtime reaches relative to this is the share of MLServer's own per-request cost (HTTP, JSON,
pydantic, the dataplane, metrics) it leaves intact.
"""

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class NoopModel(MLModel):
    async def load(self) -> bool:
        self._response = InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="predict", shape=[1], datatype="INT64", data=[0])],
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return self._response
