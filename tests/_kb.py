"""A small retrieval workspace for the embedding tests: ten help snippets, six queries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DOCS = [
    ("refund", "Refunds are issued to the original card within five business days."),
    ("invoice", "Invoices can be downloaded as PDF from the Billing page."),
    ("sso", "Single sign-on uses SAML; your admin configures the identity provider."),
    ("api500", "HTTP 500 from the API means our service failed; retry with backoff."),
    ("seats", "Volume pricing starts at 50 seats; ask sales for a quote."),
    ("trial", "A free trial lasts 14 days and needs no card."),
    ("password", "Reset your password from the sign-in page with the Forgot link."),
    ("outage", "Check status.example.com for outages and incident updates."),
    ("tax", "VAT is added to invoices for customers in the EU."),
    ("demo", "Book a product demo with our sales team any weekday."),
]
QUERIES = [
    ("q-refund", "Refunds are issued to the original card within five business days?", ["refund"]),
    ("q-invoice", "Invoices can be downloaded as PDF from the Billing page?", ["invoice"]),
    ("q-sso", "Single sign-on uses SAML; the admin configures the identity provider", ["sso"]),
    ("q-api", "HTTP 500 from the API means the service failed; retry with backoff", ["api500"]),
    ("q-seats", "Volume pricing starts at 50 seats; ask sales for a quote please", ["seats"]),
    ("q-trial", "A free trial lasts 14 days and needs no card!", {"trial": 2, "seats": 1}),
]
SUITE = """kind = "embedding"
corpus = "../golden/kb-corpus.jsonl"
queries = "../golden/kb-queries.jsonl"
k = 3
[threshold]
hit_rate = 0.5
mrr = 0.5
"""


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_kb_workspace(root: Path, gguf: Path, *, config: str = "", modelfile: str = "") -> Path:
    """A workspace at ``root``: model ``kb`` (Modelfile FROM ./emb.gguf plus ``modelfile``)
    running suite ``kb``; ``config`` is appended to lifecycle.toml."""
    for sub in ("modelfiles", "golden", "evals"):
        (root / sub).mkdir(parents=True)
    shutil.copy(gguf, root / "modelfiles" / "emb.gguf")
    (root / "modelfiles" / "kb.Modelfile").write_text(
        "FROM ./emb.gguf\n" + modelfile, encoding="utf-8"
    )
    write_jsonl(root / "golden" / "kb-corpus.jsonl", [{"id": i, "text": t} for i, t in DOCS])
    write_jsonl(
        root / "golden" / "kb-queries.jsonl",
        [{"id": i, "text": t, "relevant": r} for i, t, r in QUERIES],
    )
    (root / "evals" / "kb.toml").write_text(SUITE, encoding="utf-8")
    (root / "lifecycle.toml").write_text(
        '[engine]\nthreads = 1\n\n[models.kb]\nmodelfile = "modelfiles/kb.Modelfile"\n'
        'suites = ["kb"]\n' + config,
        encoding="utf-8",
    )
    return root
