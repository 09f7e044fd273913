"""Fuzz targets over every public tensor function of ``nbwoq`` and ``nbwoq_torch``.

Shared by the short profile in the regular suite (``test_fuzz_core.py``,
``test_fuzz_torch.py``) and the long run (``scripts/fuzz_long.py``). Each target is a
Hypothesis strategy of *cases* (a function and the arguments of one call) and a checker
that makes the call and judges it against the SPEC:

* An argument the SPEC calls bad (``expected.expected_errors``) must make the call raise
  ``ValueError`` or ``TypeError`` whose message names that argument, and the input must
  then be byte-identical to what it was. Any other exception is a failure.
* Otherwise the call must succeed and its result must be valid: the very object passed
  in is returned, parameters have shape (rows, n_groups) in the compute dtype, codes lie
  in the format's range, and the values equal an independent computation (the array-API
  reference twin under ``array_api_strict`` on a contiguous float32/float64 copy; for
  half inputs that result rounded once, SPEC deviation 1; for torch tensors nbwoq's
  NumPy result on the same values).

Values come from a NumPy generator seeded by Hypothesis, so a failure prints the seed
and replays exactly; structure (shapes, dtypes, layouts, arguments) is drawn by
Hypothesis directly so that it shrinks.

Modules, each one concern:

* ``values``: weight values, layouts, snapshots, NumPy copies of tensors;
* ``strategies``: the core cases (``CASES``: function name -> strategy);
* ``expected``: the SPEC's refusals, a rule per function (``RULES``);
* ``core``: running and judging a core case (``FuzzFailure``, ``run_case``,
  ``check_core_case``);
* ``torch_face``: the same cases through ``nbwoq_torch`` (``TORCH_CASES``);
* ``files``: ``load`` + ``dequantize`` on checkpoints with rewritten metadata;
* ``modules``: ``nbwoq_torch``'s module lookups and capture helpers;
* ``cli``: ``nbwoq quantize`` command lines;
* ``profile``: the short profile's example count and settings.

Import the submodule you need (``from fuzz import core``); importing the package
imports none of them, so the core targets never import torch.
"""
