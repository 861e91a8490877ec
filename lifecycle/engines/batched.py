"""Continuous batching on one llama.cpp context: many golden cases decode together.

A small model's decode step on a CPU is bound by reading the weights from memory; one step
that carries a token for each of N live sequences reads them once. So the context is created
with ``n_seq_max`` slots and a unified KV cache, and every step is one ``llama_decode`` whose
batch holds the next token of each generating sequence plus prompt tokens of newly admitted
cases. When a sequence finishes, the next case takes its slot.

The prompt prefix every case shares (BOS, SYSTEM, few-shot MESSAGEs) is decoded once into a
sequence of its own and copied into each slot with ``seq_cp``; with a unified cache that copy
only tags the existing cells, so the prefix is computed and stored once. Each case then
decodes only its own tokens.

Under llguidance (schema mode, :mod:`lifecycle.engines.structured`) the tokens a schema forces
after a sequence's sampled token join that token in the step's batch, at consecutive
positions with logits only on the last, and those forced before its first choice join its
prompt tokens: a forced token costs no step.

Every sequence has its own sampler chain and grammar, stop sequences, token limit and
wall-clock limit; one sequence failing (a grammar with no allowed token, a timeout) ends that
case only. Timings are shares: each decode step's wall time is split over the tokens it
carried, so a case's ``prompt_ms``/``generation_ms`` are its part of the steps it was in and
their sum over a group is the group's decode time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llama_cpp

from lifecycle.engines.base import (
    DEFAULT_CASE_TIMEOUT_S,
    Arrived,
    CaseTimeout,
    Generation,
    GenerationRequest,
    wait_until_arrived,
)
from lifecycle.engines.decoding import (
    Batch,
    Scored,
    add_forced,
    first_stop,
    plain_greedy,
    wants_logprob,
)
from lifecycle.engines.drafting import PromptLookup, request_drafts
from lifecycle.engines.margins import Margins
from lifecycle.errors import EngineError

if TYPE_CHECKING:
    from lifecycle.engines.llama_cpp import LlamaCppModel

# Called with (request index, generation or the error that ended that case) as each finishes.
OnResult = Callable[[int, "Generation | EngineError"], None]
# Called with the request indices whose sequences are live (for crash breadcrumbs).
OnLive = Callable[[list[int]], None]


@dataclass
class _Sequence:
    """One case in a slot: what it still has to decode and what it produced."""

    index: int  # position of the request in the caller's list
    seq_id: int
    request: GenerationRequest
    tokens: list[int]  # the whole prompt
    pending: list[int]  # prompt tokens not decoded yet
    pos: int  # position of the next token to decode
    chain: Any
    grammar: Any
    started: float
    scored: Scored | None
    margins: Margins
    own_prompt_tokens: int
    generated: list[int] = field(default_factory=list)
    # To decode in the next step: the sampled token and the tokens the schema forces after it.
    next_tokens: list[int] = field(default_factory=list)
    pending_generated: int = 0  # the last of ``pending`` are forced output, not prompt
    forced: int = 0  # output tokens the schema forced
    decoded: int = 0  # output tokens decoded (each one's logits led to the next choice)
    text: str = ""
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    sample_ms: float = 0.0
    first_token_at: float | None = None
    # Prompt-lookup drafting (free greedy decoding): the sequence's n-gram index, and the
    # drafted tokens decoded after the last sampled one and not confirmed yet.
    lookup: PromptLookup | None = None
    draft: list[int] = field(default_factory=list)


class BatchedDecoder:
    """Decodes a list of requests through ``model``'s context, ``parallel`` at a time."""

    def __init__(self, model: LlamaCppModel, parallel: int) -> None:
        self.model = model
        self.parallel = parallel
        self.ctx = model.context
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = model.vocab
        self.n_batch = int(llama_cpp.llama_n_batch(self.ctx))
        self.n_ctx_seq = model.options.n_ctx
        # The shared prefix lives in the last sequence id; slots are 0..parallel-1.
        self.prefix_seq = parallel
        # Forced tokens one sequence may add to a step (the batch holds n_batch tokens).
        self.forced_room = max(self.n_batch // parallel - 1, 0)

    def run(
        self,
        requests: Sequence[GenerationRequest],
        on_result: OnResult,
        on_live: OnLive | None = None,
        arrived: Arrived | None = None,
    ) -> None:
        model = self.model
        queue: deque[tuple[int, list[int]]] = deque()
        for index, request in enumerate(requests):
            tokens = model.tokenize(request.prompt)
            if len(tokens) + request.max_tokens > self.n_ctx_seq:
                on_result(
                    index,
                    EngineError(
                        f"prompt of {len(tokens)} tokens + max_tokens {request.max_tokens} "
                        f"exceeds num_ctx {self.n_ctx_seq}"
                    ),
                )
                continue
            # Compile (and cache) each schema's grammar before any decoding.
            if request.json_schema:
                model.check_schema(request.json_schema)
            queue.append((index, tokens))
        if not queue:
            return
        model.clear()
        prefix = _common_prefix([tokens for _, tokens in queue])
        prefix_ms = self._decode_prefix(prefix)
        # The prefix is decoded once for all cases; each carries an equal part of its cost.
        prefix_share = prefix_ms / len(queue)

        free = list(range(self.parallel - 1, -1, -1))
        live: dict[int, _Sequence] = {}
        try:
            while queue or live:
                while free and queue and _has_arrived(arrived, queue[0][0]):
                    index, tokens = queue.popleft()
                    seq = self._admit(index, requests[index], tokens, len(prefix), free.pop())
                    seq.prompt_ms += prefix_share
                    live[seq.seq_id] = seq
                if not live:  # idle until the next request arrives
                    wait_until_arrived(arrived, queue[0][0])
                    continue
                if on_live is not None:
                    on_live(sorted(s.index for s in live.values()))
                outputs = self._step(live)
                for seq, batch_index in outputs:
                    outcome = self._advance(seq, batch_index)
                    if outcome is not None:
                        self._release(seq, live, free)
                        on_result(seq.index, outcome)
                now = time.perf_counter()
                for seq in list(live.values()):
                    limit = seq.request.timeout_s or DEFAULT_CASE_TIMEOUT_S
                    if now - seq.started > limit:
                        self._release(seq, live, free)
                        on_result(
                            seq.index,
                            CaseTimeout(
                                f"generation ran past {limit:g} s (batched)", timeout_s=limit
                            ),
                        )
        finally:
            for seq in live.values():
                _free_samplers(seq)
            model.clear()

    # --- slots ---

    def _decode_prefix(self, prefix: list[int]) -> float:
        """Decode the shared prefix into the prefix sequence; return the time it took (ms)."""
        if not prefix:
            return 0.0
        start = time.perf_counter()
        with Batch(self.n_batch) as batch:
            for offset in range(0, len(prefix), self.n_batch):
                batch.clear()
                for pos, token in enumerate(prefix[offset : offset + self.n_batch], offset):
                    batch.add(token, pos, self.prefix_seq, logits=False)
                self._decode(batch)
        return (time.perf_counter() - start) * 1000.0

    def _admit(
        self, index: int, request: GenerationRequest, tokens: list[int], prefix: int, seq_id: int
    ) -> _Sequence:
        model = self.model
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
        if prefix:
            llama_cpp.llama_memory_seq_cp(self.memory, self.prefix_seq, seq_id, -1, -1)
        seq = _Sequence(
            index=index,
            seq_id=seq_id,
            request=request,
            tokens=tokens,
            pending=tokens[prefix:],
            pos=prefix,
            chain=model.sampler_chain(request),
            grammar=model.schema_grammar(request.json_schema),
            started=time.perf_counter(),
            scored=Scored() if request.logprobs else None,
            margins=Margins(request.margin_field),
            own_prompt_tokens=len(tokens) - prefix,
        )
        settings = request_drafts(request) if seq.grammar is None else None
        if settings is not None:
            seq.lookup = PromptLookup(tokens, settings)
        if seq.grammar is not None:
            # What the schema forces before any choice is decoded with the prompt.
            forced = seq.grammar.forced(request.max_tokens - 1)
            seq.text = self._add_forced(seq, forced)
            seq.pending += forced
            seq.pending_generated = len(forced)
        return seq

    def _add_forced(self, seq: _Sequence, forced: list[int]) -> str:
        seq.forced += len(forced)
        return add_forced(
            forced,
            seq.generated,
            seq.text,
            seq.request,
            seq.scored,
            seq.margins,
            lambda ids: self.model.detokenize_completion(ids, seq.tokens, errors="ignore"),
            seq.chain,
        )

    def _release(self, seq: _Sequence, live: dict[int, _Sequence], free: list[int]) -> None:
        _free_samplers(seq)
        llama_cpp.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
        del live[seq.seq_id]
        free.append(seq.seq_id)

    # --- one decode step ---

    def _step(self, live: dict[int, _Sequence]) -> list[tuple[_Sequence, int]]:
        """Decode one batch: every generating sequence's next token, then prompt tokens.

        Returns the sequences whose logits this step produced, with their batch index.
        """
        with Batch(self.n_batch) as batch:
            carried: list[tuple[_Sequence, int, int]] = []  # (sequence, prompt, output tokens)
            outputs: list[tuple[_Sequence, int]] = []
            for seq in live.values():
                if seq.next_tokens:
                    # The sampled token, the ones the schema forces after it (logits on the
                    # last only) or its draft (logits on every one, to verify them).
                    last = len(seq.next_tokens) - 1
                    for k, token in enumerate(seq.next_tokens + seq.draft):
                        if k == last:
                            outputs.append((seq, batch.size))
                        batch.add(token, seq.pos, seq.seq_id, logits=k >= last)
                        seq.pos += 1
                    carried.append((seq, 0, len(seq.next_tokens) + len(seq.draft)))
                    seq.decoded += len(seq.next_tokens)
                    seq.next_tokens = []
            for seq in live.values():
                room = self.n_batch - batch.size
                if not seq.pending or room <= 0:
                    continue
                part, seq.pending = seq.pending[:room], seq.pending[room:]
                for k, token in enumerate(part):
                    last = not seq.pending and k == len(part) - 1
                    if last:
                        outputs.append((seq, batch.size))
                    batch.add(token, seq.pos, seq.seq_id, logits=last)
                    seq.pos += 1
                # Forced output tokens sit at the end of pending, after the prompt's.
                output = max(seq.pending_generated - len(seq.pending), 0)
                seq.pending_generated -= output
                seq.decoded += output
                carried.append((seq, len(part) - output, output))
            if batch.size == 0:
                return []
            start = time.perf_counter()
            self._decode(batch)
            step_ms = (time.perf_counter() - start) * 1000.0
        for seq, prompt, output in carried:
            seq.prompt_ms += step_ms * prompt / batch.size
            seq.generation_ms += step_ms * output / batch.size
        return outputs

    def _decode(self, batch: Batch) -> None:
        status = llama_cpp.llama_decode(self.ctx, batch.batch)
        if status == 1:
            raise EngineError(
                f"llama.cpp found no room in the KV cache for {batch.size} token(s) with "
                f"{self.parallel} parallel sequences; lower [engine] parallel or num_ctx"
            )
        if status != 0:
            raise EngineError(f"llama_decode failed on a batched step (status {status})")
        llama_cpp.llama_synchronize(self.ctx)

    def _advance(self, seq: _Sequence, batch_index: int) -> Generation | EngineError | None:
        """Choose the sequence's next token from the logits at ``batch_index``, then (when
        it drafts) go on through the rows of its draft while the model agrees with it; a
        Generation (or error) when it is finished."""
        row = batch_index
        while True:
            outcome = self._choose(seq, row)
            if outcome is not None or seq.lookup is None:
                return outcome
            token = seq.next_tokens[0]
            seq.lookup.add(token)
            if seq.draft and token == seq.draft[0]:
                # Accepted: already decoded, and its logits are the next row of the batch.
                seq.draft.pop(0)
                seq.next_tokens = []
                seq.decoded += 1
                self.model.draft_stats.accepted += 1
                row += 1
                continue
            if seq.draft:
                # Rejected: the model's own token goes where the draft's first rejected one
                # stood, and the cache forgets the rejected positions.
                seq.pos -= len(seq.draft)
                if not llama_cpp.llama_memory_seq_rm(self.memory, seq.seq_id, seq.pos, -1):
                    return EngineError(f"llama.cpp could not drop the draft at {seq.pos}")
            room = min(seq.request.max_tokens - len(seq.generated) - 1, self.forced_room)
            seq.draft = seq.lookup.draft(room)
            self.model.draft_stats.add(len(seq.draft), 0)
            return None

    def _choose(self, seq: _Sequence, batch_index: int) -> Generation | EngineError | None:
        """Sample the sequence's next token; a Generation (or error) when it is finished,
        else None with the tokens to decode next in ``seq.next_tokens``."""
        model = self.model
        request = seq.request
        start = time.perf_counter()
        try:
            want = seq.scored is not None and wants_logprob(request, seq.text)
            token, logprob, margin = model.sample(
                seq.chain,
                seq.grammar,
                self.ctx,
                logprob=want,
                idx=batch_index,
                greedy=plain_greedy(request),
                margin_floor=seq.margins.floor(seq.text),
            )
            if seq.first_token_at is None:
                seq.first_token_at = time.perf_counter()
            seq.margins.add(margin, seq.text)
        except RuntimeError as exc:  # e.g. a grammar that allows no token here
            return EngineError(f"generation failed: {exc}")
        finish: str | None = None
        stop_at: int | None = None
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            finish = "stop"
        else:
            seq.generated.append(token)
            if seq.scored is not None:
                seq.scored.add(logprob, offset=len(seq.text))
            seq.text = model.detokenize_completion(seq.generated, seq.tokens, errors="ignore")
            stop_at = first_stop(seq.text, request.stop)
            forced: list[int] = []
            if stop_at is None and seq.grammar is not None:
                try:
                    # Each sequence's step stays within its share of the batch.
                    room = min(request.max_tokens - len(seq.generated), self.forced_room)
                    forced = seq.grammar.forced(room)
                except RuntimeError as exc:
                    return EngineError(f"generation failed: {exc}")
                seq.text = self._add_forced(seq, forced)
                stop_at = first_stop(seq.text, request.stop)
            if stop_at is not None:
                finish = "stop"
            elif seq.grammar is not None and seq.grammar.finished():
                finish = "stop"  # the schema admits nothing more: the answer is whole
            elif len(seq.generated) >= request.max_tokens:
                finish = "length"
            else:
                seq.next_tokens = [token, *forced]
        seq.sample_ms += (time.perf_counter() - start) * 1000.0
        if finish is None:
            return None
        if stop_at is not None:
            text = seq.text[:stop_at]
        else:
            text = model.detokenize_completion(seq.generated, seq.tokens, errors="replace")
        latency_ms = (time.perf_counter() - seq.started) * 1000.0
        smallest, smallest_step, field_margin = seq.margins.summary()
        return Generation(
            text=text,
            prompt_tokens=len(seq.tokens),
            completion_tokens=len(seq.generated),
            prompt_eval_tokens=seq.own_prompt_tokens,
            prompt_ms=seq.prompt_ms,
            eval_tokens=seq.decoded,
            generation_ms=seq.generation_ms,
            latency_ms=latency_ms,
            finish_reason=finish,
            token_logprobs=tuple(seq.scored.logprobs) if seq.scored else None,
            token_offsets=tuple(seq.scored.offsets) if seq.scored else None,
            work_ms=seq.prompt_ms + seq.generation_ms + seq.sample_ms,
            margin=smallest,
            margin_step=smallest_step,
            field_margin=field_margin,
            first_token_ms=None
            if seq.first_token_at is None
            else (seq.first_token_at - seq.started) * 1000.0,
            forced_tokens=seq.forced if request.json_schema else None,
        )


def _has_arrived(arrived: Arrived | None, index: int) -> bool:
    if arrived is None:
        return True
    at = arrived(index)
    return at is not None and at <= time.perf_counter()


def _common_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest token prefix of every prompt, leaving each at least one token to decode."""
    first = prompts[0]
    length = min(len(p) for p in prompts) - 1
    for other in prompts[1:]:
        n = 0
        for a, b in zip(first, other, strict=False):
            if a != b:
                break
            n += 1
        length = min(length, n)
    return first[: max(length, 0)]


def _free_samplers(seq: _Sequence) -> None:
    seq.chain.close()
    if seq.grammar:
        seq.grammar.free()
        seq.grammar = None
