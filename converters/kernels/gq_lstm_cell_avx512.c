/* The LSTM cell update (gq_fc.h: gq_lstm_cell), AVX-512F, 16 units at a
 * time, the tail with masked loads and stores. The arithmetic is
 * gq_lstm_cell_avx2.c's (fused multiply-adds, n rounded to nearest even,
 * reciprocals by estimate and one Newton step). */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

#define GQ_INLINE static inline __attribute__((always_inline))

GQ_INLINE __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(GQ_EXP_HI), _mm512_max_ps(_mm512_set1_ps(GQ_EXP_LO), x));
  const __m512 fn = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(GQ_LOG2E)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(GQ_LN2_HI), x);
  r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(GQ_LN2_LO), r);
  __m512 p = _mm512_set1_ps(GQ_EXP_C7);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(GQ_EXP_C6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(GQ_EXP_C5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(GQ_EXP_C4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(GQ_EXP_C3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(GQ_EXP_C2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i n = _mm512_cvtps_epi32(fn);
  const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
  return _mm512_mul_ps(p, scale);
}

/* 1 / d for d >= 1: vrcp14ps (relative error < 2^-14) and one Newton step
 * (error squared, < 2^-28, then float32 rounding: about 1 ulp), cheaper than
 * vdivps. */
GQ_INLINE __m512 recip16(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

GQ_INLINE __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return recip16(_mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

GQ_INLINE __m512 tanh16(__m512 x) {
  const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512i xi = _mm512_castps_si512(x);
  const __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
  const __m512 e = exp16(_mm512_mul_ps(_mm512_set1_ps(-2.0f), a));
  const __m512 t = _mm512_mul_ps(_mm512_sub_ps(one, e), recip16(_mm512_add_ps(one, e)));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), _mm512_and_si512(sign, xi)));
}

GQ_INLINE __m512 gate_in(__mmask16 m, const float* z, const float* xp) {
  return _mm512_add_ps(_mm512_maskz_loadu_ps(m, z), _mm512_maskz_loadu_ps(m, xp));
}

void gq_lstm_cell__avx512(size_t units, const float* z, const float* xp, float* c, float* h) {
  for (size_t j = 0; j < units; j += 16) {
    const size_t left = units - j;
    const __mmask16 m = (__mmask16)(left >= 16 ? 0xffffu : (1u << left) - 1u);
    const __m512 ig = sigmoid16(gate_in(m, z + j, xp + j));
    const __m512 fg = sigmoid16(gate_in(m, z + units + j, xp + units + j));
    const __m512 gg = tanh16(gate_in(m, z + 2 * units + j, xp + 2 * units + j));
    const __m512 og = sigmoid16(gate_in(m, z + 3 * units + j, xp + 3 * units + j));
    const __m512 cn = _mm512_fmadd_ps(fg, _mm512_maskz_loadu_ps(m, c + j), _mm512_mul_ps(ig, gg));
    _mm512_mask_storeu_ps(c + j, m, cn);
    _mm512_mask_storeu_ps(h + j, m, _mm512_mul_ps(og, tanh16(cn)));
  }
}

#else
typedef int gq_lstm_cell_avx512_empty_unit;
#endif
