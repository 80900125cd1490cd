"""A live bf16 vLLM engine on an AMX CPU: its cache is in the AMX layout, and the
kernels read it right.

vLLM's CPU attention keeps bf16 caches in AMX tiles when the CPU has them
(``kvstore.kernels.vllm_cpu_layout``). The connector must select that layout
and its saves must hold the model's own keys and values: transformers computes
them independently from the same weights. A control reads the same bytes with
the ``vec`` layout and must fail the check, so the check can tell layouts
apart. (fp32, the ``vec`` layout, is checked the same way in
``test_vllm_connector.py``.)
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)
if not torch.cpu._is_amx_tile_supported():
    pytest.skip("no AMX tiles on this CPU: vLLM uses the vec layout", allow_module_level=True)

from kvstore.client.vllm_scheduler import request_extra  # noqa: E402
from kvstore.client.vllm_store import close_shared_client, shared_client  # noqa: E402
from kvstore.kernels import EngineKind  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402
from tests.client import vllm_engine as ve  # noqa: E402
from tests.kernels.engine_caches import build_cache, read_cache  # noqa: E402

pytestmark = pytest.mark.integration

URL = "embedded"
PROMPT = 600  # tokens: two whole store blocks of 256


class _Salted:
    cache_salt = "amx"


@pytest.fixture(scope="module")
def stored(local_model_dir):
    """Run one prompt through a bf16 engine; return (prompt, stored kv, worker)."""
    llm = ve.make_llm(local_model_dir, URL, dtype="bfloat16")
    try:
        prompt = ve.prompts(seed=3, prefix_tokens=PROMPT)[0]
        ve.generate(llm, prompt, salt="amx", max_tokens=1)
        worker = ve.worker_connector().worker
        layout = KVLayout(ve.MODEL_ID, num_layers=8, num_kv_heads=4, head_dim=64,
                          dtype="bfloat16", block_tokens=ve.BLOCK_TOKENS)
        n, kv = shared_client(URL).namespace(layout).get(prompt, request_extra(_Salted()))
        yield prompt, n, kv, worker.engine
    finally:
        ve.shutdown_llm(llm)
        close_shared_client(URL)


def _relative_error(kv: torch.Tensor, want: torch.Tensor) -> float:
    """Largest |difference| per layer and K/V, relative to that tensor's largest |value|."""
    diff = (kv.float() - want.float()).abs().amax(dim=(2, 3, 4))
    return float((diff / want.float().abs().amax(dim=(2, 3, 4))).max())


def test_engine_cache_is_read_in_the_amx_layout(stored, local_model_dir):
    from transformers import AutoModelForCausalLM

    from kvstore.client.hf_adapter import cache_to_canonical

    prompt, n, kv, engine = stored
    assert engine.kind is EngineKind.VLLM_CPU_AMX
    assert n == 2 * ve.BLOCK_TOKENS and kv.dtype == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(local_model_dir, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        cache = model(torch.tensor([prompt[:n]]), use_cache=True).past_key_values
    want = cache_to_canonical(cache)
    assert kv.shape == want.shape
    good = _relative_error(kv, want)
    assert good < 0.05, good  # bf16 arithmetic of two engines

    # control: the same engine bytes read as the vec layout are far off
    H, D, bs = kv.shape[3], kv.shape[4], engine.block_size
    wrong = []
    for layer in kv:
        k = layer[0].view(-1, bs, H, D)
        v = layer[1].view(-1, bs, H, D)
        cache = build_cache(EngineKind.VLLM_CPU_AMX, k, v)  # the bytes vLLM holds
        wk, wv = read_cache(EngineKind.VLLM_CPU, cache)
        wrong.append(torch.stack([wk.flatten(0, 1), wv.flatten(0, 1)]))
    bad = _relative_error(torch.stack(wrong), want)
    assert bad > 10 * good and bad > 0.3, (good, bad)
    print(f"\nAMX engine cache vs transformers: relative error {good:.4f} "
          f"(read as vec: {bad:.3f})")
