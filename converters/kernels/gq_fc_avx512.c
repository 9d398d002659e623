/* GQ fully connected, qd8 arithmetic (gq_fc.h), AVX-512 F/BW/VL/VBMI/VNNI.
 *
 * Method
 *  - x is rounded to int8 per batch row by 16-lane code that follows
 *    gq_fc_quantize_row exactly (same max, product, clamp; cvtps2dq rounds
 *    half to even) into the workspace (gq_fc_internal.h).
 *  - Dot products with vpdpbusd (u8 x s8): the lookup tables hold the codes
 *    as u8, q + 128, and each sum is corrected by - 128 * xsum[n] at the end
 *    (uint32 wrap-around is harmless: the true sum fits in int32). b == 1 is
 *    linear instead, q[i] = q0 + (q1 - q0) i: the 0/1 index bytes themselves
 *    are the u8 operand and the epilogue adds q0 * xsum.
 *  - Index assembly, in natural weight order so that x is never permuted:
 *    qword lane j of a register holds weight group g (weights 8g..8g+7),
 *    whose field in the plane of width w sits in plane qword g % w at bit
 *    w * (g / w) of every byte. Plane qwords come in by qword broadcasts
 *    (plain loads; 128/256-bit broadcasts cost a shuffle on Zen 4), one
 *    variable shift per plane brings the fields to their index bits, and
 *    one vpternlog bit select merges a plane into the index. Index bits at
 *    and above b are garbage; the tables repeat every 2^b entries so that
 *    vpermb (5 or 6 index bits) and vpermi2b (6 or 7) ignore them.
 *  - Lookup per b (measured on Zen 4, where a zmm shuffle or dot product
 *    costs two ymm ones, and shuffles, shifts and dot products share three
 *    of the four vector pipes):
 *      b == 4, 2 (batch 1): 8 / b whole blocks from one 64-byte load; a
 *        shift by b*s and one zmm vpermb give field s of every block, and x
 *        is permuted to match (tile_multi);
 *      b == 3, 5, 6 (and 2, 4 in batch tiles): two ymm halves per block,
 *        vpermb (32 entries) or vpermi2b (64);
 *      b == 7: index built in ymm halves, one zmm vpermi2b (128 entries);
 *      b == 8: two zmm vpermi2b (256 entries) and a blend on bit 7;
 *      b == 1: no lookup (linear, above).
 *  - Tiles of R output rows x NB batch rows, 16 accumulators (R * NB == 16,
 *    R == 8 where decoding needs more registers): each block is decoded once
 *    per output row and reused for NB batch rows, each x block loaded once
 *    per step and reused for R output rows. Batch 1 is a GEMV over 16 (or 8)
 *    rows at a time, batch tiles are 4 x 4 (2 x 8 for b == 6, 7). The
 *    accumulators are reduced together by a transpose-add tree into one zmm
 *    of sums and the epilogue is vectorised.
 *  - The next tile's rows are prefetched into L2 while a tile runs (every
 *    matrix: a model's layers evict each other), and rows that would all
 *    fall into one L1 set (row length a multiple of 2 or 4 KiB) are read in
 *    two groups half a row apart.
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
  gq_fc_rows r; /* packed, row_bytes, nblk, ... (gq_fc_internal.h) */
  size_t row_gcd;  /* gcd(row_bytes, 4096) */
  const int8_t* xperm; /* batch tiles at b == 2, 4: x in tile_multi's order (permute_x) */
} ctx512;

/* How blocks are decoded (chosen per b and tile shape, GQ_MODE1/GQ_MODEN):
 *  ZMM:   one zmm of 64 codes in weight order (b == 1, 7, 8);
 *  YMM:   two ymm of 32 codes, weights 0..31 and 32..63 (b <= 6);
 *  MULTI: 8 / b blocks from one 64-byte load (b == 2, 4; tile_multi). */
enum { MODE_ZMM = 0, MODE_YMM = 1, MODE_MULTI = 2 };

static inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* First index bit of the plane of width w in a b-bit index (planes are
 * stored widest first, lowest bits first). */
GQ_INLINE int plane_bit(int b, int w) {
  if (b == 3 && w == 1) {
    /* bit 4, not 2: then each half needs one shift (left in the first half,
     * right in the second) instead of three; index bits 2, 3 are garbage
     * that the table ignores (see init_ctx) */
    return 4;
  }
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

/* Whether lanes g0..g0+n-1 need a right (left) shift at all. */
GQ_INLINE int any_right(int w, int t, int g0, int n) {
  int any = 0;
  for (int g = g0; g < g0 + n; ++g) {
    any |= shift_right(w, t, g) != 0;
  }
  return any;
}
GQ_INLINE int any_left(int w, int t, int g0, int n) {
  int any = 0;
  for (int g = g0; g < g0 + n; ++g) {
    any |= shift_left(w, t, g) != 0;
  }
  return any;
}

/* Planes are merged with one bit select: bits below t from idx, the rest
 * from f. 0xD8: c ? b : a, bitwise, with c = mask (a = f is the destination
 * register, which dies here). */
GQ_INLINE __m256i ymerge(__m256i idx, __m256i f, int t) {
  return _mm256_ternarylogic_epi32(f, idx, _mm256_set1_epi8((char)((1 << t) - 1)), 0xD8);
}

/* Fields of the plane of width w at p for half h (groups 4h..4h+3), moved
 * to index bit t. The 4-bit plane is always the first one (t == 0): a plain
 * load, shifted by 4 for the second half. */
GQ_INLINE __m256i yplane(const uint8_t* p, int w, int t, int h) {
  __m256i src;
  if (w == 4) {
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
  if (any_right(w, t, g, 4)) {
    src = _mm256_srlv_epi64(src, _mm256_set_epi64x(shift_right(w, t, g + 3), shift_right(w, t, g + 2),
                                                   shift_right(w, t, g + 1), shift_right(w, t, g)));
  }
  if (any_left(w, t, g, 4)) {
    src = _mm256_sllv_epi64(src, _mm256_set_epi64x(shift_left(w, t, g + 3), shift_left(w, t, g + 2),
                                                   shift_left(w, t, g + 1), shift_left(w, t, g)));
  }
  return src;
}

/* Index bytes of half h of a block (weights 32h..32h+31), b <= 7; bits at
 * and above b are garbage (b == 3: also bits 2, 3). */
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

/* The 64 codes of one block in weight order, b == 1, 7 or 8: u8 q + 128,
 * or for b == 1 the 0/1 indices (see the epilogue). */
GQ_INLINE __m512i zdecode(const ctx512* c, const uint8_t* blk, int b) {
  if (b == 1) { /* group g = lane j: bit j of each byte */
    const __m512i bits = _mm512_srlv_epi64(_mm512_set1_epi64((long long)load_u64(blk)),
                                           _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
    return _mm512_and_si512(bits, _mm512_set1_epi8(1));
  }
  if (b == 7) {
    /* three planes: assembling the index in ymm halves avoids a 256-bit
     * broadcast of the 4-bit plane; one zmm vpermi2b does the lookup */
    const __m512i idx =
        _mm512_inserti64x4(_mm512_castsi256_si512(yindex(blk, 7, 0)), yindex(blk, 7, 1), 1);
    return _mm512_permutex2var_epi8(c->ztab[0], idx, c->ztab[1]);
  }
  /* b == 8: entries 0..127 and 128..255, chosen by index bit 7 */
  const __m512i i = _mm512_loadu_si512((const void*)blk);
  const __m512i lo = _mm512_permutex2var_epi8(c->ztab[0], i, c->ztab[1]);
  const __m512i hi = _mm512_permutex2var_epi8(c->ztab[2], i, c->ztab[3]);
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(i), lo, hi);
}

/* u8 codes of half h of a block, b <= 6 (b == 1: the 0/1 indices). */
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
  const __m512i lgnb = _mm512_set1_epi32(__builtin_ctz((unsigned)NB));
  const __m512i ridx = _mm512_srlv_epi32(iota, lgnb);
  const __mmask16 nmask = (__mmask16)((1u << NB) - 1u);
  const __mmask16 rmask = (__mmask16)((1u << R) - 1u);
  __m512i xs;
  __m512 sxv;
  if (NB == 1) {
    xs = _mm512_set1_epi32(c->r.xsum[n0]);
    sxv = _mm512_set1_ps(c->r.sx[n0]);
  } else {
    xs = _mm512_permutexvar_epi32(nidx, _mm512_maskz_loadu_epi32(nmask, c->r.xsum + n0));
    sxv = _mm512_permutexvar_ps(nidx, _mm512_maskz_loadu_ps(nmask, c->r.sx + n0));
  }
  __m512 bias = _mm512_setzero_ps();
  if (c->r.bias != NULL) {
    bias = R == 16 ? _mm512_loadu_ps(c->r.bias + o0)
                   : _mm512_permutexvar_ps(ridx, _mm512_maskz_loadu_ps(rmask, c->r.bias + o0));
  }
  __m512i acc;
  if (b == 1) {
    /* sums = sum of x over the weights with index 1: acc = q0 sum x + (q1 - q0) sums */
    acc = _mm512_add_epi32(_mm512_mullo_epi32(xs, _mm512_set1_epi32(c->r.q0)),
                           _mm512_mullo_epi32(sums, _mm512_set1_epi32(c->r.q1 - c->r.q0)));
  } else {
    /* acc = sum (q + 128) x - 128 sum x, modulo 2^32 */
    acc = _mm512_sub_epi32(sums, _mm512_slli_epi32(xs, 7));
  }
  /* The scalar model's float operations: (float)acc * (sx * sc) + b */
  const __m512 scale = _mm512_mul_ps(sxv, _mm512_set1_ps(c->r.sc));
  __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale), bias);
  v = activate(v, c->r.act);
  if (R == 16) {
    _mm512_storeu_ps(c->r.y + n0 * c->r.out + o0, v);
    return;
  }
  for (int n = 0; n < NB; ++n) {
    /* lanes n, n + NB, n + 2 NB, ... to the front */
    const __m512i sel = _mm512_add_epi32(_mm512_sllv_epi32(iota, lgnb), _mm512_set1_epi32(n));
    _mm512_mask_storeu_ps(c->r.y + (n0 + (size_t)n) * c->r.out + o0, rmask,
                          _mm512_permutexvar_ps(sel, v));
  }
}

/* Software prefetch (into L2) of the next tile's rows while this tile runs,
 * spread evenly over its blocks: per step of `bytes` bytes per row, R rows
 * of the next tile take R * bytes / 64 lines. It keeps many more lines in
 * flight than the hardware prefetchers do for 8 or 16 interleaved rows. */
GQ_INLINE void prefetch_next(const ctx512* c, const uint8_t* next, size_t step, size_t bytes, int R) {
  if (next != NULL) {
    const size_t lines = (size_t)R * bytes / 64;
    for (size_t j = 0; j < lines; ++j) {
      _mm_prefetch((const char*)(next + (step * lines + j) * 64), _MM_HINT_T1);
    }
  }
  (void)c;
}

/* Base of the next tile's rows, or NULL when there is none. Every matrix is
 * prefetched: one that fits in L2 need not stay there from call to call (a
 * model's layers evict each other; measured with 67 MB of 512 KB matrices
 * cycled, 2048x512 at 4 bits: 68 -> 36 us at batch 4, 50 -> 25 us at batch
 * 1), and a hot one loses nothing measurable (24.7 / 25.2 us). */
GQ_INLINE const uint8_t* next_tile(const ctx512* c, size_t o0, int R) {
  return o0 + 2 * (size_t)R <= c->r.out ? c->r.packed + (o0 + (size_t)R) * c->r.row_bytes : NULL;
}

/* GEMV tiles split their rows in two groups half a row apart: rows r < R/2
 * read block k while rows r >= R/2 read block (k + h) mod nblk. Rows whose
 * length is a multiple of 4 KiB (in = 8192 at 4 bits) all map to the same L1
 * set, and 16 of them at the same offset thrash the 8 ways; the two groups
 * land in different sets. Costs one more x load per step, so only done when
 * rows collide. Returns h (0: no split); unit = blocks per step. */
GQ_INLINE size_t split_offset(const ctx512* c, int R, int NB, size_t unit) {
  if (NB != 1 || R < 8 || c->r.nblk < 8 || c->r.nblk % (2 * unit) != 0) {
    return 0;
  }
  /* rows at a stride of row_bytes fall into 4096 / gcd(row_bytes, 4096) of
   * the 64 sets: split when that puts more than 4 of the R rows in a set */
  return (size_t)R * c->row_gcd > 4 * 4096 ? c->r.nblk / 2 : 0;
}

/* The accumulators are 16 named variables a0..a15 (GCC keeps arrays of
 * vectors carried across loop iterations poorly); a_j belongs to output row
 * r = j / NB and batch row n = j % NB of the tile. */
#define GQ_LIST16(M) \
  M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define GQ_ARGS16 a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15

/* Packed block of tile row r and x block of batch row n for tile row r (the
 * two row groups of split_offset). */
#define GQ_WROW(r) \
  (!SPLIT || (r) < R / 2 ? wp1 + (size_t)(r) * rb : wp2 + (size_t)((r) - R / 2) * rb)
#define GQ_XROW(r, n) ((!SPLIT || (r) < R / 2 ? xp1 : xp2) + (size_t)(n) * ip)

/* One full tile, output rows o0..o0+R-1 x batch rows n0..n0+NB-1, with
 * zmm blocks (MODE_ZMM). SPLIT: the two row groups of split_offset. */
GQ_INLINE void tile_zmm(const ctx512* c, size_t o0, size_t n0, int b, int R, int NB,
                       int SPLIT) {
#define GQ_DECL(j) __m512i a##j = _mm512_setzero_si512();
  GQ_LIST16(GQ_DECL)
#undef GQ_DECL
  const size_t rb = c->r.row_bytes;
  const size_t ip = c->r.in_pad;
  const size_t bb = (size_t)(8 * b);
  const size_t h = SPLIT ? c->r.nblk / 2 : 0;
  const uint8_t* wp1 = c->r.packed + o0 * rb;
  const uint8_t* wp2 = wp1 + (size_t)(R / 2) * rb + h * bb;
  const int8_t* xp1 = c->r.xq + n0 * ip;
  const int8_t* xp2 = xp1 + h * 64;
  const uint8_t* next = next_tile(c, o0, R);
  size_t k = 0;
  for (int phase = 0; phase < 2; ++phase) {
    for (const size_t end = phase == 0 ? c->r.nblk - h : c->r.nblk; k < end; ++k) {
      prefetch_next(c, next, k, bb, R);
      __m512i w = _mm512_setzero_si512();
#define GQ_STEP(j)                                                                   \
  if ((j) < R * NB) {                                                                \
    if ((j) % NB == 0) {                                                             \
      w = zdecode(c, GQ_WROW((j) / NB), b);                                          \
    }                                                                                \
    a##j = _mm512_dpbusd_epi32(a##j, w,                                              \
                               _mm512_load_si512((const void*)GQ_XROW((j) / NB, (j) % NB))); \
  }
      GQ_LIST16(GQ_STEP)
#undef GQ_STEP
      wp1 += bb;
      wp2 += bb;
      xp1 += 64;
      xp2 += 64;
    }
    if (SPLIT && phase == 0) { /* the second group wraps to block 0 */
      wp2 -= c->r.nblk * bb;
      xp2 -= c->r.nblk * 64;
    }
  }
  epilogue(c,
           R * NB == 1 ? _mm512_castsi128_si512(_mm_cvtsi32_si128(_mm512_reduce_add_epi32(a0)))
                       : zreduce16(GQ_ARGS16),
           o0, n0, b, R, NB);
}

/* The same with ymm halves (MODE_YMM): 8-lane accumulators. */
GQ_INLINE void tile_ymm(const ctx512* c, size_t o0, size_t n0, int b, int R, int NB,
                       int SPLIT) {
#define GQ_DECL(j) __m256i a##j = _mm256_setzero_si256();
  GQ_LIST16(GQ_DECL)
#undef GQ_DECL
  const size_t rb = c->r.row_bytes;
  const size_t ip = c->r.in_pad;
  const size_t bb = (size_t)(8 * b);
  const size_t h = SPLIT ? c->r.nblk / 2 : 0;
  const uint8_t* wp1 = c->r.packed + o0 * rb;
  const uint8_t* wp2 = wp1 + (size_t)(R / 2) * rb + h * bb;
  const int8_t* xp1 = c->r.xq + n0 * ip;
  const int8_t* xp2 = xp1 + h * 64;
  const uint8_t* next = next_tile(c, o0, R);
  size_t k = 0;
  for (int phase = 0; phase < 2; ++phase) {
    for (const size_t end = phase == 0 ? c->r.nblk - h : c->r.nblk; k < end; ++k) {
      prefetch_next(c, next, k, bb, R);
      __m256i w0 = _mm256_setzero_si256();
      __m256i w1 = _mm256_setzero_si256();
#define GQ_STEP(j)                                                                    \
  if ((j) < R * NB) {                                                                 \
    if ((j) % NB == 0) {                                                              \
      w0 = ydecode(c, GQ_WROW((j) / NB), b, 0);                                       \
      w1 = ydecode(c, GQ_WROW((j) / NB), b, 1);                                       \
    }                                                                                 \
    const int8_t* x_ = GQ_XROW((j) / NB, (j) % NB);                                   \
    a##j = _mm256_dpbusd_epi32(a##j, w0, _mm256_load_si256((const __m256i*)(const void*)x_)); \
    a##j = _mm256_dpbusd_epi32(a##j, w1,                                              \
                               _mm256_load_si256((const __m256i*)(const void*)(x_ + 32))); \
  }
      GQ_LIST16(GQ_STEP)
#undef GQ_STEP
      wp1 += bb;
      wp2 += bb;
      xp1 += 64;
      xp2 += 64;
    }
    if (SPLIT && phase == 0) {
      wp2 -= c->r.nblk * bb;
      xp2 -= c->r.nblk * 64;
    }
  }
  if (R * NB == 1) {
    const __m128i s2 = _mm_add_epi32(_mm256_castsi256_si128(a0), _mm256_extracti128_si256(a0, 1));
    const __m128i q = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0x4E));
    epilogue(c, _mm512_castsi128_si512(_mm_add_epi32(q, _mm_shuffle_epi32(q, 0xB1))), o0, n0, b,
             R, NB);
  } else {
    epilogue(c, yreduce16(GQ_ARGS16), o0, n0, b, R, NB);
  }
}

/* The codes of one 64-byte load holding G = 8 / b blocks at b == 4 or 2:
 * field f (weights 64 / G * f ... of every block) is the lookup of the
 * bytes shifted right by b * f; w2, w3 only for G == 4. The index bits
 * above b are garbage the repeating tables ignore. */
GQ_INLINE void decode_fields(__m512i raw, __m512i tab, int b, __m512i* w0, __m512i* w1,
                             __m512i* w2, __m512i* w3) {
  *w0 = _mm512_permutexvar_epi8(raw, tab);
  *w1 = _mm512_permutexvar_epi8(_mm512_srli_epi16(raw, b), tab);
  if (b == 2) {
    *w2 = _mm512_permutexvar_epi8(_mm512_srli_epi16(raw, 4), tab);
    *w3 = _mm512_permutexvar_epi8(_mm512_srli_epi16(raw, 6), tab);
  }
}

/* One leftover block (after the groups of tile_multi / tile_multi_nb) for
 * accumulator j, in two ymm halves: the block of tile row j / NB at WROW,
 * x of batch row j % NB at XROW, natural weight order. */
#define GQ_LEFTOVER_STEP(j, WROW, XROW)                                                     \
  if ((j) < R * NB) {                                                                      \
    if ((j) % NB == 0) {                                                                   \
      w0 = ydecode(c, (WROW), b, 0);                                                       \
      w1 = ydecode(c, (WROW), b, 1);                                                       \
    }                                                                                      \
    const int8_t* x_ = (XROW);                                                             \
    __m256i s_ = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w0,                           \
                                     _mm256_load_si256((const __m256i*)(const void*)x_));  \
    s_ = _mm256_dpbusd_epi32(s_, w1, _mm256_load_si256((const __m256i*)(const void*)(x_ + 32))); \
    a##j = _mm512_add_epi32(a##j, _mm512_zextsi256_si512(s_));                             \
  }

/* b == 4 or 2 (MODE_MULTI): G = 8 / b consecutive blocks from one 64-byte
 * load, their planes being contiguous. Shifting the load right by b*s puts
 * field s of every byte at the bottom, i.e. for each block (one 64/G-byte
 * lane each) its weights s*64/G .. s*64/G + 64/G - 1; x is permuted to match
 * (lane L of X_s = that chunk of x block k + L: a transpose of 256-bit
 * halves for G == 2, of 128-bit quarters for G == 4). vpermb ignores the
 * garbage above bit b (codes repeated). Leftover blocks are done one by one
 * in ymm halves. */
GQ_INLINE void tile_multi(const ctx512* c, size_t o0, size_t n0, int b, int R, int NB, int SPLIT) {
  const int G = 8 / b;
#define GQ_DECL(j) __m512i a##j = _mm512_setzero_si512();
  GQ_LIST16(GQ_DECL)
#undef GQ_DECL
  const size_t rb = c->r.row_bytes;
  const size_t ip = c->r.in_pad;
  const size_t bb = (size_t)(8 * b);
  const size_t h = SPLIT ? c->r.nblk / 2 : 0;
  const uint8_t* wp1 = c->r.packed + o0 * rb;
  const uint8_t* wp2 = wp1 + (size_t)(R / 2) * rb + h * bb;
  const int8_t* xp1 = c->r.xq + n0 * ip;
  const int8_t* xp2 = xp1 + h * 64;
  const __m512i tab = c->ztab[0];
  const uint8_t* next = next_tile(c, o0, R);
  size_t k = 0;
  for (int phase = 0; phase < 2; ++phase) {
    for (const size_t end = phase == 0 ? c->r.nblk - h : c->r.nblk; k + (size_t)G <= end;
         k += (size_t)G) {
      prefetch_next(c, next, k / (size_t)G, 64, R);
      __m512i w0 = _mm512_setzero_si512();
      __m512i w1 = _mm512_setzero_si512();
      __m512i w2 = _mm512_setzero_si512();
      __m512i w3 = _mm512_setzero_si512();
#define GQ_STEP(j)                                                                         \
  if ((j) < R * NB) {                                                                      \
    if ((j) % NB == 0) {                                                                   \
      decode_fields(_mm512_loadu_si512((const void*)GQ_WROW((j) / NB)), tab, b, &w0, &w1, &w2, \
                    &w3);                                                                  \
    }                                                                                      \
    const int8_t* x_ = GQ_XROW((j) / NB, (j) % NB);                                        \
    const __m512i xa_ = _mm512_load_si512((const void*)x_);                                \
    const __m512i xb_ = _mm512_load_si512((const void*)(x_ + 64));                         \
    const __m512i lo_ = _mm512_shuffle_i64x2(xa_, xb_, 0x44);                              \
    const __m512i hi_ = _mm512_shuffle_i64x2(xa_, xb_, 0xEE);                              \
    if (G == 2) {                                                                          \
      a##j = _mm512_dpbusd_epi32(a##j, w0, lo_);                                           \
      a##j = _mm512_dpbusd_epi32(a##j, w1, hi_);                                           \
    } else {                                                                               \
      const __m512i xc_ = _mm512_load_si512((const void*)(x_ + 128));                      \
      const __m512i xd_ = _mm512_load_si512((const void*)(x_ + 192));                      \
      const __m512i lo2_ = _mm512_shuffle_i64x2(xc_, xd_, 0x44);                           \
      const __m512i hi2_ = _mm512_shuffle_i64x2(xc_, xd_, 0xEE);                           \
      a##j = _mm512_dpbusd_epi32(a##j, w0, _mm512_shuffle_i64x2(lo_, lo2_, 0x88));         \
      a##j = _mm512_dpbusd_epi32(a##j, w1, _mm512_shuffle_i64x2(lo_, lo2_, 0xDD));         \
      a##j = _mm512_dpbusd_epi32(a##j, w2, _mm512_shuffle_i64x2(hi_, hi2_, 0x88));         \
      a##j = _mm512_dpbusd_epi32(a##j, w3, _mm512_shuffle_i64x2(hi_, hi2_, 0xDD));         \
    }                                                                                      \
  }
      GQ_LIST16(GQ_STEP)
#undef GQ_STEP
      wp1 += 64;
      wp2 += 64;
      xp1 += 64 * G;
      xp2 += 64 * G;
    }
    if (SPLIT && phase == 0) {
      wp2 -= c->r.nblk * bb;
      xp2 -= c->r.nblk * 64;
    }
  }
  for (; k < c->r.nblk; ++k) { /* leftover blocks (then h == 0) */
    __m256i w0 = _mm256_setzero_si256();
    __m256i w1 = _mm256_setzero_si256();
#define GQ_STEP(j) GQ_LEFTOVER_STEP(j, GQ_WROW((j) / NB), GQ_XROW((j) / NB, (j) % NB))
    GQ_LIST16(GQ_STEP)
#undef GQ_STEP
    wp1 += bb;
    wp2 += bb;
    xp1 += 64;
    xp2 += 64;
  }
  epilogue(c,
           R * NB == 1 ? _mm512_castsi128_si512(_mm_cvtsi32_si128(_mm512_reduce_add_epi32(a0)))
                       : zreduce16(GQ_ARGS16),
           o0, n0, b, R, NB);
}

/* Batch tiles at b == 4 or 2: the decoding of tile_multi (G = 8 / b blocks
 * from one 64-byte load, a shift and one vpermb per field), with x of every
 * batch row put into the matching order once per call (permute_x) instead
 * of being shuffled in registers for every row and step: each decoded
 * register is then multiplied with NB plain loads of x. */
static void permute_x(const int8_t* xq, size_t nblk, int G, int8_t* out) {
  /* Per group of G blocks: for field s, 64 bytes whose segment g (64 / G
   * bytes) is x of block k + g at weights 64 / G * s ... (the weights field
   * s of that block holds); the blocks after the last full group stay in
   * natural order for the leftover path. */
  const size_t seg = (size_t)(64 / G);
  const size_t groups = nblk / (size_t)G;
  for (size_t k = 0; k < groups; ++k) {
    const int8_t* src = xq + k * 64 * (size_t)G;
    int8_t* dst = out + k * 64 * (size_t)G;
    for (int f = 0; f < G; ++f) {
      for (int g = 0; g < G; ++g) {
        memcpy(dst + 64 * f + seg * (size_t)g, src + 64 * g + seg * (size_t)f, seg);
      }
    }
  }
  memcpy(out + groups * 64 * (size_t)G, xq + groups * 64 * (size_t)G,
         (nblk - groups * (size_t)G) * 64);
}

GQ_INLINE void tile_multi_nb(const ctx512* c, size_t o0, size_t n0, int b, int R, int NB) {
  const int G = 8 / b;
#define GQ_DECL(j) __m512i a##j = _mm512_setzero_si512();
  GQ_LIST16(GQ_DECL)
#undef GQ_DECL
  const size_t rb = c->r.row_bytes;
  const size_t ip = c->r.in_pad;
  const size_t bb = (size_t)(8 * b);
  const uint8_t* wp = c->r.packed + o0 * rb;
  const int8_t* xp = c->xperm + n0 * ip;
  const __m512i tab = c->ztab[0];
  const uint8_t* next = next_tile(c, o0, R);
  size_t k = 0;
  for (; k + (size_t)G <= c->r.nblk; k += (size_t)G) {
    prefetch_next(c, next, k / (size_t)G, 64, R);
    __m512i w0 = _mm512_setzero_si512();
    __m512i w1 = _mm512_setzero_si512();
    __m512i w2 = _mm512_setzero_si512();
    __m512i w3 = _mm512_setzero_si512();
#define GQ_STEP(j)                                                                         \
  if ((j) < R * NB) {                                                                      \
    if ((j) % NB == 0) {                                                                   \
      decode_fields(_mm512_loadu_si512((const void*)(wp + (size_t)((j) / NB) * rb)), tab, b, \
                    &w0, &w1, &w2, &w3);                                                   \
    }                                                                                      \
    const int8_t* x_ = xp + (size_t)((j) % NB) * ip;                                       \
    a##j = _mm512_dpbusd_epi32(a##j, w0, _mm512_load_si512((const void*)x_));              \
    a##j = _mm512_dpbusd_epi32(a##j, w1, _mm512_load_si512((const void*)(x_ + 64)));       \
    if (G == 4) {                                                                          \
      a##j = _mm512_dpbusd_epi32(a##j, w2, _mm512_load_si512((const void*)(x_ + 128)));    \
      a##j = _mm512_dpbusd_epi32(a##j, w3, _mm512_load_si512((const void*)(x_ + 192)));    \
    }                                                                                      \
  }
    GQ_LIST16(GQ_STEP)
#undef GQ_STEP
    wp += 64;
    xp += 64 * (size_t)G;
  }
  for (; k < c->r.nblk; ++k) { /* leftover blocks, x in natural order */
    __m256i w0 = _mm256_setzero_si256();
    __m256i w1 = _mm256_setzero_si256();
#define GQ_STEP(j) GQ_LEFTOVER_STEP(j, wp + (size_t)((j) / NB) * rb, xp + (size_t)((j) % NB) * ip)
    GQ_LIST16(GQ_STEP)
#undef GQ_STEP
    wp += bb;
    xp += 64;
  }
  epilogue(c, zreduce16(GQ_ARGS16), o0, n0, b, R, NB);
}

/* Batch 1 with one block per row (in <= 64) at b == 4 or 2: the packed
 * rows are contiguous blocks of 8 b bytes, so one 64-byte load holds the
 * blocks of G = 8 / b consecutive rows. As in tile_multi, a shift by b * s
 * and one vpermb give field s (weights 64 / G * s ...) of all G rows at
 * once, multiplied with that segment of x repeated G times; segment g of the
 * accumulator then sums row g. The segments are split into 16 row
 * accumulators for the usual reduction. Only full 16-row tiles (out >= 16),
 * so no load reaches past the matrix. */
GQ_INLINE void tile_single(const ctx512* c, size_t o0, size_t n0, int b) {
  const int G = 8 / b;
  const __m512i tab = c->ztab[0];
  const __m512i xa = _mm512_load_si512((const void*)(c->r.xq + n0 * c->r.in_pad));
  const __m512i x0 = G == 2 ? _mm512_shuffle_i64x2(xa, xa, 0x44) : _mm512_shuffle_i32x4(xa, xa, 0x00);
  const __m512i x1 = G == 2 ? _mm512_shuffle_i64x2(xa, xa, 0xEE) : _mm512_shuffle_i32x4(xa, xa, 0x55);
  const __m512i x2 = _mm512_shuffle_i32x4(xa, xa, 0xAA);
  const __m512i x3 = _mm512_shuffle_i32x4(xa, xa, 0xFF);
  const uint8_t* wp = c->r.packed + o0 * c->r.row_bytes;
#define GQ_LOAD_SUM(l)                                                                         \
  __m512i s##l;                                                                                \
  if ((l) < 16 / G) {                                                                          \
    const __m512i raw = _mm512_loadu_si512((const void*)(wp + 64 * (l)));                      \
    s##l = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_permutexvar_epi8(raw, tab), x0);  \
    s##l = _mm512_dpbusd_epi32(s##l, _mm512_permutexvar_epi8(_mm512_srli_epi16(raw, b), tab), x1); \
    if (G == 4) {                                                                              \
      s##l = _mm512_dpbusd_epi32(s##l, _mm512_permutexvar_epi8(_mm512_srli_epi16(raw, 4), tab), x2); \
      s##l = _mm512_dpbusd_epi32(s##l, _mm512_permutexvar_epi8(_mm512_srli_epi16(raw, 6), tab), x3); \
    }                                                                                          \
  } else {                                                                                     \
    s##l = _mm512_setzero_si512();                                                             \
  }
  GQ_LOAD_SUM(0) GQ_LOAD_SUM(1) GQ_LOAD_SUM(2) GQ_LOAD_SUM(3)
  GQ_LOAD_SUM(4) GQ_LOAD_SUM(5) GQ_LOAD_SUM(6) GQ_LOAD_SUM(7)
#undef GQ_LOAD_SUM
  __m512i sums;
  if (G == 2) {
#define GQ_LO(v) _mm512_zextsi256_si512(_mm512_castsi512_si256(v))
#define GQ_HI(v) _mm512_zextsi256_si512(_mm512_extracti64x4_epi64(v, 1))
    sums = zreduce16(GQ_LO(s0), GQ_HI(s0), GQ_LO(s1), GQ_HI(s1), GQ_LO(s2), GQ_HI(s2), GQ_LO(s3),
                     GQ_HI(s3), GQ_LO(s4), GQ_HI(s4), GQ_LO(s5), GQ_HI(s5), GQ_LO(s6), GQ_HI(s6),
                     GQ_LO(s7), GQ_HI(s7));
#undef GQ_LO
#undef GQ_HI
  } else {
#define GQ_Q(v, g) _mm512_zextsi128_si512(_mm512_extracti32x4_epi32(v, g))
    sums = zreduce16(GQ_Q(s0, 0), GQ_Q(s0, 1), GQ_Q(s0, 2), GQ_Q(s0, 3), GQ_Q(s1, 0), GQ_Q(s1, 1),
                     GQ_Q(s1, 2), GQ_Q(s1, 3), GQ_Q(s2, 0), GQ_Q(s2, 1), GQ_Q(s2, 2), GQ_Q(s2, 3),
                     GQ_Q(s3, 0), GQ_Q(s3, 1), GQ_Q(s3, 2), GQ_Q(s3, 3));
#undef GQ_Q
  }
  epilogue(c, sums, o0, n0, b, 16, 1);
}

GQ_INLINE void tile(const ctx512* c, size_t o0, size_t n0, int b, int R, int NB, int mode) {
  if (mode == MODE_MULTI && R == 16 && NB == 1 && c->r.nblk == 1) {
    tile_single(c, o0, n0, b);
    return;
  }
  if (mode == MODE_MULTI && NB > 1) {
    if (c->xperm != NULL) {
      tile_multi_nb(c, o0, n0, b, R, NB);
    } else {
      tile_ymm(c, o0, n0, b, R, NB, 0);
    }
    return;
  }
  const int split = split_offset(c, R, NB, mode == MODE_MULTI ? (size_t)(8 / b) : 1) != 0;
  if (mode == MODE_MULTI) {
    if (split) {
      tile_multi(c, o0, n0, b, R, NB, 1);
    } else {
      tile_multi(c, o0, n0, b, R, NB, 0);
    }
  } else if (mode == MODE_YMM) {
    if (split) {
      tile_ymm(c, o0, n0, b, R, NB, 1);
    } else {
      tile_ymm(c, o0, n0, b, R, NB, 0);
    }
  } else {
    if (split) {
      tile_zmm(c, o0, n0, b, R, NB, 1);
    } else {
      tile_zmm(c, o0, n0, b, R, NB, 0);
    }
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

/* Decoding per b (measured): batch-1 GEMV (NB == 1) and batch tiles (NB > 1,
 * where a block is decoded once for NB rows and the x permutation of
 * MODE_MULTI would cost per batch row). */
#define GQ_MODE1(B) \
  ((B) == 1 || (B) >= 7 ? MODE_ZMM : (B) == 2 || (B) == 4 ? MODE_MULTI : MODE_YMM)
#define GQ_MODEN(B) \
  ((B) == 1 || (B) >= 7 ? MODE_ZMM : (B) == 2 || (B) == 4 ? MODE_MULTI : MODE_YMM)
/* Output rows per GEMV tile: 8 where decoding needs more registers (more
 * planes, or the 4 tables of b == 8); with 16, GCC spills accumulators. */
#define GQ_R1(B) ((B) == 1 || (B) == 2 || (B) == 4 ? 16 : 8)

#define GQ_ROWS_FN(B, R, NB)                                                             \
  static void rows_b##B##_nb##NB(const ctx512* c, size_t n0, size_t ob, size_t oe) {     \
    tile_rows(c, n0, ob, oe, B, R, NB, (NB) == 1 ? GQ_MODE1(B) : GQ_MODEN(B));           \
  }
#define GQ_ROWS_FOR_B(B)   \
  GQ_ROWS_FN(B, GQ_R1(B), 1) \
  GQ_ROWS_FN(B, 8, 2)      \
  GQ_ROWS_FN(B, 4, 4)      \
  GQ_ROWS_FN(B, 2, 8)
GQ_ROWS_FOR_B(1)
GQ_ROWS_FOR_B(2)
GQ_ROWS_FOR_B(3)
GQ_ROWS_FOR_B(4)
GQ_ROWS_FOR_B(5)
GQ_ROWS_FOR_B(6)
GQ_ROWS_FOR_B(7)
GQ_ROWS_FOR_B(8)

#define GQ_ROWS_ROW(B) {rows_b##B##_nb1, rows_b##B##_nb2, rows_b##B##_nb4, rows_b##B##_nb8}
/* [bits - 1][log2 NB] */
static const rows_fn kRows[8][4] = {GQ_ROWS_ROW(1), GQ_ROWS_ROW(2), GQ_ROWS_ROW(3),
                                    GQ_ROWS_ROW(4), GQ_ROWS_ROW(5), GQ_ROWS_ROW(6),
                                    GQ_ROWS_ROW(7), GQ_ROWS_ROW(8)};

/* ------------------------------------------------------------------- setup */

static void init_ctx(ctx512* c, const gq_fc_args* a, const gq_fc_ws* ws) {
  const int b = a->bits;
  /* u8 codes q + 128. Entry i holds the code of index i mod 2^b for b <= 6,
   * so that the garbage index bits at and above b do not matter; b == 3
   * takes index bits 0, 1 and 4 (plane_bit), entry i holds the code of
   * (i & 3) | (i >> 4 & 1) << 2. */
  const int8_t* q = a->codebook->q;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  if (b <= 6) {
    const __m512i iota = _mm512_set_epi8(63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49,
                                         48, 47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34,
                                         33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19,
                                         18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                         1, 0);
    __m512i idx; /* the codebook index of entry i */
    if (b == 3) {
      idx = _mm512_or_si512(_mm512_and_si512(iota, _mm512_set1_epi8(3)),
                            _mm512_and_si512(_mm512_srli_epi16(iota, 2), _mm512_set1_epi8(4)));
    } else {
      idx = _mm512_and_si512(iota, _mm512_set1_epi8((char)((1 << b) - 1)));
    }
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
  gq_fc_rows_init(&c->r, a, ws);
  size_t g = 4096;
  for (size_t r = c->r.row_bytes % 4096; r != 0;) {
    const size_t rem = g % r;
    g = r;
    r = rem;
  }
  c->row_gcd = g;
}

void gq_fc_qd8__avx512(const gq_fc_args* a) {
  gq_fc_ws ws;
  if (!gq_fc_qd8_begin(a, &ws, quantize_row)) {
    return;
  }
  ctx512 c;
  init_ctx(&c, a, &ws);
  const rows_fn* fns = kRows[a->bits - 1];
  const size_t batch = a->batch;
  /* Batch tiles at b == 2, 4 decode G blocks at a time when (nearly) all
   * blocks fall into full groups (measured at batch 4 and 16: 5-17% faster
   * for 2 to 32 blocks; with 3 or 9 blocks, the leftover block makes it
   * 0-8% slower than two ymm halves per block). */
  const size_t G = a->bits == 2 || a->bits == 4 ? (size_t)(8 / a->bits) : 0;
  c.xperm = batch > 1 && G != 0 && (c.r.nblk % G == 0 || c.r.nblk >= 16) ? ws.xperm : NULL;
  if (c.xperm != NULL) {
    for (size_t n = 0; n < batch; ++n) {
      permute_x(ws.xq + n * ws.in_pad, c.r.nblk, 8 / a->bits, ws.xperm + n * ws.in_pad);
    }
  }
  /* Batch tiles: full tiles of NBMAX rows; the rest with the smallest tile
   * >= rest, overlapping the previous tiles; below NBMAX rows, tiles of the
   * largest power of two <= batch, the last one overlapping. */
  /* log2 of the largest batch tile: 4 x 4 tiles, 2 x 8 where decoding costs
   * more (measured) */
  const int lgmax = a->bits == 6 || a->bits == 7 ? 3 : 2;
  const size_t nbmax = (size_t)1 << lgmax;
  size_t t0[4];
  int tl[4];
  size_t nt = 0;
  const size_t full = batch / nbmax;
  int lg = 0;
  if (batch >= nbmax) {
    const size_t rest = batch - full * nbmax;
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
    t0[nt] = 0;
    tl[nt++] = lg;
    if (nb < batch) { /* nb > batch / 2: one more, overlapping */
      t0[nt] = batch - nb;
      tl[nt++] = lg;
    }
  }
  /* Chunks of 16 output rows outside, so that a chunk of W stays in cache
   * while every batch tile uses it (batch 1: all rows in one call). */
  const size_t out = a->out_features;
  const size_t chunk = batch == 1 ? out : 16;
  for (size_t ob = 0; ob < out; ob += chunk) {
    const size_t oe = ob + chunk < out ? ob + chunk : out;
    for (size_t f = 0; f < full; ++f) {
      fns[lgmax](&c, f * nbmax, ob, oe);
    }
    for (size_t j = 0; j < nt; ++j) {
      fns[tl[j]](&c, t0[j], ob, oe);
    }
  }
}

#else
typedef int gq_fc_avx512_empty_unit;
#endif
