/* The LSTM cell update (gq_fc.h: gq_lstm_cell) in portable C, and the
 * choice of variant per kernel.
 *
 * The scalar cell is the model the SIMD cells (gq_lstm_cell_avx2.c,
 * gq_lstm_cell_avx512.c, gq_lstm_cell_neon.c) follow: the same range
 * reduction and polynomial for e^x, sigmoid(x) = 1 / (1 + e^-x) and
 * tanh(x) = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|). Pure C11, no libm. */
#include <stddef.h>
#include <stdint.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

/* e^x in float32: x = n ln2 + r, |r| <= ln2/2, e^r by its degree-7 Taylor
 * polynomial (truncation < 6e-9 relative), times 2^n built in the exponent
 * bits. A few ulp. x is clamped so that 2^n stays a normal float; NaN
 * passes through. */
static float cell_expf(float x) {
  if (x != x) {
    return x;
  }
  if (x > GQ_EXP_HI) x = GQ_EXP_HI;
  if (x < GQ_EXP_LO) x = GQ_EXP_LO;
  const float t = x * GQ_LOG2E;
  const int n = (int)(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float fn = (float)n;
  float r = x - fn * GQ_LN2_HI; /* exact product: GQ_LN2_HI has few bits */
  r = r - fn * GQ_LN2_LO;
  float p = GQ_EXP_C7;
  p = p * r + GQ_EXP_C6;
  p = p * r + GQ_EXP_C5;
  p = p * r + GQ_EXP_C4;
  p = p * r + GQ_EXP_C3;
  p = p * r + GQ_EXP_C2;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union {
    uint32_t u;
    float f;
  } scale;
  scale.u = (uint32_t)(n + 127) << 23;
  return p * scale.f;
}

static float cell_sigmoid(float x) { return 1.0f / (1.0f + cell_expf(-x)); }

static float cell_tanh(float x) {
  const float a = x < 0.0f ? -x : x;
  const float e = cell_expf(-2.0f * a);
  const float t = (1.0f - e) / (1.0f + e);
  return x < 0.0f ? -t : t;
}

void gq_lstm_cell__scalar_from(size_t first, size_t units, const float* z, const float* xp,
                               float* c, float* h) {
  for (size_t j = first; j < units; ++j) {
    const float ig = cell_sigmoid(z[j] + xp[j]);
    const float fg = cell_sigmoid(z[units + j] + xp[units + j]);
    const float gg = cell_tanh(z[2 * units + j] + xp[2 * units + j]);
    const float og = cell_sigmoid(z[3 * units + j] + xp[3 * units + j]);
    c[j] = fg * c[j] + ig * gg;
    h[j] = og * cell_tanh(c[j]);
  }
}

void gq_lstm_cell__scalar(size_t units, const float* z, const float* xp, float* c, float* h) {
  gq_lstm_cell__scalar_from(0, units, z, xp, c, h);
}

void gq_lstm_cell(const gq_fc_kernel_info* kernel, size_t units, const float* z, const float* xp,
                  float* c, float* h) {
  kernel->cell(units, z, xp, c, h);
}
