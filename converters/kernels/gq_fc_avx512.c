/* GQ fully connected, qd8 arithmetic (gq_fc.h), AVX-512 F/BW/VL/VBMI/VNNI.
 *
 * Method
 *  - x is rounded to int8 per batch row with 16-lane float code that follows
 *    gq_fc_quantize_row exactly (same max, same product, same clamp, cvtps2dq
 *    rounds half to even) into the workspace (gq_fc_internal.h).
 *  - A block of 64 indices is assembled in one zmm, one byte per weight, in
 *    natural weight order: each plane is broadcast over the register (8w bytes
 *    per lane) and one vpmultishiftqb moves, for every byte, the plane's field
 *    of that weight to its bit position in the index (bit offset
 *    8*(k%8) + w*s - t in the qword, where s is the lane and t the plane's
 *    first index bit). Planes are merged with one vpternlog bit select each.
 *    Bits above b are garbage: the tables below make them irrelevant.
 *  - Lookup: vpermb reads 6 index bits, so for b <= 6 the 2^b codes are
 *    replicated over 64 entries; b == 7 uses vpermi2b (7 bits, 128 entries);
 *    b == 8 two vpermi2b and a blend on bit 7 (vpmovb2m).
 *  - The tables hold u8 codes q[k] + 128 so that vpdpbusd (u8 x s8) does the
 *    dot products; each sum is corrected by - 128 * xsum[n] at the end
 *    (uint32 wrap-around is harmless: the true sum fits in int32).
 *  - Tiles of R output rows x NB batch rows, R * NB == 16 zmm accumulators
 *    (or NB alone when out is small): each block is decoded once per output
 *    row and reused for NB batch rows; each x block is loaded once and reused
 *    for R output rows. Batch 1 is a GEMV over 16 rows at a time. The 16
 *    accumulators are reduced together by a transpose-add tree into one zmm of
 *    16 sums, and the epilogue is vectorised.
 *  - Edge tiles overlap the previous ones (they recompute and rewrite the same
 *    values) instead of handling ragged edges, so every tile is full.
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

#define GQ_INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- x rounding */

/* 64 int32 in [-127, 127] (four vectors, element order) to 64 int8. */
static inline __m512i pack64(__m512i q0, __m512i q1, __m512i q2, __m512i q3) {
  /* packs work per 128-bit lane L: the bytes come out as
   * [q0 L, q1 L, q2 L, q3 L] (4 each); dword 4L + j goes to 4j + L */
  const __m512i b = _mm512_packs_epi16(_mm512_packs_epi32(q0, q1), _mm512_packs_epi32(q2, q3));
  const __m512i idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_epi32(idx, b);
}

static void quantize_row(const float* x, size_t n, size_t in_pad, int8_t* xq, float* sx,
                         int32_t* xsum) {
  __m512 m0 = _mm512_setzero_ps();
  __m512 m1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    /* max(|x|, m) keeps m when |x| is NaN, as the scalar loop skips NaN. */
    m0 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), m0);
    m1 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i + 16)), m1);
  }
  for (; i < n; i += 16) {
    const size_t left = n - i;
    const __mmask16 k = (__mmask16)(left >= 16 ? 0xffffu : (1u << left) - 1u);
    m0 = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i)), m0);
  }
  const float m = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  const float inv = m > 0.0f ? 127.0f / m : 0.0f;
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512 lo = _mm512_set1_ps(-127.0f);
  const __m512 hi = _mm512_set1_ps(127.0f);
  __m512i sum = _mm512_setzero_si512();
  for (size_t c = 0; c < in_pad; c += 64) {
    __m512i q[4];
    for (int j = 0; j < 4; ++j) {
      const size_t at = c + (size_t)j * 16;
      __mmask16 k = 0;
      __m512 v = _mm512_setzero_ps();
      if (at + 16 <= n) {
        k = 0xffff;
        v = _mm512_loadu_ps(x + at);
      } else if (at < n) {
        k = (__mmask16)((1u << (n - at)) - 1u);
        v = _mm512_maskz_loadu_ps(k, x + at);
      }
      v = _mm512_mul_ps(v, vinv);
      v = _mm512_max_ps(v, lo); /* NaN -> -127 (second operand), as the scalar */
      v = _mm512_min_ps(v, hi);
      /* Default MXCSR: round half to even. Lanes past n become 0 even when
       * 0 * inv is NaN (inv = inf for a denormal max). */
      q[j] = _mm512_maskz_cvtps_epi32(k, v);
      sum = _mm512_add_epi32(sum, q[j]);
    }
    _mm512_store_si512((void*)(xq + c), pack64(q[0], q[1], q[2], q[3]));
  }
  *sx = m / 127.0f;
  *xsum = _mm512_reduce_add_epi32(sum);
}

/* ------------------------------------------------------------ block decoding */

typedef struct ctx512 {
  __m512i ztab[4]; /* u8 codes q[k] + 128, 64 entries per register */
  __m256i ytab[4]; /* the same, 32 entries per register */
  const uint8_t* packed;
  size_t row_bytes;
  size_t nblk;
  size_t out;
  size_t batch;
  const int8_t* xq;
  size_t in_pad;
  const float* sx;
  const int32_t* xsum;
  float sc;
  const float* bias;
  float* y;
  int act;
  int32_t q0, q1; /* b == 1: the two codes */
} ctx512;

/* How a block is decoded (chosen per b and tile shape, see kModes):
 *  ZMM:  one zmm of 64 codes in weight order;
 *  YMM:  two ymm of 32 codes (weights 0..31, 32..63);
 *  PAIR: b == 4 only, two blocks from one 64-byte load: zmm lo nibbles =
 *        [block k weights 0..31, block k+1 weights 0..31], hi nibbles the
 *        weights 32..63; x is permuted to match (vshufi64x2). */
enum { MODE_ZMM = 0, MODE_YMM = 1, MODE_PAIR = 2 };

static inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* First index bit of the plane of width w in a b-bit index (planes are
 * stored widest first, lowest bits first). */
GQ_INLINE int plane_bit(int b, int w) {
  return (w < 4 && (b & 4) ? 4 : 0) + (w < 2 && (b & 2) ? 2 : 0);
}

/* Qword lane j of a register holds index group g (weights 8g..8g+7): in the
 * plane of width w those sit in plane qword g % w at bit w * (g / w) of each
 * byte. Shift by sh = w * (g / w) - t to bring them to index bit t: right
 * when sh > 0, left when sh < 0 (the bits shifted in from the neighbour
 * byte are garbage that the merge or the table ignores). */
GQ_INLINE long long shift_right(int w, int t, int g) {
  const int sh = w * (g / w) - t;
  return sh > 0 ? sh : 0;
}
GQ_INLINE long long shift_left(int w, int t, int g) {
  const int sh = w * (g / w) - t;
  return sh < 0 ? -sh : 0;
}

/* Planes are merged with one bit select: bits below t from idx, the rest
 * from f. 0xD8: c ? b : a, bitwise, with c = mask (a = f is the destination
 * register, which dies here). */
GQ_INLINE __m512i zmerge(__m512i idx, __m512i f, int t) {
  return _mm512_ternarylogic_epi32(f, idx, _mm512_set1_epi8((char)((1 << t) - 1)), 0xD8);
}
GQ_INLINE __m256i ymerge(__m256i idx, __m256i f, int t) {
  return _mm256_ternarylogic_epi32(f, idx, _mm256_set1_epi8((char)((1 << t) - 1)), 0xD8);
}

/* zmm field of the plane of width w at p, aligned to index bit t; lanes in
 * natural order (g = j). Sources use qword broadcasts, which are plain
 * loads; 128/256-bit broadcasts would cost a shuffle. */
GQ_INLINE __m512i zplane(const uint8_t* p, int w, int t) {
  __m512i src;
  if (w == 1) {
    src = _mm512_set1_epi64((long long)load_u64(p));
  } else if (w == 2) {
    src = _mm512_mask_blend_epi64(0xAA, _mm512_set1_epi64((long long)load_u64(p)),
                                  _mm512_set1_epi64((long long)load_u64(p + 8)));
  } else {
    src = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(const void*)p));
  }
  const __m512i r = _mm512_set_epi64(shift_right(w, t, 7), shift_right(w, t, 6), shift_right(w, t, 5),
                                     shift_right(w, t, 4), shift_right(w, t, 3), shift_right(w, t, 2),
                                     shift_right(w, t, 1), shift_right(w, t, 0));
  src = _mm512_srlv_epi64(src, r);
  if (t > 0) {
    const __m512i l = _mm512_set_epi64(shift_left(w, t, 7), shift_left(w, t, 6), shift_left(w, t, 5),
                                       shift_left(w, t, 4), shift_left(w, t, 3), shift_left(w, t, 2),
                                       shift_left(w, t, 1), shift_left(w, t, 0));
    src = _mm512_sllv_epi64(src, l);
  }
  return src;
}

/* ymm field for half h (groups 4h..4h+3) of the plane of width w. */
GQ_INLINE __m256i yplane(const uint8_t* p, int w, int t, int h) {
  __m256i src;
  if (w == 4) { /* always the first plane (t == 0): a plain load */
    src = _mm256_loadu_si256((const __m256i*)(const void*)p);
    return h == 0 ? src : _mm256_srli_epi16(src, 4);
  }
  if (w == 1) {
    src = _mm256_set1_epi64x((long long)load_u64(p));
  } else {
    src = _mm256_blend_epi32(_mm256_set1_epi64x((long long)load_u64(p)),
                             _mm256_set1_epi64x((long long)load_u64(p + 8)), 0xCC);
  }
  const int g = 4 * h;
  src = _mm256_srlv_epi64(src, _mm256_set_epi64x(shift_right(w, t, g + 3), shift_right(w, t, g + 2),
                                                 shift_right(w, t, g + 1), shift_right(w, t, g)));
  if (t > 0 && (h == 0 || t > 4)) {
    src = _mm256_sllv_epi64(src, _mm256_set_epi64x(shift_left(w, t, g + 3), shift_left(w, t, g + 2),
                                                   shift_left(w, t, g + 1), shift_left(w, t, g)));
  }
  return src;
}

/* Index bytes of half h of a block (weights 32h..32h+31), b <= 7; bits at
 * and above b are garbage. */
GQ_INLINE __m256i yindex(const uint8_t* blk, int b, int h) {
  __m256i idx = _mm256_setzero_si256();
  if (b & 4) {
    idx = yplane(blk, 4, 0, h);
    blk += 32;
  }
  if (b & 2) {
    const __m256i f = yplane(blk, 2, plane_bit(b, 2), h);
    idx = (b & 4) ? ymerge(idx, f, plane_bit(b, 2)) : f;
    blk += 16;
  }
  if (b & 1) {
    const __m256i f = yplane(blk, 1, plane_bit(b, 1), h);
    idx = (b & 6) ? ymerge(idx, f, plane_bit(b, 1)) : f;
  }
  return idx;
}

/* The 64 u8 codes (q + 128) of one block, in weight order. Index bits at and
 * above b are garbage: vpermb reads 6 bits and the table repeats every 2^b
 * entries (b <= 6); vpermi2b reads 7 (b == 7). */
GQ_INLINE __m512i zdecode(const ctx512* c, const uint8_t* blk, int b) {
  if (b == 8) {
    const __m512i i = _mm512_loadu_si512((const void*)blk);
    const __m512i lo = _mm512_permutex2var_epi8(c->ztab[0], i, c->ztab[1]);
    const __m512i hi = _mm512_permutex2var_epi8(c->ztab[2], i, c->ztab[3]);
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(i), lo, hi);
  }
  if (b == 7) {
    /* three planes: assembling the index in ymm halves avoids a 256-bit
     * broadcast of the 4-bit plane; one zmm vpermi2b does the lookup */
    const __m512i idx =
        _mm512_inserti64x4(_mm512_castsi256_si512(yindex(blk, 7, 0)), yindex(blk, 7, 1), 1);
    return _mm512_permutex2var_epi8(c->ztab[0], idx, c->ztab[1]);
  }
  if (b == 1) { /* linear: 0/1 per weight, see epilogue */
    return _mm512_and_si512(zplane(blk, 1, 0), _mm512_set1_epi8(1));
  }
  /* planes 4, 2, 1 as present in b (written out so that a constant b folds) */
  __m512i idx = _mm512_setzero_si512();
  if (b & 4) {
    idx = zplane(blk, 4, 0);
    blk += 32;
  }
  if (b & 2) {
    const __m512i f = zplane(blk, 2, plane_bit(b, 2));
    idx = (b & 4) ? zmerge(idx, f, plane_bit(b, 2)) : f;
    blk += 16;
  }
  if (b & 1) {
    const __m512i f = zplane(blk, 1, plane_bit(b, 1));
    idx = (b & 6) ? zmerge(idx, f, plane_bit(b, 1)) : f;
  }
  if (b == 7) {
    return _mm512_permutex2var_epi8(c->ztab[0], idx, c->ztab[1]);
  }
  return _mm512_permutexvar_epi8(idx, c->ztab[0]);
}

/* u8 codes of half h of a block, b <= 6 (b == 1: 0/1, see the epilogue). */
GQ_INLINE __m256i ydecode(const ctx512* c, const uint8_t* blk, int b, int h) {
  const __m256i idx = yindex(blk, b, h);
  if (b == 1) {
    return _mm256_and_si256(idx, _mm256_set1_epi8(1));
  }
  if (b <= 5) {
    return _mm256_permutexvar_epi8(idx, c->ytab[0]);
  }
  return _mm256_permutex2var_epi8(c->ytab[0], idx, c->ytab[1]);
}

/* ------------------------------------------------------------------- tiles */

/* Transpose-add trees: 16 accumulators -> one zmm whose lane i is the
 * horizontal sum of accumulator i. Written out (no arrays) so that
 * everything stays in registers. */
GQ_INLINE __m512i zadd_lo_hi32(__m512i a, __m512i b) { /* per 128: [a0+a2, b0+b2, a1+a3, b1+b3] */
  return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}
GQ_INLINE __m512i zadd_lo_hi64(__m512i a, __m512i b) { /* per 128: [A, B, C, D] partial */
  return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}
GQ_INLINE __m512i zadd_lanes(__m512i a, __m512i b) { /* 128-bit lanes [a0+a1, a2+a3, b0+b1, b2+b3] */
  return _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0x88), _mm512_shuffle_i32x4(a, b, 0xDD));
}
GQ_INLINE __m512i zreduce16(__m512i a0, __m512i a1, __m512i a2, __m512i a3, __m512i a4,
                            __m512i a5, __m512i a6, __m512i a7, __m512i a8, __m512i a9,
                            __m512i a10, __m512i a11, __m512i a12, __m512i a13, __m512i a14,
                            __m512i a15) {
  const __m512i d0 = zadd_lo_hi64(zadd_lo_hi32(a0, a1), zadd_lo_hi32(a2, a3));
  const __m512i d1 = zadd_lo_hi64(zadd_lo_hi32(a4, a5), zadd_lo_hi32(a6, a7));
  const __m512i d2 = zadd_lo_hi64(zadd_lo_hi32(a8, a9), zadd_lo_hi32(a10, a11));
  const __m512i d3 = zadd_lo_hi64(zadd_lo_hi32(a12, a13), zadd_lo_hi32(a14, a15));
  return zadd_lanes(zadd_lanes(d0, d1), zadd_lanes(d2, d3));
}

GQ_INLINE __m256i yadd_lo_hi32(__m256i a, __m256i b) {
  return _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
}
GQ_INLINE __m256i yadd_lo_hi64(__m256i a, __m256i b) {
  return _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
}
GQ_INLINE __m256i yadd_lanes(__m256i a, __m256i b) { /* [a0+a1, b0+b1] */
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                          _mm256_permute2x128_si256(a, b, 0x31));
}
GQ_INLINE __m512i yreduce16(__m256i a0, __m256i a1, __m256i a2, __m256i a3, __m256i a4,
                            __m256i a5, __m256i a6, __m256i a7, __m256i a8, __m256i a9,
                            __m256i a10, __m256i a11, __m256i a12, __m256i a13, __m256i a14,
                            __m256i a15) {
  const __m256i d0 = yadd_lo_hi64(yadd_lo_hi32(a0, a1), yadd_lo_hi32(a2, a3));
  const __m256i d1 = yadd_lo_hi64(yadd_lo_hi32(a4, a5), yadd_lo_hi32(a6, a7));
  const __m256i d2 = yadd_lo_hi64(yadd_lo_hi32(a8, a9), yadd_lo_hi32(a10, a11));
  const __m256i d3 = yadd_lo_hi64(yadd_lo_hi32(a12, a13), yadd_lo_hi32(a14, a15));
  return _mm512_inserti64x4(_mm512_castsi256_si512(yadd_lanes(d0, d1)), yadd_lanes(d2, d3), 1);
}

GQ_INLINE __m512 activate(__m512 v, int act) {
  /* Operand order keeps the scalar's results for -0 and NaN. */
  switch (act) {
    case GQ_ACT_RELU:
      return _mm512_max_ps(_mm512_setzero_ps(), v);
    case GQ_ACT_RELU_N1_TO_1:
      return _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_max_ps(_mm512_set1_ps(-1.0f), v));
    case GQ_ACT_RELU6:
      return _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(_mm512_setzero_ps(), v));
    default:
      return v;
  }
}

/* sums: lane i = r * NB + n (i < R * NB) for output row o0 + r, batch row
 * n0 + n. */
GQ_INLINE void epilogue(const ctx512* c, __m512i sums, size_t o0, size_t n0, int b, int R,
                        int NB) {
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i nidx = _mm512_and_si512(iota, _mm512_set1_epi32(NB - 1));
  const __m512i ridx = _mm512_srli_epi32(iota, (unsigned)__builtin_ctz((unsigned)NB));
  const __mmask16 nmask = (__mmask16)((1u << NB) - 1u);
  const __mmask16 rmask = (__mmask16)((1u << R) - 1u);
  __m512i xs;
  __m512 sxv;
  if (NB == 1) {
    xs = _mm512_set1_epi32(c->xsum[n0]);
    sxv = _mm512_set1_ps(c->sx[n0]);
  } else {
    xs = _mm512_permutexvar_epi32(nidx, _mm512_maskz_loadu_epi32(nmask, c->xsum + n0));
    sxv = _mm512_permutexvar_ps(nidx, _mm512_maskz_loadu_ps(nmask, c->sx + n0));
  }
  __m512 bias = _mm512_setzero_ps();
  if (c->bias != NULL) {
    bias = R == 16 ? _mm512_loadu_ps(c->bias + o0)
                   : _mm512_permutexvar_ps(ridx, _mm512_maskz_loadu_ps(rmask, c->bias + o0));
  }
  __m512i acc;
  if (b == 1) {
    /* sums = sum of x over the weights with index 1: acc = q0 sum x + (q1 - q0) sums */
    acc = _mm512_add_epi32(_mm512_mullo_epi32(xs, _mm512_set1_epi32(c->q0)),
                           _mm512_mullo_epi32(sums, _mm512_set1_epi32(c->q1 - c->q0)));
  } else {
    /* acc = sum (q + 128) x - 128 sum x, modulo 2^32 */
    acc = _mm512_sub_epi32(sums, _mm512_slli_epi32(xs, 7));
  }
  /* The scalar model's float operations: (float)acc * (sx * sc) + b */
  const __m512 scale = _mm512_mul_ps(sxv, _mm512_set1_ps(c->sc));
  __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale), bias);
  v = activate(v, c->act);
  if (R == 16) {
    _mm512_storeu_ps(c->y + n0 * c->out + o0, v);
    return;
  }
  for (int n = 0; n < NB; ++n) {
    /* lanes n, n + NB, n + 2 NB, ... to the front */
    const __m512i sel = _mm512_add_epi32(_mm512_slli_epi32(iota, (unsigned)__builtin_ctz((unsigned)NB)),
                                         _mm512_set1_epi32(n));
    _mm512_mask_storeu_ps(c->y + (n0 + (size_t)n) * c->out + o0, rmask,
                          _mm512_permutexvar_ps(sel, v));
  }
}

/* The accumulators are 16 named variables a0..a15 (GCC keeps arrays of
 * vectors carried across loop iterations poorly); a_j belongs to output row
 * r = j / NB and batch row n = j % NB of the tile. */
#define GQ_LIST16(M) \
  M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define GQ_ARGS16 a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15

/* One full tile: output rows o0..o0+R-1, batch rows n0..n0+NB-1. */
GQ_INLINE void tile_zmm(const ctx512* c, size_t o0, size_t n0, int b, int R, int NB) {
#define GQ_DECL(j) __m512i a##j = _mm512_setzero_si512();
  GQ_LIST16(GQ_DECL)
#undef GQ_DECL
  const size_t rb = c->row_bytes;
  const size_t ip = c->in_pad;
  const size_t bb = (size_t)(8 * b);
  const uint8_t* wp = c->packed + o0 * rb;
  const int8_t* xp = c->xq + n0 * ip;
  for (size_t k = 0; k < c->nblk; ++k) {
    __m512i w = _mm512_setzero_si512();
#define GQ_STEP(j)                                                                   \
  if ((j) < R * NB) {                                                                \
    if ((j) % NB == 0) {                                                             \
      w = zdecode(c, wp + (size_t)((j) / NB) * rb, b);                               \
    }                                                                                \
    a##j = _mm512_dpbusd_epi32(                                                      \
        a##j, w, _mm512_load_si512((const void*)(xp + (size_t)((j) % NB) * ip)));   \
  }
    GQ_LIST16(GQ_STEP)
#undef GQ_STEP
    wp += bb;
    xp += 64;
  }
  epilogue(c,
           R * NB == 1 ? _mm512_castsi128_si512(_mm_cvtsi32_si128(_mm512_reduce_add_epi32(a0)))
                       : zreduce16(GQ_ARGS16),
           o0, n0, b, R, NB);
}

GQ_INLINE void tile_ymm(const ctx512* c, size_t o0, size_t n0, int b, int R, int NB) {
#define GQ_DECL(j) __m256i a##j = _mm256_setzero_si256();
  GQ_LIST16(GQ_DECL)
#undef GQ_DECL
  const size_t rb = c->row_bytes;
  const size_t ip = c->in_pad;
  const size_t bb = (size_t)(8 * b);
  const uint8_t* wp = c->packed + o0 * rb;
  const int8_t* xp = c->xq + n0 * ip;
  for (size_t k = 0; k < c->nblk; ++k) {
    __m256i w0 = _mm256_setzero_si256();
    __m256i w1 = _mm256_setzero_si256();
#define GQ_STEP(j)                                                                    \
  if ((j) < R * NB) {                                                                 \
    if ((j) % NB == 0) {                                                              \
      w0 = ydecode(c, wp + (size_t)((j) / NB) * rb, b, 0);                            \
      w1 = ydecode(c, wp + (size_t)((j) / NB) * rb, b, 1);                            \
    }                                                                                 \
    const int8_t* x_ = xp + (size_t)((j) % NB) * ip;                                  \
    a##j = _mm256_dpbusd_epi32(a##j, w0, _mm256_load_si256((const __m256i*)(const void*)x_)); \
    a##j = _mm256_dpbusd_epi32(a##j, w1,                                              \
                               _mm256_load_si256((const __m256i*)(const void*)(x_ + 32))); \
  }
    GQ_LIST16(GQ_STEP)
#undef GQ_STEP
    wp += bb;
    xp += 64;
  }
  if (R * NB == 1) {
    const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(a0), _mm256_extracti128_si256(a0, 1));
    const __m128i q = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4E));
    epilogue(c, _mm512_castsi128_si512(_mm_add_epi32(q, _mm_shuffle_epi32(q, 0xB1))), o0, n0, b,
             R, NB);
  } else {
    epilogue(c, yreduce16(GQ_ARGS16), o0, n0, b, R, NB);
  }
}

/* b == 4, blocks two at a time (see MODE_PAIR); an odd last block is done in
 * ymm halves. */
GQ_INLINE void tile_pair(const ctx512* c, size_t o0, size_t n0, int R, int NB) {
  const int b = 4;
#define GQ_DECL(j) __m512i a##j = _mm512_setzero_si512();
  GQ_LIST16(GQ_DECL)
#undef GQ_DECL
  const size_t rb = c->row_bytes;
  const size_t ip = c->in_pad;
  const uint8_t* wp = c->packed + o0 * rb;
  const int8_t* xp = c->xq + n0 * ip;
  const __m512i tab = c->ztab[0];
  size_t k = 0;
  for (; k + 2 <= c->nblk; k += 2) {
    __m512i w0 = _mm512_setzero_si512();
    __m512i w1 = _mm512_setzero_si512();
#define GQ_STEP(j)                                                                         \
  if ((j) < R * NB) {                                                                      \
    if ((j) % NB == 0) {                                                                   \
      /* vpermb reads 6 bits; the 16 codes repeat 4 times in tab */                        \
      const __m512i raw = _mm512_loadu_si512((const void*)(wp + (size_t)((j) / NB) * rb)); \
      w0 = _mm512_permutexvar_epi8(raw, tab);                                              \
      w1 = _mm512_permutexvar_epi8(_mm512_srli_epi16(raw, 4), tab);                        \
    }                                                                                      \
    const int8_t* x_ = xp + (size_t)((j) % NB) * ip;                                       \
    const __m512i xa_ = _mm512_load_si512((const void*)x_);                                \
    const __m512i xb_ = _mm512_load_si512((const void*)(x_ + 64));                         \
    a##j = _mm512_dpbusd_epi32(a##j, w0, _mm512_shuffle_i64x2(xa_, xb_, 0x44));            \
    a##j = _mm512_dpbusd_epi32(a##j, w1, _mm512_shuffle_i64x2(xa_, xb_, 0xEE));            \
  }
    GQ_LIST16(GQ_STEP)
#undef GQ_STEP
    wp += 64;
    xp += 128;
  }
  if (k < c->nblk) {
    __m256i w0 = _mm256_setzero_si256();
    __m256i w1 = _mm256_setzero_si256();
#define GQ_STEP(j)                                                                         \
  if ((j) < R * NB) {                                                                      \
    if ((j) % NB == 0) {                                                                   \
      w0 = ydecode(c, wp + (size_t)((j) / NB) * rb, 4, 0);                                 \
      w1 = ydecode(c, wp + (size_t)((j) / NB) * rb, 4, 1);                                 \
    }                                                                                      \
    const int8_t* x_ = xp + (size_t)((j) % NB) * ip;                                       \
    __m256i s_ = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w0,                           \
                                     _mm256_load_si256((const __m256i*)(const void*)x_));  \
    s_ = _mm256_dpbusd_epi32(s_, w1, _mm256_load_si256((const __m256i*)(const void*)(x_ + 32))); \
    a##j = _mm512_add_epi32(a##j, _mm512_zextsi256_si512(s_));                             \
  }
    GQ_LIST16(GQ_STEP)
#undef GQ_STEP
  }
  epilogue(c,
           R * NB == 1 ? _mm512_castsi128_si512(_mm_cvtsi32_si128(_mm512_reduce_add_epi32(a0)))
                       : zreduce16(GQ_ARGS16),
           o0, n0, b, R, NB);
}

GQ_INLINE void tile(const ctx512* c, size_t o0, size_t n0, int b, int R, int NB, int mode) {
  if (mode == MODE_PAIR) {
    tile_pair(c, o0, n0, R, NB);
  } else if (mode == MODE_YMM) {
    tile_ymm(c, o0, n0, b, R, NB);
  } else {
    tile_zmm(c, o0, n0, b, R, NB);
  }
}

/* Output rows ob..oe-1 for batch rows n0..n0+NB-1, R rows at a time, the
 * last group ending at oe (it may reach back before ob); when out < R, one
 * row at a time. */
GQ_INLINE void tile_rows(const ctx512* c, size_t n0, size_t ob, size_t oe, int b, int R, int NB,
                         int mode) {
  if (oe < (size_t)R) {
    for (size_t o = ob; o < oe; ++o) {
      tile(c, o, n0, b, 1, NB, mode);
    }
    return;
  }
  for (size_t o = ob; o < oe; o += (size_t)R) {
    tile(c, o + (size_t)R <= oe ? o : oe - (size_t)R, n0, b, R, NB, mode);
  }
}

typedef void (*rows_fn)(const ctx512* c, size_t n0, size_t ob, size_t oe);

/* Decoding per b: batch-1 GEMV (NB == 1) and batch tiles (NB > 1). */
#define GQ_MODE1(B) ((B) == 1 || (B) >= 7 ? MODE_ZMM : (B) == 4 ? MODE_PAIR : MODE_YMM)
#define GQ_MODEN(B) GQ_MN
/* Output rows per GEMV tile: fewer at 8 bits, whose 4 tables take registers. */
#define GQ_R1(B) ((B) == 1 || (B) == 2 || (B) == 4 ? 16 : 8)

#define GQ_ROWS_FN(B, R, NB)                                                             \
  static void rows_b##B##_nb##NB(const ctx512* c, size_t n0, size_t ob, size_t oe) {     \
    tile_rows(c, n0, ob, oe, B, R, NB, (NB) == 1 ? GQ_MODE1(B) : GQ_MODEN(B));           \
  }
#define GQ_ROWS_FOR_B(B) \
  GQ_ROWS_FN(B, GQ_R1(B), 1) \
  GQ_ROWS_FN(B, 8, 2)    \
  GQ_ROWS_FN(B, 4, 4)    \
  GQ_ROWS_FN(B, 2, 8)    \
  GQ_ROWS_FN(B, 1, 16)
GQ_ROWS_FOR_B(1)
GQ_ROWS_FOR_B(2)
GQ_ROWS_FOR_B(3)
GQ_ROWS_FOR_B(4)
GQ_ROWS_FOR_B(5)
GQ_ROWS_FOR_B(6)
GQ_ROWS_FOR_B(7)
GQ_ROWS_FOR_B(8)

#define GQ_ROWS_ROW(B) \
  {rows_b##B##_nb1, rows_b##B##_nb2, rows_b##B##_nb4, rows_b##B##_nb8, rows_b##B##_nb16}
/* [bits - 1][log2 NB] */
static const rows_fn kRows[8][5] = {GQ_ROWS_ROW(1), GQ_ROWS_ROW(2), GQ_ROWS_ROW(3),
                                    GQ_ROWS_ROW(4), GQ_ROWS_ROW(5), GQ_ROWS_ROW(6),
                                    GQ_ROWS_ROW(7), GQ_ROWS_ROW(8)};

/* ------------------------------------------------------------------- setup */

static void init_ctx(ctx512* c, const gq_fc_args* a, const gq_fc_ws* ws) {
  const int b = a->bits;
  /* u8 codes q + 128, repeated every 2^b entries for b <= 6 so that index
   * bits at and above b do not matter */
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  const int8_t* q = a->codebook->q;
  if (b <= 6) {
    const __m512i iota = _mm512_set_epi8(63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49,
                                         48, 47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34,
                                         33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19,
                                         18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                         1, 0);
    const __m512i idx = _mm512_and_si512(iota, _mm512_set1_epi8((char)((1 << b) - 1)));
    const __m512i t = _mm512_xor_si512(
        _mm512_permutexvar_epi8(idx, _mm512_loadu_si512((const void*)q)), flip);
    for (int j = 0; j < 4; ++j) {
      c->ztab[j] = t;
    }
  } else {
    for (int j = 0; j < 4; ++j) {
      c->ztab[j] = _mm512_xor_si512(_mm512_loadu_si512((const void*)(q + 64 * j)), flip);
    }
  }
  c->ytab[0] = _mm512_castsi512_si256(c->ztab[0]);
  c->ytab[1] = _mm512_extracti64x4_epi64(c->ztab[0], 1);
  c->ytab[2] = _mm512_castsi512_si256(c->ztab[1]);
  c->ytab[3] = _mm512_extracti64x4_epi64(c->ztab[1], 1);
  c->q0 = q[0];
  c->q1 = q[1];
  c->packed = a->packed;
  c->row_bytes = gq_fc_row_bytes(b, a->in_features);
  c->nblk = ws->in_pad / GQ_FC_BLOCK;
  c->out = a->out_features;
  c->batch = a->batch;
  c->xq = ws->xq;
  c->in_pad = ws->in_pad;
  c->sx = ws->sx;
  c->xsum = ws->xsum;
  c->sc = a->codebook->scale;
  c->bias = a->bias;
  c->y = a->y;
  c->act = a->activation;
}

void gq_fc_qd8__avx512(const gq_fc_args* a) {
  const gq_fc_ws ws = gq_fc_ws_layout(a->workspace, a->batch, a->in_features);
  for (size_t n = 0; n < a->batch; ++n) {
    quantize_row(a->x + n * a->in_features, a->in_features, ws.in_pad, ws.xq + n * ws.in_pad,
                 &ws.sx[n], &ws.xsum[n]);
  }
  if (a->batch == 0 || a->out_features == 0 || a->bits < 1 || a->bits > 8) {
    return;
  }
  ctx512 c;
  init_ctx(&c, a, &ws);
  const rows_fn* fns = kRows[a->bits - 1];
  const size_t batch = a->batch;
  /* Batch tiles: of 16 rows, the rest with the smallest tile >= rest that
   * overlaps the previous tiles; below 16 rows, tiles of the largest power of
   * two <= batch, the last one overlapping. */
  size_t t0[8];
  int tl[8];
  size_t nt = 0;
  size_t full = batch / 16;
  int lg = 0;
  if (batch >= 16) {
    const size_t rest = batch - full * 16;
    if (rest != 0) {
      while (((size_t)1 << lg) < rest) {
        ++lg;
      }
      t0[nt] = batch - ((size_t)1 << lg);
      tl[nt++] = lg;
    }
  } else {
    while (((size_t)2 << lg) <= batch) {
      ++lg;
    }
    const size_t nb = (size_t)1 << lg;
    for (size_t m = 0;; m += nb) {
      const size_t m0 = m + nb <= batch ? m : batch - nb;
      t0[nt] = m0;
      tl[nt++] = lg;
      if (m0 + nb >= batch) {
        break;
      }
    }
  }
  /* Chunks of 16 output rows outside, so that a chunk of W stays in cache
   * while every batch tile uses it. */
  const size_t out = a->out_features;
  const size_t chunk = batch == 1 ? out : 16;
  for (size_t ob = 0; ob < out; ob += chunk) {
    const size_t oe = ob + chunk < out ? ob + chunk : out;
    for (size_t f = 0; f < full; ++f) {
      fns[4](&c, f * 16, ob, oe);
    }
    for (size_t j = 0; j < nt; ++j) {
      fns[tl[j]](&c, t0[j], ob, oe);
    }
  }
}

#else
typedef int gq_fc_avx512_empty_unit;
#endif
