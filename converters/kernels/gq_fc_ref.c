/* Portable reference kernel of GQ_FULLY_CONNECTED (planes64 layout, v1).
 *
 * This is the kernel every optimised variant is checked against, so it aims
 * at being obviously right rather than fast: it decodes one 64-weight block
 * at a time into a small stack buffer and never holds more of W than that,
 * which keeps its memory use independent of the layer size (the point of the
 * packed format). Pure C11, no intrinsics. */
#include "gq_fc.h"

#include <string.h>

#include "gq_fc_internal.h"

size_t gq_fc_row_bytes(int bits, size_t in_features) {
  if (bits < 1 || bits > 8 || in_features == 0) {
    return 0;
  }
  /* Rounded up without in_features + 63, which could wrap. */
  const size_t blocks = in_features / GQ_FC_BLOCK + (size_t)(in_features % GQ_FC_BLOCK != 0);
  const size_t block_bytes = (size_t)8 * (size_t)bits;
  if (blocks > SIZE_MAX / block_bytes) {
    return 0;
  }
  return blocks * block_bytes;
}

size_t gq_fc_packed_size(int bits, size_t in_features, size_t out_features) {
  const size_t row = gq_fc_row_bytes(bits, in_features);
  if (row == 0 || out_features == 0 || out_features > SIZE_MAX / row) {
    return 0;
  }
  return row * out_features;
}

/* Indices of one block, in weight order. The planes are stored lowest bits
 * first, so each plane ORs its field in above the bits already collected. */
void gq_fc_decode_block(const uint8_t* block, int bits, uint8_t idx[GQ_FC_BLOCK]) {
  if (bits == 8) {
    /* A width-8 plane has one field per byte: byte k is weight k. */
    memcpy(idx, block, GQ_FC_BLOCK);
    return;
  }
  memset(idx, 0, GQ_FC_BLOCK);
  unsigned shift = 0;
  for (unsigned w = 4; w != 0; w >>= 1) {
    if (((unsigned)bits & w) == 0) {
      continue;
    }
    const unsigned mask = (1u << w) - 1u;
    const unsigned run = 8u * w; /* weights per field == bytes in the plane */
    for (unsigned s = 0; s < 8u / w; ++s) {
      for (unsigned k = 0; k < run; ++k) {
        const unsigned field = ((unsigned)block[k] >> (w * s)) & mask;
        idx[s * run + k] = (uint8_t)(idx[s * run + k] | (field << shift));
      }
    }
    block += run;
    shift += w;
  }
}

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
