"""The finiteness scan that runs before any in-place write.

A float is NaN or Inf exactly when its exponent bits are all set. The scan reads each
row as unsigned integers and keeps the running maximum of ``bits & mask``: an integer
max reduction (written as a select, which LLVM vectorizes; Numba's ``max`` builtin
does not) that reads memory once, about half the cost of a read-and-write pass.
"""

from numba import prange

from nbwoq._config import njit_kernel


@njit_kernel
def finite_rows(bits, mask, out):
    """``out[r] = 1`` when row ``r`` of ``bits`` (an unsigned view) holds only finite values."""
    rows, cols = bits.shape
    zero = mask - mask
    for r in prange(rows):
        row = bits[r]
        acc = zero
        for c in range(cols):
            exponent = row[c] & mask
            acc = exponent if exponent > acc else acc
        out[r] = acc != mask
