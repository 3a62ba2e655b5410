"""What every process of a node sets up before it serves (``runtime.configure_process``).

Each check runs in a fresh interpreter: the settings are the process's own.
"""

from __future__ import annotations

import json
import subprocess
import sys

from mailgate.runtime._process import GC_THRESHOLDS, GIL_SWITCH_INTERVAL_SECONDS

SET_UP = """
import gc, json, logging, sys
from mailgate.config import Settings
from mailgate.runtime import configure_process, freeze_startup_objects
before = gc.get_freeze_count()
configure_process(Settings())
freeze_startup_objects()
print(json.dumps({
    "thresholds": gc.get_threshold(),
    "frozen_before": before,
    "frozen": gc.get_freeze_count(),
    "switch": sys.getswitchinterval(),
    "level": logging.getLogger().level,
}))
"""


def test_a_process_sets_up_the_collector_the_gil_and_logging() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SET_UP], capture_output=True, text=True, check=True, timeout=60
    )
    facts = json.loads(done.stdout)
    assert tuple(facts["thresholds"]) == GC_THRESHOLDS
    assert facts["thresholds"][0] > 700  # Python's default young threshold
    # What the process made while starting is left out of later collections.
    assert facts["frozen_before"] == 0
    assert facts["frozen"] > 10_000
    assert facts["switch"] == GIL_SWITCH_INTERVAL_SECONDS
    assert facts["level"] == 20  # info, the default log level
