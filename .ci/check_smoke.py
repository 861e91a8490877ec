"""Check that `lifecycle smoke --json` on the example workspace reproduced its known verdicts.

The example pins the two Q4_K_M variants (production) and refuses the two requantized Q4_0
candidates (under the suite's thresholds: free 40%, schema 50%); it also pins harbor-kb, the
knowledge-base retrieval suite on the same weights mean-pooled (its vectors in a sidecar).
Refusing a candidate is the tool doing its job, not a failure: smoke exits 0. Anything else
— a regression against the committed baselines, a pinned variant refused, an engine failure,
a changed lock — is a real failure and fails CI. The base model is prompted few-shot in a
completion format, so its free-mode answers end at the newline: every pinned variant's
free-mode output must parse as JSON (with the old chat-turn TEMPLATE none did; see
modelfiles/harbor-triage-chat.Modelfile).
"""

from __future__ import annotations

import json
import sys

PINNED = {"harbor-triage:q4_k_m-ctx1024", "harbor-triage:q4_k_m-ctx2048", "harbor-kb"}
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
    with open(smoke["run"], encoding="utf-8") as handle:
        run = json.load(handle)
    free = [s for s in run["summaries"] if s["variant"] in PINNED and s["mode"] == "free"]
    for summary in free:
        if summary["json_valid_rate"] != 1.0:
            problems.append(
                f"{summary['variant']} free mode: JSON-valid {summary['json_valid_rate']:.0%}, "
                "expected 100% (does the TEMPLATE still end answers at the stop?)"
            )
    for problem in problems:
        print(f"smoke: {problem}", file=sys.stderr)
    print(f"smoke: {'OK' if not problems else 'FAILED'} — {smoke['summary']}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
