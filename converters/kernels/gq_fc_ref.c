/* Portable reference kernel of GQ_FULLY_CONNECTED (planes64 layout, v1).
 *
 * This is the kernel every optimised variant is checked against, so it aims
 * at being obviously right rather than fast: it decodes one 64-weight block
 * at a time into a small stack buffer and never holds more of W than that,
 * which keeps its memory use independent of the layer size (the point of the
 * packed format). The layout itself (sizes, block decoding) is
 * gq_fc_layout.c's. Pure C11, no intrinsics. */
#include <stddef.h>
#include <stdint.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

void gq_f32_fc_ukernel__ref(size_t batch, size_t in_features, size_t out_features, int bits,
                            const float* x, const uint8_t* packed, const float* centroids,
                            const float* bias, int activation, float* y) {
  const size_t row_bytes = gq_fc_row_bytes(bits, in_features);
  const size_t block_bytes = (size_t)8 * (size_t)bits;
  uint8_t idx[GQ_FC_BLOCK];
  float w[GQ_FC_BLOCK];

  for (size_t o = 0; o < out_features; ++o) {
    const uint8_t* row = packed + o * row_bytes;
    const float b = bias != NULL ? bias[o] : 0.0f;
    /* y doubles as the accumulator so any batch size works without a heap
     * buffer; each block adds one partial sum, which also keeps the float
     * error growth at about 64 + in/64 roundings instead of in. */
    for (size_t n = 0; n < batch; ++n) {
      y[n * out_features + o] = b;
    }
    for (size_t first = 0; first < in_features; first += GQ_FC_BLOCK) {
      gq_fc_decode_block(row, bits, idx);
      row += block_bytes;
      /* The padding indices of the last block are decoded but never used:
       * x has no entries behind in_features. */
      const size_t count =
          in_features - first < GQ_FC_BLOCK ? in_features - first : (size_t)GQ_FC_BLOCK;
      for (size_t j = 0; j < count; ++j) {
        w[j] = centroids[idx[j]];
      }
      for (size_t n = 0; n < batch; ++n) {
        const float* xr = x + n * in_features + first;
        float part = 0.0f;
        for (size_t j = 0; j < count; ++j) {
          part += xr[j] * w[j];
        }
        y[n * out_features + o] += part;
      }
    }
    for (size_t n = 0; n < batch; ++n) {
      y[n * out_features + o] = gq_fc_activate(y[n * out_features + o], activation);
    }
  }
}
