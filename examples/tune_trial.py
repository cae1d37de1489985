#!/usr/bin/env python3
"""A trial written in Python for `manta tune` (examples/tune-command.toml).

Hyper-parameters arrive as arguments (--x=0.3 --y=-1.2) and as environment
variables (MANTA_PARAM_X, ...). Each `name=value` line on stdout is one
result, read as it is printed. The checkpoint directory survives retries
and `manta tune --resume`: the trial saves its step there and continues
from it.
"""
import json
import os
import sys

params = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
x, y = float(params["x"]), float(params["y"])
ckpt = os.path.join(os.environ["MANTA_CHECKPOINT_DIR"], "state.json")
step = 0
if os.path.exists(ckpt):
    with open(ckpt) as f:
        step = json.load(f)["step"]
steps = 20
while step < steps:
    step += 1
    # A noisy descent towards f(x, y) = (x - 1)^2 + (y + 2)^2.
    loss = (x - 1) ** 2 + (y + 2) ** 2 + 4.0 / step
    with open(ckpt + ".tmp", "w") as f:
        json.dump({"step": step}, f)
    os.replace(ckpt + ".tmp", ckpt)
    print(f"iteration={step} loss={loss:.6f}", flush=True)
