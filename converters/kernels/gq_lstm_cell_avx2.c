/* The LSTM cell update (gq_fc.h: gq_lstm_cell), AVX2 + FMA, 8 units at a
 * time; the last units % 8 go through the scalar cell. The arithmetic is
 * gq_lstm_cell.c's with fused multiply-adds in the range reduction and the
 * polynomial, round-to-nearest-even for n and a reciprocal estimate with a
 * Newton step instead of the divisions, so results may differ from the
 * scalar cell in the last few ulp (the bound is in gq_fc.h). */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

#define GQ_INLINE static inline __attribute__((always_inline))

GQ_INLINE __m256 exp8(__m256 x) {
  /* max(lo, x) returns x when x is NaN, which then propagates. */
  x = _mm256_min_ps(_mm256_set1_ps(GQ_EXP_HI), _mm256_max_ps(_mm256_set1_ps(GQ_EXP_LO), x));
  const __m256 fn = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(GQ_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(GQ_LN2_HI), x);
  r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(GQ_LN2_LO), r);
  __m256 p = _mm256_set1_ps(GQ_EXP_C7);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(GQ_EXP_C6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(GQ_EXP_C5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(GQ_EXP_C4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(GQ_EXP_C3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(GQ_EXP_C2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i n = _mm256_cvtps_epi32(fn);
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
  return _mm256_mul_ps(p, scale);
}

/* 1 / d for d >= 1: vrcpps (relative error < 1.5 * 2^-12) and one Newton
 * step (error squared, < 2.3 * 2^-24, plus rounding), cheaper than vdivps. */
GQ_INLINE __m256 recip8(__m256 d) {
  const __m256 r = _mm256_rcp_ps(d);
  return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(1.0f)), r);
}

GQ_INLINE __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return recip8(_mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

GQ_INLINE __m256 tanh8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 a = _mm256_andnot_ps(sign, x);
  const __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), a));
  const __m256 t = _mm256_mul_ps(_mm256_sub_ps(one, e), recip8(_mm256_add_ps(one, e)));
  return _mm256_or_ps(t, _mm256_and_ps(sign, x));
}

void gq_lstm_cell__avx2(size_t units, const float* z, const float* xp, float* c, float* h) {
  size_t j = 0;
  for (; j + 8 <= units; j += 8) {
    const __m256 ig = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(z + j), _mm256_loadu_ps(xp + j)));
    const __m256 fg = sigmoid8(_mm256_add_ps(_mm256_loadu_ps(z + units + j), _mm256_loadu_ps(xp + units + j)));
    const __m256 gg =
        tanh8(_mm256_add_ps(_mm256_loadu_ps(z + 2 * units + j), _mm256_loadu_ps(xp + 2 * units + j)));
    const __m256 og =
        sigmoid8(_mm256_add_ps(_mm256_loadu_ps(z + 3 * units + j), _mm256_loadu_ps(xp + 3 * units + j)));
    const __m256 cn = _mm256_add_ps(_mm256_mul_ps(fg, _mm256_loadu_ps(c + j)), _mm256_mul_ps(ig, gg));
    _mm256_storeu_ps(c + j, cn);
    _mm256_storeu_ps(h + j, _mm256_mul_ps(og, tanh8(cn)));
  }
  gq_lstm_cell__scalar_from(j, units, z, xp, c, h);
}

#else
typedef int gq_lstm_cell_avx2_empty_unit;
#endif
