"""Calls `manta serve --config examples/serve-digits.toml` with Triton's
Python client, unchanged, over gRPC (port 8081) and REST (port 8080).

    pip install 'tritonclient[grpc,http]'
    python3 examples/serve_client.py [GRPC_HOST:PORT] [HTTP_HOST:PORT]
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

grpc_url = sys.argv[1] if len(sys.argv) > 1 else "localhost:8081"
http_url = sys.argv[2] if len(sys.argv) > 2 else "localhost:8080"

# One 8x8 digit (a zero), 64 pixels scaled to 0..1, row-major.
zero = np.array(
    [[0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11,
      8, 0, 0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1,
      12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]],
    dtype=np.float32,
) / 16.0

# gRPC: the input travels in raw_input_contents, the outputs come back raw.
client = grpcclient.InferenceServerClient(grpc_url)
assert client.is_server_live() and client.is_server_ready()
assert client.is_model_ready("digits")
meta = client.get_model_metadata("digits")
print("grpc metadata:", meta.name, list(meta.versions), [i.name for i in meta.inputs])
inp = grpcclient.InferInput("input", list(zero.shape), "FP32")
inp.set_data_from_numpy(zero)
result = client.infer(
    "digits",
    [inp],
    request_id="1",
    outputs=[grpcclient.InferRequestedOutput("logits"), grpcclient.InferRequestedOutput("label")],
)
print("grpc: id", result.get_response().id, "label", result.as_numpy("label"),
      "logits", result.as_numpy("logits").shape)

# REST with the client's defaults: the input and the outputs travel as
# binary tensor data (Triton's binary_tensor_data extension).
client = httpclient.InferenceServerClient(http_url)
assert client.is_server_live() and client.is_server_ready()
inp = httpclient.InferInput("input", list(zero.shape), "FP32")
inp.set_data_from_numpy(zero)
result = client.infer(
    "digits",
    [inp],
    request_id="2",
    outputs=[httpclient.InferRequestedOutput("logits"), httpclient.InferRequestedOutput("label")],
)
print("http (binary): id", result.get_response()["id"], "label", result.as_numpy("label"),
      "logits", result.as_numpy("logits").shape)

# REST with JSON tensors.
inp = httpclient.InferInput("input", list(zero.shape), "FP32")
inp.set_data_from_numpy(zero, binary_data=False)
result = client.infer(
    "digits", [inp], outputs=[httpclient.InferRequestedOutput("label", binary_data=False)]
)
print("http (json): label", result.as_numpy("label"))
