"""The Triton twin compiled for a GPU without a GPU: every kernel one loss call launches (forward and backward), with
the specialisation a real launch gets, through Triton's compiler to PTX and ptxas to a cubin.

The interpreter accepts programs the GPU compiler rejects (a name re-bound to another shape, blocks under 16, bf16
arithmetic), so the CPU tests alone cannot say that the kernels build for a GPU; this can, and ptxas's report gives
each kernel's registers, spills and shared memory. Needs the compiler API of triton 3.6 to 3.8 (constraints.txt pins
3.8; the GPU machines' image has 3.6) and triton imported without TRITON_INTERPRET=1.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from lathadapter.kernels import triton_radial_loss

# GPU architectures by compute capability: 80 the A100, 90 the H100 and H200.
ARCHITECTURES = {"sm_80": 80, "sm_90": 90}
_RESOURCES = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers", re.S)


class KernelCompileError(RuntimeError):
    """A kernel the GPU compiler refused, with the launch's constexprs."""


@dataclass(frozen=True)
class CompiledKernel:
    """One launch compiled for `arch`: ptxas's resource report and the compile time (Triton's passes and ptxas)."""

    kernel: str
    constexprs: dict[str, object]
    specialization: dict[str, tuple[str, object]]  # each argument's (type, what the launch specialised it on)
    arch: str
    num_warps: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int
    cubin_bytes: int
    seconds: float
    grid: tuple[int, ...] = ()  # the launch grid (programs per axis), when compiled from a launch


def _compiler_api() -> tuple[type, type, Callable, Callable]:
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature
    except ImportError as error:  # another triton than constraints.txt's
        raise RuntimeError(f"compiling without a GPU needs the compiler API of triton 3.6 to 3.8, not triton "
                           f"{triton.__version__} ({error})") from None
    if not isinstance(triton_radial_loss.image_class_forward_kernel, JITFunction):
        raise RuntimeError("the Triton kernels were imported under TRITON_INTERPRET=1: they are interpreted, not "
                           "compiled; run without it")
    return GPUTarget, ASTSource, make_backend, create_function_from_signature


def ptxas_resources(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) of one kernel's PTX, from `ptxas -v` (triton ships ptxas)."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        target = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        done = subprocess.run([str(ptxas), f"-arch={target}", "-v", str(source), "-o", str(Path(folder) / "k.cubin")],
                              capture_output=True, text=True, check=True)
    found = _RESOURCES.search(done.stdout + done.stderr)
    if found is None:
        raise RuntimeError(f"ptxas -v printed no resource line: {done.stderr[-300:]}")
    return int(found.group(3)), int(found.group(1)), int(found.group(2))


class Compiler:
    """Triton's compiler for one GPU architecture, fed the way a launch feeds it (the JIT's own binder computes the
    specialisation: dtypes, integers equal to 1, 16-byte alignment)."""

    def __init__(self, arch: str) -> None:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
        gpu_target, self.ast_source, make_backend, self.binder_for = _compiler_api()
        self.arch = arch
        self.target = gpu_target("cuda", ARCHITECTURES[arch], 32)
        self.backend = make_backend(self.target)

    def compile(self, function: triton.runtime.jit.JITFunction, *args: object, **kwargs: object) -> CompiledKernel:
        """Compile what `function[grid](*args, **kwargs)` would launch; KernelCompileError if the compiler refuses."""
        bind = self.binder_for(function.signature, function.params, self.backend)
        bound, specialization, options = bind(*args, **kwargs)
        options, signature, constexprs, attrs = function._pack_args(self.backend, kwargs, bound, specialization,
                                                                    options)
        named = {function.arg_names[path[0]]: value for path, value in constexprs.items()}
        specialised = {name: tuple(pair) for name, pair in zip(function.arg_names, specialization, strict=True)}
        started = time.perf_counter()
        try:
            kernel = triton.compile(self.ast_source(function, signature, constexprs, attrs), target=self.target,
                                    options=options.__dict__)
        except Exception as error:
            raise KernelCompileError(f"{function.__name__} ({named}) does not compile for {self.arch}: "
                                     f"{str(error).strip()}") from error
        seconds = time.perf_counter() - started
        registers, spill_stores, spill_loads = ptxas_resources(kernel.asm["ptx"], ARCHITECTURES[self.arch])
        return CompiledKernel(function.__name__, named, specialised, self.arch, kernel.metadata.num_warps, registers,
                              spill_stores, spill_loads, kernel.metadata.shared, len(kernel.asm["cubin"]), seconds)


class _Compiling:
    """Stands in for a kernel of `triton_radial_loss`: `kernel[grid](*args, **kwargs)` compiles the launch."""

    def __init__(self, function: triton.runtime.jit.JITFunction, compiler: Compiler,
                 compiled: list[CompiledKernel]) -> None:
        self.function, self.compiler, self.compiled = function, compiler, compiled

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        def launch(*args: object, **kwargs: object) -> None:
            compiled = self.compiler.compile(self.function, *args, **kwargs)
            self.compiled.append(dataclasses.replace(compiled, grid=tuple(int(n) for n in grid)))

        return launch


@contextmanager
def compiling_launches(arch: str) -> Iterator[list[CompiledKernel]]:
    """Inside the block, each launch of a `triton_radial_loss` kernel is compiled for `arch` instead of run (its
    outputs stay as the host allocated them); the list fills with what was compiled, in launch order."""
    compiler = Compiler(arch)
    compiled: list[CompiledKernel] = []
    originals = {name: getattr(triton_radial_loss, name) for name in dir(triton_radial_loss)
                 if name.endswith("_kernel")}
    for name, function in originals.items():
        setattr(triton_radial_loss, name, _Compiling(function, compiler, compiled))
    try:
        yield compiled
    finally:
        for name, function in originals.items():
            setattr(triton_radial_loss, name, function)


def loss_launches(arch: str, *, batch: int, classes: int, attributes: int, dtype: torch.dtype, lambda_hyp: float,
                  lambda_hier: float, hier: str, seed: int = 0) -> list[CompiledKernel]:
    """Compile the launches of one `TritonRadialLoss` forward and backward on CPU tensors of these shapes and dtype
    (the host code runs as on a GPU; the kernels compile for `arch` instead of running). The image cosines are one
    [B, C + K] product split into views, as `fused_loss` passes them: a launch specialises on their row stride C + K
    and on the attribute view's address (C elements past the product's), not on a separate matrix's."""
    generator = torch.Generator().manual_seed(seed)

    def leaf(*shape: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
        values = low + (high - low) * torch.rand(shape, generator=generator)
        return values.to(dtype).requires_grad_()

    labels = torch.randint(0, classes, (batch,), generator=generator)
    scalars = triton_radial_loss.LossScalars(100.0, lambda_hyp, lambda_hier, hier, 0.1, 1.0, 0.1, 0.1, 0.07)
    image_cosines = leaf(batch, classes + attributes)
    with compiling_launches(arch) as compiled:
        total, *_ = triton_radial_loss.TritonRadialLoss.apply(
            image_cosines[:, :classes], image_cosines[:, classes:], leaf(classes, attributes),
            leaf(classes, attributes, low=0.0), leaf(classes, low=0.05, high=0.95),
            leaf(attributes, low=0.05, high=0.95), leaf(batch, low=0.05, high=0.95), leaf(low=1.0, high=1.0),
            leaf(low=-1.5, high=-1.5), labels, torch.unique(labels), scalars)
        total.backward()
    return compiled
