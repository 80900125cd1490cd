"""SSD quotas against a real daemon with an SSD tier: set by flag and through the admin API.

Bob (``--tenant-quota bob=ssd:1MiB``) writes far past his SSD quota: his own
oldest SSD blocks go, Alice's stay byte-exact; a put larger than his quota
is refused with a clear error; lowering Alice's quota with ``SetQuota``
frees her own segments and none of Bob's. What ``kvstore admin stats`` shows
(``ssd_used_bytes``, ``ssd_quota_bytes``) is read through the admin API.
"""

from __future__ import annotations

import numpy as np
import pytest

from kvstore.admin.client import AdminClient
from kvstore.demo.daemon_process import DaemonProc, daemon_args, free_port
from kvstore.errors import CapacityError
from tests.transport.conftest import blocks_for, spec_of, tokens_for
from tests.transport.test_tenants_hostile import ADMIN, ALICE, BOB, _write, client

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def ssd_daemon(sockdir):
    tokens = _write(f"{sockdir}/tokens", f"alice:{ALICE}\nbob:{BOB}\n")
    admin = _write(f"{sockdir}/admin", ADMIN + "\n")
    address = f"127.0.0.1:{free_port()}"
    args = daemon_args(sockdir, ("tcp",), "--auth-token-file", tokens, "--admin-token-file",
                       admin, "--ssd-dir", f"{sockdir}/ssd", "--tenant-quota", "bob=ssd:1MiB")
    args[args.index("--ssd-bytes") + 1] = "64MiB"
    d = DaemonProc(args, env={"KVSTORE_ADMIN": address})
    d.admin = address
    yield d
    d.kill()


def tenants(d) -> dict[str, dict[str, int]]:
    with AdminClient(d.admin, token=ADMIN) as admin:
        reply = admin.call("GetStats")
    return {t["tenant"]: {k: int(v) for k, v in t.items() if k != "tenant"}
            for t in reply["tenants"]}


def put_prompts(c, ns, spec, seeds, nblocks=4) -> None:
    for seed in seeds:
        toks = tokens_for(seed, nblocks)
        assert c.put(ns, toks, blocks_for(toks, spec)) == nblocks * spec.block_tokens


def served_exact(c, ns, spec, seed, nblocks=4) -> bool:
    toks = tokens_for(seed, nblocks)
    n, got = c.get(ns, toks)
    return n == len(toks) and all(
        bytes(memoryview(g).cast("B")) == e.tobytes() for g, e in zip(got, blocks_for(toks, spec)))


def test_ssd_quotas_by_flag_and_admin_api(ssd_daemon):
    d = ssd_daemon
    spec_a, spec_b = spec_of(tenant="alice"), spec_of(tenant="bob")
    alice, bob = client(d, "tcp", "alice", ALICE), client(d, "tcp", "bob", BOB)
    ns_a, ns_b = alice.register(spec_a), bob.register(spec_b)
    put_prompts(alice, ns_a, spec_a, range(8))  # 128 KiB of 4 KiB blocks
    alice.flush()
    alice_on_ssd = tenants(d)["alice"]["ssd_used_bytes"]
    assert alice_on_ssd >= 8 * 4 * 4096
    put_prompts(bob, ns_b, spec_b, range(100, 200))  # 1.6 MiB through his 1 MiB SSD quota
    bob.flush()
    t = tenants(d)
    assert t["bob"]["ssd_quota_bytes"] == MiB
    assert 0 < t["bob"]["ssd_used_bytes"] <= MiB
    assert t["alice"]["ssd_used_bytes"] == alice_on_ssd  # none of hers went
    assert all(served_exact(alice, ns_a, spec_a, s) for s in range(8))
    # a put larger than the quota is refused with a clear error, nothing of it stored
    big = tokens_for(999, 300)  # 1.2 MiB
    with pytest.raises(CapacityError, match="SSD quota"):
        bob.put(ns_b, big, blocks_for(big, spec_b))
    assert bob.lookup(ns_b, big) == 0
    # the admin API lowers Alice's quota: her own oldest segments go at once, not Bob's
    bob_on_ssd = tenants(d)["bob"]["ssd_used_bytes"]
    with AdminClient(d.admin, token=ADMIN) as admin:
        reply = admin.call("SetQuota", tenant="alice", ssd_bytes=64 << 10)
    assert int(reply["tenant"]["ssd_quota_bytes"]) == 64 << 10
    assert int(reply["tenant"]["ssd_used_bytes"]) <= 64 << 10
    assert tenants(d)["bob"]["ssd_used_bytes"] == bob_on_ssd
    assert np.all([served_exact(alice, ns_a, spec_a, s) for s in range(8)])  # still in memory
    alice.close()
    bob.close()
