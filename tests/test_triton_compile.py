"""The Triton twin compiled for real GPUs on a machine without one (kernels/triton_compile.py): every launch of a loss
call, forward and backward, builds for the H100/H200 (sm_90) and the A100 (sm_80) with the launches and the
specialisation the options imply, and no kernel spills registers to local memory. A kernel the interpreter runs but
the GPU compiler refuses (commit 37bcced's bug: `_` re-bound in a loop to another shape) is caught, naming the kernel.
"""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("under TRITON_INTERPRET=1 the kernels are interpreted, not compiled", allow_module_level=True)
if not triton.__version__.startswith("3.8."):
    pytest.skip(f"the compiler API used is triton 3.8's, this is {triton.__version__}", allow_module_level=True)

import triton.language as tl  # noqa: E402

from lathadapter.kernels.triton_compile import Compiler, KernelCompileError, loss_launches  # noqa: E402

FORWARD = ["image_class_forward_kernel", "image_attribute_forward_kernel", "class_attribute_forward_kernel"]
BACKWARD = ["image_class_backward_kernel", "image_attribute_backward_kernel", "class_attribute_backward_kernel"]


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compile for real, not from a cache a previous run left."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton_cache")))


@pytest.mark.parametrize(("arch", "dtype", "classes", "attributes", "lambda_hyp", "lambda_hier", "hier"), [
    ("sm_90", torch.float32, 100, 16, 0.5, 0.0, "cone"),  # LatHAdapter's defaults
    ("sm_90", torch.float32, 100, 16, 0.0, 0.0, "cone"),  # the cross-entropy alone
    ("sm_90", torch.float32, 100, 16, 0.5, 0.1, "cone"),
    ("sm_90", torch.float32, 100, 16, 0.5, 0.1, "triplet"),
    ("sm_90", torch.bfloat16, 1000, 64, 0.5, 0.1, "cone"),  # the largest attribute tiles
    ("sm_80", torch.float16, 1000, 64, 0.5, 0.1, "triplet"),
])
def test_every_launch_compiles_without_spills(arch: str, dtype: torch.dtype, classes: int, attributes: int,
                                              lambda_hyp: float, lambda_hier: float, hier: str) -> None:
    compiled = loss_launches(arch, batch=256, classes=classes, attributes=attributes, dtype=dtype,
                             lambda_hyp=lambda_hyp, lambda_hier=lambda_hier, hier=hier)
    # the design: one forward and one backward kernel per cosine matrix; the attribute matrices only with the
    # hierarchy term on
    expected = FORWARD + BACKWARD if lambda_hier > 0 else [FORWARD[0], BACKWARD[0]]
    assert [kernel.kernel for kernel in compiled] == expected
    # the GPU tiles: 16 images × 64 categories, attribute tiles of the next power of two in [16, 64], 4 warps
    attribute_block = min(64, max(16, 1 << (attributes - 1).bit_length()))
    for kernel in compiled:
        assert kernel.arch == arch and kernel.num_warps == 4 and kernel.cubin_bytes > 0
        flags = kernel.constexprs
        if kernel.kernel.startswith("image_class"):
            assert (flags["BLOCK_B"], flags["BLOCK_C"]) == (16, 64)
            assert flags["NEED_D"] == (lambda_hyp > 0 or lambda_hier > 0) and flags["HIER"] == (lambda_hier > 0)
        else:
            assert flags["BLOCK_K"] == attribute_block
        if kernel.kernel == "image_class_backward_kernel":
            assert flags["HYP_GRAD"] == (lambda_hyp > 0)
        assert flags["CONE"] == (hier == "cone")
        assert 0 < kernel.registers <= 255
        assert (kernel.spill_store_bytes, kernel.spill_load_bytes) == (0, 0), kernel


@pytest.mark.parametrize("rows", [8, 4])
def test_finer_row_tiles_compile(rows: int) -> None:
    """The tiles benchmarks/radial_loss.py --row-tiles times on a GPU build too, with as many programs as tiles."""
    from lathadapter.kernels.triton_radial_loss import row_tile

    with row_tile(rows):
        compiled = loss_launches("sm_90", batch=256, classes=100, attributes=16, dtype=torch.float32,
                                 lambda_hyp=0.5, lambda_hier=0.1, hier="cone")
    assert [kernel.kernel for kernel in compiled] == FORWARD + BACKWARD
    for kernel in compiled:
        assert kernel.constexprs.get("BLOCK_B", kernel.constexprs.get("BLOCK_P")) == rows
        assert (kernel.spill_store_bytes, kernel.spill_load_bytes) == (0, 0), kernel
        # a program per tile: of the 256 images, or of the batch's categories (at most the 100 classes)
        if kernel.kernel.startswith("class_attribute"):
            assert len(kernel.grid) == 1 and 1 <= kernel.grid[0] <= -(-100 // rows)
        else:
            assert kernel.grid == (256 // rows,)


def test_the_image_cosines_specialise_as_the_views_of_one_product_a_launch_gets() -> None:
    """`fused_loss` passes the image–class and image–attribute cosines as views of one [B, C + K] product: their row
    stride is C + K and the attribute view starts C elements in. Triton's rule restated (a pointer is specialised on
    a 16-byte-aligned address, an integer on a multiple of 16 or on 1): in bfloat16 with C = 100, K = 16 the
    attribute view starts 200 bytes in and rows are 116 apart, neither specialised, where a matrix of its own (16
    columns, its own allocation) would be both."""
    batch, classes, attributes = 256, 100, 16
    compiled = loss_launches("sm_90", batch=batch, classes=classes, attributes=attributes, dtype=torch.bfloat16,
                             lambda_hyp=0.5, lambda_hier=0.1, hier="cone")

    def specialised(value: int) -> str:
        return "D" if value % 16 == 0 else ""

    stride = specialised(classes + attributes)
    attribute_start = specialised(classes * torch.finfo(torch.bfloat16).bits // 8)
    assert (stride, attribute_start) == ("", "")
    expected = {"image_class": {"s_ptr": ("*bf16", "D"), "s_b": ("i32", stride), "s_c": ("constexpr", 1)},
                "image_attribute": {"a_ptr": ("*bf16", attribute_start), "a_b": ("i32", stride),
                                    "a_k": ("constexpr", 1)}}
    seen = 0
    for kernel in compiled:
        for prefix, arguments in expected.items():
            if kernel.kernel.startswith(prefix):
                assert {name: kernel.specialization[name] for name in arguments} == arguments, kernel.kernel
                seen += 1
    assert seen == 4  # the forward and backward kernel of each


@triton.jit
def _pair(x):
    return x, x * 2.0


@triton.jit
def rebinding_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """`_` holds a [BLOCK] value, then a [BLOCK, BLOCK] one inside the loop: the interpreter runs this, the compiler
    refuses a loop-carried name that changes shape."""
    rows = tl.arange(0, BLOCK)
    first, _ = _pair(tl.load(x_ptr + rows))
    total = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        tile, _ = _pair(tl.load(x_ptr + start + rows[:, None] + rows[None, :]))
        total += tile
    tl.store(out_ptr + rows, first + tl.sum(total, axis=1))


@triton.jit
def renamed_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """The same with the discarded outputs named apart, as kernels/triton_radial_loss.py does."""
    rows = tl.arange(0, BLOCK)
    first, _unused = _pair(tl.load(x_ptr + rows))
    total = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        tile, _unused_tile = _pair(tl.load(x_ptr + start + rows[:, None] + rows[None, :]))
        total += tile
    tl.store(out_ptr + rows, first + tl.sum(total, axis=1))


def test_a_kernel_the_compiler_refuses_is_named() -> None:
    compiler = Compiler("sm_90")
    args = (torch.zeros(64), torch.zeros(16), 64)
    with pytest.raises(KernelCompileError, match=r"rebinding_kernel \(\{'BLOCK': 16\}\) does not compile for sm_90"):
        compiler.compile(rebinding_kernel, *args, BLOCK=16)
    assert compiler.compile(renamed_kernel, *args, BLOCK=16).cubin_bytes > 0


def test_an_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'sm_75'; known: sm_80, sm_90"):
        Compiler("sm_75")
