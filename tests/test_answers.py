"""Answers cached per case (lifecycle.answers): keys, reuse rules, the store, its bound.

On the real engine and the tiny model: the num_ctx rule is proven by decoding both context
sizes and comparing the answers byte for byte, sequential and batched; concurrency by two
real processes writing one store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from lifecycle.answers import ANSWERS_DIR, AnswerCache, answer_key, prune
from lifecycle.config import load_workspace
from lifecycle.engines import EngineInfo, Generation, GenerationRequest, LoadOptions
from lifecycle.engines.llama_cpp import LlamaCppEngine
from lifecycle.runner import EvalOptions, run_eval

CliResult = tuple[int, str, str]
PROMPTS = [
    "<start_of_turn>user\nI was charged twice this month.<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nThe API returns HTTP 500.<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nHow much for 200 seats?<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nSend a receipt for INV-2231<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nMy login fails since Monday<end_of_turn>\n<start_of_turn>model\n",
]
SCHEMA = {
    "type": "object",
    "properties": {"category": {"enum": ["billing", "technical", "sales"]}},
    "required": ["category"],
}


def _answers(model_path: Path, n_ctx: int, parallel: int, schema: bool) -> list[tuple]:  # type: ignore[type-arg]
    """Every prompt's answer (text, token count, finish, margins) at one context size."""
    load = LoadOptions(n_ctx=n_ctx, n_threads=2, n_parallel=parallel, seed=7)
    model = LlamaCppEngine().load(model_path, load)
    requests = [
        GenerationRequest(prompt=p, max_tokens=40, seed=7, json_schema=SCHEMA if schema else None)
        for p in PROMPTS
    ]
    out: dict[int, Generation] = {}
    try:
        if parallel > 1:

            def done(i: int, outcome: object) -> None:
                assert isinstance(outcome, Generation), outcome
                out[i] = outcome

            model.generate_batch(requests, done)
        else:
            out = {i: model.generate(r) for i, r in enumerate(requests)}
    finally:
        model.close()
    return [
        (
            out[i].text.encode(),
            out[i].completion_tokens,
            out[i].finish_reason,
            out[i].margin,
            out[i].margin_step,
        )
        for i in range(len(PROMPTS))
    ]


@pytest.mark.parametrize("parallel", [1, 4])
@pytest.mark.parametrize("schema", [False, True])
def test_num_ctx_does_not_change_an_answer_that_fits(
    tiny_model: Path, parallel: int, schema: bool
) -> None:
    """The rule that lets ctx variants share answers: same bytes (and the same decision
    margins, i.e. the same logits) at num_ctx 256 and 2048, one at a time and batched."""
    small = _answers(tiny_model, 256, parallel, schema)
    large = _answers(tiny_model, 2048, parallel, schema)
    assert small == large
    assert any(text for text, *_ in small)


def _key(max_tokens: int = 40, n_ctx: int = 1024, **request: object):  # type: ignore[no-untyped-def]
    req = GenerationRequest(prompt="hello", max_tokens=max_tokens, **request)  # type: ignore[arg-type]
    return answer_key(
        req,
        blob_digest="sha256:" + "a" * 64,
        engine=EngineInfo("llama-cpp", "llama-cpp-python 0", {"ggml_commit": "abc"}),
        load=LoadOptions(n_ctx=n_ctx),
        cpu="test cpu",
    )


def _generation(text: str = '{"a": 1}', *, tokens: int = 5, finish: str = "stop") -> Generation:
    return Generation(
        text=text,
        prompt_tokens=100,
        completion_tokens=tokens,
        prompt_eval_tokens=100,
        prompt_ms=1.0,
        eval_tokens=tokens,
        generation_ms=2.0,
        latency_ms=3.0,
        finish_reason=finish,
        token_logprobs=(-0.5, -0.25),
        token_offsets=(0, 1),
        margin=1.5,
        margin_step=1,
        field_margin=2.5,
    )


def test_everything_that_decides_an_answer_is_in_its_key() -> None:
    base = _key()
    for changed in (
        _key(temperature=0.7),
        _key(seed=1),
        _key(top_k=1),
        _key(top_p=0.5),
        _key(min_p=0.1),
        _key(repeat_penalty=1.1),
        _key(stop=("x",)),
        _key(json_schema=SCHEMA),
        _key(logprobs=True),
        _key(margin_field="category"),
    ):
        assert changed.digest != base.digest
    other_load = answer_key(
        GenerationRequest(prompt="hello", max_tokens=40),
        blob_digest="sha256:" + "a" * 64,
        engine=EngineInfo("llama-cpp", "llama-cpp-python 0", {"ggml_commit": "abc"}),
        load=LoadOptions(n_ctx=1024, type_k="q8_0"),
        cpu="test cpu",
    )
    assert other_load.digest != base.digest
    # The two values matched when an entry is read, not hashed.
    assert _key(max_tokens=10, n_ctx=4096).digest == base.digest


def test_the_whole_generation_comes_back_and_limits_follow_the_rule(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / "answers")
    stopped = _key(max_tokens=40, n_ctx=1024)
    cache.store(stopped, _generation(tokens=5), "run-1")
    hit = cache.lookup(stopped)
    assert hit is not None and hit.generation == _generation(tokens=5) and hit.run_id == "run-1"
    # Stopped after 5 tokens: the answer under any limit above 5 and any context it fits.
    assert cache.lookup(replace(stopped, max_tokens=6)) is not None
    assert cache.lookup(replace(stopped, max_tokens=400, n_ctx=2048)) is not None
    assert cache.lookup(replace(stopped, max_tokens=5)) is None
    assert cache.lookup(replace(stopped, n_ctx=120)) is None  # 100 + 40 does not fit

    truncated = _key(max_tokens=8, n_ctx=1024, seed=3)
    cache.store(truncated, _generation(tokens=8, finish="length"), "run-2")
    assert cache.lookup(replace(truncated, n_ctx=2048)) is not None
    assert cache.lookup(replace(truncated, max_tokens=9)) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda doc: "{not json",
        lambda doc: json.dumps({**doc, "generation": {"text": 1}}),
        lambda doc: json.dumps({**doc, "key": {**doc["key"], "prompt": "other"}}),
        lambda doc: json.dumps({**doc, "max_tokens": 7}),
    ],
    ids=["torn", "bad-generation", "key-disagrees", "limit-disagrees"],
)
def test_a_damaged_entry_is_ignored_with_a_warning(
    tmp_path: Path,
    damage: Callable[[dict], str],  # type: ignore[type-arg]
) -> None:
    warnings: list[str] = []
    cache = AnswerCache(tmp_path / "answers", warn=warnings.append)
    key = _key()
    cache.store(key, _generation(), "run-1")
    (path,) = (tmp_path / "answers").rglob("*.json")
    path.write_text(damage(json.loads(path.read_text())), encoding="utf-8")
    assert cache.lookup(key) is None
    assert len(warnings) == 1 and str(path) in warnings[0] and "regenerating" in warnings[0]


WRITER = """
import sys
from lifecycle.answers import AnswerCache, answer_key
from lifecycle.engines import EngineInfo, Generation, GenerationRequest, LoadOptions
cache = AnswerCache(__import__("pathlib").Path(sys.argv[1]))
me = sys.argv[2]
for i in range(60):
    # Half the keys are shared by both writers (the same case, sharded CI), half their own.
    prompt = f"shared {i}" if i % 2 else f"{me} {i}"
    key = answer_key(GenerationRequest(prompt=prompt, max_tokens=8), blob_digest="d",
        engine=EngineInfo("llama-cpp", "v"), load=LoadOptions(), cpu=None)
    text = "x" * 4000 + prompt
    cache.store(key, Generation(text, 1, 1, 1, 0.0, 1, 0.0, 0.0, "stop"), me)
"""


def test_two_processes_writing_at_once_tear_and_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "answers"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(root), name], env=env)
        for name in ("a", "b")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    cache = AnswerCache(root, warn=pytest.fail)
    for prompt in [f"{m} {i}" for m in "ab" for i in range(0, 60, 2)] + [
        f"shared {i}" for i in range(1, 60, 2)
    ]:
        key = answer_key(
            GenerationRequest(prompt=prompt, max_tokens=8),
            blob_digest="d",
            engine=EngineInfo("llama-cpp", "v"),
            load=LoadOptions(),
            cpu=None,
        )
        hit = cache.lookup(key)
        assert hit is not None and hit.generation.text == "x" * 4000 + prompt
    assert not list(root.rglob("*.tmp"))


def test_prune_removes_unreadable_then_least_recently_used(tmp_path: Path) -> None:
    root = tmp_path / "answers"
    cache = AnswerCache(root)
    keys = [_key(seed=i) for i in range(4)]
    for i, key in enumerate(keys):
        cache.store(key, _generation("y" * 1000), f"run-{i}")
    paths = {k.digest: next((root / k.digest[:2] / k.digest).glob("*.json")) for k in keys}
    for i, key in enumerate(keys):  # ages: key 0 oldest
        os.utime(paths[key.digest], (1000 + i, 1000 + i))
    assert cache.lookup(keys[0]) is not None  # read now: the most recently used
    broken = root / "zz" / ("z" * 40) / "40-1024.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{", encoding="utf-8")
    # Room for exactly two entries (sizes differ by a byte or two: timestamps).
    room = sum(paths[k.digest].stat().st_size for k in (keys[0], keys[3]))
    result = prune(root, max_bytes=room)
    assert (result.invalid, result.removed, result.kept) == (1, 3, 2)
    assert not broken.exists() and not broken.parent.exists()
    kept = {k.digest for k in keys if paths[k.digest].exists()}
    assert kept == {keys[0].digest, keys[3].digest}


def _ctx_variants(root: Path) -> None:
    config = (root / "lifecycle.toml").read_text(encoding="utf-8")
    (root / "lifecycle.toml").write_text(
        config + "[models.tiny.variants]\nnum_ctx = [512, 1024]\n", encoding="utf-8"
    )


def test_eval_reuses_answers_across_runs_ctx_variants_and_new_cases(tiny_workspace: Path) -> None:
    _ctx_variants(tiny_workspace)
    workspace = load_workspace(tiny_workspace)
    options = EvalOptions(resume=False, parallel=1)
    first = run_eval(workspace, options)
    by_variant: dict[str, list] = {}  # type: ignore[type-arg]
    for case in first.cases:
        by_variant.setdefault(case.variant, []).append(case)
    small, large = (v.variant.name for v in first.variants)  # in run order
    # The first variant generates; the second (another num_ctx only) is served its answers.
    assert all(c.cached_from is None for c in by_variant[small])
    assert {c.cached_from for c in by_variant[large]} == {first.run_id}
    assert [c.output for c in by_variant[small]] == [c.output for c in by_variant[large]]
    assert [v.load_ms for v in first.variants][1] == 0.0  # never loaded

    # A threshold edit: nothing is generated, the verdicts are judged again.
    suite = tiny_workspace / "evals" / "triage.toml"
    suite.write_text(
        suite.read_text().replace("threshold = 0.0", "threshold = 0.5"), encoding="utf-8"
    )
    # Two new golden cases: only they are generated (once, for both variants).
    golden = tiny_workspace / "golden" / "triage.jsonl"
    new = [
        {"id": f"new-{i}", "messages": [{"role": "user", "content": text}],
         "expected": {"category": "technical", "confidence": 0.5}}
        for i, text in enumerate(["The app crashes on start", "Password reset mail never came"])
    ]  # fmt: skip
    golden.write_text(golden.read_text() + "".join(json.dumps(c) + "\n" for c in new))
    second = run_eval(load_workspace(tiny_workspace), options)
    generated = sorted((c.variant, c.mode, c.id) for c in second.cases if c.cached_from is None)
    assert generated == sorted((small, m, f"new-{i}") for m in ("free", "schema") for i in (0, 1))
    old = {(c.variant, c.mode, c.id): c.output for c in first.cases}
    assert all(old[(c.variant, c.mode, c.id)] == c.output for c in second.cases if c.id in old)

    # --no-cache: everything generated again, to the same bytes.
    third = run_eval(load_workspace(tiny_workspace), replace(options, answers=False))
    assert all(c.cached_from is None for c in third.cases)
    assert {(c.variant, c.mode, c.id): c.output for c in third.cases} == {
        (c.variant, c.mode, c.id): c.output for c in second.cases
    }


def test_a_corrupt_entry_is_regenerated_on_the_real_engine(tiny_workspace: Path) -> None:
    workspace = load_workspace(tiny_workspace)
    options = EvalOptions(resume=False, modes=["free"], limit=1)
    first = run_eval(workspace, options)
    (path,) = (tiny_workspace / ANSWERS_DIR).rglob("*.json")
    path.write_text(path.read_text()[:50], encoding="utf-8")
    messages: list[str] = []
    second = run_eval(workspace, options, progress=messages.append)
    assert [c.cached_from for c in second.cases] == [None]
    assert second.cases[0].output == first.cases[0].output
    assert any("ignored, regenerating" in m for m in messages)
    third = run_eval(workspace, options)
    assert [c.cached_from for c in third.cases] == [second.run_id]


def test_cli_counts_answers_and_prunes(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    ws = str(tiny_workspace)
    args = ("eval", "--workspace", ws, "--mode", "free", "--limit", "2", "--no-resume")
    code, out, _err = run_cli(*args)
    assert code == 0 and "answers: 2 generated, 0 from cache" in out
    code, out, _err = run_cli(*args)
    assert code == 0 and "answers: 0 generated, 2 from cache" in out
    code, out, _err = run_cli(*args, "--no-cache")
    assert code == 0 and "answers: 2 generated, 0 from cache" in out
    code, out, _err = run_cli("cache", "prune", "--workspace", ws, "--max-mb", "0", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["removed"] == 2 and doc["kept"] == 0
    code, out, _err = run_cli(*args)
    assert code == 0 and "answers: 2 generated, 0 from cache" in out
