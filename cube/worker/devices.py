"""Which devices this node offers to tasks: the paths it advertises in its stats (`devices`), which the manager
keeps on its `Node` so that a task that passes a device in is placed only where that device is. The worker scans a
fixed set of paths where the hardware a LAN service wants shows up (serial sticks, cameras, GPUs, sound, GPIO, I2C,
SPI, Coral and NVIDIA accelerators, loop devices), plus the paths given with `cube worker --device`; each is
advertised while it exists, so a stick plugged in or pulled out is seen within `ttl` seconds.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterable

PATTERNS = (
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/fuse",
    "/dev/kvm",
    "/dev/net/tun",
    "/dev/loop-control",
    "/dev/loop[0-9]*",
    "/dev/ttyUSB*",
    "/dev/ttyACM*",
    "/dev/ttyAMA*",
    "/dev/serial[0-9]",
    "/dev/serial/by-id/*",
    "/dev/bus/usb",
    "/dev/hidraw*",
    "/dev/video*",
    "/dev/media*",
    "/dev/vchiq",
    "/dev/dri",
    "/dev/dri/*",
    "/dev/snd",
    "/dev/i2c-*",
    "/dev/gpiomem*",
    "/dev/gpiochip*",
    "/dev/spidev*",
    "/dev/apex_*",
    "/dev/nvidia*",
)
MAX_DEVICES = 1024  # the manager's bound (cube.core.model.MAX_NODE_DEVICES); a machine with more is cut here


class DeviceScan:
    """The device paths present now, among `patterns` and `extra`; a scan (a few directory listings, ~1 ms) is
    reused for `ttl` seconds, since the worker's stats go out with every answer to the manager's poll."""

    def __init__(
        self,
        extra: Iterable[str] = (),
        patterns: Iterable[str] = PATTERNS,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        exists: Callable[[str], bool] = os.path.exists,
    ):
        self.extra = tuple(extra)
        self.patterns = tuple(patterns)
        self.ttl = ttl
        self.clock = clock
        self.exists = exists
        self._at: float | None = None
        self._paths: list[str] = []

    def paths(self) -> list[str]:
        now = self.clock()
        if self._at is None or now - self._at >= self.ttl:
            found = {path for pattern in self.patterns for path in glob.glob(pattern)}
            found |= {path for path in self.extra if self.exists(path)}
            self._paths, self._at = sorted(found)[:MAX_DEVICES], now
        return list(self._paths)
