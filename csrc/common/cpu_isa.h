// Run-time choice among the per-ISA builds of a kernel table (setup.py
// compiles every csrc/**/cpu/*_kernel_isa.cpp for DEFAULT, AVX2, AVX512 on x86,
// DEFAULT elsewhere).
#pragma once

#include <ATen/Version.h>

#include <string>

// In a *_kernel_isa.cpp (compiled with CPU_CAPABILITY=DEFAULT/AVX2/AVX512):
// the name of this ISA's table function, e.g. kernel_table_AVX2.
#define PYDL_CONCAT_(a, b) a##b
#define PYDL_CONCAT(a, b) PYDL_CONCAT_(a, b)
#define PYDL_ISA_TABLE_FN PYDL_CONCAT(kernel_table_, CPU_CAPABILITY)

// Pointers to the x86 variants, null where setup.py did not build them.
#if defined(PYDL_HAVE_AVX2_KERNELS)
#define PYDL_IF_AVX2(table_fn) (&table_fn)
#else
#define PYDL_IF_AVX2(table_fn) nullptr
#endif
#if defined(PYDL_HAVE_AVX512_KERNELS)
#define PYDL_IF_AVX512(table_fn) (&table_fn)
#else
#define PYDL_IF_AVX512(table_fn) nullptr
#endif

// Defines a kernel family's `const KernelTable& kernel_for_this_cpu()` in the
// enclosing namespace (where KernelTable and kernel_table_<ISA>() live): the
// table for this process's ISA, chosen on first use.
#define PYDL_DEFINE_KERNEL_FOR_THIS_CPU()                                        \
  const KernelTable& kernel_for_this_cpu() {                                     \
    static const KernelTable table = ::pydl::select_cpu_isa(                     \
        &kernel_table_DEFAULT, PYDL_IF_AVX2(kernel_table_AVX2),                  \
        PYDL_IF_AVX512(kernel_table_AVX512));                                    \
    return table;                                                                \
  }

namespace pydl {

// ATen's own choice ("DEFAULT", "AVX2", "AVX512", ...) already honours
// ATEN_CPU_CAPABILITY and what the processor supports.
template <typename Table>
Table select_cpu_isa(Table (*default_isa)(), Table (*avx2)(), Table (*avx512)()) {
  const std::string cap = at::get_cpu_capability();
  if (avx512 && cap == "AVX512") return avx512();
  if (avx2 && (cap == "AVX2" || cap == "AVX512")) return avx2();
  return default_isa();
}

}  // namespace pydl
