"""The mock MLNode's routes, one router per area of the real API, in the order `create_app` mounts them.

They answer what the real MLNode (v3.0.8, gonka v0.2.4) answers to the real API node's requests:
JSON bodies read without a Content-Type, `inference/up/status` with the real status values,
`/health` and `/readyz` 200 while a model loads, the GPU and model-cache routes, the PoW and
training answers as the real routes write them. Where it differs, on purpose:

- One port serves the management routes and vLLM's (`/v1/*`, `/tokenize`), as the real port
  8080 does. The real backward-compatibility port 5000, on which nothing listens until vLLM is
  up, is not modelled, so `/health` here is always the management health; the broker therefore
  judges "serving" by `/v1/models`, which behaves the same on both real ports.
- The versions of a node share a GPU lock, so a second version cannot take a GPU in use. The
  real MLNode has no such lock: the load fails in CUDA and FastAPI answers a bare 500, which is
  what `gpu_busy_status=500` (the default) answers; 409 names the holder, for debugging.
- `/health` is not cached for 5 s as the real one is: tests would only wait longer.
- No signature check on the GPU and model routes (later MLNodes have one) and no watchdog exit.
- The `/mock/*` control API and the `x-mlnode-version` / `x-mlnode-node` answer headers.

Each route finds its instance through `deps.InstanceDep`; the routes of a real service router
(inference, PoW, training) also run its 409 conflict check, `deps.conflicts_with`.
"""

from __future__ import annotations

from fastapi import APIRouter

from mock_mlnode.routes import control, gpu, health, inference, management, models, pow, train, vllm

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    management.router,
    inference.router,
    pow.router,
    train.router,
    health.router,
    gpu.router,
    models.router,
    vllm.router,
    control.router,
)
