/* The portable "qd8" GQ fully connected kernel and the pieces every qd8
 * variant shares: the codebook's int8 codes, the workspace size and the
 * rounding of x (gq_fc.h defines the arithmetic exactly).
 *
 * gq_fc_qd8__scalar is the model the SIMD variants are held to: same int8
 * codes, same int32 sums. It is plain C11 and uses no libm: rounding half to
 * even is done with the 1.5 * 2^23 trick, exact for |v| <= 127 in float32
 * arithmetic (which C11 on x86-64 and aarch64 uses for float expressions). */
#include <string.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

/* v clamped to [-127, 127] and rounded half to even; NaN becomes -127. */
static int8_t round_code(float v) {
  if (!(v >= -127.0f)) {
    v = -127.0f;
  } else if (v > 127.0f) {
    v = 127.0f;
  }
  const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
  const float shifted = v + magic; /* C evaluates this in float: no reassociation */
  return (int8_t)(int)(shifted - magic);
}

/* max |v_i|; NaN entries are skipped (comparisons with NaN are false). */
static float max_abs(const float* v, size_t n) {
  float m = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    const float a = v[i] < 0.0f ? -v[i] : v[i];
    if (a > m) {
      m = a;
    }
  }
  return m;
}

void gq_fc_codebook_init(gq_fc_codebook* cb, const float* centroids, int bits) {
  memset(cb, 0, sizeof *cb);
  cb->bits = bits;
  if (bits < 1 || bits > 8) {
    return;
  }
  const size_t n = (size_t)1 << bits;
  const float m = max_abs(centroids, n);
  const float inv = m > 0.0f ? 127.0f / m : 0.0f;
  for (size_t k = 0; k < n; ++k) {
    cb->q[k] = round_code(centroids[k] * inv);
  }
  cb->scale = m / 127.0f;
}

size_t gq_fc_workspace_size(size_t batch, size_t in_features) {
  if (in_features > SIZE_MAX - GQ_FC_BLOCK || batch > SIZE_MAX / 4 / sizeof(float)) {
    return 0;
  }
  const size_t in_pad = gq_fc_in_pad(in_features);
  if (in_pad != 0 && batch > (SIZE_MAX - 1024) / in_pad) {
    return 0;
  }
  const size_t xq = batch * in_pad;
  if (xq > (SIZE_MAX - 128 - 2 * (batch * sizeof(float) + 64)) / 2) {
    return 0;
  }
  /* xq, sx, xsum, and xperm (the same size as xq) */
  return 2 * gq_fc_align64(xq) + gq_fc_align64(batch * sizeof(float)) +
         gq_fc_align64(batch * sizeof(int32_t));
}

void gq_fc_quantize_row(const float* x, size_t in_features, size_t in_pad, int8_t* xq,
                        float* sx, int32_t* xsum) {
  const float m = max_abs(x, in_features);
  const float inv = m > 0.0f ? 127.0f / m : 0.0f;
  int32_t sum = 0;
  for (size_t i = 0; i < in_features; ++i) {
    xq[i] = round_code(x[i] * inv);
    sum += xq[i];
  }
  memset(xq + in_features, 0, in_pad - in_features);
  *sx = m / 127.0f;
  *xsum = sum;
}

void gq_fc_qd8__scalar(const gq_fc_args* a) {
  const gq_fc_ws ws = gq_fc_ws_layout(a->workspace, a->batch, a->in_features);
  for (size_t n = 0; n < a->batch; ++n) {
    gq_fc_quantize_row(a->x + n * a->in_features, a->in_features, ws.in_pad,
                       ws.xq + n * ws.in_pad, &ws.sx[n], &ws.xsum[n]);
  }
  const size_t row_bytes = gq_fc_row_bytes(a->bits, a->in_features);
  const size_t block_bytes = (size_t)8 * (size_t)a->bits;
  const int8_t* q = a->codebook->q;
  uint8_t idx[GQ_FC_BLOCK];
  for (size_t o = 0; o < a->out_features; ++o) {
    /* y doubles as the int32 accumulator of row o until its epilogue. */
    for (size_t n = 0; n < a->batch; ++n) {
      int32_t acc = 0;
      const uint8_t* block = a->packed + o * row_bytes;
      const int8_t* xr = ws.xq + n * ws.in_pad;
      for (size_t first = 0; first < ws.in_pad; first += GQ_FC_BLOCK) {
        gq_fc_decode_block(block, a->bits, idx);
        block += block_bytes;
        for (size_t j = 0; j < GQ_FC_BLOCK; ++j) {
          acc += (int32_t)xr[first + j] * (int32_t)q[idx[j]];
        }
      }
      const float b = a->bias != NULL ? a->bias[o] : 0.0f;
      const float v = (float)acc * (ws.sx[n] * a->codebook->scale) + b;
      a->y[n * a->out_features + o] = gq_fc_activate(v, a->activation);
    }
  }
}
