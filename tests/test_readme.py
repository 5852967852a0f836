"""Every Python block of the README runs as written, at 2 ranks under
mpiexec (each block is a whole program; those that touch CUDA need a GPU,
and run at as many ranks as there are GPUs, up to 2)."""

import re
from pathlib import Path

import pytest

from test_mpi import has_gpu, launch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL)


def needs_gpu(code: str) -> bool:
    return 'device="cuda"' in code


def block_id(index: int, code: str) -> str:
    """e.g. "3-cuda" for the fourth block if it puts a tensor on a GPU, so
    that `-k cuda` selects the GPU blocks."""
    return f"{index}-cuda" if needs_gpu(code) else str(index)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", [
    pytest.param(code, id=block_id(i, code),
                 marks=[pytest.mark.skipif(not has_gpu(), reason="needs a GPU")] if needs_gpu(code) else [])
    for i, code in enumerate(BLOCKS)
])
def test_readme_block_runs_at_two_ranks(tmp_path, code):
    program = tmp_path / "block.py"
    program.write_text(code)
    ranks = 2
    if needs_gpu(code):
        import torch

        ranks = min(2, torch.cuda.device_count())  # one GPU per rank, as NCCL needs
    result, output = launch(program, ranks, cwd=tmp_path)
    assert result.returncode == 0, f"{code}\n---\n{output[-6000:]}"
