#!/usr/bin/env python3
"""torchrun, for PyTorch builds without libuv such as Debian 13's python3-torch 2.6.

torchrun's rendezvous opens its TCPStore with use_libuv=True, and a PyTorch built without libuv
refuses that ("use_libuv was requested but PyTorch was build without libuv support") before
launching anything. This runs torchrun itself (torch.distributed.run) with the store's classic
server as the default; arguments and behaviour are torchrun's:

    scripts/torchrun.py --no-python --nproc-per-node 2 build/ttq finetune model.pt -o out.pt
"""
import sys

import torch.distributed as dist


class TCPStore(dist.TCPStore):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("use_libuv", False)
        super().__init__(*args, **kwargs)


dist.TCPStore = TCPStore  # before torch.distributed.run imports the rendezvous handlers

from torch.distributed.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
