"""Host memory for the training step: freed blocks stay in the process for the next step, not handed back to the OS.

glibc serves an allocation above its mmap threshold (at most 32 MiB; a CIFAR batch of 64 at 2048 channels x 8 x 8,
NORM's expanded map for resnet8x4, is 33.5 MiB) with a fresh mmap and gives it back with munmap when it is freed,
so every step pays one page fault per 4 KiB page of each large activation and gradient again: ~100k faults and
0.2 s of kernel time per resnet32x4 -> resnet8x4 step on a 2-core CPU, ~9% of the step. With mmap and trimming
off, a freed block is reused by the next step's tensors of the same size. Values are untouched; the price is that
the process keeps its peak heap until it exits. Linux with glibc only; elsewhere it does nothing.
"""
import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: trim only a free top chunk above 2 GiB


def keep_freed_host_memory():
    """Tell glibc's malloc to serve big blocks from its heap and keep freed ones; True when it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (musl's mallopt is a stub that answers 0 below)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
