"""pyallreduce.ddp.allreduce_hook in DistributedDataParallel under mpiexec."""

from pathlib import Path

import pytest
import torch

from pyallreduce.ddp import HookState, allreduce_hook
from pyallreduce.testing import spawn_local
from test_mpi import has_gpu, launch

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.parametrize(
    "ranks, device",
    [(n, "cpu") for n in (2, 3, 4)]
    + [pytest.param(n, "cuda", marks=pytest.mark.skipif(not has_gpu(), reason="needs a GPU")) for n in (2, 3)],
)
def test_ddp_hook_matches_the_builtin_hook(ranks, device):
    result, output = launch(WORKER, ranks, "--device", device)
    assert result.returncode == 0, output[-6000:]
    assert f"ddp worker: {ranks} ranks, 8 checks passed" in result.stdout, output[-6000:]


class _Bucket:
    """What the hook reads of DDP's GradBucket: its flat gradient buffer."""

    def __init__(self, buffer):
        self._buffer = buffer

    def buffer(self):
        return self._buffer


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_buckets_are_averaged_without_overflow(dtype):
    # 40000 on each of 3 ranks: the sum, 120000, is past float16's 65504.
    def each_rank(comm):
        bucket = torch.full((10,), 40000.0, dtype=dtype)
        return allreduce_hook(HookState(comm), _Bucket(bucket)).wait().float().tolist()

    expected = torch.full((10,), 40000.0, dtype=dtype).float().tolist()
    assert spawn_local(3, each_rank) == [expected] * 3


def test_a_sparse_bucket_is_refused_on_every_rank_with_a_reason():
    def each_rank(comm):
        sparse = torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0]).to_sparse()
        # DDP reads the hook's future in C++, so its error arrives as torch's RuntimeError naming it.
        refusal = "TypeError: pyallreduce's DDP hook reduces dense gradients only.*sparse_coo"
        with pytest.raises(RuntimeError, match=refusal):
            allreduce_hook(HookState(comm), _Bucket(sparse)).wait()
        return "refused"

    assert spawn_local(2, each_rank) == ["refused"] * 2
