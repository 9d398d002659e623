/* Internal to the GQ fully connected kernels: what the variants share.
 * Not part of the library's interface (gq_fc.h is). Pure C11. */
#ifndef GQ_FC_INTERNAL_H_
#define GQ_FC_INTERNAL_H_

#include <stddef.h>
#include <stdint.h>

#include "gq_fc.h"

/* Shared between the kernel files but not exported from the library. */
#if defined(__GNUC__)
#define GQ_FC_INTERNAL __attribute__((visibility("hidden")))
#else
#define GQ_FC_INTERNAL
#endif

/* The workspace of a qd8 call, carved out of gq_fc_args.workspace:
 *  xq    int8  [batch][in_pad], in_pad = in rounded up to 64; the kernel
 *        writes the padding as zeros, so padded weights (index 0) add 0;
 *  sx    float [batch], the row scales;
 *  xsum  int32 [batch], sum_i xq[n,i] (for kernels that offset codes);
 * each part starts on a 64-byte boundary. */
typedef struct gq_fc_ws {
  int8_t* xq;
  float* sx;
  int32_t* xsum;
  size_t in_pad;
} gq_fc_ws;

static inline size_t gq_fc_align64(size_t n) { return (n + 63u) & ~(size_t)63u; }

static inline size_t gq_fc_in_pad(size_t in_features) {
  return (in_features + GQ_FC_BLOCK - 1) / GQ_FC_BLOCK * GQ_FC_BLOCK;
}

/* Only called with sizes gq_fc_workspace_size accepted. */
static inline gq_fc_ws gq_fc_ws_layout(void* workspace, size_t batch, size_t in_features) {
  gq_fc_ws ws;
  uint8_t* base = (uint8_t*)workspace;
  ws.in_pad = gq_fc_in_pad(in_features);
  ws.xq = (int8_t*)(void*)base;
  base += gq_fc_align64(batch * ws.in_pad);
  ws.sx = (float*)(void*)base;
  base += gq_fc_align64(batch * sizeof(float));
  ws.xsum = (int32_t*)(void*)base;
  return ws;
}

static inline float gq_fc_activate(float v, int activation) {
  switch (activation) {
    case GQ_ACT_RELU:
      return v < 0.0f ? 0.0f : v;
    case GQ_ACT_RELU_N1_TO_1:
      return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    case GQ_ACT_RELU6:
      return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
    default:
      return v;
  }
}

/* Indices of one packed block in weight order (gq_fc_ref.c). */
GQ_FC_INTERNAL void gq_fc_decode_block(const uint8_t* block, int bits, uint8_t idx[GQ_FC_BLOCK]);

/* Portable qd8 pieces (gq_fc_qd8.c): the rounding of one x row exactly as
 * gq_fc.h defines it (writes in_pad bytes, padding zeroed) and the whole
 * portable qd8 kernel, the model every SIMD variant must agree with. */
GQ_FC_INTERNAL void gq_fc_quantize_row(const float* x, size_t in_features, size_t in_pad, int8_t* xq,
                        float* sx, int32_t* xsum);
GQ_FC_INTERNAL void gq_fc_qd8__scalar(const gq_fc_args* args);

/* SIMD variants; each file compiles to nothing on other architectures. */
GQ_FC_INTERNAL void gq_fc_qd8__avx2(const gq_fc_args* args);     /* AVX2 + FMA */
GQ_FC_INTERNAL void gq_fc_qd8__avx512(const gq_fc_args* args);   /* AVX-512 F/BW/VL/VBMI/VNNI */
GQ_FC_INTERNAL void gq_fc_qd8__neon(const gq_fc_args* args);     /* aarch64 Advanced SIMD */
GQ_FC_INTERNAL void gq_fc_qd8__neondot(const gq_fc_args* args);  /* + dot product (ARMv8.2 dotprod) */

#endif /* GQ_FC_INTERNAL_H_ */
