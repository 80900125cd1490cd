import random

import pytest

from kvstore.errors import CapacityError, InvalidArgument
from kvstore.store.slab import SlabAllocator, auto_page_bytes


def test_slots_pack_into_pages_and_pages_return_when_empty():
    a = SlabAllocator(64 << 10, 4096)
    offs = [a.alloc(1024) for _ in range(8)]  # 4 slots per page -> 2 pages
    assert a.used_pages == 2 and len(set(offs)) == 8
    assert all(o % 256 == 0 for o in offs)
    for o in offs[:4]:
        a.free(o)
    assert a.used_pages == 1
    a.check()
    with pytest.raises(InvalidArgument):
        a.free(offs[0])  # double free


def test_classes_share_the_free_pages():
    a = SlabAllocator(16 * 4096, 4096)
    small = [a.alloc(512) for _ in range(16 * 8)]
    assert None not in small and a.alloc(512) is None and a.alloc(2048) is None
    for o in small[:8]:  # exactly one page worth, lowest first: the first page empties
        a.free(o)
    o = a.alloc(2048)
    assert o is not None and a.slab_at(o).cls.slot_bytes == 2048
    a.check()


def test_multi_page_slabs_bound_waste():
    a = SlabAllocator(64 << 20, 1 << 20)
    cls = a.slot_class(int(1.25 * (1 << 20)))  # 1.25 pages: k=1 impossible, k=2 wastes 37%
    assert cls.pages_per_slab * (1 << 20) - cls.slots_per_slab * cls.stride <= (
        cls.pages_per_slab * (1 << 20) / 8
    )
    o = a.alloc(int(1.25 * (1 << 20)))
    assert a.slab_at(o).start_page >= a.num_pages - cls.pages_per_slab  # from the high end
    with pytest.raises(CapacityError):
        a.slot_class(65 << 20)


def test_slab_offsets_lists_live_slots():
    a = SlabAllocator(8 * 4096, 4096)
    offs = [a.alloc(1024) for _ in range(4)]
    a.free(offs[1])
    assert sorted(a.slab_offsets(offs[0])) == sorted([offs[0], offs[2], offs[3]])


def test_auto_page_bytes():
    assert auto_page_bytes(64 << 10) == 4096
    assert auto_page_bytes(1 << 30) == 32 << 20
    assert auto_page_bytes(1 << 40) == 64 << 20


def test_long_random_run_does_not_fragment():
    """Random alloc/free of three sizes for a long run: whenever a class has no slot,
    freeing everything of the other classes always gives it room again, and the
    bookkeeping stays exact."""
    rng = random.Random(7)
    a = SlabAllocator(256 * 4096, 4096)
    sizes = [700, 3000, 9000]  # 9000 needs multi-page slabs
    live = {s: [] for s in sizes}
    for step in range(20000):
        s = rng.choice(sizes)
        if rng.random() < 0.55:
            o = a.alloc(s)
            if o is None:
                for other in sizes:
                    if other != s:
                        for x in live[other]:
                            a.free(x)
                        live[other].clear()
                assert a.can_alloc(s) or live[s], "no room after freeing the other classes"
                o = a.alloc(s)
            if o is not None:
                live[s].append(o)
        elif live[s]:
            a.free(live[s].pop(rng.randrange(len(live[s]))))
        if step % 2000 == 0:
            a.check()
    for s in sizes:
        for x in live[s]:
            a.free(x)
    a.check()
    assert a.used_pages == 0 and a.live_bytes == 0
