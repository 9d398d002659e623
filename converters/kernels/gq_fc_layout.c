/* The packed weight layout of GQ_FULLY_CONNECTED, version 1 ("planes64"),
 * on the C side: the sizes of a packed row and matrix, and the decoding of
 * one 64-weight block back into its indices.
 *
 * This file is the C twin of converters/layout.py, which writes the bytes
 * the kernels read and whose module docstring defines the layout (gq_fc.h
 * restates it). The two must change together: any change to the layout
 * there (block size, row padding, plane widths or order, field positions)
 * is a change here too, in the SIMD decoders of the kernel variants, and in
 * LAYOUT_VERSION. The C tests check these functions against
 * converters.layout (tests/converters/test_c_kernel.py packs with layout.pack).
 *
 * What mirrors what:
 *   gq_fc_row_bytes     layout.row_bytes
 *   gq_fc_packed_size   layout.packed_size
 *   plane_widths        layout.plane_widths
 *   gq_fc_decode_block  layout.unpack, for one block
 *
 * The kernels include only the declarations (gq_fc.h, gq_fc_internal.h);
 * the reference kernel (gq_fc_ref.c) and the portable qd8 kernel
 * (gq_fc_qd8.c) decode through gq_fc_decode_block. Pure C11. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

size_t gq_fc_row_bytes(int bits, size_t in_features) {
  if (bits < 1 || bits > 8 || in_features == 0) {
    return 0;
  }
  /* ceil(in / 64) blocks (the last one padded), counted without
   * in_features + 63, which could wrap. */
  const size_t blocks = in_features / GQ_FC_BLOCK + (in_features % GQ_FC_BLOCK != 0 ? 1u : 0u);
  const size_t block_bytes = (size_t)8 * (size_t)bits; /* 64 weights of b bits */
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
  return out_features * row; /* rows one after another, row 0 first */
}

/* The plane widths of a b-bit index, the plane of the lowest bits first:
 * 8 alone for b == 8, otherwise each of 4, 2 and 1 that is set in b (widest
 * first, so b = 5 is 4 + 1 and b = 3 is 2 + 1). Returns how many. */
static unsigned plane_widths(int bits, unsigned widths[3]) {
  if (bits == 8) {
    widths[0] = 8u;
    return 1u;
  }
  unsigned count = 0;
  for (unsigned w = 4u; w != 0u; w >>= 1) {
    if (((unsigned)bits & w) != 0u) {
      widths[count++] = w;
    }
  }
  return count;
}

/* A block is its planes one after another, a plane of width w taking 8w
 * bytes. In such a plane, bits [w*s, w*s + w) of byte k are that plane's
 * bits of weight s*8w + k; each plane adds its bits above those of the
 * planes before it. */
void gq_fc_decode_block(const uint8_t* block, int bits, uint8_t idx[GQ_FC_BLOCK]) {
  unsigned widths[3];
  const unsigned planes = plane_widths(bits, widths);
  memset(idx, 0, GQ_FC_BLOCK);
  unsigned low = 0; /* index bits held by the planes already read */
  for (unsigned p = 0; p < planes; ++p) {
    const unsigned w = widths[p];
    const unsigned run = 8u * w; /* bytes of the plane == weights per field */
    const unsigned mask = (1u << w) - 1u;
    for (unsigned k = 0; k < run; ++k) {
      const unsigned byte = block[k];
      for (unsigned s = 0; s < 8u / w; ++s) {
        const unsigned field = (byte >> (w * s)) & mask;
        idx[s * run + k] = (uint8_t)(idx[s * run + k] | (field << low));
      }
    }
    block += run;
    low += w;
  }
}
