"""Import-direction check (run by `make check` and by tests/test_import_direction.py).

agent -> ledger, agent -> firmware_sim; ledger and firmware_sim import nothing of ours, and no
package imports tests or bench. Walks every module's AST, including imports inside functions.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"agent", "ledger", "firmware_sim", "tests", "bench"}
ALLOWED = {
    "ledger": {"ledger"},
    "firmware_sim": {"firmware_sim"},
    "agent": {"agent", "ledger", "firmware_sim"},
}


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top in OURS and top not in allowed:
                        rel = path.relative_to(root)
                        found.append(f"{rel}:{node.lineno}: {package} must not import {name}")
    return found


def main() -> int:
    bad = violations()
    for line in bad:
        print(line)
    if bad:
        print(f"import direction: {len(bad)} violation(s)")
        return 1
    print("import direction: ok (ledger and firmware_sim import nothing of ours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
