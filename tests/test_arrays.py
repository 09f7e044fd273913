"""``_arrays``: ml_dtypes is imported on first need, and its bfloat16 is met whenever it
comes (nbwoq imported before or after ml_dtypes)."""

import subprocess
import sys

import numpy as np
import pytest


def test_importing_nbwoq_and_the_command_leaves_ml_dtypes_out():
    code = ("import sys, nbwoq; import nbwoq.command.cli, nbwoq.command.run; "
            "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


_BF16_RUN = """
import hashlib, numpy as np
{first}
from nbwoq import _arrays
w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32).astype(ml_dtypes.bfloat16)
assert _arrays.numpy_dtype_supported(w.dtype) and _arrays.kernel_view(w).dtype == np.int16
assert _arrays.BFLOAT16 == w.dtype
q = nbwoq.quant_tensor(w, bits=4, group_size=32)
assert q.dtype == w.dtype
print(hashlib.sha256(q.view(np.uint16).tobytes()).hexdigest())
"""


def test_bfloat16_takes_the_kernels_whichever_was_imported_first():
    pytest.importorskip("ml_dtypes")
    runs = [subprocess.run([sys.executable, "-c", _BF16_RUN.format(first=first)], check=True, capture_output=True,
                           text=True).stdout for first in ("import nbwoq, ml_dtypes", "import ml_dtypes, nbwoq")]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 64


def test_other_dtypes_named_bfloat16_are_not_taken_for_ml_dtypes():
    from nbwoq import _arrays

    class Named:
        name = "bfloat16"

    assert not _arrays.is_bfloat16(Named())
    assert not _arrays.numpy_dtype_supported(np.dtype("int16"))
