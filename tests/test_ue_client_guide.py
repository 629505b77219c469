"""docs/ue-guide.md's complete example runs as written against the embedded world (what
`ueconnect demo --serve` runs: the loopback plan's P-CSCFs, the demo subscribers)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from ims.embedded import EmbeddedWorld

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "ue-guide.md"


def example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    return str(blocks[-1])


def test_the_guide_example_connects_echoes_and_hangs_up(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example(), encoding="utf-8")

    async def main() -> tuple[int, str]:
        async with EmbeddedWorld.start(tmp_path / "world", trace=False) as world:
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(script), cwd=ROOT,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(process.communicate(), 60)
            # The session's relay legs are released once the BYE passed.
            for _ in range(100):
                if not any(op.gateway.open_legs() for op in world.operators.values()
                           if op.gateway is not None):
                    break
                await asyncio.sleep(0.02)
            legs = sum(len(op.gateway.open_legs()) for op in world.operators.values()
                       if op.gateway is not None)
            assert legs == 0
            return process.returncode or 0, out.decode()

    code, out = asyncio.run(main())
    assert code == 0, out
    assert "Path(kind='relay'" in out, out
    assert "100 moves echoed" in out and "the peer ended the session (BYE)" in out, out
