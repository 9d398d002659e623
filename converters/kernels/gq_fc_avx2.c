/* GQ fully connected, qd8 arithmetic (gq_fc.h), AVX2 + FMA.
 *
 * Method
 *  - x is rounded to int8 per batch row with 8-lane float code that follows
 *    gq_fc_quantize_row exactly (same max, same product, same clamp, cvtps2dq
 *    rounds half to even) into the workspace (gq_fc_internal.h).
 *  - A block of 64 weights is handled as two ymm halves in natural weight
 *    order (weights 0..31, 32..63). Qword lane j of a half holds weight group
 *    g = 4h + j (8 weights); in the plane of width w its fields sit in plane
 *    qword g % w at bit w * (g / w) of every byte. Plane qwords are brought
 *    in with qword broadcasts (plain loads) and moved with one variable shift.
 *  - Lookup with vpshufb (16 entries per 128-bit lane): its 4 index bits come
 *    from the first plane (the 4-bit plane when b >= 4; b == 2, 3: the 2-bit
 *    plane masked to 2 bits with the codes repeated). Codebooks of more than
 *    16 entries are 2^(b-4) (b == 3: 2) tables of 16, selected by a vpblendvb
 *    tree; vpblendvb looks at bit 7, so each higher index bit is shifted
 *    straight from its plane to bit 7 (one vpsllvq, never a merge).
 *  - Dot products: vpmaddubsw needs one unsigned operand, so the codes are
 *    signed and the sign goes to x: maddubs(|w|, sign(x, w)) never saturates
 *    (|w|, |x| <= 127), then vpmaddwd with ones into int32.
 *  - b == 1 is linear: q[i] = q0 + (q1 - q0) i, so the block sums
 *    sum_{i = 1} x with the 0/1 bytes as the unsigned operand and the
 *    epilogue adds q0 * xsum.
 *  - Tiles of R output rows x NB batch rows with R * NB == 4 accumulators
 *    (16 ymm registers): each block is decoded once per output row and reused
 *    for NB batch rows; each x block is loaded once and reused for R rows.
 *    Edge tiles overlap the previous ones (same values rewritten).
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

#define GQ_INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- x rounding */

/* 32 int32 in [-127, 127] (four vectors, element order) to 32 int8. */
static inline __m256i pack32(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
  /* per 128-bit lane L the bytes come out as [q0 L, q1 L, q2 L, q3 L] */
  const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
  return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Lane mask of the first left (< 8) lanes. */
static inline __m256i first_lanes(size_t left) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), iota);
}

static void quantize_row(const float* x, size_t n, size_t in_pad, int8_t* xq, float* sx,
                         int32_t* xsum) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m0 = _mm256_setzero_ps();
  __m256 m1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    /* max(|x|, m) keeps m when |x| is NaN, as the scalar loop skips NaN. */
    m0 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absmask), m0);
    m1 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i + 8), absmask), m1);
  }
  for (; i < n; i += 8) {
    const size_t left = n - i;
    const __m256 v = left >= 8 ? _mm256_loadu_ps(x + i) : _mm256_maskload_ps(x + i, first_lanes(left));
    m0 = _mm256_max_ps(_mm256_and_ps(v, absmask), m0);
  }
  __m256 mv = _mm256_max_ps(m0, m1);
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float m = _mm_cvtss_f32(m4);
  const float inv = m > 0.0f ? 127.0f / m : 0.0f;
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 lo = _mm256_set1_ps(-127.0f);
  const __m256 hi = _mm256_set1_ps(127.0f);
  __m256i sum = _mm256_setzero_si256();
  for (size_t c = 0; c < in_pad; c += 32) {
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      const size_t at = c + (size_t)j * 8;
      __m256 v = _mm256_setzero_ps();
      __m256i keep = _mm256_setzero_si256();
      if (at + 8 <= n) {
        v = _mm256_loadu_ps(x + at);
        keep = _mm256_set1_epi32(-1);
      } else if (at < n) {
        keep = first_lanes(n - at);
        v = _mm256_maskload_ps(x + at, keep);
      }
      v = _mm256_mul_ps(v, vinv);
      v = _mm256_max_ps(v, lo); /* NaN -> -127 (second operand), as the scalar */
      v = _mm256_min_ps(v, hi);
      /* Default MXCSR: round half to even. Lanes past n become 0 even when
       * 0 * inv is NaN (inv = inf for a denormal max). */
      q[j] = _mm256_and_si256(_mm256_cvtps_epi32(v), keep);
      sum = _mm256_add_epi32(sum, q[j]);
    }
    _mm256_store_si256((__m256i*)(void*)(xq + c), pack32(q[0], q[1], q[2], q[3]));
  }
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
  *sx = m / 127.0f;
  *xsum = _mm_cvtsi128_si32(s4);
}

/* ------------------------------------------------------------ block decoding */

typedef struct ctx2 {
  __m256i tab[16]; /* signed codes, 16 per table, both 128-bit lanes */
  gq_fc_rows r; /* packed, row_bytes, nblk, ... (gq_fc_internal.h) */
} ctx2;

static inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* Plane of width w (w <= 2) broadcast for half h: lane j holds plane qword
 * (4h + j) % w. */
GQ_INLINE __m256i plane_src(const uint8_t* p, int w) {
  if (w == 1) {
    return _mm256_set1_epi64x((long long)load_u64(p));
  }
  return _mm256_blend_epi32(_mm256_set1_epi64x((long long)load_u64(p)),
                            _mm256_set1_epi64x((long long)load_u64(p + 8)), 0xCC);
}

/* Shift (left when t > bit position, else right) that brings the field bit
 * of group g in the plane of width w to bit t of the byte. */
GQ_INLINE long long sh_right(int w, int t, int g) {
  const int s = w * (g / w) - t;
  return s > 0 ? s : 0;
}
GQ_INLINE long long sh_left(int w, int t, int g) {
  const int s = w * (g / w) - t;
  return s < 0 ? -s : 0;
}
GQ_INLINE __m256i shift_right(__m256i v, int w, int t, int h) {
  const int g = 4 * h;
  return _mm256_srlv_epi64(v, _mm256_setr_epi64x(sh_right(w, t, g), sh_right(w, t, g + 1),
                                                 sh_right(w, t, g + 2), sh_right(w, t, g + 3)));
}
GQ_INLINE __m256i shift_left(__m256i v, int w, int t, int h) {
  const int g = 4 * h;
  return _mm256_sllv_epi64(v, _mm256_setr_epi64x(sh_left(w, t, g), sh_left(w, t, g + 1),
                                                 sh_left(w, t, g + 2), sh_left(w, t, g + 3)));
}

/* Field bit k (0 = lowest) of the plane of width w moved to bit 7 of each
 * byte, half h: the vpblendvb selector of that index bit (always a left
 * shift: the field bit sits at w * (g / w) + k <= 7). */
GQ_INLINE __m256i selector(__m256i src, int w, int k, int h) {
  return shift_left(src, w, 7 - k, h);
}

/* Signed codes of half h (weights 32h..32h+31) of a block. b == 1: 0/1. */
GQ_INLINE __m256i decode(const ctx2* c, const uint8_t* blk, int b, int h) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  if (b == 1) {
    return _mm256_and_si256(shift_right(plane_src(blk, 1), 1, 0, h), _mm256_set1_epi8(1));
  }
  if (b == 8) {
    const __m256i raw = _mm256_loadu_si256((const __m256i*)(const void*)(blk + 32 * h));
    const __m256i lo = _mm256_and_si256(raw, low4);
    __m256i t[16];
    #pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) {
      t[k] = _mm256_shuffle_epi8(c->tab[k], lo);
    }
    /* blend tree on index bits 4, 5, 6, 7 (bit 7 is already in place) */
    #pragma GCC unroll 16
    for (int bit = 4; bit < 8; ++bit) {
      const __m256i sel = bit == 7 ? raw : _mm256_slli_epi16(raw, 7 - bit);
      const int n = 1 << (7 - bit);
      #pragma GCC unroll 16
      for (int k = 0; k < n; ++k) {
        t[k] = _mm256_blendv_epi8(t[2 * k], t[2 * k + 1], sel);
      }
    }
    return t[0];
  }
  /* The 4 pshufb index bits. */
  __m256i lo;
  const uint8_t* rest = blk; /* planes after the first */
  if (b >= 4) {
    const __m256i raw = _mm256_loadu_si256((const __m256i*)(const void*)blk);
    lo = _mm256_and_si256(h == 0 ? raw : _mm256_srli_epi16(raw, 4), low4);
    rest += 32;
  } else {
    /* b == 2, 3: the 2-bit plane; 2 index bits, codes repeated 4 times */
    lo = _mm256_and_si256(shift_right(plane_src(blk, 2), 2, 0, h), _mm256_set1_epi8(3));
    rest += 16;
  }
  if (b == 2 || b == 4) {
    return _mm256_shuffle_epi8(c->tab[0], lo);
  }
  /* Higher index bits select among the tables of 16. */
  const int ntab = b == 3 ? 2 : 1 << (b - 4);
  __m256i t[8];
  #pragma GCC unroll 16
  for (int k = 0; k < ntab; ++k) {
    t[k] = _mm256_shuffle_epi8(c->tab[k], lo);
  }
  if (b == 3) { /* 1-bit plane: index bit 2 */
    return _mm256_blendv_epi8(t[0], t[1], selector(plane_src(rest, 1), 1, 0, h));
  }
  /* b = 5, 6, 7: index bits 4.. from the 2-bit plane (if any), then the
   * 1-bit plane */
  __m256i sel[3];
  int nsel = 0;
  if (b & 2) {
    const __m256i src = plane_src(rest, 2);
    sel[nsel++] = selector(src, 2, 0, h);
    sel[nsel++] = selector(src, 2, 1, h);
    rest += 16;
  }
  if (b & 1) {
    sel[nsel++] = selector(plane_src(rest, 1), 1, 0, h);
  }
  #pragma GCC unroll 16
  for (int s = 0; s < nsel; ++s) {
    const int n = ntab >> (s + 1);
    #pragma GCC unroll 16
    for (int k = 0; k < n; ++k) {
      t[k] = _mm256_blendv_epi8(t[2 * k], t[2 * k + 1], sel[s]);
    }
  }
  return t[0];
}

/* ------------------------------------------------------------------- tiles */

/* acc += dot(w, x) for 32 weights: signed codes by the sign trick, 0/1 bytes
 * (b == 1) directly. */
GQ_INLINE __m256i dot32(__m256i acc, __m256i w, __m256i aw, __m256i x, int b) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i p = b == 1 ? _mm256_maddubs_epi16(w, x) : _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
}

GQ_INLINE float activate(float v, int act) { return gq_fc_activate(v, act); }

/* sums[j] for output row o0 + j / NB, batch row n0 + j % NB. */
GQ_INLINE void epilogue(const ctx2* c, __m128i sums, size_t o0, size_t n0, int b, int R, int NB) {
  int32_t s[4];
  _mm_storeu_si128((__m128i*)(void*)s, sums);
  for (int j = 0; j < R * NB; ++j) {
    const size_t o = o0 + (size_t)(j / NB);
    const size_t n = n0 + (size_t)(j % NB);
    uint32_t acc;
    if (b == 1) {
      acc = (uint32_t)c->r.q0 * (uint32_t)c->r.xsum[n] + (uint32_t)(c->r.q1 - c->r.q0) * (uint32_t)s[j];
    } else {
      acc = (uint32_t)s[j]; /* codes are signed: nothing to correct */
    }
    const float bias = c->r.bias != NULL ? c->r.bias[o] : 0.0f;
    /* The scalar model's float operations: (float)acc * (sx * sc) + b */
    const float v = (float)(int32_t)acc * (c->r.sx[n] * c->r.sc) + bias;
    c->r.y[n * c->r.out + o] = activate(v, c->r.act);
  }
}

/* One full tile: output rows o0..o0+R-1, batch rows n0..n0+NB-1; the
 * accumulator a_j belongs to row r = j / NB and batch row n = j % NB. */
GQ_INLINE void tile(const ctx2* c, size_t o0, size_t n0, int b, int R, int NB) {
  __m256i a0 = _mm256_setzero_si256();
  __m256i a1 = _mm256_setzero_si256();
  __m256i a2 = _mm256_setzero_si256();
  __m256i a3 = _mm256_setzero_si256();
  const size_t rb = c->r.row_bytes;
  const size_t ip = c->r.in_pad;
  const size_t bb = (size_t)(8 * b);
  const uint8_t* wp = c->r.packed + o0 * rb;
  const int8_t* xp = c->r.xq + n0 * ip;
  for (size_t k = 0; k < c->r.nblk; ++k) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m256i w = _mm256_setzero_si256();
      __m256i aw = _mm256_setzero_si256();
#define GQ_STEP(j)                                                                     \
  if ((j) < R * NB) {                                                                  \
    if ((j) % NB == 0) {                                                               \
      w = decode(c, wp + (size_t)((j) / NB) * rb, b, h);                               \
      aw = _mm256_abs_epi8(w);                                                         \
    }                                                                                  \
    const __m256i x_ = _mm256_load_si256(                                              \
        (const __m256i*)(const void*)(xp + (size_t)((j) % NB) * ip + 32 * (size_t)h)); \
    a##j = dot32(a##j, w, aw, x_, b);                                                  \
  }
      GQ_STEP(0)
      GQ_STEP(1)
      GQ_STEP(2)
      GQ_STEP(3)
#undef GQ_STEP
    }
    wp += bb;
    xp += 64;
  }
  /* 4 accumulators -> 4 sums */
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  epilogue(c, _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)), o0, n0, b,
           R, NB);
}

/* Output rows 0..out-1 for batch rows n0..n0+NB-1, R at a time (the last
 * group overlapping); out < R: one row at a time. */
GQ_INLINE void tile_rows(const ctx2* c, size_t n0, int b, int R, int NB) {
  const size_t out = c->r.out;
  if (out < (size_t)R) {
    for (size_t o = 0; o < out; ++o) {
      tile(c, o, n0, b, 1, NB);
    }
    return;
  }
  for (size_t o = 0; o < out; o += (size_t)R) {
    tile(c, o + (size_t)R <= out ? o : out - (size_t)R, n0, b, R, NB);
  }
}

typedef void (*rows_fn)(const ctx2* c, size_t n0);

#define GQ_ROWS_FN(B, R, NB) \
  static void rows_b##B##_nb##NB(const ctx2* c, size_t n0) { tile_rows(c, n0, B, R, NB); }
#define GQ_ROWS_FOR_B(B) \
  GQ_ROWS_FN(B, 4, 1)    \
  GQ_ROWS_FN(B, 2, 2)    \
  GQ_ROWS_FN(B, 1, 4)
GQ_ROWS_FOR_B(1)
GQ_ROWS_FOR_B(2)
GQ_ROWS_FOR_B(3)
GQ_ROWS_FOR_B(4)
GQ_ROWS_FOR_B(5)
GQ_ROWS_FOR_B(6)
GQ_ROWS_FOR_B(7)
GQ_ROWS_FOR_B(8)

#define GQ_ROWS_ROW(B) {rows_b##B##_nb1, rows_b##B##_nb2, rows_b##B##_nb4}
/* [bits - 1][log2 NB] */
static const rows_fn kRows[8][3] = {GQ_ROWS_ROW(1), GQ_ROWS_ROW(2), GQ_ROWS_ROW(3),
                                    GQ_ROWS_ROW(4), GQ_ROWS_ROW(5), GQ_ROWS_ROW(6),
                                    GQ_ROWS_ROW(7), GQ_ROWS_ROW(8)};

/* ------------------------------------------------------------------- setup */

static void init_ctx(ctx2* c, const gq_fc_args* a, const gq_fc_ws* ws) {
  const int b = a->bits;
  const int8_t* q = a->codebook->q;
  /* table k holds codes 16k..16k+15; b == 2, 3: codes 4k..4k+3 repeated */
  for (int k = 0; k < 16; ++k) {
    int8_t t[16];
    for (int e = 0; e < 16; ++e) {
      const int i = b <= 3 ? 4 * k + (e & 3) : 16 * k + e;
      t[e] = i < 256 ? q[i] : 0;
    }
    c->tab[k] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(const void*)t));
  }
  gq_fc_rows_init(&c->r, a, ws);
}

void gq_fc_qd8__avx2(const gq_fc_args* a) {
  gq_fc_ws ws;
  if (!gq_fc_qd8_begin(a, &ws, quantize_row)) {
    return;
  }
  ctx2 c;
  init_ctx(&c, a, &ws);
  const rows_fn* fns = kRows[a->bits - 1];
  const size_t batch = a->batch;
  /* Batch tiles of 4, 2 or 1 rows, the last one overlapping. */
  const int lg = batch >= 4 ? 2 : batch >= 2 ? 1 : 0;
  const size_t nb = (size_t)1 << lg;
  for (size_t m = 0;; m += nb) {
    const size_t m0 = m + nb <= batch ? m : batch - nb;
    fns[lg](&c, m0);
    if (m0 + nb >= batch) {
      break;
    }
  }
}

#else
typedef int gq_fc_avx2_empty_unit;
#endif
