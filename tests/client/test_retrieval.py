import pytest

from kvstore.client.retrieval import BandwidthEstimator, PrefillModel, plan_retrieval


def test_prefill_fit_recovers_quadratic():
    model = PrefillModel()
    for n in (256, 1024, 4096, 8192):
        model.observe(n, 2e-5 * n + 1e-9 * n * n)
    assert model.seconds(2048) == pytest.approx(2e-5 * 2048 + 1e-9 * 2048**2, rel=1e-6)


def test_bandwidth_converges():
    bw = BandwidthEstimator(bytes_per_s=1e6, overhead_s=0.0)
    for _ in range(30):
        bw.observe(10**9, 1.0)
    assert bw.bytes_per_s == pytest.approx(1e9, rel=1e-3)


def test_fast_carrier_loads_everything():
    plan = plan_retrieval(4096, 256, 2 << 20, BandwidthEstimator(10e9, 1e-4), PrefillModel(1e-4))
    assert plan.load_tokens == 4096
    assert plan.est_load_s < plan.est_recompute_s


def test_slow_carrier_loads_nothing():
    slow = BandwidthEstimator(bytes_per_s=1e6, overhead_s=0.01)
    plan = plan_retrieval(4096, 256, 2 << 20, slow, PrefillModel(1e-4))
    assert plan.load_tokens == 0


def test_overhead_makes_short_prefixes_not_pay_but_long_ones_do():
    # fixed 50 ms per request, fast bytes; prefill quadratic: one block does not pay
    bw = BandwidthEstimator(bytes_per_s=5e9, overhead_s=0.05)
    prefill = PrefillModel(a=1e-4, b=1e-8)
    assert plan_retrieval(256, 256, 1 << 20, bw, prefill).load_tokens == 0
    assert plan_retrieval(8192, 256, 1 << 20, bw, prefill).load_tokens == 8192


def test_plan_never_predicts_slower_than_recompute_by_margin():
    for bps in (1e5, 1e7, 1e8, 1e9, 1e10):
        for overhead in (0.0, 0.01, 0.1):
            plan = plan_retrieval(
                8192, 256, 1 << 20, BandwidthEstimator(bps, overhead), PrefillModel(3e-5, 2e-9), 0.25
            )
            if plan.load_tokens:
                assert plan.est_load_s <= 0.75 * plan.est_recompute_s
