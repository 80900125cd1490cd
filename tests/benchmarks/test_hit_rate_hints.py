"""benchmarks.hit_rate's conversation options on a small slice: hints, answers stored, halves."""

import json
from pathlib import Path

import pytest

from benchmarks import hit_rate
from benchmarks.conversations import FRESH_BASE, Record, answer_paths, link_turns, sessions
from benchmarks.replay import load_trace, replay
from kvstore.eviction import get_policy

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRACE = DATA / "mooncake_conversation_trace.jsonl"


def _chat(tmp_path) -> Path:
    """Three conversations of made-up turns: each next prompt = prompt + answer + question."""
    path, lines, next_id = tmp_path / "chat.jsonl", [], 100
    convs = {c: [1] for c in range(3)}  # block 1: a shared system prompt
    t = 0
    for turn in range(4):
        for c in range(3):
            if c == 2 and turn >= 2:
                continue  # conversation 2 ends after two turns
            ids = convs[c] + [next_id, next_id + 1]  # two new blocks, the last one partial
            next_id += 2
            lines.append({"timestamp": t, "input_length": 512 * len(ids) - 100,
                          "output_length": 600, "hash_ids": ids})
            convs[c] = ids[:-1] + [next_id, next_id + 1]  # the answer fills [partial|answer] + 1 more
            next_id += 2
            t += 1000
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def trace(tmp_path) -> Path:
    return TRACE if TRACE.exists() else _chat(tmp_path)


def test_turns_sessions_and_answers_of_a_made_up_chat(tmp_path):
    recs = [Record(0, 3 * 512 - 100, 700, [1, 10, 11]),  # full blocks 1, 10; the answer fills 2 more
            Record(1, 5 * 512 - 7, 5, [1, 10, 12, 13, 14]),  # turn 2: extends [1, 10]
            Record(2, 512 * 2 - 5, 5, [1, 20])]  # another conversation, same system prompt
    prev = link_turns(recs)
    assert prev == [None, 0, None]
    conv, last = sessions(prev)
    assert conv == [0, 0, 2] and last == [False, True, True]
    paths = answer_paths(recs, prev)
    assert paths[0] == [1, 10, 12, 13]  # the next turn's ids: it hits through the answer
    assert paths[1] is None  # 5 tokens fill no block
    assert paths[2] == [1, FRESH_BASE]  # the answer completes the partial block; no next turn


def test_answer_of_a_last_turn_gets_fresh_ids():
    recs = [Record(0, 600, 1000, [1, 2])]
    assert answer_paths(recs, [None]) == [[1, FRESH_BASE, FRESH_BASE + 1]]


def test_hints_and_answers_raise_the_hit_rate(tmp_path):
    path = _chat(tmp_path)
    plain, stored = load_trace(path), load_trace(path, save_decode=True)

    def lru(trace, cap, delay=None):
        return replay(trace, get_policy("lru", capacity=cap), cap, hint_delay=delay).hit_rate

    assert lru(stored, 100) > lru(plain, 100)  # room for all: the answers are pure gain
    assert lru(plain, 12, delay=0.0) > lru(plain, 12)  # the ended conversation makes room


def test_hit_rate_flags_on_a_slice(trace, tmp_path, capsys):
    out = tmp_path / "hit.json"
    argv = ["--trace", str(trace), "--limit", "400", "--fractions", "0.05", "--policies", "lru,prefix,opt",
            "--hints", "none,session-end,session-end:30", "--save-decode", "--part", "second",
            "--json", str(out), "--no-progress"]
    rows = hit_rate.main(argv)
    doc = json.loads(out.read_text())
    assert doc["save_decode"] is True and doc["part"] == "second" and doc["requests"] == 200
    labels = [r["policy"] for r in rows]
    assert labels == ["lru", "lru+end@0s", "lru+end@30s", "prefix", "prefix+end@0s", "prefix+end@30s", "opt"]
    by = {r["policy"]: r["hit_rate"] for r in rows}
    assert all(0 <= v <= doc["inf"] + 1e-9 for v in by.values())
    assert by["opt"] >= by["lru"]
    assert "lru+end@0s" in capsys.readouterr().out


def test_unknown_hint_mode_is_refused(trace):
    with pytest.raises(SystemExit):
        hit_rate.main(["--trace", str(trace), "--limit", "10", "--hints", "sometimes", "--no-progress"])
