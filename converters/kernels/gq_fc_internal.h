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
 *  xperm int8  [batch][in_pad], free for a kernel's own copy of xq in
 *        another order (the AVX-512 batch tiles);
 * each part starts on a 64-byte boundary. */
typedef struct gq_fc_ws {
  int8_t* xq;
  float* sx;
  int32_t* xsum;
  int8_t* xperm;
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
  base += gq_fc_align64(batch * sizeof(int32_t));
  ws.xperm = (int8_t*)(void*)base;
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

/* The plain (instruction-set independent) part of the row context of the
 * SIMD qd8 kernels (gq_fc_avx2.c, gq_fc_avx512.c), set by gq_fc_rows_init. */
typedef struct gq_fc_rows {
  const uint8_t* packed;
  size_t row_bytes;
  size_t nblk;
  size_t out;
  const int8_t* xq;
  size_t in_pad;
  const float* sx;
  const int32_t* xsum;
  float sc;
  const float* bias;
  float* y;
  int act;
  int32_t q0, q1; /* b == 1: the two codes */
} gq_fc_rows;

static inline void gq_fc_rows_init(gq_fc_rows* r, const gq_fc_args* a, const gq_fc_ws* ws) {
  r->q0 = a->codebook->q[0];
  r->q1 = a->codebook->q[1];
  r->packed = a->packed;
  r->row_bytes = gq_fc_row_bytes(a->bits, a->in_features);
  r->nblk = ws->in_pad / GQ_FC_BLOCK;
  r->out = a->out_features;
  r->xq = ws->xq;
  r->in_pad = ws->in_pad;
  r->sx = ws->sx;
  r->xsum = ws->xsum;
  r->sc = a->codebook->scale;
  r->bias = a->bias;
  r->y = a->y;
  r->act = a->activation;
}

/* The start of a SIMD qd8 kernel: lays out the workspace and rounds every
 * x row with quantize (the file's SIMD version of gq_fc_quantize_row).
 * Returns 0 when no output is left to compute. */
static inline int gq_fc_qd8_begin(const gq_fc_args* a, gq_fc_ws* ws,
                                  void (*quantize)(const float* x, size_t n, size_t in_pad,
                                                   int8_t* xq, float* sx, int32_t* xsum)) {
  *ws = gq_fc_ws_layout(a->workspace, a->batch, a->in_features);
  for (size_t n = 0; n < a->batch; ++n) {
    quantize(a->x + n * a->in_features, a->in_features, ws->in_pad, ws->xq + n * ws->in_pad,
             &ws->sx[n], &ws->xsum[n]);
  }
  return a->batch != 0 && a->out_features != 0 && a->bits >= 1 && a->bits <= 8;
}

/* Indices of one packed block in weight order (gq_fc_layout.c, the C twin
 * of converters/layout.py; gq_fc_row_bytes and gq_fc_packed_size of gq_fc.h
 * are defined there too). */
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

/* The LSTM cells (gq_lstm_cell*.c). e^x: x clamped to [GQ_EXP_LO,
 * GQ_EXP_HI] (2^n stays a normal float), n = round(x log2 e), r = x - n ln2
 * in two steps (GQ_LN2_HI has 15 significant bits, so n * GQ_LN2_HI is
 * exact for |n| <= 256), e^r by its Taylor polynomial to degree 7. */
#define GQ_EXP_HI 88.0f
#define GQ_EXP_LO (-87.0f)
#define GQ_LOG2E 1.44269504f
#define GQ_LN2_HI 0.693145751953125f
#define GQ_LN2_LO 1.428606765330187e-06f
#define GQ_EXP_C7 (1.0f / 5040.0f)
#define GQ_EXP_C6 (1.0f / 720.0f)
#define GQ_EXP_C5 (1.0f / 120.0f)
#define GQ_EXP_C4 (1.0f / 24.0f)
#define GQ_EXP_C3 (1.0f / 6.0f)
#define GQ_EXP_C2 0.5f

/* The scalar cell from unit `first` on (the SIMD cells' tails). */
GQ_FC_INTERNAL void gq_lstm_cell__scalar_from(size_t first, size_t units, const float* z,
                                              const float* xp, float* c, float* h);
GQ_FC_INTERNAL void gq_lstm_cell__scalar(size_t units, const float* z, const float* xp, float* c,
                                         float* h);
GQ_FC_INTERNAL void gq_lstm_cell__avx2(size_t units, const float* z, const float* xp, float* c,
                                       float* h);
GQ_FC_INTERNAL void gq_lstm_cell__avx512(size_t units, const float* z, const float* xp, float* c,
                                         float* h);
GQ_FC_INTERNAL void gq_lstm_cell__neon(size_t units, const float* z, const float* xp, float* c,
                                       float* h);

#endif /* GQ_FC_INTERNAL_H_ */
