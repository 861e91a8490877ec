"""The default engine: llama-cpp-python in-process.

The model is loaded once per run. Prompts are tokenized here (special tokens parsed, BOS added
the way the GGUF asks) and passed as token lists, so llama-cpp-python's prefix matching keeps
the evaluated system prompt and few-shot turns in the KV cache between cases. Timings come
from llama.cpp's own perf counters (``llama_perf_context``), reset before every generation.

JSON-schema grammars are built explicitly: the schema is converted to GBNF and compiled by
llama.cpp before any generation. llama-cpp-python's ``response_format`` path would silently
fall back to plain JSON when a schema cannot be compiled; here that is an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import json
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_grammar import json_schema_to_gbnf

from lifecycle import progress
from lifecycle.crashguard import note
from lifecycle.engines import compat
from lifecycle.engines.base import (
    Arrived,
    EmbeddingModel,
    EngineInfo,
    Generation,
    GenerationRequest,
    LoadOptions,
    wait_until_arrived,
)
from lifecycle.engines.batched import BatchedDecoder, OnLive, OnResult
from lifecycle.engines.compat import LlamaBatch, LlamaSampler
from lifecycle.engines.decoding import (
    Batch,
    SchemaGrammar,
    Scored,
    add_forced,
    best_other,
    first_stop,
    plain_greedy,
    wants_logprob,
)
from lifecycle.engines.devices import ggml_build
from lifecycle.engines.drafting import DraftStats, PromptLookup, free_drafting, request_drafts
from lifecycle.engines.margins import Margins
from lifecycle.engines.structured import SchemaGrammars, schema_decoder
from lifecycle.errors import EngineError, GoldenSetError
from lifecycle.fsutil import quiet_stderr
from lifecycle.hostinfo import physical_cores  # re-exported: benchmarks import it here

# llama-cpp-python's sampler wrapper (a private API, llama_cpp._internals) took n_vocab as
# the penalties' first argument in some releases and not in others (0.3.33: four arguments).
_PENALTIES_TAKE_VOCAB = len(inspect.signature(LlamaSampler.add_penalties).parameters) == 6


class LlamaCppEngine:
    """Factory for in-process llama.cpp models."""

    name = "llama-cpp"

    def info(self) -> EngineInfo:
        system_info = llama_cpp.llama_print_system_info()
        text = system_info.decode(errors="replace") if isinstance(system_info, bytes) else ""
        return EngineInfo(
            name=self.name,
            version=f"llama-cpp-python {llama_cpp.__version__}",
            details={
                "llama_cpp_python": llama_cpp.__version__,
                "system_info": text.strip(),
                "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
                **ggml_build(),
                # Schema mode's decoder: llguidance fast-forwards forced tokens (and fixes the
                # JSON separators), which can change the tokens of an answer.
                "schema_decoder": schema_decoder(),
                # Free greedy decoding's prompt-lookup drafting: verify batches round
                # differently from one-token steps (lifecycle.engines.drafting).
                "free_drafting": free_drafting(),
            },
        )

    def load(self, model_path: Path, options: LoadOptions) -> LlamaCppModel:
        return LlamaCppModel(model_path, options)

    def load_embedding(
        self, model_path: Path, options: LoadOptions, pooling: str | None
    ) -> EmbeddingModel:
        """The model in embedding mode (lifecycle.engines.embedding.LlamaCppEmbedder)."""
        from lifecycle.engines.embedding import LlamaCppEmbedder

        return LlamaCppEmbedder(model_path, options, pooling)

    def load_measured(self, model_path: Path, options: LoadOptions) -> LlamaCppModel:
        """Load like :meth:`load`, also recording the buffer sizes llama.cpp allocated.

        llama.cpp has no API for its KV-cache or compute-buffer sizes; it logs them while
        creating the context. The log is captured during the load and parsed into
        :meth:`LlamaCppModel.buffer_bytes`. When the load fails, llama.cpp's own last error
        line (e.g. "failed to allocate CPU buffer of size ...") is added to the reason.
        """
        with capture_llama_log() as lines:
            try:
                model = LlamaCppModel(model_path, options)
            except EngineError as exc:
                errors = [text.strip() for level, text in lines if level == _LOG_ERROR]
                detail = f" ({errors[-1]})" if errors and errors[-1] else ""
                raise EngineError(exc.message + detail, path=exc.path) from None
        model._buffers = parse_buffer_log([text for _level, text in lines])
        return model


@dataclass
class _Decoded:
    """One sequential generation: its result and how its decoding splits into the prompt's
    part and the generation's (tokens the schema forced before the first sampled one are
    decoded with the prompt; llama.cpp's counters cannot tell them apart, so that first
    decode's time is shared by token count, as the batched decoder shares its steps)."""

    prompt_tokens: int  # prompt tokens decoded (after the reused prefix)
    generation_tokens: int  # generated tokens decoded (sampled and forced)
    forced: int  # generated tokens the schema forced
    first_ms: float  # llama.cpp's decode time after the prompt's decode
    first_tokens: int  # tokens that decode carried
    result: tuple[str, int, str, Scored | None, Margins] | None = None  # set at the end

    def split_ms(self, perf: Any) -> tuple[float, float]:
        """(prompt ms, generation ms) from llama.cpp's counters at the end of generation."""
        total = float(perf.t_p_eval_ms) + float(perf.t_eval_ms)
        share = self.prompt_tokens / self.first_tokens if self.first_tokens else 0.0
        prompt = self.first_ms * share
        return prompt, total - prompt


class LlamaCppModel:
    """A GGUF loaded into one llama.cpp context."""

    def __init__(self, model_path: Path, options: LoadOptions) -> None:
        self.options = options
        threads = options.n_threads or physical_cores()
        start = time.perf_counter()
        note(phase="load")
        if options.n_parallel > llama_cpp.llama_max_parallel_sequences() - 1:
            raise EngineError(
                f"parallel {options.n_parallel} is more sequences than llama.cpp allows "
                f"({llama_cpp.llama_max_parallel_sequences() - 1})"
            )
        try:
            with (
                quiet_stderr(),
                _model_params(
                    extra_bufts=options.extra_bufts, label=_load_label(model_path, options)
                ),
                _context_params(n_parallel=options.n_parallel),
            ):
                self._llm = Llama(
                    model_path=str(model_path),
                    # Batched decoding gives every sequence a full num_ctx of KV cells.
                    n_ctx=kv_cells_needed(options.n_ctx, options.n_parallel),
                    n_batch=options.n_batch,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=options.n_gpu_layers,
                    seed=options.seed,
                    use_mmap=options.use_mmap,
                    verbose=False,
                    flash_attn=options.flash_attn,
                    type_k=ggml_type(options.type_k),
                    type_v=ggml_type(options.type_v),
                    **cpu_only_context(options.n_gpu_layers),
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(
                f"llama.cpp could not load the model: {exc}", path=model_path
            ) from None
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self.n_threads = threads
        self._grammars: dict[str, str] = {}
        self._masks = GrammarMasks()
        self._schemas = SchemaGrammars(compat.vocab_ptr(self._llm))
        self._bos = self._llm.token_bos()
        # Prompt-lookup drafting's counts over this model's generations (free greedy mode).
        self.draft_stats = DraftStats()

    def tokenize(self, text: str) -> list[int]:
        """Tokens for a rendered prompt: special tokens parsed, BOS added as the GGUF asks."""
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        # A template that writes the BOS text itself would otherwise give two BOS tokens.
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]
        return tokens

    def check_schema(self, schema: Mapping[str, Any]) -> None:
        """Compile ``schema`` now (llguidance's grammar, else llama.cpp's); raise if neither
        can enforce it."""
        if self._schemas.grammar(schema) is None:
            self.gbnf_for(schema)

    def schema_grammar(self, schema: Mapping[str, Any] | None) -> SchemaGrammar | None:
        """A fresh grammar for one generation under ``schema``: llguidance's matcher (masks
        and forced tokens) where it compiles the schema, else llama.cpp's GBNF sampler."""
        if not schema:
            return None
        grammar = self._schemas.grammar(schema)
        if grammar is not None:
            return self._schemas.start(grammar)
        return self.grammar_sampler(self.gbnf_for(schema))

    # --- the decoding seam: what a decoder over this model's context uses (the sequential
    # path here and lifecycle.engines.batched); llama-cpp-python's internals stay behind it.

    @property
    def context(self) -> Any:
        """The ``llama_context`` pointer, for llama.cpp's C API (decode, memory, logits)."""
        return compat.context_ptr(self._llm)

    @property
    def vocab(self) -> Any:
        """The ``llama_vocab`` pointer (end-of-generation checks)."""
        return compat.vocab_ptr(self._llm)

    @property
    def parallel(self) -> int:
        """Sequences this context can decode together (``generate_batch``)."""
        return self.options.n_parallel

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: OnResult,
        on_live: OnLive | None = None,
        arrived: Arrived | None = None,
    ) -> None:
        """Generate every request, ``parallel`` sequences per decode step (continuous batching).

        ``on_result(i, generation_or_error)`` is called as each request finishes, in
        completion order. See :mod:`lifecycle.engines.batched`.
        """
        if self.options.n_parallel < 2:
            for index, request in enumerate(requests):
                wait_until_arrived(arrived, index)
                try:
                    on_result(index, self.generate(request))
                except EngineError as exc:
                    on_result(index, exc)
            return
        self._llm.n_tokens = 0  # the sequential prefix cache is gone after batched decoding
        try:
            BatchedDecoder(self, self.options.n_parallel).run(requests, on_result, on_live, arrived)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"batched generation failed: {exc}") from None

    def generate(self, request: GenerationRequest) -> Generation:
        if request.json_schema:
            self.check_schema(request.json_schema)
        tokens = self.tokenize(request.prompt)
        if len(tokens) + request.max_tokens > self.options.n_ctx:
            raise EngineError(
                f"prompt of {len(tokens)} tokens + max_tokens {request.max_tokens} exceeds "
                f"num_ctx {self.options.n_ctx}"
            )
        ctx = compat.context_ptr(self._llm)
        llama_cpp.llama_perf_context_reset(ctx)
        start = time.perf_counter()
        try:
            decoded = self._decode(tokens, request)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"generation failed: {exc}") from None
        latency_ms = (time.perf_counter() - start) * 1000.0
        assert decoded.result is not None
        text, n_generated, finish, scored, margins = decoded.result
        margin, margin_step, field_margin = margins.summary()
        prompt_ms, generation_ms = decoded.split_ms(llama_cpp.llama_perf_context(ctx))
        return Generation(
            text=text,
            prompt_tokens=len(tokens),
            completion_tokens=n_generated,
            prompt_eval_tokens=decoded.prompt_tokens,
            prompt_ms=prompt_ms,
            eval_tokens=decoded.generation_tokens,
            generation_ms=generation_ms,
            latency_ms=latency_ms,
            finish_reason=finish,
            token_logprobs=tuple(scored.logprobs) if scored else None,
            token_offsets=tuple(scored.offsets) if scored else None,
            margin=margin,
            margin_step=margin_step,
            field_margin=field_margin,
            first_token_ms=None
            if self._first_token_at is None
            else (self._first_token_at - start) * 1000.0,
            forced_tokens=decoded.forced if request.json_schema else None,
        )

    # When _decode sampled its first token (perf_counter), for Generation.first_token_ms.
    _first_token_at: float | None = None

    def _decode(self, tokens: list[int], request: GenerationRequest) -> _Decoded:
        """Evaluate the prompt (reusing the cached prefix) and sample until a stop condition.

        Grammar-constrained sampling checks the token the sampler picked first and only masks
        the whole vocabulary when that token is not allowed — llama.cpp's own strategy in
        ``common_sampler``. llama-cpp-python masks all tokens at every step instead, which on a
        262k-token vocabulary (Gemma 3) costs more than the forward pass.

        Under llguidance the tokens the schema forces after a sampled token are decoded in the
        same ``llama_decode`` as that token (logits only on the last), and those it forces
        before the first choice go in with the prompt: a forced token costs no step.

        With ``request.logprobs`` each generated token's log-probability is recorded (see
        :meth:`_logprob`) with the character offset where its text starts. Every step's
        decision margin is recorded (:class:`~lifecycle.engines.margins.Margins`).
        """
        llm = self._llm
        grammar = self.schema_grammar(request.json_schema)
        chain = self.sampler_chain(request)
        vocab = compat.vocab_ptr(llm)
        ctx = compat.context_ptr(llm)
        generated: list[int] = []
        scored = Scored() if request.logprobs else None
        margins = Margins(request.margin_field)
        finish = "length"
        hit: int | None = None
        self._first_token_at = None

        def spelled(ids: list[int]) -> str:
            return self.detokenize_completion(ids, tokens, errors="ignore")

        # Prompt-lookup drafting (free greedy decoding only): ``draft`` holds the drafted
        # tokens decoded after the last sampled one and not yet confirmed; the logits of the
        # next choice are at batch row ``row`` (-1: the last).
        settings = request_drafts(request) if grammar is None else None
        lookup = PromptLookup(tokens, settings) if settings is not None else None
        draft: list[int] = []
        row = -1
        try:
            # What the schema forces before any choice is decoded with the prompt.
            forced = grammar.forced(request.max_tokens - 1) if grammar else []
            text = add_forced(forced, generated, "", request, scored, margins, spelled, chain)
            note(phase="prompt")
            evaluated = self._evaluate_prompt(tokens, forced)
            llama_cpp.llama_synchronize(ctx)  # the counters are updated when the decode ends
            perf = llama_cpp.llama_perf_context(ctx)
            decoded = _Decoded(
                prompt_tokens=evaluated - len(forced),
                generation_tokens=len(forced),
                forced=len(forced),
                first_ms=float(perf.t_p_eval_ms) + float(perf.t_eval_ms),
                first_tokens=evaluated,
            )
            note(phase="generation")
            hit = first_stop(text, request.stop)
            while hit is None:
                want = scored is not None and wants_logprob(request, text)
                token, logprob, margin = self.sample(
                    chain,
                    grammar,
                    ctx,
                    logprob=want,
                    idx=row,
                    greedy=plain_greedy(request),
                    margin_floor=margins.floor(text),
                )
                if self._first_token_at is None:
                    self._first_token_at = time.perf_counter()
                margins.add(margin, text)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                generated.append(token)
                if scored is not None:
                    scored.add(logprob, offset=len(text))
                # Detokenize the whole completion each step: a UTF-8 character or a stop
                # sequence may span tokens (completions are short, so this stays cheap).
                text = spelled(generated)
                if (hit := first_stop(text, request.stop)) is not None:
                    break
                room = request.max_tokens - len(generated)
                forced = grammar.forced(room) if grammar else []
                text = add_forced(forced, generated, text, request, scored, margins, spelled, chain)
                decoded.forced += len(forced)
                if (hit := first_stop(text, request.stop)) is not None:
                    break
                if grammar is not None and grammar.finished():
                    finish = "stop"  # the schema admits nothing more: the answer is whole
                    break
                if len(generated) >= request.max_tokens:
                    break
                decoded.generation_tokens += 1 + len(forced)
                if lookup is None:
                    llm.eval([token, *forced])
                    continue
                lookup.add(token)
                if draft and token == draft[0]:
                    # Accepted: the token is in the KV cache and its logits are the next row.
                    draft.pop(0)
                    self.draft_stats.accepted += 1
                    row += 1
                    continue
                # Rejected or used up: the model's own token goes next, where the rejected
                # draft stood.
                self._drop_draft(len(draft))
                draft = lookup.draft(request.max_tokens - len(generated) - 1)
                self._decode_draft([token, *draft])
                self.draft_stats.add(len(draft), 0)
                row = 0
        finally:
            chain.close()
            if grammar:
                grammar.free()
            if draft:  # drafted positions never confirmed leave the cache
                self._drop_draft(len(draft))
        if hit is not None:
            decoded.result = (text[:hit], len(generated), "stop", scored, margins)
        else:
            text = self.detokenize_completion(generated, tokens, errors="replace")
            decoded.result = (text, len(generated), finish, scored, margins)
        return decoded

    def _decode_draft(self, tokens: list[int]) -> None:
        """Decode ``tokens`` (a sampled token and its draft) after the confirmed ones, with
        logits at every position (batch rows 0..len-1) for greedy verification.

        llama-cpp-python's record of the cached tokens then counts the new ones, draft
        included: the caller takes back the part it rejects (:meth:`_drop_draft`)."""
        llm = self._llm
        ctx = compat.context_ptr(llm)
        start = llm.n_tokens
        with Batch(len(tokens)) as batch:
            for pos, token in enumerate(tokens, start):
                batch.add(token, pos, 0, logits=True)
            status = llama_cpp.llama_decode(ctx, batch.batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed on a draft (status {status})")
        llm.input_ids[start : start + len(tokens)] = tokens
        llm.n_tokens = start + len(tokens)

    def _drop_draft(self, n: int) -> None:
        """Remove the last ``n`` cached positions (a rejected draft) from the KV cache and
        from llama-cpp-python's record of it."""
        if n <= 0:
            return
        llm = self._llm
        llm.n_tokens -= n
        memory = llama_cpp.llama_get_memory(compat.context_ptr(llm))
        if not llama_cpp.llama_memory_seq_rm(memory, -1, llm.n_tokens, -1):
            raise RuntimeError(f"llama.cpp could not drop a draft from position {llm.n_tokens}")

    def detokenize_completion(self, generated: list[int], prompt: list[int], *, errors: str) -> str:
        """The completion's text (the prompt decides leading-space handling)."""
        return self._llm.detokenize(generated, prev_tokens=prompt).decode("utf-8", errors)

    def grammar_sampler(self, gbnf: str) -> Grammar:
        return Grammar(compat.vocab_ptr(self._llm), gbnf, self._masks)

    def _evaluate_prompt(self, prompt: list[int], forced: list[int]) -> int:
        """Decode ``prompt`` and the tokens ``forced`` after it, after the longest prefix
        already in the KV cache, in one go; return how many tokens were decoded."""
        llm = self._llm
        tokens = prompt + forced
        cached = list(llm._input_ids[: llm.n_tokens])
        prefix = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            prefix += 1
        # At least one token must be decoded to have fresh logits to sample from.
        prefix = min(prefix, len(tokens) - 1)
        if prefix > 0 and compat.context(llm).kv_cache_seq_rm(-1, prefix, -1):
            llm.n_tokens = prefix
        else:
            llm.reset()
            compat.context(llm).kv_cache_clear()
            prefix = 0
        llm.eval(tokens[prefix:])
        return len(tokens) - prefix

    def sampler_chain(self, request: GenerationRequest) -> Any:
        chain: Any = LlamaSampler()  # Any: its signature differs across releases (below)
        penalties = (64, request.repeat_penalty, 0.0, 0.0)  # last_n, repeat, freq, present
        if _PENALTIES_TAKE_VOCAB:
            chain.add_penalties(self._llm.n_vocab(), *penalties)
        else:
            chain.add_penalties(*penalties)
        if request.temperature <= 0.0:
            chain.add_greedy()
        else:
            chain.add_top_k(request.top_k)
            chain.add_top_p(request.top_p, 1)
            chain.add_min_p(request.min_p, 1)
            chain.add_temp(request.temperature)
            chain.add_dist(request.seed)
        return chain

    def sample(
        self,
        chain: Any,
        grammar: SchemaGrammar | None,
        ctx: Any,
        *,
        logprob: bool = False,
        idx: int = -1,
        greedy: bool = False,
        margin_floor: float = math.inf,
    ) -> tuple[int, float, float]:
        """The next token from the logits of batch position ``idx``, its log-probability
        when ``logprob`` (else NaN), and its decision margin (exact below ``margin_floor``,
        else possibly a lower bound at or above it: see :meth:`Grammar.margin`).

        ``greedy`` (temperature 0, no repeat penalty: see :func:`plain_greedy`) takes the
        first highest logit straight from llama.cpp's buffer, which is what the chain's
        greedy sampler picks, without copying the vocabulary into a candidate array first.
        """
        if grammar is None:
            logits = self._logits(ctx, idx)
            if greedy:
                token = int(np.argmax(logits))
                chain.accept(token)
            else:
                token = int(chain.sample(compat.context(self._llm), idx))
            value = _logprob(logits, token) if logprob else math.nan
            return token, value, float(logits[token]) - best_other(logits, token)
        logits = self._logits(ctx, idx)
        masked: np.ndarray | None = None  # the logits under the grammar, once computed
        # Sample on the raw logits, then ask the grammar whether that token is allowed (a
        # single-candidate check, cheap); most steps end here.
        if greedy:
            token = int(np.argmax(logits))
        else:
            candidates = _CandidateArray(logits)
            llama_cpp.llama_sampler_apply(chain.sampler, candidates.pointer)
            token = candidates.selected_token()
        if not grammar.allows(logits, np.array([token]))[0]:
            # Rejected. A greedy step looks among the top logits first; otherwise (or when
            # that cannot decide) the grammar masks the whole vocabulary and the chain samples.
            found = grammar.greedy_among_top(logits) if greedy else None
            if found is not None:
                token = found
            else:
                masked = grammar.masked(logits)
                if not np.isfinite(masked).any():
                    # Accepting any token now would make llama.cpp abort the process.
                    raise RuntimeError("the grammar allows no token here")
                candidates = _CandidateArray(masked)
                llama_cpp.llama_sampler_apply(chain.sampler, candidates.pointer)
                token = candidates.selected_token()
        value = math.nan
        if logprob:
            # The model's distribution over the tokens the grammar allows here: mask the raw
            # logits with the grammar (before it accepts the token), then renormalise.
            if masked is None:
                masked = grammar.masked(logits)
            value = _logprob(masked, token)
        margin = grammar.margin(logits, token, margin_floor, masked)
        grammar.accept(token)
        chain.accept(token)
        return token, value, margin

    def _logits(self, ctx: Any, idx: int = -1) -> np.ndarray:
        """Logits of batch position ``idx`` (-1: the last), a view of llama.cpp's buffer."""
        return np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(ctx, idx), shape=(self._llm.n_vocab(),)
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._llm.close()

    # --- measurement (llama-bench style): decode synthetic tokens straight into the context ---

    _buffers: LlamaBuffers | None = None

    def buffer_bytes(self) -> LlamaBuffers | None:
        """Buffer sizes llama.cpp reported at load (None unless loaded with ``load_measured``)."""
        return self._buffers

    def kv_cache_bytes(self) -> int | None:
        """Bytes of the KV cache llama.cpp allocated for this context, or None if unknown."""
        return self._buffers.kv_cache_bytes if self._buffers else None

    def model_info(self) -> dict[str, Any]:
        """llama-bench's model fields: ``model_type``, ``model_size``, ``model_n_params``."""
        model = compat.model_ptr(self._llm)
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(model, desc, ctypes.sizeof(desc))
        return {
            "model_type": desc.value.decode(errors="replace"),
            "model_size": int(llama_cpp.llama_model_size(model)),
            "model_n_params": int(llama_cpp.llama_model_n_params(model)),
            "n_ctx": int(llama_cpp.llama_n_ctx(compat.context_ptr(self._llm))),
            "n_ctx_train": int(llama_cpp.llama_model_n_ctx_train(model)),
            "n_batch": int(llama_cpp.llama_n_batch(compat.context_ptr(self._llm))),
            "n_ubatch": int(llama_cpp.llama_n_ubatch(compat.context_ptr(self._llm))),
        }

    def clear(self) -> None:
        """Empty the KV cache (and llama-cpp-python's record of what it holds)."""
        llama_cpp.llama_memory_clear(
            llama_cpp.llama_get_memory(compat.context_ptr(self._llm)), False
        )
        self._llm.n_tokens = 0

    def truncate(self, n_keep: int) -> None:
        """Drop every cached position from ``n_keep`` on, keeping a filled prefix for reuse."""
        mem = llama_cpp.llama_get_memory(compat.context_ptr(self._llm))
        if not llama_cpp.llama_memory_seq_rm(mem, 0, n_keep, -1):
            raise EngineError(f"llama.cpp could not truncate the KV cache to {n_keep} tokens")
        self._llm.n_tokens = 0

    def decode_prompt(self, n_tokens: int, *, seed: int = 0) -> BenchTiming:
        """Decode ``n_tokens`` pseudo-random tokens after what the cache holds, in n_batch batches.

        This is llama-bench's prompt test: BOS first when the cache is empty and the vocabulary
        asks for one, then random token ids; only the last token's logits are computed.
        Returns the wall time and llama.cpp's own prompt-eval counters for this call.
        """
        ctx = compat.context_ptr(self._llm)
        vocab = compat.vocab_ptr(self._llm)
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        n_batch = int(llama_cpp.llama_n_batch(ctx))
        rng = random.Random(seed)
        pos_max = int(llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(ctx), 0))
        llama_cpp.llama_perf_context_reset(ctx)
        done = 0
        start = time.perf_counter_ns()
        while done < n_tokens:
            count = min(n_tokens - done, n_batch)
            ids = [rng.randrange(n_vocab) for _ in range(count)]
            tokens = (llama_cpp.llama_token * count)(*ids)
            if done == 0 and pos_max < 0 and llama_cpp.llama_vocab_get_add_bos(vocab):
                tokens[0] = llama_cpp.llama_vocab_bos(vocab)
            status = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, count))
            if status != 0:
                raise EngineError(f"llama_decode failed on a prompt batch (status {status})")
            llama_cpp.llama_synchronize(ctx)
            done += count
        wall_ns = time.perf_counter_ns() - start
        perf = llama_cpp.llama_perf_context(ctx)
        self._llm.n_tokens = 0  # the cache no longer matches llama-cpp-python's token record
        return BenchTiming(n_tokens, wall_ns, int(perf.t_p_eval_ms * 1e6), int(perf.n_p_eval))

    def decode_tokens(self, n_tokens: int, *, seed: int = 0) -> BenchTiming:
        """Decode ``n_tokens`` tokens one at a time after what the cache holds (llama-bench tg).

        Each decode computes logits for its token, as generation does; sampling is left out
        (llama-bench feeds random tokens too). Returns wall time and llama.cpp's eval counters.
        """
        ctx = compat.context_ptr(self._llm)
        vocab = compat.vocab_ptr(self._llm)
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        rng = random.Random(seed)
        token = (llama_cpp.llama_token * 1)()
        token[0] = (
            llama_cpp.llama_vocab_bos(vocab)
            if llama_cpp.llama_vocab_get_add_bos(vocab)
            else rng.randrange(n_vocab)
        )
        llama_cpp.llama_perf_context_reset(ctx)
        start = time.perf_counter_ns()
        for _ in range(n_tokens):
            status = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(token, 1))
            if status != 0:
                raise EngineError(f"llama_decode failed on a generation step (status {status})")
            llama_cpp.llama_synchronize(ctx)
            token[0] = rng.randrange(n_vocab)
        wall_ns = time.perf_counter_ns() - start
        perf = llama_cpp.llama_perf_context(ctx)
        self._llm.n_tokens = 0
        return BenchTiming(n_tokens, wall_ns, int(perf.t_eval_ms * 1e6), int(perf.n_eval))

    def decode_parallel(
        self, n_prompt: int, n_gen: int, n_seq: int, *, seed: int = 0
    ) -> tuple[int, int]:
        """llama-batched-bench's test: ``n_seq`` sequences of ``n_prompt`` random tokens
        decoded together (in n_batch batches), then ``n_gen`` steps of one token for each.

        Needs a context loaded with ``n_parallel >= n_seq``. Returns the prompt and generation
        wall times in nanoseconds.
        """
        if n_seq > max(self.options.n_parallel, 1):
            raise EngineError(f"{n_seq} sequences need a context loaded with parallel >= {n_seq}")
        ctx = compat.context_ptr(self._llm)
        vocab = compat.vocab_ptr(self._llm)
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        n_batch = int(llama_cpp.llama_n_batch(ctx))
        rng = random.Random(seed)
        self.clear()

        def decode(batch: Batch) -> None:
            if llama_cpp.llama_decode(ctx, batch.batch) != 0:
                raise EngineError(
                    f"llama_decode failed with {n_seq} parallel sequences "
                    "(no room in the KV cache?)"
                )
            llama_cpp.llama_synchronize(ctx)

        prompt = [(s, p) for s in range(n_seq) for p in range(n_prompt)]
        with Batch(max(n_batch, n_seq)) as batch:
            start = time.perf_counter_ns()
            for offset in range(0, len(prompt), n_batch):
                batch.clear()
                for s, p in prompt[offset : offset + n_batch]:
                    batch.add(rng.randrange(n_vocab), p, s, logits=p == n_prompt - 1)
                decode(batch)
            pp_ns = time.perf_counter_ns() - start
            start = time.perf_counter_ns()
            for step in range(n_gen):
                batch.clear()
                for s in range(n_seq):
                    batch.add(rng.randrange(n_vocab), n_prompt + step, s, logits=True)
                decode(batch)
            tg_ns = time.perf_counter_ns() - start
        self.clear()
        return pp_ns, tg_ns

    def gbnf_for(self, schema: Mapping[str, Any]) -> str:
        key = json.dumps(schema, sort_keys=True)
        cached = self._grammars.get(key)
        if cached is not None:
            return cached
        try:
            gbnf = json_schema_to_gbnf(key)
        except Exception as exc:  # the converter raises bare Exceptions on unsupported schemas
            raise GoldenSetError(f"JSON Schema cannot be compiled to a grammar: {exc}") from None
        # llama-cpp-python only parses the grammar lazily inside the sampler, where a failure
        # yields a NULL sampler; compile it here so a bad grammar is an error up front.
        with quiet_stderr():
            self.grammar_sampler(gbnf).free()
        self._grammars[key] = gbnf
        return gbnf

    # --- token-level scoring (lifecycle compare): logits for every position of a chunk ---

    def text_tokens(self, text: str) -> tuple[list[int], int, int | None]:
        """Plain text as tokens (special tokens not parsed, no BOS), the vocabulary size and
        the BOS id when the GGUF asks for one (``None`` otherwise)."""
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        vocab = compat.vocab_ptr(self._llm)
        bos = int(self._bos) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        return list(tokens), int(self._llm.n_vocab()), bos

    def chunk_logits(self, tokens: list[int], block: int) -> Iterator[np.ndarray]:
        """Decode ``tokens`` from an empty cache and yield the logits of every position.

        Positions come in blocks of at most ``block`` rows (float32, ``block x n_vocab``, a
        copy): each block is one ``llama_decode`` with every output requested, so memory stays
        at one block of logits however long the chunk and however large the vocabulary.
        """
        ctx = compat.context_ptr(self._llm)
        n_vocab = int(self._llm.n_vocab())
        self.clear()
        batch = LlamaBatch(n_tokens=block, embd=0, n_seq_max=1, verbose=False)
        try:
            for start in range(0, len(tokens), block):
                part = tokens[start : start + block]
                batch.set_batch(part, n_past=start, logits_all=True)
                status = llama_cpp.llama_decode(ctx, batch.batch)
                if status != 0:
                    raise EngineError(f"llama_decode failed while scoring (status {status})")
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits(ctx), shape=(len(part), n_vocab)
                )
                yield logits.copy()
        finally:
            batch.close()
            self.clear()


def cpu_only_context(n_gpu_layers: int) -> dict[str, Any]:
    """Context settings that keep a CPU-only load (no layers offloaded) off every GPU.

    On a CUDA build llama.cpp still puts the KV cache and large batched operations on the GPU
    when no layer is offloaded (``offload_kqv`` and ``op_offload`` default to on), so a bench
    row that says "CPU" measured the GPU. With ``n_gpu_layers`` 0 both are turned off.
    """
    if n_gpu_layers > 0:
        return {}
    return {"offload_kqv": False, "op_offload": False}


@contextlib.contextmanager
def _model_params(*, extra_bufts: bool, label: str) -> Iterator[None]:
    """Load with llama.cpp's extra buffer types off when asked (``llama-bench --repack 0``),
    and with llama.cpp's load progress sent to the progress sink when one is installed.

    ``Llama`` takes no argument for either; it fills its model parameters from
    ``llama_model_default_params()``, so for the duration of the load that function returns
    defaults with the flag cleared and the callback set (:func:`compat.default_params`, which
    serialises such loads across threads).
    """
    sink = progress.current()
    if extra_bufts and sink is None:
        yield
        return

    def report(fraction: float, _user_data: Any) -> bool:
        if sink is not None:
            sink(label, round(fraction * 100), 100)
        return True  # False would abort the load

    # Kept referenced for the whole load: llama.cpp calls it from native code.
    callback = llama_cpp.llama_progress_callback(report)

    def adjust(params: Any) -> None:
        params.use_extra_bufts = extra_bufts
        if sink is not None:
            params.progress_callback = callback

    with compat.default_params("llama_model_default_params", adjust):
        yield


def ggml_type(name: str) -> int:
    """The ggml type id of a KV cache type name ("f16", "q8_0", ...) for ``Llama(type_k=)``."""
    value = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
    if not isinstance(value, int):
        raise EngineError(f"this llama-cpp-python has no KV cache type {name!r}")
    return value


def _load_label(model_path: Path, options: LoadOptions) -> str:
    name = options.model_name or model_path.name
    return f"loading {name}"


def kv_cells_needed(n_ctx: int, n_parallel: int) -> int:
    """KV cells a context allocates: ``num_ctx`` for each parallel sequence (as llama-server
    gives each slot its own context); one sequence when decoding one case at a time."""
    return n_ctx * max(n_parallel, 1)


@contextlib.contextmanager
def _context_params(*, n_parallel: int) -> Iterator[None]:
    """Create the context with ``n_parallel`` sequence slots (plus one for a shared prefix)
    and a unified KV cache, so a prefix copied between sequences is stored once.

    ``Llama`` sets ``n_seq_max`` only for embeddings; like :func:`_model_params`, the
    default-parameters function is wrapped for the duration of the load.
    """
    if n_parallel < 2:
        yield
        return

    def adjust(params: Any) -> None:
        params.n_seq_max = n_parallel + 1
        params.kv_unified = True

    with compat.default_params("llama_context_default_params", adjust):
        yield


@dataclass(frozen=True)
class BenchTiming:
    """One timed decode run: wall time and llama.cpp's own counters (``llama_perf_context``)."""

    n_tokens: int
    wall_ns: int
    perf_ns: int  # t_p_eval (prompt) or t_eval (generation) of this run, in nanoseconds
    perf_tokens: int  # n_p_eval or n_eval of this run


@dataclass(frozen=True)
class LlamaBuffers:
    """Buffer sizes llama.cpp logged while loading (bytes, summed over devices)."""

    model_bytes: int  # weight buffers (mapped file + repacked copies)
    kv_cache_bytes: int
    compute_bytes: int
    output_bytes: int
    type_k: str | None  # KV cache element types, e.g. "f16"
    type_v: str | None
    kv_cells: tuple[int, ...]  # cells of each KV cache (two for sliding-window models)
    devices: dict[str, int]  # buffer name (CPU, CUDA0, CPU_Mapped, ...) -> bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_LOG_ERROR = 4  # GGML_LOG_LEVEL_ERROR (ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4)
_MIB = 1024 * 1024
_BUFFER_LINE = re.compile(
    r"^(?P<who>\w+):\s+(?P<dev>\S+)\s+(?P<kind>model|KV|output|compute) buffer size\s*=\s*"
    r"(?P<mib>[0-9.]+) MiB"
)
_KV_SUMMARY = re.compile(
    r"^llama_kv_cache: size =\s*[0-9.]+ MiB \(\s*(?P<cells>\d+) cells.*K \((?P<k>\w+)\).*"
    r"V \((?P<v>\w+)\)"
)


def parse_buffer_log(lines: list[str]) -> LlamaBuffers:
    """Buffer sizes from llama.cpp's load log (sizes are logged in MiB with two decimals)."""
    sums = {"model": 0, "KV": 0, "output": 0, "compute": 0}
    devices: dict[str, int] = {}
    type_k = type_v = None
    cells: list[int] = []
    for line in "".join(lines).splitlines():
        line = line.strip()
        found = _BUFFER_LINE.match(line)
        if found and found["who"] != "~llama_context":
            size = round(float(found["mib"]) * _MIB)
            sums[found["kind"]] += size
            name = f"{found['dev']} {found['kind']}"
            devices[name] = devices.get(name, 0) + size
            continue
        summary = _KV_SUMMARY.match(line)
        if summary:
            type_k, type_v = summary["k"], summary["v"]
            cells.append(int(summary["cells"]))
    return LlamaBuffers(
        model_bytes=sums["model"],
        kv_cache_bytes=sums["KV"],
        compute_bytes=sums["compute"],
        output_bytes=sums["output"],
        type_k=type_k,
        type_v=type_v,
        kv_cells=tuple(cells),
        devices=devices,
    )


@contextlib.contextmanager
def capture_llama_log() -> Iterator[list[tuple[int, str]]]:
    """Collect llama.cpp's log lines (level, text) while the block runs.

    llama-cpp-python installs one process-wide log callback; ours records every line and
    forwards it to that callback, which is restored afterwards.
    """
    from llama_cpp import _logger

    lines: list[tuple[int, str]] = []
    previous = _logger.llama_log_callback

    @llama_cpp.llama_log_callback
    def record(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append((level, text.decode("utf-8", errors="replace")))
        previous(level, text, user_data)

    llama_cpp.llama_log_set(record, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(previous, ctypes.c_void_p(0))


class _CandidateArray:
    """A ``llama_token_data_array`` over numpy memory, for applying samplers to logits."""

    _dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])

    def __init__(self, logits: np.ndarray, ids: Sequence[int] | np.ndarray | None = None) -> None:
        self.data = np.empty(len(logits), dtype=self._dtype)
        self.data["id"] = np.arange(len(logits), dtype=np.int32) if ids is None else ids
        self.data["logit"] = logits
        self.data["p"] = 0.0
        self._array = llama_cpp.llama_token_data_array(
            data=self.data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(logits),
            selected=-1,
            sorted=False,
        )
        self.pointer = ctypes.pointer(self._array)

    def logits(self) -> np.ndarray:
        """The logits indexed by token id, as the samplers applied so far left them."""
        out = np.full(len(self.data), -np.inf, dtype=np.float32)
        view = self._live()
        out[view["id"]] = view["logit"]
        return out

    def _live(self) -> np.ndarray:
        # Samplers may reorder or shrink the array in place; read through the live pointer.
        size = int(self._array.size)
        return np.ctypeslib.as_array(
            ctypes.cast(self._array.data, ctypes.POINTER(ctypes.c_byte)), shape=(size * 12,)
        ).view(self._dtype)

    def selected_token(self) -> int:
        index = int(self._array.selected)
        if index < 0:
            raise RuntimeError("sampler selected no token")
        return int(self._live()["id"][index])


# How many of the highest logits a greedy step asks the grammar about before it masks the whole
# vocabulary (262k tokens for Gemma 3: the full mask takes about 120 ms there, this 0.04 ms).
GRAMMAR_PROBE = 64
# Full-vocabulary masks kept per model, by grammar state (bit-packed: 32 KiB each for 262k).
GRAMMAR_MASKS_KEPT = 512


class GrammarMasks:
    """Which tokens a grammar allows, by its state: the GBNF and the tokens it accepted.

    llama.cpp's grammar judges each candidate token on its own, from the grammar's state
    alone, and that state is a function of the tokens accepted since the start. Golden cases
    of one suite walk through the same states (the opening ``{"category": "`` is the same
    in every case), so a mask computed once serves the others exactly.
    """

    def __init__(self, kept: int = GRAMMAR_MASKS_KEPT) -> None:
        self.kept = kept
        self._masks: OrderedDict[tuple[str, tuple[int, ...]], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, tuple[int, ...]], n_vocab: int) -> np.ndarray | None:
        packed = self._masks.get(key)
        if packed is None:
            return None
        self._masks.move_to_end(key)
        return np.unpackbits(packed, count=n_vocab).astype(bool)

    def put(self, key: tuple[str, tuple[int, ...]], mask: np.ndarray) -> None:
        self._masks[key] = np.packbits(mask)
        while len(self._masks) > self.kept:
            self._masks.popitem(last=False)


class Grammar:
    """A llama.cpp grammar sampler for one generation, and the tokens it has accepted."""

    def __init__(self, vocab: Any, gbnf: str, masks: GrammarMasks) -> None:
        self.sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self.sampler:
            raise GoldenSetError("llama.cpp rejected the grammar compiled from the JSON Schema")
        self.gbnf = gbnf
        self.accepted: list[int] = []
        self._masks = masks

    def allows(self, logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Which of the tokens ``ids`` the grammar allows next."""
        probe = _CandidateArray(logits[ids], ids=ids)
        llama_cpp.llama_sampler_apply(self.sampler, probe.pointer)  # sets -inf, keeps order
        return np.isfinite(probe.data["logit"])

    def masked(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` with every token the grammar does not allow next set to -inf."""
        key = (self.gbnf, tuple(self.accepted))
        mask = self._masks.get(key, len(logits))
        if mask is None:
            mask = self.allows(np.zeros(len(logits), dtype=np.float32), np.arange(len(logits)))
            self._masks.put(key, mask)
        return np.where(mask, logits, np.float32(-np.inf))

    def greedy_among_top(self, logits: np.ndarray) -> int | None:
        """The token greedy sampling under the grammar picks, found among the top logits.

        The highest allowed logit among the ``GRAMMAR_PROBE`` highest is the highest allowed
        overall when it is strictly above every logit left out; ties go to the lower token
        id, as llama.cpp's greedy sampler breaks them. None when that cannot be decided here
        (the caller then masks the whole vocabulary).
        """
        k = min(GRAMMAR_PROBE, len(logits))
        top = np.argpartition(logits, len(logits) - k)[len(logits) - k :]
        order = top[np.lexsort((top, -logits[top]))]  # highest logit first, then lower id
        ok = self.allows(logits, order)
        if not ok.any():
            return None
        token = int(order[int(np.argmax(ok))])
        if k < len(logits) and logits[token] <= logits[order[-1]]:
            return None  # ties the cut-off: a left-out token could win the tie
        return token

    def margin(
        self,
        logits: np.ndarray,
        token: int,
        floor: float = math.inf,
        masked: np.ndarray | None = None,
    ) -> float:
        """``logits[token]`` minus the best other token the grammar allows next (inf when
        the grammar allows no other: a forced token decides nothing).

        Cheapest evidence first, since most steps need no exact figure: the best other token
        overall gives a lower bound (the best allowed one is no higher), which is returned
        when it is at least ``floor`` (the caller keeps only margins below it). Otherwise the
        ``GRAMMAR_PROBE`` highest logits are asked, exact when one of them is allowed; only
        then the whole vocabulary is masked (cached by grammar state).
        """
        chosen = float(logits[token])
        if masked is None:
            bound = chosen - best_other(logits, token)
            if bound >= floor:
                return bound
            n = len(logits)
            k = min(GRAMMAR_PROBE + 1, n)
            top = np.argpartition(logits, n - k)[n - k :]
            others = top[top != token]
            ok = self.allows(logits, others)
            if ok.any():  # any allowed token outside the probe is no higher than these
                return chosen - float(logits[others][ok].max())
            if k == n:
                return math.inf
            if chosen - float(logits[top].min()) >= floor:
                return chosen - float(logits[top].min())
            masked = self.masked(logits)
        best = best_other(masked, token)
        return chosen - best if math.isfinite(best) else math.inf

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.sampler, token)
        self.accepted.append(token)

    def forced(self, room: int) -> list[int]:
        """No fast-forward on this path: every token is sampled."""
        return []

    def finished(self) -> bool:
        return False  # the model ends the answer (EOS or a stop sequence)

    def free(self) -> None:
        if self.sampler:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None


def _logprob(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token] at temperature 1, over the finite logits.

    This is the model's own probability of the token: no repeat penalty, top-k/p or
    temperature (those shape the sampling, not the model's belief). Grammar-masked tokens
    carry -inf and drop out, so under a grammar it is renormalised over the allowed tokens.
    """
    values = logits.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0 or not np.isfinite(values[token]):
        return -math.inf
    top = finite.max()
    return float(values[token] - top - math.log(np.exp(finite - top).sum()))
