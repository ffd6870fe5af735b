"""A supervisor with one long-running child, for the test that kills the supervisor itself.

python -m integration_tests.procs.supervised LOG_DIR PID_FILE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cli.supervisor import ProcessSpec, Supervisor

if __name__ == "__main__":
    log_dir, pid_file = Path(sys.argv[1]), Path(sys.argv[2])
    sup = Supervisor(log_dir)
    sup.start(ProcessSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"]))
    pid_file.write_text(str(sup.pids()["sleeper"]))
    while True:
        sup.check()
        time.sleep(0.1)
