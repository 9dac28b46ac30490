"""helper/runtime/host_memory.py: after keep_freed_host_memory, a big tensor freed and allocated again costs no page faults."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a child: the setting is process-wide and would change every later test's allocations.
CHILD = r"""
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
from helper.runtime.host_memory import keep_freed_host_memory

def faults_per_round(rounds=20):
    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(40 * 2**20 // 4)  # 40 MiB: above glibc's largest mmap threshold
        t.fill_(1.0)                      # touch every page
        del t
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return max(counts[-3:])  # the first rounds grow the heap (memalign's remainders fragment it for a while)

plain = faults_per_round()
took = keep_freed_host_memory()
kept = faults_per_round()
print(took, plain, kept)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_big_blocks_are_reused_instead_of_faulted_in_again():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_MEM_ALLOC", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", CHILD, ROOT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    took, plain, kept = out.stdout.split()
    if took != "True":
        pytest.skip("not glibc: mallopt is unavailable or a stub")
    pages = 40 * 2**20 // 4096
    assert int(plain) >= pages // 2  # each round maps fresh pages and faults them in
    assert int(kept) < pages // 20  # the freed block is reused


RUNTIME_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from helper.runtime.device import setup_runtime
print(setup_runtime("cpu").host_memory_kept, setup_runtime("cpu", keep_host_memory=True).host_memory_kept)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_the_training_runtime_keeps_freed_host_memory_on_the_cpu_when_asked():
    out = subprocess.run([sys.executable, "-c", RUNTIME_CHILD, ROOT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]

