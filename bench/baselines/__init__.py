"""Baselines that behave like the original implementation, for side-by-side benchmarks.

`original_broker` is a broker written the way the original API node handles a version switch
(gonka-facts sections 4.3, 4.4 and 4.7), so the zero-downtime benchmark can put our broker's
figures next to the behaviour it replaces, in the same run, on the same machine.
"""
