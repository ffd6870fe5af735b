"""Benchmarks of the real stack (`python -m bench`, `make bench`): measured figures against targets.

Every benchmark starts real processes (nats-server, nginx, mock MLNodes in fleet mode, mock_chain
and the three services), drives them over their real protocols and times what happens with the
processes' own clocks on this one machine. Where a comparison exists it runs in the same run,
side by side, because absolute times on a shared machine drift.
"""
