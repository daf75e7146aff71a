"""A local object store that fails on purpose, for the soak benchmark and fault tests (RADSTREAM_FAULTS).

It fails the way the real stores fail, below the translation layer, so what is exercised is the product's
own handling: a full disk (ENOSPC) and a timeout reach LocalObjectStore's OSError mapping; a throttle is
S3's SlowDown passed through the one AWS error table.
"""

from __future__ import annotations

import errno
import random
import threading
from pathlib import Path
from typing import BinaryIO

from botocore.exceptions import ClientError

from shared.aws_errors import translate
from shared.errors import ConfigurationError
from shared.storage import LocalObjectStore

KINDS = ("enospc", "throttle", "timeout", "eio")


def parse_faults(spec: str) -> tuple[dict[str, float], int]:
    """ "enospc=0.02,throttle=0.01,seed=7" -> ({"enospc": 0.02, "throttle": 0.01}, 7)."""
    rates: dict[str, float] = {}
    seed = 0
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if name == "seed" and number >= 0:
            seed = int(number)
        elif name in KINDS and 0.0 <= number <= 1.0:
            rates[name] = number
        else:
            raise ConfigurationError(f"RADSTREAM_FAULTS: {part!r} is not one of {', '.join(KINDS)}=RATE (0..1) or seed=N")
    return rates, seed


class FaultyObjectStore(LocalObjectStore):
    def __init__(self, root: Path, spec: str) -> None:
        super().__init__(root)
        self.rates, seed = parse_faults(spec)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {kind: 0 for kind in KINDS}

    def _draw(self, kinds: tuple[str, ...]) -> str | None:
        with self._lock:
            roll = self._random.random()
            for kind in kinds:
                rate = self.rates.get(kind, 0.0)
                if roll < rate:
                    self.injected[kind] += 1
                    return kind
                roll -= rate
        return None

    def _fail(self, kind: str | None, what: str) -> None:
        if kind == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        if kind == "eio":
            raise OSError(errno.EIO, "Input/output error (injected)")
        if kind == "timeout":
            raise TimeoutError(errno.ETIMEDOUT, "timed out (injected)")
        if kind == "throttle":
            mapped = translate(ClientError({"Error": {"Code": "SlowDown", "Message": "injected"}}, "PutObject"), what)
            assert mapped is not None
            raise mapped

    def _write(self, target: Path, data: bytes) -> None:
        self._fail(self._draw(("enospc", "throttle", "timeout")), str(target))
        super()._write(target, data)

    def _copy(self, source: BinaryIO, target: Path) -> int:
        self._fail(self._draw(("enospc", "throttle", "timeout")), str(target))
        return super()._copy(source, target)

    def _read(self, path: Path) -> bytes:
        self._fail(self._draw(("eio", "throttle", "timeout")), str(path))
        return super()._read(path)
