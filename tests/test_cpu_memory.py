"""``keep_freed_memory``: after it, a freed 64 MiB tensor stays in glibc's heap (to be reused
by the next step) instead of being unmapped."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

CHECK = """
import ctypes, ctypes.util, sys, torch
from nanoseek.cpu_memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "on":
    assert keep_freed_memory() and keep_freed_memory()
x = torch.ones(2048, 8192)
mapped = libc.mallinfo2().hblkhd  # bytes in mmap-ed blocks
del x
print(mapped >= 64 << 20, libc.mallinfo2().fordblks >= 64 << 20)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_with_mallinfo2(),
                    reason="glibc >= 2.33 only")
def test_freed_tensor_memory_stays_in_the_heap() -> None:
    def run(mode: str) -> str:  # a fresh process: the setting is process-wide
        out = subprocess.run([sys.executable, "-c", CHECK, mode], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run("off") == "True False"  # glibc's default: mmap-ed, unmapped on free
    assert run("on") == "False True"  # heap: kept, free for the next allocation
