"""The CPU emulator of the CUDA model (tests/cuda_emulation) against kernels
with one known mistake each (cuda_emulation/emulator_selftest_emulated.cpp):
what the emulator claims to catch, it catches."""

from __future__ import annotations

import math

import emulated_cuda
import pytest
import torch

pytestmark = emulated_cuda.pytest_marks()


@pytest.fixture(scope="module")
def emu():
    with emulated_cuda.emulated_device():
        yield emulated_cuda.ops()


def test_a_correct_kernel_runs(emu):
    data = torch.arange(32, dtype=torch.float32)
    assert emu.emulator_case("block_sum", data)[0].item() == sum(range(32))


@pytest.mark.parametrize("name, message", [
    ("divergent_barrier", "__syncthreads reached by 16 of 32 threads"),
    ("partial_warp_shuffle", "lanes of a warp"),
    ("mismatched_barriers", "deadlock"),
    ("read_past_end", "invalid memory access"),
    ("grid_sync_without_cooperative_launch", "not launched cooperatively"),
    ("large_smem_without_attribute", "without cudaFuncSetAttribute"),
])
def test_mistakes_are_reported(emu, name, message):
    with pytest.raises(RuntimeError, match=message):
        emu.emulator_case(name, torch.zeros(64))


def test_a_race_shows_as_a_result_that_depends_on_the_thread_order(emu):
    results = []
    for reverse in (False, True):
        with emulated_cuda.emulated_device(reverse=reverse):
            results.append(emu.emulator_case("unsynchronized_read", torch.zeros(64))[1].item())
    assert results[0] == 42.0 and math.isnan(results[1])  # reversed: read before the write


def test_shared_memory_a_cp_async_has_in_flight_reads_as_nan(emu):
    out = emu.emulator_case("read_before_cp_async_wait", torch.ones(64))
    assert math.isnan(out[1].item())
    with emulated_cuda.emulated_device(eager_copies=True):  # landed at once: no NaN
        assert emu.emulator_case("read_before_cp_async_wait", torch.ones(64))[1].item() == 1.0


@pytest.mark.parametrize("order", [{}, {"reverse": True}, {"block_greedy": True},
                                   {"block_greedy": True, "reverse": True}],
                         ids=["lockstep", "lockstep_threads_reversed", "block_greedy",
                              "block_greedy_reader_first"])
def test_a_block_polling_for_another_blocks_tagged_words_waits_for_them(emu, order):
    """Block 1 spins on two words per thread that block 0 writes
    (common/cuda_tagged_word.cuh), both read before it waits: the poll yields
    to the writer, whichever block the scheduler runs first. (Reader first,
    block_greedy reversed, the second word's early read is stale when the
    first wait ends: the scheduler must count that ended wait as progress,
    or it reports a deadlock, as it did before poll_done.)"""
    data = torch.arange(256, dtype=torch.float32)
    with emulated_cuda.emulated_device(**order):
        out = emu.emulator_case("tagged_handoff", data)
    assert torch.equal(out[32:64], 2 * data[:32])
    assert torch.equal(out[64:96], 3 * data[:32])


def test_a_poll_nothing_satisfies_is_a_deadlock(emu):
    with pytest.raises(RuntimeError, match="deadlock.*a poll no write has satisfied"):
        emu.emulator_case("poll_never_written", torch.zeros(256))


def test_polling_across_the_blocks_of_a_normal_launch_is_a_deadlock(emu):
    """A normal launch runs its blocks one after another here (a GPU need not
    run them together either): with the reader first, its poll never ends."""
    out = emu.emulator_case("tagged_handoff_normal_launch", torch.ones(256))
    assert torch.equal(out[32:64], torch.full((32,), 2.0))  # writer first: it happens to work
    with emulated_cuda.emulated_device(reverse=True):
        with pytest.raises(RuntimeError, match="deadlock"):
            emu.emulator_case("tagged_handoff_normal_launch", torch.ones(256))
