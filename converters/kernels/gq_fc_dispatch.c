/* The GQ fully connected kernels compiled into this build, and the choice
 * among them from the CPU's features at run time.
 *
 * Every build has the portable kernels ("reference": float32, exact
 * centroids; "scalar": the qd8 arithmetic of gq_fc.h in plain C). x86-64
 * builds add "avx2" and "avx512", aarch64 builds "neon" and "neondot"; each
 * is only ever called when the CPU (and, for AVX, the OS) supports it. */
#include <string.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define GQ_FC_X86 1
#elif defined(__aarch64__)
#define GQ_FC_ARM64 1
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

static void run_reference(const gq_fc_args* a) {
  gq_f32_fc_ukernel__ref(a->batch, a->in_features, a->out_features, a->bits, a->x, a->packed,
                         a->centroids, a->bias, a->activation, a->y);
}

static const gq_fc_kernel_info kKernels[] = {
    {"reference", run_reference, 0, 0, gq_lstm_cell__scalar},
    {"scalar", gq_fc_qd8__scalar, 1, 1, gq_lstm_cell__scalar},
#if defined(GQ_FC_X86)
    {"avx2", gq_fc_qd8__avx2, 1, 2, gq_lstm_cell__avx2},
    {"avx512", gq_fc_qd8__avx512, 1, 3, gq_lstm_cell__avx512},
#elif defined(GQ_FC_ARM64)
    {"neon", gq_fc_qd8__neon, 1, 2, gq_lstm_cell__neon},
    {"neondot", gq_fc_qd8__neondot, 1, 3, gq_lstm_cell__neon},
#endif
};

size_t gq_fc_kernel_count(void) { return sizeof kKernels / sizeof kKernels[0]; }

const gq_fc_kernel_info* gq_fc_kernel_at(size_t i) {
  return i < gq_fc_kernel_count() ? &kKernels[i] : NULL;
}

int gq_fc_kernel_supported(const gq_fc_kernel_info* kernel) {
  if (kernel == NULL) {
    return 0;
  }
#if defined(GQ_FC_X86)
  /* libgcc's feature probe also checks that the OS saves the AVX and
   * AVX-512 register state (XGETBV), not just CPUID. */
  __builtin_cpu_init();
  if (kernel->fn == gq_fc_qd8__avx2) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  if (kernel->fn == gq_fc_qd8__avx512) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
           __builtin_cpu_supports("avx512vnni");
  }
#elif defined(GQ_FC_ARM64)
  const unsigned long hwcap = getauxval(AT_HWCAP);
  if (kernel->fn == gq_fc_qd8__neon) {
    return (hwcap & HWCAP_ASIMD) != 0;
  }
  if (kernel->fn == gq_fc_qd8__neondot) {
    return (hwcap & HWCAP_ASIMD) != 0 && (hwcap & HWCAP_ASIMDDP) != 0;
  }
#endif
  return 1; /* the portable kernels */
}

const gq_fc_kernel_info* gq_fc_kernel_find(const char* name) {
  if (name == NULL) {
    return NULL;
  }
  const gq_fc_kernel_info* best = NULL;
  for (size_t i = 0; i < gq_fc_kernel_count(); ++i) {
    const gq_fc_kernel_info* k = &kKernels[i];
    if (strcmp(name, "auto") == 0) {
      if (gq_fc_kernel_supported(k) && (best == NULL || k->rank > best->rank)) {
        best = k;
      }
    } else if (strcmp(name, k->name) == 0) {
      return gq_fc_kernel_supported(k) ? k : NULL;
    }
  }
  return best;
}

void gq_fc_run(const gq_fc_kernel_info* kernel, const gq_fc_args* args) {
  if (kernel->qd8 && args->in_features > GQ_FC_QD8_MAX_IN) {
    run_reference(args); /* the int32 sums could overflow */
    return;
  }
  kernel->fn(args);
}
