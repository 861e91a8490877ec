"""Check that `lifecycle smoke --json` on the example workspace reproduced its known verdicts.

The example pins the two Q4_K_M variants (production) and refuses the two requantized Q4_0
candidates (schema-mode pass rate 33%, under the suite's 50% threshold). Refusing a candidate
is the tool doing its job, not a failure: smoke exits 0. Anything else — a regression against
the committed baselines, a pinned variant refused, an engine failure, a changed lock — is a
real failure and fails CI.
"""

from __future__ import annotations

import json
import sys

PINNED = {"harbor-triage:q4_k_m-ctx1024", "harbor-triage:q4_k_m-ctx2048"}
REFUSED = {"harbor-triage:q4_0-ctx1024", "harbor-triage:q4_0-ctx2048"}


def main(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        smoke = json.load(handle)
    problems = []
    if smoke["exit_code"] != 0:
        problems.append(f"exit code {smoke['exit_code']}, expected 0 (pins hold, Q4_0 refused)")
    if smoke["gate"]["regressions"]:
        problems.append(f"regressions: {smoke['gate']['regressions']}")
    pins = smoke["pins"]
    if set(pins["refused"]) != REFUSED:
        problems.append(f"refused {sorted(pins['refused'])}, expected {sorted(REFUSED)}")
    kept = set(pins["pinned"]) | set(pins["unchanged"])
    if kept != PINNED:
        problems.append(f"pinned/unchanged {sorted(kept)}, expected {sorted(PINNED)}")
    for check in smoke["gate"]["checks"]:
        if check.get("status") == "fail" and check.get("variant") not in REFUSED:
            problems.append(f"unexpected failed check: {check}")
    for problem in problems:
        print(f"smoke: {problem}", file=sys.stderr)
    print(f"smoke: {'OK' if not problems else 'FAILED'} — {smoke['summary']}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
