"""What every benchmark writes beside its figures: the machine it ran on."""

from __future__ import annotations

import os
import platform


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
