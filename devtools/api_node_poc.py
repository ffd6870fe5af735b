"""The proof-of-compute bodies the real API node's Go client sends (decentralized-api v0.2.4:
`InitGenerate`'s `InitDto`, `ValidateBatch`'s `ProofBatch`), for the demo and the benchmarks to
drive PoC through the broker as it does. `integration_tests/real_clients/mlnode_requests.json`
holds the same requests; a unit test keeps them equal.
"""

from __future__ import annotations

from typing import Any

__all__ = ["POW_INIT_BODY", "PROOF_BATCH", "init_body", "proof_batch"]

POW_INIT_BODY: dict[str, Any] = {
    "block_hash": "8a3f",
    "block_height": 120,
    "public_key": "A1b2",
    "batch_size": 100,
    "r_target": 1.4013564660458173,
    "fraud_threshold": 1e-7,
    "params": {
        "dim": 1792,
        "n_layers": 64,
        "n_heads": 64,
        "n_kv_heads": 64,
        "vocab_size": 8196,
        "ffn_dim_multiplier": 10.0,
        "multiple_of": 8192,
        "norm_eps": 1e-5,
        "rope_theta": 10000,
        "use_scaled_rope": False,
        "seq_len": 256,
    },
    "node_id": 0,
    "node_count": 1,
    "url": "http://api-private:9100/v1/poc-batches",  # the API node's own callback, unversioned
}
PROOF_BATCH: dict[str, Any] = {
    "public_key": "B2c3",
    "block_hash": "8a3f",
    "block_height": 120,
    "nonces": [1, 5, 9],
    "dist": [0.91, 0.88, 0.97],
    "node_id": 3,
}


def init_body(block_height: int) -> dict[str, Any]:
    """`InitDto` for a round starting at `block_height`."""
    return {**POW_INIT_BODY, "block_height": block_height, "block_hash": f"{block_height:064x}"}


def proof_batch(block_height: int, nonces: list[int]) -> dict[str, Any]:
    """A peer's `ProofBatch` of that round, one distance per nonce."""
    return {
        **PROOF_BATCH,
        "block_height": block_height,
        "block_hash": f"{block_height:064x}",
        "nonces": nonces,
        "dist": [0.9] * len(nonces),
    }
