"""Compile every kernel for an NVIDIA architecture ahead of time, without a GPU (triton ships ptxas):

    python -m hf_specdec_kernels.aot --arch 90 80

It checks what the interpreter cannot: that the kernels are valid compiled Triton for real hardware (types,
loop-carried values, shared-memory use). Run it without TRITON_INTERPRET set.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def _modules():
    return [importlib.import_module(f"hf_specdec_kernels.{name}") for name in ("tree_attention", "tree_walk", "compact")]


def variants():
    """(name, kernel, pointer types, constexprs) of the configurations the launchers use."""
    attention, walk, compact = _modules()
    for dtype, head_dim, block_n in (("bf16", 128, 32), ("bf16", 64, 64), ("fp16", 128, 32)):
        for split in (False, True):
            pointers = {name: "*" + dtype for name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr")}
            pointers.update(mask_ptr="*i32", part_acc_ptr="*fp32", part_m_ptr="*fp32", part_l_ptr="*fp32",
                            qk_scale="fp32")
            constants = dict(GROUP=4, HEAD_DIM=head_dim, BLOCK_D=head_dim, BLOCK_M=64, BLOCK_N=block_n, SPLIT=split,
                             IEEE=False, UPCAST=False)
            yield f"tree attention {dtype} d={head_dim} split={split}", attention._tree_attention_kernel, pointers, constants
    yield ("combine splits", attention._combine_splits_kernel,
           dict(part_acc_ptr="*fp32", part_m_ptr="*fp32", part_l_ptr="*fp32", out_ptr="*bf16"),
           dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_R=32))
    yield ("greedy tree walk", walk._greedy_tree_walk_kernel,
           {name: "*i32" for name in ("tokens_ptr", "parents_ptr", "target_next_ptr", "path_ptr", "length_ptr",
                                      "next_token_ptr")},
           dict(BLOCK=256))
    yield ("kv compaction", compact._compact_kernel, dict(table_ptr="*i64", path_ptr="*i32"),
           dict(WORD=tl.int16, BLOCK_P=16, BLOCK_D=128))


def compile_for(arch: int, kernel, pointers: dict, constants: dict):
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4, "num_stages": 3})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_specdec_kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities, e.g. 90 80")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    for arch in args.arch:
        for name, kernel, pointers, constants in variants():
            compiled = compile_for(arch, kernel, pointers, constants)
            print(f"sm_{arch} {name}: ok, {compiled.metadata.shared} bytes of shared memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
