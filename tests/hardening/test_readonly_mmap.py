"""Read-only and memory-mapped inputs.

What only reads (``search_clip``, the CLI reading safetensors) works on read-only memory
maps without copying the tensor: NumPy reports its allocations to ``tracemalloc``, so
the peak of traced memory during a call bounds every array it made. The CLI's resident
memory is measured in a subprocess (``VmHWM``, reset through ``/proc/self/clear_refs``).
What writes refuses a read-only map before touching it, and writes straight into a
writable one (``mode="r+"``), again without a full-size temporary.
"""

import hashlib
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import nbwoq

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None

SHAPE = (512, 2048)  # 4 MiB as float32, 2 MiB in half precision
# Arrays a call may make: per-group results and per-block partial sums (tens of KiB
# here). A copy of the weight would be the whole 2-4 MiB.
SMALL = 2 * 2**20 // 16


def _memmap(tmp_path, dtype, mode="r", name="w.bin"):
    path = tmp_path / name
    values = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    values[7, 100] = 25.0  # an outlier, so clipping matters
    values.astype(dtype).tofile(path)
    return np.memmap(path, dtype=dtype, mode=mode, shape=SHAPE), path


def _traced_peak(func, *args, **kwargs):
    """``(result, peak bytes traced during the call)``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = func(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


DTYPES = [pytest.param(np.dtype(np.float32), id="f32"), pytest.param(np.dtype(np.float16), id="f16")]
if BF16 is not None:
    DTYPES.append(pytest.param(BF16, id="bf16"))


@pytest.mark.parametrize("per_group", [False, True], ids=["per-tensor", "per-group"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_search_clip_reads_a_readonly_memmap_in_place(tmp_path, dtype, per_group):
    w, path = _memmap(tmp_path, dtype)
    assert not w.flags.writeable
    nbwoq.search_clip(w[:4], bits=4, group_size=128, per_group=per_group)  # JIT warm-up outside the trace
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    result, peak = _traced_peak(nbwoq.search_clip, w, bits=4, group_size=128, per_group=per_group)
    assert peak < SMALL, f"search_clip allocated {peak} bytes for a {w.nbytes}-byte weight"
    expected = nbwoq.search_clip(np.array(w), bits=4, group_size=128, per_group=per_group)
    assert np.array_equal(result, expected)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_search_clip_on_a_module_over_a_readonly_memmap(tmp_path):
    torch = pytest.importorskip("torch")
    import nbwoq_torch

    w, _ = _memmap(tmp_path, np.float32)
    m = torch.nn.Module()
    with pytest.warns(UserWarning, match="not writable"):  # torch's own warning; nbwoq only reads
        m.__dict__["weight"] = torch.from_numpy(w)
    assert nbwoq_torch.search_clip(m, bits=4, group_size=128) == nbwoq.search_clip(np.array(w), bits=4,
                                                                                   group_size=128)


def _in_place_calls(w):
    rows = w.shape[0]
    return {
        "quant_tensor": lambda: nbwoq.quant_tensor(w, bits=4, group_size=128),
        "quantize_4bit": lambda: nbwoq.quantize_4bit(w),
        "qdq_weight_asym": lambda: nbwoq.qdq_weight_asym(w),
        "qdq_weight_sym": lambda: nbwoq.qdq_weight_sym(w),
        "qdq_weight_actor": lambda: nbwoq.qdq_weight_actor(w, 4, "sym", dtype="nf4"),
        "quant_weight_w_scale": lambda: nbwoq.quant_weight_w_scale(w, np.ones((rows, 16), np.float32), None,
                                                                   group_size=128),
    }


@pytest.mark.parametrize("func", sorted(_in_place_calls(np.zeros((1, 1)))))
def test_in_place_functions_refuse_a_readonly_memmap(tmp_path, func):
    w, path = _memmap(tmp_path, np.float32)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"(weight|tensor) is read-only; .* writes its result into .* in place"):
        _in_place_calls(w)[func]()
    assert path.read_bytes() == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_on_a_writable_memmap_writes_the_file_without_a_copy(tmp_path, dtype):
    w, path = _memmap(tmp_path, dtype, mode="r+")
    expected = nbwoq.quant_tensor(np.array(w), bits=4, group_size=128)
    nbwoq.quant_tensor(np.array(w[:4]), bits=4, group_size=128)  # JIT warm-up outside the trace
    out, peak = _traced_peak(nbwoq.quant_tensor, w, bits=4, group_size=128)
    assert out is w
    assert peak < SMALL, f"quant_tensor allocated {peak} bytes for a {w.nbytes}-byte weight"
    w.flush()
    del out, w
    on_disk = np.fromfile(path, dtype=dtype).reshape(SHAPE)
    assert np.array_equal(on_disk, expected)


RSS_PROBE = """
    import json, os, sys
    from nbwoq.command.demo_model import write_checkpoint
    from nbwoq.command.cli import main

    src, tiny, out = sys.argv[1:4]

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    # warm up (imports, JIT, tqdm) on a tiny checkpoint, then reset the peak
    assert main(["quantize", tiny, out + "-tiny", "--quiet"]) == 0
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    assert main(["quantize", src, out, "--quiet", "--group-size", "128"]) == 0
    print(json.dumps(dict(base=base, peak=status("VmHWM"))))
"""


def test_cli_streams_a_large_readonly_source(tmp_path):
    """The CLI maps one tensor at a time (read-only): its resident memory grows by about
    the largest tensor and its working copy, not by the checkpoint."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc to reset the peak resident size")
    from nbwoq.command.demo_model import write_checkpoint

    shape = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=8, vocab_size=1024)
    src = write_checkpoint(str(tmp_path / "src"), dtype="float32", **shape)
    tiny = write_checkpoint(str(tmp_path / "tiny"), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    files = [os.path.join(src, f) for f in os.listdir(src) if f.endswith(".safetensors")]
    total = sum(os.path.getsize(f) for f in files)
    largest = 2816 * 1024 * 4
    digest = {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(RSS_PROBE))
    proc = subprocess.run([sys.executable, str(probe), src, tiny, str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    r = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = r["peak"] - r["base"]
    print(f"checkpoint {total >> 20} MiB, largest tensor {largest >> 20} MiB, peak RSS growth {growth >> 20} MiB")
    assert total > 120 * 2**20
    # one mapped tensor, its float32 working copy and the packed output: a few times the
    # largest tensor, far below the checkpoint
    assert growth < 6 * largest, f"peak grew by {growth >> 20} MiB for a {total >> 20} MiB checkpoint"
    assert all(hashlib.sha256(open(f, "rb").read()).hexdigest() == d for f, d in digest.items())
