"""Train a small classifier with DistributedDataParallel, its gradients
averaged by pyallreduce's DDP hook. Launch with MPI:

    mpiexec -n 4 python -m pyallreduce.examples.ddp_train [--epochs 5] [--compression fp16]

The data is synthetic (points around ten random centres in 32 dimensions, the
label being the centre), so the example needs nothing to download. Every rank
trains on its own shard of each epoch's shuffle; the loss and accuracy shown
are averaged over the ranks.
"""

import argparse

from pyallreduce._optional import require

require("torch", "torch", "the DDP example")
require("tqdm", "examples", "the DDP example")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402
from tqdm import tqdm  # noqa: E402

import pyallreduce  # noqa: E402
from pyallreduce.ddp import HookState, allreduce_hook  # noqa: E402

FEATURES, CLASSES = 32, 10


def synthetic_dataset(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0)) * 2
    labels = torch.randint(0, CLASSES, (samples,), generator=generator)
    points = centres[labels] + torch.randn(samples, FEATURES, generator=generator) * 4.0
    return TensorDataset(points, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--compression", choices=["fp16", "bf16"], default=None)
    args = parser.parse_args()

    comm = pyallreduce.init(torch_backend="gloo")  # the communicator, and torch.distributed over the same ranks
    rank, world_size = comm.rank, comm.size

    torch.manual_seed(0)  # DDP also broadcasts rank 0's parameters at construction
    net = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, CLASSES),
    )
    model = DDP(net)
    model.register_comm_hook(HookState(comm, compression=args.compression), allreduce_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * world_size, momentum=0.9)  # linear scaling

    train_set, test_set = synthetic_dataset(20000, seed=1), synthetic_dataset(4000, seed=2)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    loss_fn = torch.nn.CrossEntropyLoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # one shuffle per epoch, split across the ranks
        model.train()
        total = torch.zeros(2)  # loss sum, batches
        for x, y in tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0, leave=False):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()  # buckets are averaged over the ranks by pyallreduce while backward runs
            optimizer.step()
            total += torch.tensor([loss.item(), 1.0])
        model.eval()
        with torch.no_grad():
            x, y = test_set.tensors
            shard = slice(rank, None, world_size)
            correct = (model(x[shard]).argmax(1) == y[shard]).sum()
        stats = torch.tensor([total[0] / total[1], correct, len(y[shard])], dtype=torch.float64)
        comm.allreduce(stats)
        if rank == 0:
            print(f"epoch {epoch + 1}: train loss {stats[0] / world_size:.4f}, "
                  f"test accuracy {stats[1] / stats[2]:.4f} ({world_size} ranks)")

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
