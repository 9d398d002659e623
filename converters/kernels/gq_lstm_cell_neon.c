/* The LSTM cell update (gq_fc.h: gq_lstm_cell), aarch64 Advanced SIMD, 4
 * units at a time; the last units % 4 go through the scalar cell. The
 * arithmetic is gq_lstm_cell_avx2.c's (fused multiply-adds, n rounded to
 * nearest even); ARMv8.0, so both "neon" and "neondot" use it. */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <stddef.h>
#include <stdint.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

#define GQ_INLINE static inline __attribute__((always_inline))

GQ_INLINE float32x4_t exp4(float32x4_t x) {
  /* vmaxq/vminq return NaN for a NaN lane, which then propagates. */
  x = vminq_f32(vdupq_n_f32(GQ_EXP_HI), vmaxq_f32(vdupq_n_f32(GQ_EXP_LO), x));
  const float32x4_t fn = vrndnq_f32(vmulq_n_f32(x, GQ_LOG2E));
  float32x4_t r = vfmsq_f32(x, fn, vdupq_n_f32(GQ_LN2_HI));
  r = vfmsq_f32(r, fn, vdupq_n_f32(GQ_LN2_LO));
  float32x4_t p = vdupq_n_f32(GQ_EXP_C7);
  p = vfmaq_f32(vdupq_n_f32(GQ_EXP_C6), p, r);
  p = vfmaq_f32(vdupq_n_f32(GQ_EXP_C5), p, r);
  p = vfmaq_f32(vdupq_n_f32(GQ_EXP_C4), p, r);
  p = vfmaq_f32(vdupq_n_f32(GQ_EXP_C3), p, r);
  p = vfmaq_f32(vdupq_n_f32(GQ_EXP_C2), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  const int32x4_t n = vcvtq_s32_f32(fn); /* fn is integral: exact */
  const float32x4_t scale = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n, vdupq_n_s32(127)), 23));
  return vmulq_f32(p, scale);
}

GQ_INLINE float32x4_t sigmoid4(float32x4_t x) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  return vdivq_f32(one, vaddq_f32(one, exp4(vnegq_f32(x))));
}

GQ_INLINE float32x4_t tanh4(float32x4_t x) {
  const uint32x4_t sign = vdupq_n_u32(0x80000000u);
  const float32x4_t one = vdupq_n_f32(1.0f);
  const float32x4_t e = exp4(vmulq_n_f32(vabsq_f32(x), -2.0f));
  const float32x4_t t = vdivq_f32(vsubq_f32(one, e), vaddq_f32(one, e));
  return vreinterpretq_f32_u32(
      vorrq_u32(vreinterpretq_u32_f32(t), vandq_u32(sign, vreinterpretq_u32_f32(x))));
}

void gq_lstm_cell__neon(size_t units, const float* z, const float* xp, float* c, float* h) {
  size_t j = 0;
  for (; j + 4 <= units; j += 4) {
    const float32x4_t ig = sigmoid4(vaddq_f32(vld1q_f32(z + j), vld1q_f32(xp + j)));
    const float32x4_t fg = sigmoid4(vaddq_f32(vld1q_f32(z + units + j), vld1q_f32(xp + units + j)));
    const float32x4_t gg = tanh4(vaddq_f32(vld1q_f32(z + 2 * units + j), vld1q_f32(xp + 2 * units + j)));
    const float32x4_t og = sigmoid4(vaddq_f32(vld1q_f32(z + 3 * units + j), vld1q_f32(xp + 3 * units + j)));
    const float32x4_t cn = vfmaq_f32(vmulq_f32(ig, gg), fg, vld1q_f32(c + j));
    vst1q_f32(c + j, cn);
    vst1q_f32(h + j, vmulq_f32(og, tanh4(cn)));
  }
  gq_lstm_cell__scalar_from(j, units, z, xp, c, h);
}

#else
typedef int gq_lstm_cell_neon_empty_unit;
#endif
