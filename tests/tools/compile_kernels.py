"""Compile every Triton kernel of sbkernels for NVIDIA GPUs on a machine that has none.

The CPU interpreter runs the kernels' semantics but not Triton's compiler, which rejects code the interpreter
accepts (a loop-carried value that changes type, a ``break``, mismatched branch types, ...). This script
compiles each kernel down to a cubin (ptxas included) at the launch configurations of the benchmark shapes
and of the edge cases, and reads registers, stack, local (spill) and shared memory per kernel with the
cuobjdump that ships with Triton. Launch-time specializations (integers equal to 1, 16-byte alignment) are
not applied, so the code differs slightly from a real launch; the compiler passes are the same.

    python tests/tools/compile_kernels.py [--arch 80 90]    # one JSON line per kernel; exit 1 on any failure
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # must precede the first import of triton

import triton
from ptx_ordering import ordering_violations
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sbkernels.kernels import common, row_stats, select_sb, sequence

HISTORY_SIZE = 1024  # SelectorState's default
LINEAR_WIDTH = 768  # the hidden width of the linear form's kernel: GPT-2 small's
# (N, C, logits dtype); C = 0 means the kernel is given losses.
SHAPES = [
    (1, 2, "fp32"),
    (128, 10, "fp32"),
    (1024, 1000, "fp32"),
    (700, 70_000, "fp16"),
    (8192, 32_000, "bf16"),
    (16384, 131_072, "bf16"),
    (8, 262_144, "bf16"),
    (4096, 0, "fp32"),
]


def _signature(kernel, types: dict[str, str]) -> dict[str, str]:
    """Every argument of ``kernel`` typed from ``types``; constexpr parameters marked as such."""
    names = kernel.arg_names
    constexprs = {kernel.arg_names[p.num] for p in kernel.params if p.is_constexpr}
    return {name: "constexpr" if name in constexprs else types[name] for name in names}


def _scalar_types() -> dict[str, str]:
    types = {name: "i32" for name in ("N", "C", "R", "beta_int", "prime", "ignore_index", "row_offset")}
    types |= {name: "fp32" for name in ("beta", "floor", "label_smoothing", "fixed_prob")}
    types |= {name: "i64" for name in ("stride_logits", "stride_targets", "stride_losses")}
    types |= {name: "i64" for name in ("stride_b", "stride_t", "stride_lb", "stride_lt", "stride_hm", "stride_wv")}
    types |= {"stride_l": "i64", "V": "i32", "H": "i32"}
    types |= {name: "i32" for name in ("T_SCORED", "OFFSET")}
    types |= {"labels_ptr": "*i64"}
    ptrs = ("losses_in_ptr", "history_ptr", "loss_ptr", "prob_ptr", "score_ptr", "u_ptr", "r_ptr")
    types |= {name: "*fp32" for name in ptrs}
    types |= {"meta_ptr": "*i64", "indices_ptr": "*i64", "count_ptr": "*i32", "targets_ptr": "*i64", "flags_ptr": "*i8"}
    return types


def cases():
    """(name, kernel, signature types, constexprs, num_warps) for every kernel configuration checked."""
    for n, c, dtype in SHAPES:
        from_logits = c > 0
        types = _scalar_types() | {"logits_ptr": f"*{dtype}"}
        config = select_sb.launch_config(n, max(c, 1), HISTORY_SIZE, from_logits)
        num_warps = config.pop("num_warps")
        variants = [(False, False), (True, False)] + ([] if from_logits else [(False, True)])
        for fixed, flags in variants:  # flags: losses gathered across ranks
            consts = {"FROM_LOGITS": from_logits, "HAS_FLAGS": flags, "FIXED_PROB": fixed, **config}
            name = f"select_sb N={n} C={c} {dtype} fixed_prob={fixed} flags={flags}"
            yield name, select_sb.select_sb_kernel, types, consts, num_warps
        config = common.row_blocks(n, max(c, 1), from_logits)
        num_warps = config.pop("num_warps")
        yield f"row_stats N={n} C={c} {dtype}", row_stats.row_stats_kernel, types, \
            {"FROM_LOGITS": from_logits, **config}, num_warps  # fmt: skip
        if from_logits:
            yield f"residual N={n} C={c} {dtype}", row_stats.residual_kernel, types | {"targets_ptr": "*i32"}, \
                config, num_warps  # fmt: skip
            yield f"token_losses N={n} V={c} {dtype}", sequence.token_losses_kernel, types, config, num_warps
            linear = sequence.linear_blocks(n, c, LINEAR_WIDTH)
            linear_warps = linear.pop("num_warps")
            linear_types = types | {"hidden_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}", "bias_ptr": f"*{dtype}",
                                    "softcap": "fp32", "logit_scale": "fp32"}  # fmt: skip
            for bias, cap in ((False, False), (True, False), (False, True)):
                name = f"linear_token_losses N={n} V={c} H={LINEAR_WIDTH} {dtype} bias={bias} softcap={cap}"
                consts = {"HAS_BIAS": bias, "HAS_SOFTCAP": cap, "DOT_IN_FP32": False, **linear}
                yield name, sequence.linear_token_losses_kernel, linear_types, consts, linear_warps


def _cuobjdump() -> str | None:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else None


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED and LOCAL of the one kernel in ``cubin`` (empty without cuobjdump)."""
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return {key.lower(): int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def compile_case(name, kernel, types, consts, num_warps, arch: int, ptx_dir: Path | None = None) -> dict:
    record = {"kernel": name, "arch": f"sm_{arch}", "num_warps": num_warps, "triton": triton.__version__}
    try:
        source = ASTSource(fn=kernel, signature=_signature(kernel, types), constexprs=consts)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
        record |= {"ok": True, **resource_usage(compiled.asm["cubin"])}
        if kernel is select_sb.select_sb_kernel:  # the ticket / epilogue ordering (tests/tools/ptx_ordering.py)
            record["ordering_violations"] = ordering_violations(compiled.asm["ptx"])
            if ptx_dir is not None:
                (ptx_dir / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}.sm_{arch}.ptx").write_text(compiled.asm["ptx"])
    except Exception:  # report every failure, not only the first
        record |= {"ok": False, "error": traceback.format_exc(limit=3)}
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 80 90")
    parser.add_argument("--ptx-dir", type=Path, help="write the PTX of every select_sb configuration here")
    args = parser.parse_args(argv)
    failed = 0
    for arch in args.arch:
        for case in cases():
            record = compile_case(*case, arch=arch, ptx_dir=args.ptx_dir)
            failed += not record["ok"]
            print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
