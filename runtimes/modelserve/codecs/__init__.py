"""V2 tensors to model inputs and back, on top of MLServer's own codecs, with errors that name the tensor."""

from .tensors import decode_array, decode_column, encode_array, text_rows
from .v1 import v1_request_to_v2, v2_response_to_v1

__all__ = ["decode_array", "decode_column", "encode_array", "text_rows", "v1_request_to_v2", "v2_response_to_v1"]
