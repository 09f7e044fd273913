"""The ``nbwoq`` command: quantize a checkpoint on a CPU, streamed, reported.

``nbwoq quantize SRC OUT`` reads a Hugging Face folder, one ``.safetensors`` file or a
GGUF file one tensor at a time and writes OUT in the chosen format. Without SRC it runs
on a generated Llama-shaped model (``nbwoq.command.demo_model``), so ``python -m nbwoq``
works on a fresh machine. ``nbwoq generate OUT`` writes such a checkpoint.

Exit status: 0 done, 1 bad input (one ``nbwoq: error:`` line), 2 bad usage,
130 interrupted. Torch is imported only by ``nbwoq eval``, inside its handler.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

from nbwoq._tables import DTYPES
from nbwoq.formats.errors import InputError

_SUBCOMMANDS = ("quantize", "generate", "eval")


def _parser():
    parser = argparse.ArgumentParser(
        prog="nbwoq", description="Weight-only quantization of checkpoints on a CPU, without torch.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    q = sub.add_parser("quantize", help="quantize a checkpoint (the default command)",
                       description="Quantize SRC into OUT. Without SRC: a generated Llama-shaped checkpoint.")
    q.add_argument("src", nargs="?", help="Hugging Face folder, .safetensors or .gguf file (default: built-in demo)")
    q.add_argument("out", nargs="?", help="output folder (nbwoq, gptq) or .gguf file (default for the demo: "
                                          "a temporary folder, removed afterwards)")
    q.add_argument("--bits", type=int, default=4, help="bits per code (default 4)")
    q.add_argument("--group-size", type=int, default=None,
                   help="values per scale along the input dimension, -1 for one per row "
                        "(default 128; 32 for --format gguf)")
    q.add_argument("--scheme", choices=("sym", "asym"), default=None,
                   help="asym (zero point) or sym (default asym; sym for --format gguf)")
    q.add_argument("--dtype", choices=DTYPES, default="int", help="int or a 4-bit codebook (default int)")
    q.add_argument("--full-range", action=argparse.BooleanOptionalAction, default=None,
                   help="sym: also use the code -2**(bits-1) (default off; on for --format gguf int4 sym, "
                        "llama.cpp's Q4_0 layout)")
    q.add_argument("--clip", choices=("none", "tensor", "group"), default="none",
                   help="clip-ratio search: one per tensor or one per group (default none)")
    q.add_argument("--clip-grid", metavar="GRID",
                   help="clip candidates: a count, or comma-separated ratios such as 1,0.99,0.98,0.97,0.96,0.95 "
                        "(default: the reference's 40 ratios 1.0 .. 0.805)")
    q.add_argument("--clip-weighting", choices=("magnitude", "none"), default="magnitude",
                   help="how the clip search weighs each error: magnitude (rms + |x| of the group, the "
                        "default: keeps the large weights a model needs) or none (plain squared error, "
                        "the reference's criterion)")
    q.add_argument("--format", choices=("nbwoq", "gguf", "gptq"), default=None,
                   help="output format (default: gguf when OUT ends in .gguf or --type is given, else nbwoq)")
    q.add_argument("--type", metavar="TYPE",
                   help="GGUF: a llama-quantize file type (Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q6_K, Q8_0, Q4_0, Q4_1, "
                        "Q5_0, Q5_1, IQ4_NL, F16, BF16, F32) with llama.cpp's per-tensor mix rules; implies "
                        "--format gguf (default: none, the integer settings above as Q4_0/Q4_1/Q8_0)")
    q.add_argument("--method", choices=("rtn", "refit", "hqq", "sinq", "reference", "search"), default=None,
                   help="how codes are decided. Integer settings: rtn (round to nearest, the default), refit "
                        "(least-squares refit of each group's scale and zero point, weighted by magnitude; about "
                        "6x the time, lower error), hqq (asym: HQQ's lp zero-point iterations, the zero "
                        "rounded and kept where it lowers the group's lp error; mostly acts with --clip) or sinq "
                        "(a Hugging Face folder of a Llama, Mistral, Qwen2/3 or Gemma 2/3: SINQ's per-column "
                        "scales folded into the norm or layer feeding each layer, so the file keeps its standard "
                        "layout, then round to nearest; layers without such a feeder: round to nearest). "
                        "With --type: reference, llama.cpp's own data-free encoder byte for byte (the default), or "
                        "search: starts from llama.cpp's blocks and keeps any change that lowers a block's "
                        "weighted error (same layout; the report gives both errors per tensor; lower Q4_K_M "
                        "perplexity than llama-quantize on the models measured, about 6x the time)")
    q.add_argument("--pure", action="store_true",
                   help="with --type: every quantized tensor gets the type's default block type (llama-quantize "
                        "--pure; default off: the mix rules)")
    q.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="quantize tensors whose name matches this glob (repeatable; default: the 2-D "
                        "weights of the linear layers inside the blocks)")
    q.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="keep tensors matching this glob unquantized (repeatable)")
    q.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing OUT (only once the new one is complete)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted run, keeping its finished shards")
    q.add_argument("--report", metavar="FILE", help="write the report as JSON")
    q.add_argument("--top", type=int, default=15, help="rows of the error table to print (default 15, 0 for all)")
    q.add_argument("--quiet", action="store_true", help="no progress bar, summary only")

    g = sub.add_parser("generate", help="write the generated Llama-shaped demo model",
                       description="Write the generated Llama-shaped demo model (random weights with "
                                   "outliers, a config.json) to OUT.")
    g.add_argument("out", help="output folder (new, or empty)")
    g.add_argument("--size", choices=("default", "1b"), default="default",
                   help="default: 4 layers, hidden 512 (about 10 M parameters); 1b: TinyLlama's shape, "
                        "about 1.1 B parameters (default: default)")
    g.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes (default 0)")
    g.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="stored dtype (default bfloat16)")

    # nbwoq eval: needs torch (nbwoq.command.evaluation runs nbwoq_torch.evaluate)
    e = sub.add_parser("eval", help="perplexity of a model, and its KL divergence to another (needs torch)",
                       description="Perplexity of MODEL on a text, read in windows; with --against SRC also the "
                                   "mean KL(P_src || P_model) of the next-token distributions and the top-1 "
                                   "agreement. MODEL and SRC: a .gguf file, or a Hugging Face, nbwoq-format or "
                                   "GPTQ folder. Needs nbwoq[torch] and transformers.")
    e.add_argument("model", help=".gguf file or model folder")
    e.add_argument("--text", metavar="FILE", help="UTF-8 text to read (default: CPython's pydoc_data/topics.py)")
    e.add_argument("--tokens", type=int, default=1024, help="first N tokens of the text (default 1024)")
    e.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    e.add_argument("--against", metavar="SRC", help="reference model: KL divergence and top-1 agreement against it")
    e.add_argument("--report", metavar="FILE", help="write the results as JSON")
    return parser


def _error(message):
    print(f"nbwoq: error: {message}", file=sys.stderr)
    return 1


def parse_grid(text):
    """``--clip-grid``: a candidate count (``80``) or explicit ratios (``1,0.99,0.98``)."""
    try:
        if "," not in text and "." not in text:
            return int(text)
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--clip-grid must be a count or comma-separated ratios, got {text!r}") from None


def _output_format(fmt, out, gguf_type=None):
    """``--format``, or what OUT's name (or ``--type``) implies: a ``.gguf`` OUT is a GGUF file."""
    is_gguf = out is not None and out.lower().endswith(".gguf")
    if gguf_type is not None and fmt not in (None, "gguf"):
        raise InputError(f"--type {gguf_type} writes GGUF, but --format {fmt} was asked for")
    if fmt is None:
        return "gguf" if is_gguf or gguf_type is not None else "nbwoq"
    if is_gguf and fmt != "gguf":
        raise InputError(f"OUT {out!r} ends in .gguf, but --format {fmt} writes a folder; "
                         "drop --format (or use --format gguf), or name OUT without .gguf")
    return fmt


def _quantize(args):
    from nbwoq.command.report import format_table
    from nbwoq.command.run import quantize_checkpoint
    from nbwoq.formats.options import QuantOptions

    args.format = _output_format(args.format, args.out, args.type)
    if args.type is None and args.pure:
        raise InputError("--pure applies to --type")
    if args.format == "gguf":
        group_size = 32 if args.group_size is None else args.group_size
        scheme = args.scheme or "sym"
    else:
        group_size = 128 if args.group_size is None else args.group_size
        scheme = args.scheme or "asym"
    if args.top < 0:
        raise ValueError(f"--top must be 0 or positive, got {args.top}")
    full_range = args.full_range
    if full_range is None:
        full_range = args.format == "gguf" and scheme == "sym" and args.bits == 4
    grid = None if args.clip_grid is None else parse_grid(args.clip_grid)
    options = QuantOptions(args.bits, group_size, scheme, args.dtype, full_range, args.clip,
                           args.include, args.exclude, clip_grid=grid,
                           clip_weighting=None if args.clip_weighting == "none" else args.clip_weighting,
                           gguf_type=args.type, method=args.method, pure=args.pure)
    cleanup = []
    try:
        src, out = args.src, args.out
        if src is None:
            from nbwoq.command.demo_model import write_checkpoint

            tmp = tempfile.mkdtemp(prefix="nbwoq-demo-")
            cleanup.append(tmp)
            src = write_checkpoint(os.path.join(tmp, "llama-demo"))
            if not args.quiet:
                print(f"no SRC given: quantizing the built-in generated Llama-shaped checkpoint ({src})")
        if out is None:
            if args.src is not None:
                raise ValueError("OUT is required when SRC is given")
            tmp = cleanup[0]
            out = os.path.join(tmp, "out.gguf" if args.format == "gguf" else "out")
        log = None if args.quiet else (lambda m: print(m, file=sys.stderr))
        report = quantize_checkpoint(src, out, options, args.format, overwrite=args.overwrite, resume=args.resume,
                                     report_path=args.report, progress=not args.quiet and sys.stderr.isatty(),
                                     threads=args.threads, log=log)
        args.finished = True  # OUT is complete: an interrupt from here on loses nothing
        if args.src is None and args.out is None:
            report["summary"]["output"] += " (temporary, removed; give SRC and OUT to keep a result)"
        print(format_table(report, args.top, rows=not args.quiet))
        return 0
    finally:
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)


def _generate(args):
    from nbwoq.command.demo_model import ONE_B, write_checkpoint

    if os.path.exists(args.out) and os.listdir(args.out):
        raise ValueError(f"output {args.out!r} exists and is not empty")
    shape = ONE_B if args.size == "1b" else {}
    write_checkpoint(args.out, seed=args.seed, dtype=args.dtype, **shape)
    print(f"wrote {args.out}")
    return 0


def _eval(args):
    """``nbwoq eval``: torch is imported here (and in the evaluation) only."""
    import importlib.util

    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("nbwoq eval needs torch: pip install 'nbwoq[torch]'") from None
    if importlib.util.find_spec("transformers") is None:
        raise InputError("nbwoq eval needs transformers: pip install 'transformers>=5'")
    from nbwoq.command.evaluation import run

    if args.report and not os.path.isdir(os.path.dirname(os.path.abspath(args.report))):
        raise InputError(f"--report {args.report!r}: its folder does not exist")
    report = run(args.model, text=args.text, n_tokens=args.tokens, window=args.window,
                 against=args.against, progress=sys.stderr.isatty())
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def main(argv=None):
    """Entry point of the ``nbwoq`` console script and ``python -m nbwoq``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in _SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "quantize")
    args = _parser().parse_args(argv)
    args.finished = False
    if args.version:
        from nbwoq._version import __version__

        print(f"nbwoq {__version__}")
        return 0
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "eval":
            return _eval(args)
        return _quantize(args)
    except (InputError, ValueError, TypeError, OSError) as exc:
        return _error(str(exc) if not isinstance(exc, OSError) else f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    except KeyboardInterrupt:
        if args.finished:
            return 0
        if args.command == "quantize":
            print("nbwoq: interrupted; run again with --resume to keep finished shards", file=sys.stderr)
        else:
            print("nbwoq: interrupted", file=sys.stderr)
        return 130
