"""Local quantization: new quant levels of a stored GGUF, as store blobs with provenance.

llama.cpp's own quantizer (``llama_model_quantize``) turns an F32/F16/BF16 blob into Q8_0,
Q4_K_M and the rest. Requantizing an already quantized file compounds the rounding error, so
it needs an explicit ``allow_requantize`` and the result records that it was requantized.
Each output is a blob like any other, with a manifest under ``manifests/quantized/`` naming the
source digest, the target type and the tool version, so the same request is never redone.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import ModelError, UsageError
from lifecycle.fsutil import locked_temp, quiet_stderr
from lifecycle.gguf import GGUFInfo, read_gguf
from lifecycle.progress import file_growth
from lifecycle.store import Manifest, Store, now, validate_digest

# Source types llama.cpp quantizes from without loss of an earlier quantization.
FULL_PRECISION = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class QuantizeResult:
    """One quantized blob and where it came from."""

    source_digest: str
    source_type: str
    target: str
    digest: str
    size: int
    requantized: bool
    tool_version: str
    cached: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def provenance(self, source: Manifest) -> Manifest:
        """The manifest of a variant made from this blob, built from the ``source`` manifest.

        Same tag as the record :func:`quantize_blob` caches this quantization under, but the
        revision and ``pulled_at`` are the source's, so a run or a pin says which upstream
        revision the variant was made from (the cache record names the tool version).
        """
        return Manifest(
            tag=_tag(self.source_digest, self.target),
            source="quantize",
            revision=f"{source.revision}; quantized {self.source_type} → {self.target}"
            + (" (requantized)" if self.requantized else ""),
            filename=f"{self.target}.gguf",
            size=self.size,
            digest=self.digest,
            pulled_at=source.pulled_at,
        )


def quant_types() -> dict[str, int]:
    """llama.cpp's file types by name (``Q4_K_M`` → ftype), from the linked library."""
    import llama_cpp

    prefix = "LLAMA_FTYPE_MOSTLY_"
    types = {
        name[len(prefix) :]: int(getattr(llama_cpp, name))
        for name in dir(llama_cpp)
        if name.startswith(prefix)
    }
    types["F32"] = int(llama_cpp.LLAMA_FTYPE_ALL_F32)
    return types


def normalise_quant(name: str) -> str:
    """Validate a quant name against llama.cpp's list (case-insensitive); return it upper-case."""
    known = quant_types()
    upper = name.strip().upper()
    if upper not in known:
        close = difflib.get_close_matches(upper, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown quant type {name!r}{hint}; llama.cpp knows: {', '.join(known)}")
    return upper


def quantize_blob(
    store: Store,
    source_digest: str,
    target: str,
    *,
    allow_requantize: bool = False,
    threads: int = 0,
) -> QuantizeResult:
    """Quantize the blob ``source_digest`` to ``target`` and store the result (cached)."""
    import llama_cpp

    target = normalise_quant(target)
    if not store.has(validate_digest(source_digest)):
        raise ModelError(f"blob {source_digest} is not in the store")
    source_path = store.verified_blob(source_digest)  # never quantize corrupt weights
    source_info = read_gguf(source_path)
    source_type = (source_info.file_type or "unknown").upper()
    requantized = source_type not in FULL_PRECISION
    if requantized and not allow_requantize:
        raise UsageError(
            f"the source is already quantized ({source_type}); requantizing to {target} "
            "compounds rounding error — pass --allow-requantize to do it anyway"
        )
    tool_version = f"llama-cpp-python {llama_cpp.__version__}"
    record_path = _record_path(store, source_digest, target)
    if record_path.is_file():
        manifest = Manifest.from_dict(json.loads(record_path.read_text(encoding="utf-8")))
        if store.has(manifest.digest):
            return _result(manifest, source_digest, source_type, target, requantized, True)

    with store.writing():  # a concurrent gc keeps the new blob until its record exists
        digest, size = _run_quantizer(
            store, source_path, source_info, source_digest, target, threads, allow_requantize
        )
        manifest = Manifest(
            tag=_tag(source_digest, target),
            source="quantize",
            revision=f"{tool_version}; from {source_type}"
            + ("; requantized" if requantized else ""),
            filename=f"{source_digest[7:19]}-{target}.gguf",
            size=size,
            digest=digest,
            pulled_at=now(),
        )
        store.write_manifest(manifest, path=record_path)
    return _result(manifest, source_digest, source_type, target, requantized, False)


def _run_quantizer(
    store: Store,
    source_path: Path,
    source_info: GGUFInfo,
    source: str,
    target: str,
    threads: int,
    allow_requantize: bool,
) -> tuple[str, int]:
    """Run llama.cpp's quantizer into a temp file of the store; store the result as a blob."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_types()[target]
    params.nthread = threads
    params.allow_requantize = allow_requantize
    store.blobs.mkdir(parents=True, exist_ok=True)
    # Our descriptor holds the temp file's lock while llama.cpp writes it by name, so a sweep
    # leaves it alone while this process lives and removes it once a kill ends it.
    fd, tmp = locked_temp(store.blobs, prefix=".quantize-", suffix=".incomplete")
    try:
        label = f"quantize {target}"
        with quiet_stderr(), file_growth(label, tmp, expected_size(source_info, target)):
            status = llama_cpp.llama_model_quantize(
                str(source_path).encode(), str(tmp).encode(), params
            )
        if status != 0:
            raise ModelError(f"llama.cpp failed to quantize {source} to {target}")
        read_gguf(tmp)  # never store what llama.cpp itself could not read back
        return store.adopt_temp(tmp)
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)


def expected_size(source: GGUFInfo, target: str) -> int:
    """About how many bytes quantizing ``source`` to ``target`` writes (0: cannot tell).

    Matrices take the target's block size; vectors (norms, biases) stay F32 as llama.cpp
    keeps them. Mixes such as Q4_K_M put a few tensors in a larger type, so this is a floor,
    good for a progress bar and nothing else.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # only when quantizing

    base = re.sub(r"_(S|M|L)$", "", target)
    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[base]]
    except KeyError:
        return 0
    size = source.data_offset
    for tensor in source.tensors:
        elements = math.prod(tensor.shape)
        size += elements * 4 if len(tensor.shape) < 2 else elements * block_bytes // block
    return size


def _tag(source_digest: str, target: str) -> str:
    return f"quantized:{source_digest}/{target}"


def _record_path(store: Store, source_digest: str, target: str) -> Path:
    # Lives with the tag manifests so garbage collection keeps quantized blobs alive.
    return store.manifests / "quantized" / f"{source_digest[7:]}-{target}.json"


def _result(
    manifest: Manifest,
    source_digest: str,
    source_type: str,
    target: str,
    requantized: bool,
    cached: bool,
) -> QuantizeResult:
    return QuantizeResult(
        source_digest=source_digest,
        source_type=source_type,
        target=target,
        digest=manifest.digest,
        size=manifest.size,
        requantized=requantized,
        tool_version=manifest.revision.split(";")[0],
        cached=cached,
    )
