/* aarch64 "qd8" GQ fully connected kernel with the ARMv8.2 dot product
 * instructions (SDOT): gq_fc_qd8__neondot. The decoding, tiling and
 * epilogues are gq_fc_neon.c's, compiled here a second time with
 * GQ_FC_NEON_DOT (which swaps SMULL/SMLAL2/SADALP for SDOT) and this
 * file's -march=armv8.2-a+dotprod (converters/cbuild.py). Only called when
 * the CPU reports HWCAP_ASIMDDP (gq_fc_dispatch.c). */
#if defined(__aarch64__)
#define GQ_FC_NEON_DOT 1
#include "gq_fc_neon.c"
#else
typedef int gq_fc_neondot_empty_unit;
#endif
