"""ReadCounters: the one place that counts hits, misses and bytes served, per tier and namespace.

Every read path of the store ends here once its copies are done (``get``,
``get_into``, ``lease_read`` for shm clients and the daemon's own reads), and
every ``lookup`` too, so ``kvstore admin stats`` and the metrics tell the same
story whichever call an engine uses:

* a **read** asks for ``requested`` blocks (the whole blocks of its tokens)
  and is served a prefix of them, each from one tier (``None``: from below the
  memory tiers, the SSD tier or its write queue). The tiers are searched in
  order (GPU, CPU, then SSD), so a tier's *hits* are the blocks it served and
  its *misses* the blocks asked of it and not found there (a block served from
  the SSD is a CPU miss and an SSD hit; a block cached nowhere is a miss in
  every tier). ``bytes_out`` counts the bytes of the blocks served, whether
  they were copied or handed over as a lease on the arena. The namespace
  counts ``hits`` (blocks served) and ``misses`` (blocks asked for, not served).
* a **lookup** answers how many tokens are cached without serving them: it
  counts ``lookup_hits`` (blocks found) and ``lookup_misses`` (blocks not
  found) on the namespace. An engine such as vLLM looks the whole prompt up
  and then reads only what was found, so its misses show in the lookup
  counters, and its hits in both (found, then served).

Called under the store lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.store.block_state import NamespaceState
from kvstore.store.memory_tier import MemoryTier


class ReadCounters:
    """Counts reads and lookups onto the memory tiers' and namespaces' stats; keeps the SSD's."""

    def __init__(self, memory: Sequence[MemoryTier], ssd_enabled: bool):
        self._memory = list(memory)  # search order: GPU (if any), then CPU
        self._ssd_enabled = ssd_enabled
        self.ssd_hits = 0  # blocks served from below the memory tiers
        self.ssd_misses = 0  # blocks asked of the SSD tier and not found there

    def read(self, nst: NamespaceState, sources: Sequence[MemoryTier | None],
             requested: int) -> None:
        """A read asked for ``requested`` blocks and was served ``sources[i]`` for block i."""
        served = len(sources)
        requested = max(requested, served)
        nst.hits += served
        nst.misses += requested - served
        remaining = requested  # blocks still looked for when the search reaches a tier
        for tier in self._memory:
            hits = sum(1 for s in sources if s is tier)
            tier.stats.hits += hits
            tier.stats.misses += remaining - hits
            tier.stats.bytes_out += hits * nst.spec.block_bytes
            remaining -= hits
        below = sum(1 for s in sources if s is None)
        if self._ssd_enabled:
            self.ssd_hits += below
            self.ssd_misses += remaining - below

    @staticmethod
    def lookup(nst: NamespaceState, found: int, requested: int) -> None:
        """A lookup of ``requested`` whole blocks found the first ``found`` of them."""
        nst.lookup_hits += found
        nst.lookup_misses += max(0, requested - found)
