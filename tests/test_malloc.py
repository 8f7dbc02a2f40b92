"""`util.malloc.return_freed_blocks`: after it, glibc maps a large block on its own (and so
unmaps it when freed) even after a larger block was freed, which otherwise moves it to a heap."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tipretrieval.util import malloc

SCRIPT = """
import ctypes, sys
import numpy as np
from tipretrieval.util.malloc import return_freed_blocks

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
big = np.ones(4 << 20, np.uint8)
del big  # glibc now serves blocks below 4 MB from its heap
if sys.argv[1] == "set":
    assert return_freed_blocks()
before = libc.mallinfo2().hblks
block = np.ones(1 << 20, np.uint8)
print(libc.mallinfo2().hblks - before)
"""


def mapped_blocks_added(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(malloc._mallopt is None or not hasattr(malloc._libc, "mallinfo2"),
                    reason="not glibc 2.33 or later")
def test_a_large_block_is_mapped_on_its_own_after_a_larger_one_was_freed():
    assert mapped_blocks_added("default") == 0  # glibc's own adjustment: from its heap
    assert mapped_blocks_added("set") == 1
