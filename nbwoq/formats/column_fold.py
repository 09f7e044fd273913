"""``--method sinq``: SINQ's column scales folded into each layer's feeder, streamed.

The run stays one tensor at a time. Before anything is written, ``ColumnFold.build``
makes the absorption plan (``absorb_plan``) from the tensor names and ``config.json``
(``model_type``, the head counts), keeps the groups whose consumers are all quantized,
and for each group in the plan's order reads its consumers (one group in memory),
applies the folds of the groups before it, and keeps only ``dual_scale``'s scale vector.
While the run streams, a tensor a fold touches is transformed before it is quantized or
copied: a norm feeder times ``s`` (``(1 + w) * s - 1`` for Gemma's Hugging Face norms),
a row feeder (``up_proj``, ``v_proj``) and its bias times ``s`` per row, a consumer's
columns divided by ``s``: ``fold_column_scale``'s arithmetic, called per tensor, one fold
after the other in the plan's order (as ``nbwoq_torch.quantize_model(method="sinq")``
does, so both make the same values). Each fold rounds once to the tensor's stored dtype;
a float feeder that would otherwise be copied byte for byte is re-encoded in that dtype.
The scales are deterministic: ``--resume`` computes them again. A group whose fold would
overflow a tensor's dtype (a half) is not folded, and consumers stored in different
dtypes are refused, as ``quantize_model`` does.

Tensors no group reaches get plain round to nearest. The report measures each folded
tensor against its original stored values: round to nearest of the original, and the
file's codes with the scales divided back out.
"""

import contextlib

import numpy as np

from nbwoq._importance import weighted_error
from nbwoq._layout import group_layout
from nbwoq.absorb import consumer_scale, fold_column_scale
from nbwoq.dual import dual_scale
from nbwoq.formats import storage
from nbwoq.formats.absorb_plan import FAMILIES, absorb_plan
from nbwoq.formats.errors import InputError, printable
from nbwoq.quantize import quant_tensor

_FLOAT_DTYPES = ("F32", "F16", "BF16")


def _config_heads(config):
    """``(heads, kv_heads, head_dim)`` as ``nbwoq_torch``'s plan passes them: kv_heads
    only with heads, head_dim only under grouped-query attention."""
    heads = config.get("num_attention_heads")
    if heads is None:
        return None, None, None
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim")
    if not head_dim and isinstance(config.get("hidden_size"), int) and isinstance(heads, int) and heads > 0:
        head_dim = config["hidden_size"] // heads
    grouped = isinstance(kv, int) and isinstance(heads, int) and kv < heads
    return heads, kv, head_dim if grouped else None


def _fold_one(group, scale, role, name, values):
    """``fold_column_scale`` on one tensor of ``group``: ``role`` "consumer", "feeder" or
    "bias". The function takes a whole group; the parts not passed are stand-ins of the
    right shape (zeros), whose results are dropped."""
    channels = scale.shape[0]
    stand_in = np.zeros((channels, 0) if group.absorb == "rows" else (channels,), np.float32)
    if role == "consumer":
        return fold_column_scale(group._replace(consumers=(name,), feeder_bias=None), scale, stand_in, [values])[1][0]
    if role == "feeder":
        return fold_column_scale(group._replace(consumers=(), feeder_bias=None), scale, values, [])[0]
    return fold_column_scale(group._replace(consumers=()), scale, stand_in, [], feeder_bias=values)[2]


def _far_from_overflow(group, scale, role, values):
    """True when the fold of ``values`` cannot reach half its dtype's largest value (so
    the exact check, a fold of the whole tensor, is not needed): a bound from the
    largest magnitude and the largest factor."""
    if values.size == 0:
        return True
    top = max(float(np.max(values)), -float(np.min(values)))
    limit = float(np.finfo(np.float16 if values.dtype == np.float16 else np.float32).max) / 2
    if values.dtype == np.float64:
        limit = float(np.finfo(np.float64).max) / 2
    if role == "consumer":
        return top / float(np.min(scale)) < limit
    if group.absorb == "norm_plus_one" and role == "feeder":
        return (top + 1.0) * float(np.max(scale)) + 1.0 < limit
    return top * float(np.max(scale)) < limit


class ColumnFold:
    """The folds of one run: per tensor name, the ``(group, scale, role)`` steps in plan
    order, and the row and column scales that take its values back to the original."""

    def __init__(self, source, options):
        self.source = source
        self.options = options
        self.steps = {}
        self.infos = {info.name: info for _, info in source.tensors()}

    @classmethod
    def build(cls, source, options, plan, log=None):
        """The folds for the run's ``plan`` (``[(shard, [(info, selected)])]``); every
        ``dual_scale`` is run here, before anything is written. ``InputError`` for a source
        without a plan, a feeder that is not stored as floats, or a non-finite weight."""
        if source.kind != "safetensors" or not isinstance(source.config, dict):
            raise InputError("--method sinq needs a Hugging Face folder (config.json names the architecture); "
                             "a GGUF or single safetensors source has no absorption plan here")
        config = source.config
        family = config.get("model_type")
        text = config.get("text_config")
        if family not in FAMILIES and isinstance(text, dict) and text.get("model_type") in FAMILIES:
            family, config = text["model_type"], text
        if family not in FAMILIES:
            raise InputError(f"--method sinq folds column scales for the families {sorted(FAMILIES)}; "
                             f"config.json says model_type {printable(str(family))}")
        if "num_attention_heads" not in config and isinstance(text, dict):
            config = text
        heads, kv, head_dim = _config_heads(config)
        try:
            absorb = absorb_plan([info.name for _, info in source.tensors()], family, heads=heads,
                                 kv_heads=kv if heads else None, head_dim=head_dim)
        except (TypeError, ValueError) as exc:
            raise InputError(f"--method sinq: no absorption plan from config.json: {exc}") from None
        selected = {info.name for _, items in plan for info, sel in items if sel}
        fold = cls(source, options)
        groups = [g for g in absorb.groups if all(c in selected for c in g.consumers)]
        for group in groups:
            fold._check(group)
        for group in groups:
            fold._add(group)
        if log:
            n = sum(len(g.consumers) for g in groups)
            log(f"sinq: {len(groups)} column scales folded into their feeders ({n} quantized tensors take one)")
        return fold

    def _check(self, group):
        """Feeders and biases stored as floats, shapes that fit the group."""
        feeder = self.infos[group.feeder]
        for name in (group.feeder, group.feeder_bias):
            if name is not None and self.infos[name].dtype not in _FLOAT_DTYPES:
                raise InputError(f"--method sinq: feeder {printable(name)} is stored as {self.infos[name].dtype}; "
                                 "a column scale folds only into float32, float16 or bfloat16 values")
        want = 2 if group.absorb == "rows" else 1
        if len(feeder.shape) != want:
            raise InputError(f"--method sinq: feeder {printable(group.feeder)} must be {want}-D, got shape "
                             f"{list(feeder.shape)}")
        channels = feeder.shape[0]
        for name in group.consumers:
            shape = self.infos[name].shape
            if shape[1] != channels * group.repeat:
                raise InputError(f"--method sinq: {printable(name)} {list(shape)} does not read the {channels} "
                                 f"channels of {printable(group.feeder)} (x {group.repeat})")
        if group.feeder_bias is not None and tuple(self.infos[group.feeder_bias].shape) != (channels,):
            raise InputError(f"--method sinq: bias {printable(group.feeder_bias)} does not match "
                             f"{printable(group.feeder)}")
        if len({self.infos[name].dtype for name in group.consumers}) > 1:
            raise InputError(f"--method sinq: the consumers of {printable(group.feeder)} differ in dtype "
                             "(the search stacks them)")

    def _add(self, group):
        """Search ``group``'s scale on its consumers as the earlier folds left them."""
        o = self.options
        arrays = []
        for name in group.consumers:
            with self.source.open(self.infos[name]) as (array, dtype_name):
                arrays.append(self._folded(name, array, dtype_name))
        try:
            found = dual_scale(arrays, o.bits, o.group_size, o.scheme, o.full_range, repeat=group.repeat,
                               block=group.block, weighting="magnitude")
        except ValueError as exc:
            raise InputError(f"--method sinq: {printable(', '.join(group.consumers))}: "
                             f"{str(exc).split('; pass check_finite')[0]}") from None
        scale = np.asarray(found.scale, dtype=np.float64)
        if not self._finite(group, scale, arrays):
            return
        for name in group.consumers:
            self.steps.setdefault(name, []).append((group, scale, "consumer"))
        self.steps.setdefault(group.feeder, []).append((group, scale, "feeder"))
        if group.feeder_bias is not None:
            self.steps.setdefault(group.feeder_bias, []).append((group, scale, "bias"))

    def _finite(self, group, scale, consumers):
        """Whether every tensor of ``group`` stays finite in its dtype once folded: a fold
        that would overflow a half is not made, and its layers get plain round to nearest
        (as ``quantize_model`` leaves such a group unfolded)."""
        parts = [(name, "consumer", array) for name, array in zip(group.consumers, consumers)]
        for name, role in ((group.feeder, "feeder"), (group.feeder_bias, "bias")):
            if name is not None:
                with self.source.open(self.infos[name]) as (array, dtype_name):
                    parts.append((name, role, self._folded(name, array, dtype_name)))
        with np.errstate(over="ignore"):
            return all(_far_from_overflow(group, scale, role, values)
                       or np.isfinite(_fold_one(group, scale, role, name, values).astype(np.float32)).all()
                       for name, role, values in parts)

    def _folded(self, name, array, dtype_name):
        """Stored values of tensor ``name`` with its folds applied, as a float array of the
        stored dtype (bfloat16 as ml_dtypes')."""
        values = storage.as_float(array, dtype_name)
        if dtype_name == "BF16" and values.dtype == np.float32:
            raise InputError("--method sinq on bfloat16 weights needs ml_dtypes (pip install ml_dtypes)")
        for group, scale, role in self.steps.get(name, ()):
            values = _fold_one(group, scale, role, name, values)
        return values

    def touches(self, name):
        return name in self.steps

    def scales(self, name):
        """``(row, col)``: float64 scales tensor ``name``'s rows were multiplied and its
        columns divided by (None where untouched)."""
        row = col = None
        for group, scale, role in self.steps.get(name, ()):
            if role == "consumer":
                col = consumer_scale(group, scale)
            elif role == "feeder" and group.absorb == "rows":
                row = scale
        return row, col

    def measure(self, name, original, dtype_name):
        """The report's ``(rtn_err, method_err, norm)`` of rows ``start:stop`` of tensor
        ``name`` whose codes ``q`` were made from the folded values: round to nearest of
        the ``original`` rows, and ``q`` dequantized with the scales divided back out,
        both measured against the original (``quantizer.weighted_errors``'s sums)."""
        row, col = self.scales(name)
        o = self.options

        def errors(start, stop, q):
            x = storage.widen(original[start:stop], dtype_name)
            rtn = quant_tensor(x.copy(), **o.core_kwargs(), check_finite=False)
            size, _ = group_layout(x.shape[1], o.group_size)
            g = np.arange(x.shape[1]) // size
            codes = q.codes if q.zp is None else q.codes - q.zp[:, g]
            deq = (codes * q.scale[:, g]).astype(np.float64)
            if col is not None:
                deq *= col[None, :]
            if row is not None:
                deq /= row[start:stop, None]
            rtn_err, norm = weighted_error(x, rtn, o.group_size)
            method_err, _ = weighted_error(x, deq, o.group_size)
            return rtn_err, method_err, norm
        return errors


@contextlib.contextmanager
def open_tensor(source, info, fold):
    """``source.open(info)`` with ``fold``'s folds applied (``fold`` None or not touching
    the tensor: as stored). Yields ``(array, dtype_name, measure)``: the stored values
    (bfloat16 as its uint16 pattern), and for a folded tensor the report's measure
    (``ColumnFold.measure``), else None."""
    with source.open(info) as (array, dtype_name):
        if fold is None or not fold.touches(info.name):
            yield array, dtype_name, None
            return
        folded = storage.stored_bytes(fold._folded(info.name, array, dtype_name))
        yield np.ascontiguousarray(folded), dtype_name, fold.measure(info.name, array, dtype_name)
