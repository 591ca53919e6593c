import os

import pytest
import torch

import backbones
from backbones._registry import _VARIANTS

# Threads: OMP_NUM_THREADS when set; else the cores shared out among pytest-xdist's workers (CI's 2 cores, 2 workers:
# one each), at most two per process. The suite is checked at 1 and 2 threads, where float32 sums are split and
# rounded differently (every float comparison has a tolerance that allows for it).
_workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT') or 1)
torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or 0) or max(1, min(2, (os.cpu_count() or 1) // _workers)))


# The heaviest files first (about 240, 220 and 190 s of one core each): pytest-xdist hands each worker one file at a
# time (--dist loadfile) in this order (--no-loadscope-reorder), so a long file started last cannot leave the other
# workers idle at the end.
HEAVY_FIRST = ('test_export.py', 'test_contract.py', 'test_timm_suite.py', 'test_bad_input_models.py')


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def smallest_per_family():
    """The smallest zoo variant (official params) of each family: what behavioural tests run for real."""
    best = {}
    for name, info in _VARIANTS.items():
        if info.family not in best or info.params < _VARIANTS[best[info.family]].params:
            best[info.family] = name
    return sorted(best.values())


ALL_MODELS = backbones.list_models()
SMALL_MODELS = smallest_per_family()


def input_side(model, side: int) -> int:
    """The smallest side >= ``side`` that ``model`` takes: a multiple of its ``input_divisor`` (1 when it has none),
    e.g. 64 -> 70 for Sequencer2D (multiples of 14), 64 for the rest."""
    divisor = getattr(model, 'input_divisor', 1)
    return -(-side // divisor) * divisor


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One compute thread for the test: tiny forwards, where threads only add overhead (much more on a busy machine),
    and in-process training (as OMP_NUM_THREADS=1 does for the training subprocesses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Two code paths that compute the same float32 function (another kernel, summation order, thread count, an exported
# or compiled program, a fused or folded layer) agree to a few roundings (eps = 1.2e-7) per op; over a network's
# depth that is ~1e-6 of the magnitude of the values involved, and a value near 0 that comes out of sums of terms of
# that magnitude carries the same absolute error. So: 1e-5 relative to each value, plus 1e-5 of the largest
# |expected| (at least 1) absolute -- ~10x above what thread counts and machines change, far below any real bug.
F32_RTOL = 1e-5
F32_ATOL = 1e-5


def assert_close_f32(actual, expected, rtol: float = F32_RTOL, atol: float = F32_ATOL, msg=None):
    """``torch.testing.assert_close`` with ``rtol`` and an ``atol`` scaled to the largest |expected| (see above)."""
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=msg)


def max_diff_f32(got, expected) -> float:
    """The largest ``|got - expected|`` in units of the largest ``|expected|`` (at least 1): compared with
    ``F32_ATOL`` it is ``assert_close_f32``'s absolute bound, for parity tests that report one number."""
    return (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())
