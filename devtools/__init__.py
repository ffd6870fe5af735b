"""What the CLI, the tests and the benchmarks use to run a local stack; services never import it.

Embedded NATS, nginx (config and process), the generated docs and files, one process launcher
and one per-service environment wiring live here so that `shared/` holds only what the services run.
"""
