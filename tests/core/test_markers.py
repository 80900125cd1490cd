"""The suite's rules: every test is exactly one of unit/integration (tests/markers.py),
unit tests stay in their process, and each test starts from seeded global RNGs."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import TEST_SEED
from tests.markers import KINDS, check_markers, kind_of, program_of


class FakeItem:
    def __init__(self, marks=(), fixtures=(), nodeid="tests/x.py::test_x"):
        self.marks = [getattr(pytest.mark, m) for m in marks]
        self.fixturenames = list(fixtures)
        self.nodeid = nodeid

    def iter_markers(self):
        return iter(m.mark for m in self.marks)

    def get_closest_marker(self, name):
        return next((m for m in self.iter_markers() if m.name == name), None)


def test_every_test_of_this_session_is_exactly_one_of_unit_or_integration(request):
    items = request.session.items
    assert request.node in items
    assert check_markers(items) == []
    for item in items:
        assert kind_of(item) in {m.name for m in item.iter_markers()} & set(KINDS), item.nodeid


def test_this_test_is_unit(request):
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("integration") is None


def test_kind_follows_the_marker_then_the_fixtures():
    assert kind_of(FakeItem()) == "unit"
    assert kind_of(FakeItem(fixtures=["tmp_path", "store"])) == "unit"
    assert kind_of(FakeItem(marks=["integration"])) == "integration"
    assert kind_of(FakeItem(fixtures=["tmp_path", "etcd"])) == "integration"
    assert kind_of(FakeItem(fixtures=["make_cluster"])) == "integration"


def test_check_markers_names_the_tests_with_both_or_neither():
    good = [FakeItem(["unit"], nodeid="a"), FakeItem(["integration", "slow"], nodeid="b")]
    assert check_markers(good) == []
    bad = check_markers([FakeItem(["unit", "integration"], nodeid="both"),
                         FakeItem(["slow"], nodeid="neither")] + good)
    assert [line.split(":")[0] for line in bad] == ["both", "neither"]


@pytest.mark.parametrize("args, name", [
    ([sys.executable, "-c", "pass"], "python"),
    ("python3 -m kvstore serve", "python3"),
    (["/usr/bin/etcd", "--data-dir", "x"], "etcd"),
    (["kvstore", "admin", "stats"], "kvstore"),
    (["g++", "-O1"], "g++"),
])
def test_program_of(args, name):
    assert program_of(args) == name


def test_a_unit_test_cannot_start_an_interpreter_but_may_run_a_tool():
    with pytest.raises(AssertionError, match="mark it @pytest.mark.integration"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert subprocess.run(["true"]).returncode == 0  # a tool, not a part of the system


@pytest.mark.parametrize("run", [1, 2])
def test_global_rngs_start_from_the_test_seed(run):
    assert random.random() == random.Random(TEST_SEED).random()
    assert np.random.random() == np.random.RandomState(TEST_SEED).random_sample()
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(TEST_SEED)))
