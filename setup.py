"""Builds pydl._C, the C++/CUDA kernels, with torch.utils.cpp_extension.

Which kernels build:
  * CUDA kernels when a GPU is visible or PYDL_CUDA=1 (PYDL_CUDA=0 forces a
    CPU-only build). Architectures follow TORCH_CUDA_ARCH_LIST; with no GPU
    visible and no list, sm_80 + sm_90 (+ PTX).
  * The hot CPU loops (csrc/**/cpu/*_kernel_isa.cpp) are compiled once per
    ISA (default, AVX2, AVX-512) and picked at run time; never -march=native.

Build with `pip install --no-build-isolation -e .` so the extension is
compiled against the torch that will import it.
"""

import concurrent.futures
import glob
import os
import platform
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# torch guesses CUDA_HOME from the nvcc on PATH; on these machines a wrapper
# in /usr/local/bin makes that guess /usr/local, which breaks linking.
if not os.environ.get("CUDA_HOME") and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402  (CUDA_HOME must be set before cpp_extension reads it)
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

# Per-ISA variants of the hot CPU loops: (file suffix, macros, flags).
# Each variant is a tiny wrapper .cpp that includes the shared implementation
# under its own namespace; ATen's vectorized types key off CPU_CAPABILITY_*.
X86 = platform.machine().lower() in ("x86_64", "amd64")
CPU_ISA_VARIANTS = [
    ("default", ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"], []),
    ("avx2", ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"], ["-mavx2", "-mfma", "-mf16c"]),
    (
        "avx512",
        ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
        ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    ),
]
if not X86:
    CPU_ISA_VARIANTS = CPU_ISA_VARIANTS[:1]
ISA_MACROS = ["-DPYDL_HAVE_AVX2_KERNELS", "-DPYDL_HAVE_AVX512_KERNELS"] if X86 else []


def torch_cxx_standard() -> str:
    """The -std flag BuildExtension adds for this torch (C++17 up to 2.11, C++20 in 2.14);
    the per-ISA objects are compiled outside BuildExtension and need the same."""
    import re

    import torch.utils.cpp_extension as cpp_extension

    with open(cpp_extension.__file__) as f:
        found = re.search(r"common_cflags \+= \['-std=(c\+\+\d+)'", f.read())
    return f"-std={found.group(1)}" if found else "-std=c++17"


def want_cuda() -> bool:
    flag = os.environ.get("PYDL_CUDA")
    if flag == "0":
        return False
    if torch.version.cuda is None or CUDA_HOME is None:
        if flag == "1":
            sys.exit("PYDL_CUDA=1 but torch has no CUDA support or nvcc/CUDA_HOME was not found")
        return False
    return flag == "1" or torch.cuda.is_available()


def nvidia_wheel_includes() -> list:
    """Headers of the nvidia-* wheels (cuBLAS, cuSPARSE, ...) that torch's CUDA build needs."""
    found = []
    for entry in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cu12/include"):
            path = os.path.join(entry, sub)
            if os.path.isdir(path):
                found.append(path)
        found.extend(sorted(glob.glob(os.path.join(entry, "nvidia", "*", "include"))))
    return list(dict.fromkeys(found))


def cutlass_includes() -> list:
    try:
        import cutlass_library  # the nvidia-cutlass wheel

        path = os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")
        return [path] if os.path.isdir(path) else []
    except ImportError:
        return []


def default_arch_list() -> None:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"


def build_jobs() -> int:
    """Parallel compiles: MAX_JOBS as torch's ninja build reads it, else one per core."""
    jobs = os.environ.get("MAX_JOBS", "")
    return int(jobs) if jobs.isdigit() and int(jobs) > 0 else (os.cpu_count() or 1)


def sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


class BuildWithIsaVariants(BuildExtension):
    """Adds per-ISA object files, each compiled with its own flags."""

    def build_extensions(self):
        self._cxx_standard = torch_cxx_standard()
        for ext in self.extensions:
            jobs = [(src, suffix, macros + flags)
                    for src in sources("csrc/**/cpu/*_kernel_isa.cpp")
                    for suffix, macros, flags in CPU_ISA_VARIANTS]
            # In parallel: compiled one after another, these 15 objects took
            # about half of a 16-core machine's cold build (ninja, which runs
            # the rest in parallel, starts only after them). Each compile is
            # its own g++ process; the thread only waits for it.
            os.makedirs(os.path.join(self.build_temp, "isa_obj"), exist_ok=True)
            with concurrent.futures.ThreadPoolExecutor(max_workers=build_jobs()) as pool:
                objects = list(pool.map(lambda job: self._compile_isa_variant(ext, *job), jobs))
            ext.extra_objects.extend(objects)
        super().build_extensions()

    def _compile_isa_variant(self, ext, src, suffix, flags):
        # A wrapper per variant so each object has its own name and namespace.
        stem = os.path.splitext(os.path.basename(src))[0]
        wrapper_dir = os.path.join(self.build_temp, "isa")
        os.makedirs(wrapper_dir, exist_ok=True)
        wrapper = os.path.join(wrapper_dir, f"{stem}_{suffix}.cpp")
        content = f'#include "{os.path.join(ROOT, src)}"\n'
        if not os.path.exists(wrapper) or open(wrapper).read() != content:
            with open(wrapper, "w") as f:
                f.write(content)
        cxx = list(ext.extra_compile_args.get("cxx", [])) + [self._cxx_standard]
        objs = self.compiler.compile(
            [wrapper],
            output_dir=os.path.join(self.build_temp, "isa_obj"),
            include_dirs=ext.include_dirs + [os.path.join(ROOT, "csrc")],
            extra_postargs=cxx + flags + ["-fPIC"],
        )
        return objs[0]


def generated_include_dir() -> str:
    """A header with build facts (the torch version built against) for build_info."""
    path = os.path.join(ROOT, "build", "generated")
    os.makedirs(path, exist_ok=True)
    header = os.path.join(path, "pydl_build_config.h")
    content = f'#pragma once\n#define PYDL_TORCH_VERSION "{torch.__version__}"\n'
    if not os.path.exists(header) or open(header).read() != content:
        with open(header, "w") as f:
            f.write(content)
    return path


def make_extension():
    use_cuda = want_cuda()
    # No -std here: BuildExtension adds the standard the running torch needs.
    # -fopenmp: at::parallel_for is a header template that runs serially
    # unless its caller is compiled with OpenMP (links torch's own libgomp).
    cxx_flags = ["-O3", "-fopenmp"] + ISA_MACROS
    cpp_sources = [s for s in sources("csrc/**/*.cpp") if not s.endswith("_kernel_isa.cpp")]
    include_dirs = [os.path.join(ROOT, "csrc"), generated_include_dir()]
    if not use_cuda:
        return CppExtension(
            "pydl._C",
            cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    default_arch_list()
    cxx_flags.append("-DPYDL_WITH_CUDA")
    nvcc_flags = [
        "-O3",
        "-DPYDL_WITH_CUDA",
        "--expt-relaxed-constexpr",
        "-lineinfo",
        "--threads=2",
    ]
    return CUDAExtension(
        "pydl._C",
        cpp_sources + sources("csrc/**/*.cu"),
        include_dirs=include_dirs + nvidia_wheel_includes() + cutlass_includes(),
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    packages=find_packages(include=["pydl", "pydl.*", "benchmarks", "benchmarks.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildWithIsaVariants.with_options(use_ninja=True)},
)
