"""Graceful stops: SIGTERM/SIGINT set a flag that the training loop checks between steps."""
import signal

import torch
import torch.distributed as dist


class StopRequest:
    """Remembers the first SIGTERM/SIGINT; a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def install(self):
        """Catch SIGTERM and SIGINT in this process (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self):
        """Restore the previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def should_stop(self, step, runtime, every=20):
        """True when this process (or, under DDP, any rank at a sync point) was asked to stop."""
        if not runtime.distributed:
            return self.signum is not None
        if (step + 1) % every:
            return False
        # filled on the device (torch.tensor([...], device=...) copies from pageable memory) and read once: the
        # one host sync of this check, every `every` steps
        flag = torch.full((1,), self.signum or 0, dtype=torch.int64, device=runtime.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
        if signum and self.signum is None:
            self.signum = signum
        return bool(signum)


class Stopped(Exception):
    """Training stopped on signal `signum` after writing its resumable checkpoint (the scripts exit 128 + signum)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
