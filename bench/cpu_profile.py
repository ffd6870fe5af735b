"""`python -m bench.cpu_profile OUT MODULE`: run MODULE as `__main__` under cProfile, timed in CPU.

`python -m cProfile` times with the wall clock, so on a shared 2-core machine a process that is
preempted shows the wait inside whatever call it was in (a socket send "costing" 0.25 ms). The
benchmarks' profiles measure CPU time, which is what the targets are about. The stats are
written when the module returns or is interrupted (SIGINT), as cProfile does.
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    out, module = sys.argv[1], sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
