"""What `up` created, on disk, so `down` removes exactly that, even after a failed `up`.

Everything the testbed makes lives inside its namespaces (veths, the bridge, addresses, routes,
nft tables, sysctls, qdiscs), so the namespaces are the unit of cleanup. `up` records a
namespace in the state file *before* creating it (write-ahead): whatever point `up` dies at,
the file names a superset of what exists, and `down` deletes what of it is there.
The file is replaced atomically (write, fsync, rename), never left half-written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ims.testbed.errors import StateUnreadable, TestbedUsageError
from ims.testbed.topology import TestbedOptions

DEFAULT_STATE_DIR = Path("/run/ueconnect")  # tmpfs: a reboot, which removes namespaces, too
STATE_FILE = "testbed.json"
FORMAT = 1


@dataclass(frozen=True)
class TestbedState:
    """`complete` is False from the first step of `up` until its last succeeded."""

    __test__ = False

    options: TestbedOptions
    namespaces: tuple[str, ...] = ()
    complete: bool = False
    warnings: tuple[str, ...] = ()

    def with_namespace(self, name: str) -> TestbedState:
        if name in self.namespaces:
            return self
        return replace(self, namespaces=(*self.namespaces, name))

    def as_json(self) -> dict[str, object]:
        return {"format": FORMAT, "options": self.options.as_json(),
                "namespaces": list(self.namespaces), "complete": self.complete,
                "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, data: object) -> TestbedState:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"expected a JSON object with format {FORMAT}")
        options, names = data.get("options"), data.get("namespaces")
        if not isinstance(options, dict) or not isinstance(names, list):
            raise ValueError("missing options or namespaces")
        opts = TestbedOptions.from_json(options)
        if not all(isinstance(n, str) and n.startswith(opts.prefix) for n in names):
            # Never let a tampered file make `down` delete a namespace that is not ours.
            raise ValueError(f"a namespace name does not start with {opts.prefix!r}")
        return cls(options=opts, namespaces=tuple(names), complete=bool(data.get("complete")),
                   warnings=tuple(str(w) for w in data.get("warnings", [])))


class StateFile:
    """The state file `testbed.json` in `directory` (created 0700 when missing)."""

    def __init__(self, directory: Path = DEFAULT_STATE_DIR) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def load(self) -> TestbedState | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateUnreadable(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            return TestbedState.from_json(json.loads(text))
        except (ValueError, TestbedUsageError) as exc:
            raise StateUnreadable(
                f"{self.path} is not a testbed state file ({exc}); remove the namespaces it "
                "names with `ip netns del NAME` and delete the file") from None

    def save(self, state: TestbedState) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(state.as_json(), out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
