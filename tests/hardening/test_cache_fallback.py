"""Without a writable JIT cache directory nbwoq still works: no cache, one warning.

A read-only install is simulated in a subprocess: a copy of the package whose
``__pycache__`` entries are files (so no directory can be made there, even by root),
``NUMBA_CACHE_DIR`` pointing into an unwritable place, ``HOME`` unset and the user
cache directory unwritable too. Numba then has no cache locator at all and, before
``_config`` checked for one, every kernel decoration raised ``RuntimeError``.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nbwoq

PROBE = """
    import json, sys, warnings
    import numpy as np
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import nbwoq
        from nbwoq import _config
        w = np.linspace(-1, 1, 96, dtype=np.float32).reshape(3, 32)
        codes, scale, zp = nbwoq.quant_tensor(w, bits=4, group_size=8, return_int=True)
        again = nbwoq.quant_tensor(np.linspace(-1, 1, 96, dtype=np.float32).reshape(3, 32), bits=4, group_size=8)
    np.savez(sys.argv[1], codes=codes, scale=scale, zp=zp, again=again)
    print(json.dumps(dict(file=nbwoq.__file__, cache=_config.CACHE,
                          warnings=[f"{w.category.__name__}: {w.message}" for w in caught])))
"""


def _copy_package(dest, block):
    """nbwoq's sources under ``dest``; with ``block``, every ``__pycache__`` is a file."""
    src = os.path.dirname(nbwoq.__file__)
    shutil.copytree(src, dest / "nbwoq", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if block:
        for folder, _, files in os.walk(dest / "nbwoq"):
            if any(f.endswith(".py") for f in files):
                (dest / folder / "__pycache__").write_text("not a directory: nothing can be cached here\n")


def _run(tmp_path, env_changes, block):
    site = tmp_path / "site"
    site.mkdir()
    _copy_package(site, block)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "HOME",
                                                            "NBWOQ_CACHE", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    env.update(env_changes)
    for key in [k for k, v in env.items() if v is None]:
        del env[key]
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(PROBE))
    out = tmp_path / "out.npz"
    proc = subprocess.run([sys.executable, str(probe), str(out)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["file"].startswith(str(site)), report["file"]  # the copy was imported
    return report, np.load(out), site


def _expected():
    w = np.linspace(-1, 1, 96, dtype=np.float32).reshape(3, 32)
    codes, scale, zp = nbwoq.quant_tensor(w, bits=4, group_size=8, return_int=True)
    again = nbwoq.quant_tensor(np.linspace(-1, 1, 96, dtype=np.float32).reshape(3, 32), bits=4, group_size=8)
    return dict(codes=codes, scale=scale, zp=zp, again=again)


def _cache_files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith((".nbi", ".nbc"))]


def _unwritable_env(tmp_path, how):
    blocker = tmp_path / "blocker"  # a file: nothing can be created below it
    blocker.write_text("")
    if how == "read-only-dir":
        ro = tmp_path / "ro-cache"
        ro.mkdir()
        ro.chmod(0o555)
        cache_dir = str(ro)
    else:
        cache_dir = str(blocker / "numba")
    return {"NUMBA_CACHE_DIR": cache_dir, "HOME": None, "XDG_CACHE_HOME": str(blocker / "xdg")}


@pytest.mark.parametrize("how", ["read-only-dir", "not-a-dir"])
def test_no_writable_cache_still_works_with_one_warning(tmp_path, how):
    if how == "read-only-dir" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the not-a-dir case covers root")
    report, got, site = _run(tmp_path, _unwritable_env(tmp_path, how), block=True)
    assert report["cache"] is False
    ours = [w for w in report["warnings"] if "JIT cache" in w]
    assert len(ours) == 1 and ours[0].startswith("RuntimeWarning: nbwoq:"), report["warnings"]
    assert not [w for w in report["warnings"] if "cache" in w.lower() and w not in ours], report["warnings"]
    for key, value in _expected().items():
        assert np.array_equal(got[key], value), key
    assert not _cache_files(tmp_path)


def test_a_writable_cache_is_used_silently(tmp_path):
    """The control: the same copy with a writable cache directory caches, and says nothing."""
    cache = tmp_path / "numba-cache"
    report, got, _ = _run(tmp_path, {"NUMBA_CACHE_DIR": str(cache), "HOME": None}, block=True)
    assert report["cache"] is True
    assert not [w for w in report["warnings"] if "cache" in w.lower()], report["warnings"]
    assert _cache_files(cache)
    for key, value in _expected().items():
        assert np.array_equal(got[key], value), key
