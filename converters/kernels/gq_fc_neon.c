/* aarch64 Advanced SIMD "qd8" GQ fully connected kernels.
 *
 * This file is the whole implementation of two variants:
 *  - compiled on its own (baseline ARMv8-A Advanced SIMD) it defines
 *    gq_fc_qd8__neon, whose dot products are SMULL/SMLAL2 into int16 pairs
 *    (|q| <= 127 and |x| <= 127, so two products fit: 2 * 127^2 < 2^15)
 *    and SADALP into int32;
 *  - included by gq_fc_neondot.c with GQ_FC_NEON_DOT defined (and compiled
 *    with -march=armv8.2-a+dotprod) it defines gq_fc_qd8__neondot, which
 *    uses SDOT instead. The decoding, tiling and epilogues are shared.
 * Both compute exactly the int8 codes, x rounding and int32 sums of
 * gq_fc_qd8__scalar (gq_fc.h), only faster; the epilogue is the same float
 * expression. CPU detection is gq_fc_dispatch.c's job, not this file's.
 *
 * Decoding one 64-weight block (planes64, gq_fc.h) into four int8x16
 * registers of codes c[j] (weights 16j..16j+15, natural order):
 *   w4 plane, A0 = bytes 0..15, A1 = 16..31: j=0 A0&15, j=1 A1&15,
 *            j=2 A0>>4, j=3 A1>>4 (weight s*32+k is nibble s of byte k);
 *   w2 plane P (16 bytes): j -> (P >> 2j) & 3;
 *   w1 plane D (8 bytes): j -> bit 2j of D for lanes 0..7 and bit 2j+1 for
 *            lanes 8..15 (bit s of byte k is weight 8s+k); D' = D in the
 *            low half and D >> 1 in the high half has it at bit 2j.
 * TBL reads the codes from tables built once per call from codebook->q,
 * with entries permuted to fit whatever index the bit shuffling makes
 * cheapest: an index need only be a bijection of the weight's b bits (plus
 * don't-care bits the table repeats over). Instructions per 64 weights:
 *   b=1  8: D' (USHR, INS), its nibbles (AND, USHR), 4 TBL1 (two tables:
 *           bit 0 / bit 2 of the nibble)
 *   b=2  6: nibbles of P (AND, USHR), 4 TBL1 (tables: bits 0-1 / bits 2-3)
 *   b=3 13: DUP D, 2 USHL (w1 bits next to the w2 fields), 2 BSL (bytes
 *           holding two 3-bit indices plus a don't-care bit), 2 AND,
 *           2 USHR, 4 TBL1
 *   b=4  8: 2 AND, 2 USHR, 4 TBL1
 *   b=5 15: D' (2), USHR, 2 SLI + 2 SRI (nibble | w1 bit << 4), 4 AND,
 *           4 TBL2
 *   b=6 15: nibbles (2 AND, 2 USHR), w2 fields (3 USHR), 4 SLI (index
 *           f2 | nib << 2), 4 TBL4
 *   b=7 32: b=6's 11 without its lookups, D' (2), 3 USHR, 4 SLI (w1 bit
 *           to bit 7), 4 EOR, 4 TBL4 (low half) + 4 TBX4 (high half)
 *   b=8 28: 12 SUB, 4 TBL4 + 12 TBX4 (quarters of the codebook), plus
 *           4 LD1 reloading the tables (asm, see gq_neon_decode8)
 * plus 1 to 4 loads of W, and per 64 weights and batch row 4 SDOT
 * (neondot) or 4 x (SMULL, SMLAL2, SADALP) = 12 (neon), with x loaded once
 * per block for every output row of a tile.
 *
 * Tiling. Batch 1 (GEMV): 4 output rows (2 for b >= 7) share each loaded
 * block of x; each row's block is decoded and consumed at once, and the
 * epilogue does 4 outputs per vector. Batch > 1 (GEMM): tiles of 2 output
 * rows x 4 batch rows, or 1 x 8 where the tables leave fewer registers
 * (b >= 7; b >= 5 without SDOT): each row's block is decoded once for all
 * the batch rows of the tile. Batch tails take tiles of 4, 2 or 1 (3 left:
 * a tile of 4 that repeats the last row and drops its result), an odd last
 * output row is repeated likewise. Nothing is decoded beyond one block per
 * row of a tile, no load reads past a block of W (the last block ends the
 * packed buffer), and x, y, bias and W need no alignment.
 *
 * GCC 12 -O2 inner loops, all instructions (loads, loop) per 64 weights and
 * (output row x batch row), b = 1..8:
 *   neondot GEMV  14.8 12.8 20.8 16.0 28.0 25.5 49.5 47.5
 *   neondot GEMM   9.1  8.6 10.6  9.9 12.9 12.2 15.4 14.6
 *   neon    GEMV  23.2 21.0 29.2 24.0 39.5 34.2 59.5 60.0
 *   neon    GEMM  17.6 17.1 20.4 17.6 24.2 24.4 27.8 24.8 */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gq_fc.h"
#include "gq_fc_internal.h"

#if defined(GQ_FC_NEON_DOT)
#if !defined(__ARM_FEATURE_DOTPROD)
#error "gq_fc_neondot.c needs -march=armv8.2-a+dotprod (converters/cbuild.py)"
#endif
#define GQ_NEON_KERNEL gq_fc_qd8__neondot
#else
#define GQ_NEON_KERNEL gq_fc_qd8__neon
#endif

#define GQ_AI static inline __attribute__((always_inline))
/* The loops over rows, batch rows and the 4 registers of a block have
 * constant trip counts: unrolled, their arrays live in registers. */
#define GQ_UNROLL _Pragma("GCC unroll 16")

/* Tile shapes, from the register budget (32 vector registers): tables take
 * 1 to 4 registers for b <= 6, 8 for b = 7 and all of v16..v31 for b = 8,
 * and SMULL/SMLAL2 need a temporary per product that SDOT does not.
 * GEMV: output rows sharing x; GEMM: output rows x batch rows. */
#define GQ_NEON_GEMV_ROWS(bits) ((bits) <= 6 ? 4 : 2)
#if defined(GQ_FC_NEON_DOT)
#define GQ_NEON_GEMM_ROWS(bits) ((bits) <= 6 ? 2 : 1)
#else
#define GQ_NEON_GEMM_ROWS(bits) ((bits) <= 4 ? 2 : 1)
#endif
#define GQ_NEON_GEMM_BATCH(bits) (GQ_NEON_GEMM_ROWS(bits) == 2 ? 4 : 8)

/* ---- rounding of x (gq_fc.h): same codes, scale and sum as the scalar --- */

/* 16 floats -> 16 codes: x * inv (float32), clamped to [-127, 127] with
 * FMAXNM first so that NaN becomes -127 as in the scalar model, rounded half
 * to even (FCVTNS), narrowed exactly. Adds the codes to *sum. */
GQ_AI int8x16_t gq_neon_round16(const float* x, float32x4_t inv, int32x4_t* sum) {
  const float32x4_t lo = vdupq_n_f32(-127.0f);
  const float32x4_t hi = vdupq_n_f32(127.0f);
  int32x4_t q[4];
  GQ_UNROLL
  for (int k = 0; k < 4; ++k) {
    const float32x4_t v = vmulq_f32(vld1q_f32(x + 4 * k), inv);
    q[k] = vcvtnq_s32_f32(vminq_f32(vmaxnmq_f32(v, lo), hi));
  }
  *sum = vaddq_s32(*sum, vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
  const int16x8_t h0 = vmovn_high_s32(vmovn_s32(q[0]), q[1]);
  const int16x8_t h1 = vmovn_high_s32(vmovn_s32(q[2]), q[3]);
  return vmovn_high_s16(vmovn_s16(h0), h1);
}

static void gq_neon_quantize_row(const float* x, size_t n, size_t in_pad, int8_t* xq, float* sx,
                                 int32_t* xsum) {
  /* m = max |x_i|, NaN skipped: FMAXNM returns the number when one operand
   * is a quiet NaN, like the scalar model's comparison. */
  float32x4_t m4[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f),
                       vdupq_n_f32(0.0f)};
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    GQ_UNROLL
    for (int k = 0; k < 4; ++k) {
      m4[k] = vmaxnmq_f32(m4[k], vabsq_f32(vld1q_f32(x + i + 4 * (size_t)k)));
    }
  }
  for (; i + 4 <= n; i += 4) {
    m4[0] = vmaxnmq_f32(m4[0], vabsq_f32(vld1q_f32(x + i)));
  }
  float m = vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(m4[0], m4[1]), vmaxnmq_f32(m4[2], m4[3])));
  for (; i < n; ++i) {
    const float a = x[i] < 0.0f ? -x[i] : x[i];
    if (a > m) {
      m = a;
    }
  }
  const float inv = m > 0.0f ? 127.0f / m : 0.0f;
  const float32x4_t vinv = vdupq_n_f32(inv);
  int32x4_t sum = vdupq_n_s32(0);
  i = 0;
  for (; i + 16 <= n; i += 16) {
    vst1q_s8(xq + i, gq_neon_round16(x + i, vinv, &sum));
  }
  if (i < n) {
    /* The tail through a zero-filled copy: zeros give code 0. i + 16 <=
     * in_pad since in_pad is a multiple of 64 and i < n <= in_pad. */
    float tail[16] = {0.0f};
    memcpy(tail, x + i, (n - i) * sizeof(float));
    vst1q_s8(xq + i, gq_neon_round16(tail, vinv, &sum));
    i += 16;
  }
  if (i < in_pad) {
    memset(xq + i, 0, in_pad - i);
  }
  *sx = m / 127.0f;
  *xsum = vaddvq_s32(sum);
}

/* ---- code tables ---------------------------------------------------------- */

/* The codes as TBL tables: registers t[0..n), n = 2 (b <= 3: two 16-entry
 * tables read by nibbles), 1 (b = 4), 2 (b = 5), 4 (b = 6), 8 (b = 7) or
 * 16 (b = 8); for b = 6 and 7 each 64-entry half is permuted to the index
 * f2 | nib << 2 that gq_neon_decode builds. */
typedef struct gq_neon_tables {
  int8x16_t t[16];
} gq_neon_tables;

static void gq_neon_tables_init(gq_neon_tables* T, const int8_t* q, int bits) {
  const unsigned n = bits <= 3 ? 32u : 1u << bits; /* entries used */
  int8_t e[256];
  for (unsigned i = 0; i < n; ++i) {
    const unsigned v = i & 15u; /* a nibble index into one 16-entry table */
    const int second = i >= 16;
    unsigned k; /* the codebook index at table position i */
    switch (bits) {
      case 1: /* nibbles of D': bit 0 / bit 2 */
        k = second ? (v >> 2) & 1u : v & 1u;
        break;
      case 2: /* nibbles of P: bits 0-1 / bits 2-3 */
        k = second ? (v >> 2) & 3u : v & 3u;
        break;
      case 3: /* nibbles (f2 | f1 << 2 | x << 3) / (f1 | x << 1 | f2 << 2) */
        k = second ? ((v >> 2) & 3u) | ((v & 1u) << 2) : v & 7u;
        break;
      case 6:
      case 7: /* f2 | nib << 2 in each 64-entry half */
        k = (i & ~63u) | ((i & 63u) >> 2) | ((i & 3u) << 4);
        break;
      default: /* 4, 5, 8: natural order */
        k = i;
        break;
    }
    e[i] = q[k];
  }
  for (unsigned r = 0; r < n / 16u; ++r) {
    T->t[r] = vld1q_s8(e + 16u * r);
  }
}

/* ---- decoding of one block into codes ----------------------------------- */

GQ_AI int8x16x4_t gq_neon_tab4(const gq_neon_tables* T, int first) {
  int8x16x4_t t;
  t.val[0] = T->t[first];
  t.val[1] = T->t[first + 1];
  t.val[2] = T->t[first + 2];
  t.val[3] = T->t[first + 3];
  return t;
}

/* Index for b = 6 and 7: w2 field in bits 0-1, clean nibble in bits 2-5. */
GQ_AI uint8x16_t gq_neon_idx6(uint8x16_t p2, uint8x16_t nib) { return vsliq_n_u8(p2, nib, 2); }

/* b = 8: the 256 codes are loaded into v16..v31 and quarter k of them
 * answers the lanes whose index - 64k is in [0, 64) (TBL zeroes the other
 * lanes, TBX leaves them). One asm statement because TBL/TBX with four
 * table registers need them consecutive: with intrinsics GCC 12 meets that
 * by copying and spilling the tables around every lookup (twice the
 * instructions), and pinning them with register variables is something
 * clang has known bugs with. Reloading the 256 bytes from L1 for each block
 * costs 4 LD1 on the load pipes, next to 16 lookups on the vector pipes.
 * The "memory" clobber covers the read of the tables and keeps GCC from
 * hoisting the loads of x above the asm, where they would have to be
 * spilled around it (v16..v31 are taken); the asm writes no memory. */
#define GQ_NEON_TBL4_X4(op, quad)                                                        \
  op " %[c0].16b, {" quad "}, %[i0].16b\n\t" op " %[c1].16b, {" quad "}, %[i1].16b\n\t"    \
  op " %[c2].16b, {" quad "}, %[i2].16b\n\t" op " %[c3].16b, {" quad "}, %[i3].16b\n\t"
#define GQ_NEON_SUB64_X4                                                                 \
  "sub %[i0].16b, %[i0].16b, %[k].16b\n\tsub %[i1].16b, %[i1].16b, %[k].16b\n\t"         \
  "sub %[i2].16b, %[i2].16b, %[k].16b\n\tsub %[i3].16b, %[i3].16b, %[k].16b\n\t"

GQ_AI void gq_neon_decode8(const uint8_t* p, const gq_neon_tables* T, int8x16_t c[4]) {
  uint8x16_t i0 = vld1q_u8(p);
  uint8x16_t i1 = vld1q_u8(p + 16);
  uint8x16_t i2 = vld1q_u8(p + 32);
  uint8x16_t i3 = vld1q_u8(p + 48);
  const int8x16_t* t = T->t;
  int8x16_t c0, c1, c2, c3;
  __asm__("ld1 {v16.16b-v19.16b}, [%[t]], #64\n\t"
          "ld1 {v20.16b-v23.16b}, [%[t]], #64\n\t"
          "ld1 {v24.16b-v27.16b}, [%[t]], #64\n\t"
          "ld1 {v28.16b-v31.16b}, [%[t]]\n\t"
          GQ_NEON_TBL4_X4("tbl", "v16.16b-v19.16b") GQ_NEON_SUB64_X4
          GQ_NEON_TBL4_X4("tbx", "v20.16b-v23.16b") GQ_NEON_SUB64_X4
          GQ_NEON_TBL4_X4("tbx", "v24.16b-v27.16b") GQ_NEON_SUB64_X4
          GQ_NEON_TBL4_X4("tbx", "v28.16b-v31.16b")
          : [c0] "=&w"(c0), [c1] "=&w"(c1), [c2] "=&w"(c2), [c3] "=&w"(c3), [i0] "+w"(i0),
            [i1] "+w"(i1), [i2] "+w"(i2), [i3] "+w"(i3), [t] "+r"(t)
          : [k] "w"(vdupq_n_u8(64))
          : "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27",
            "v28", "v29", "v30", "v31", "memory");
  c[0] = c0;
  c[1] = c1;
  c[2] = c2;
  c[3] = c3;
}

GQ_AI void gq_neon_decode(const int bits, const uint8_t* p, const gq_neon_tables* T,
                          int8x16_t c[4]) {
  const uint8x16_t low4 = vdupq_n_u8(0x0F);
  switch (bits) {
    case 1: {
      const uint8x8_t d = vld1_u8(p);
      const uint8x16_t q1 = vcombine_u8(d, vshr_n_u8(d, 1)); /* c[j]: bit 2j */
      const uint8x16_t lo = vandq_u8(q1, low4);
      const uint8x16_t hi = vshrq_n_u8(q1, 4);
      c[0] = vqtbl1q_s8(T->t[0], lo);
      c[1] = vqtbl1q_s8(T->t[1], lo);
      c[2] = vqtbl1q_s8(T->t[0], hi);
      c[3] = vqtbl1q_s8(T->t[1], hi);
      break;
    }
    case 2: {
      const uint8x16_t pl = vld1q_u8(p);
      const uint8x16_t lo = vandq_u8(pl, low4);
      const uint8x16_t hi = vshrq_n_u8(pl, 4);
      c[0] = vqtbl1q_s8(T->t[0], lo);
      c[1] = vqtbl1q_s8(T->t[1], lo);
      c[2] = vqtbl1q_s8(T->t[0], hi);
      c[3] = vqtbl1q_s8(T->t[1], hi);
      break;
    }
    case 3: {
      const uint8x16_t pl = vld1q_u8(p);
      const uint8x8_t d = vld1_u8(p + 16);
      const uint8x16_t dd = vcombine_u8(d, d);
      /* y: w1 bit of c[0] at bit 2, of c[2] at bit 6; y2: c[1] at bit 0,
       * c[3] at bit 4 (lanes 8..15 take the next bit of D). */
      const int8x16_t s1 = vcombine_s8(vdup_n_s8(2), vdup_n_s8(1));
      const int8x16_t s2 = vcombine_s8(vdup_n_s8(-2), vdup_n_s8(-3));
      const uint8x16_t y = vshlq_u8(dd, s1);
      const uint8x16_t y2 = vshlq_u8(dd, s2);
      const uint8x16_t m33 = vdupq_n_u8(0x33);
      /* x02: nibbles (P0 P1 w1 -) of c[0] and c[2]; x13: (w1 - P0 P1) of
       * c[1] and c[3], P bits 2j, 2j+1 kept in place. */
      const uint8x16_t x02 = vbslq_u8(m33, pl, y);
      const uint8x16_t x13 = vbslq_u8(m33, y2, pl);
      c[0] = vqtbl1q_s8(T->t[0], vandq_u8(x02, low4));
      c[1] = vqtbl1q_s8(T->t[1], vandq_u8(x13, low4));
      c[2] = vqtbl1q_s8(T->t[0], vshrq_n_u8(x02, 4));
      c[3] = vqtbl1q_s8(T->t[1], vshrq_n_u8(x13, 4));
      break;
    }
    case 4: {
      const uint8x16_t a0 = vld1q_u8(p);
      const uint8x16_t a1 = vld1q_u8(p + 16);
      c[0] = vqtbl1q_s8(T->t[0], vandq_u8(a0, low4));
      c[1] = vqtbl1q_s8(T->t[0], vandq_u8(a1, low4));
      c[2] = vqtbl1q_s8(T->t[0], vshrq_n_u8(a0, 4));
      c[3] = vqtbl1q_s8(T->t[0], vshrq_n_u8(a1, 4));
      break;
    }
    case 5: {
      const uint8x16_t a0 = vld1q_u8(p);
      const uint8x16_t a1 = vld1q_u8(p + 16);
      const uint8x8_t d = vld1_u8(p + 32);
      const uint8x16_t q1 = vcombine_u8(d, vshr_n_u8(d, 1)); /* c[j]: bit 2j */
      const uint8x16_t q1s = vshrq_n_u8(q1, 2);               /* c[j]: bit 2j-2 */
      const uint8x16_t low5 = vdupq_n_u8(0x1F);
      int8x16x2_t t;
      t.val[0] = T->t[0];
      t.val[1] = T->t[1];
      /* index = nibble | w1 bit << 4 */
      c[0] = vqtbl2q_s8(t, vandq_u8(vsliq_n_u8(a0, q1, 4), low5));
      c[1] = vqtbl2q_s8(t, vandq_u8(vsliq_n_u8(a1, q1s, 4), low5));
      c[2] = vqtbl2q_s8(t, vandq_u8(vsriq_n_u8(q1, a0, 4), low5));
      c[3] = vqtbl2q_s8(t, vandq_u8(vsriq_n_u8(q1s, a1, 4), low5));
      break;
    }
    case 6:
    case 7: {
      const uint8x16_t a0 = vld1q_u8(p);
      const uint8x16_t a1 = vld1q_u8(p + 16);
      const uint8x16_t pl = vld1q_u8(p + 32);
      uint8x16_t idx[4];
      idx[0] = gq_neon_idx6(pl, vandq_u8(a0, low4));
      idx[1] = gq_neon_idx6(vshrq_n_u8(pl, 2), vandq_u8(a1, low4));
      idx[2] = gq_neon_idx6(vshrq_n_u8(pl, 4), vshrq_n_u8(a0, 4));
      idx[3] = gq_neon_idx6(vshrq_n_u8(pl, 6), vshrq_n_u8(a1, 4));
      const int8x16x4_t lo = gq_neon_tab4(T, 0);
      if (bits == 6) {
        GQ_UNROLL
        for (int j = 0; j < 4; ++j) {
          c[j] = vqtbl4q_s8(lo, idx[j]);
        }
      } else {
        /* Bit 7 of the index = the w1 bit: TBL answers the lanes below
         * 64 from the low half, TBX the others (index ^ 0x80) from the
         * high half. */
        const uint8x8_t d = vld1_u8(p + 48);
        const uint8x16_t q1 = vcombine_u8(d, vshr_n_u8(d, 1)); /* c[j]: bit 2j */
        const int8x16x4_t hi = gq_neon_tab4(T, 4);
        const uint8x16_t k80 = vdupq_n_u8(0x80);
        const uint8x16_t f[4] = {q1, vshrq_n_u8(q1, 2), vshrq_n_u8(q1, 4), vshrq_n_u8(q1, 6)};
        GQ_UNROLL
        for (int j = 0; j < 4; ++j) {
          const uint8x16_t i7 = vsliq_n_u8(idx[j], f[j], 7);
          c[j] = vqtbx4q_s8(vqtbl4q_s8(lo, i7), hi, veorq_u8(i7, k80));
        }
      }
      break;
    }
    default: /* 8 */
      gq_neon_decode8(p, T, c);
      break;
  }
}

/* ---- dot products ------------------------------------------------------- */

/* acc += 4 partial sums of c[i] * x[i] over 16 lanes. */
GQ_AI int32x4_t gq_neon_dot16(int32x4_t acc, int8x16_t c, int8x16_t x) {
#if defined(GQ_FC_NEON_DOT)
  return vdotq_s32(acc, c, x);
#else
  int16x8_t p = vmull_s8(vget_low_s8(c), vget_low_s8(x));
  p = vmlal_high_s8(p, c, x);
  return vpadalq_s16(acc, p);
#endif
}

/* The int32 partial sums of R output rows (w[r]) times NB rounded x rows
 * (x[n]) over nblocks blocks: acc[r * NB + n], 4 lanes to be added. R, NB
 * and bits are constants after inlining. */
GQ_AI void gq_neon_tile(const int bits, const int R, const int NB, const uint8_t* const* w,
                        const int8_t* const* x, size_t nblocks, const gq_neon_tables* T,
                        int32x4_t* acc) {
  const size_t block_bytes = 8u * (size_t)bits;
  int32x4_t a[4][8];
  GQ_UNROLL
  for (int r = 0; r < R; ++r) {
    GQ_UNROLL
    for (int n = 0; n < NB; ++n) {
      a[r][n] = vdupq_n_s32(0);
    }
  }
  for (size_t k = 0; k < nblocks; ++k) {
    const size_t wo = k * block_bytes;
    const size_t xo = k * GQ_FC_BLOCK;
    if (NB == 1) {
      /* x once for all rows; each row decoded and used at once. */
      int8x16_t xv[4];
      GQ_UNROLL
      for (int j = 0; j < 4; ++j) {
        xv[j] = vld1q_s8(x[0] + xo + 16 * (size_t)j);
      }
      GQ_UNROLL
      for (int r = 0; r < R; ++r) {
        int8x16_t c[4];
        gq_neon_decode(bits, w[r] + wo, T, c);
        GQ_UNROLL
        for (int j = 0; j < 4; ++j) {
          a[r][0] = gq_neon_dot16(a[r][0], c[j], xv[j]);
        }
      }
    } else {
      /* Each row's block decoded once for the NB rows of x. */
      int8x16_t c[4][4];
      GQ_UNROLL
      for (int r = 0; r < R; ++r) {
        gq_neon_decode(bits, w[r] + wo, T, c[r]);
      }
      GQ_UNROLL
      for (int n = 0; n < NB; ++n) {
        GQ_UNROLL
        for (int j = 0; j < 4; ++j) {
          const int8x16_t xv = vld1q_s8(x[n] + xo + 16 * (size_t)j);
          GQ_UNROLL
          for (int r = 0; r < R; ++r) {
            a[r][n] = gq_neon_dot16(a[r][n], c[r][j], xv);
          }
        }
      }
    }
  }
  GQ_UNROLL
  for (int r = 0; r < R; ++r) {
    GQ_UNROLL
    for (int n = 0; n < NB; ++n) {
      acc[r * NB + n] = a[r][n];
    }
  }
}

/* ---- epilogues: y = act((float)acc * (sx * sc) + bias), as the scalar --- */

GQ_AI float32x4_t gq_neon_activate4(float32x4_t v, int activation) {
  switch (activation) {
    case GQ_ACT_RELU:
      return vmaxq_f32(v, vdupq_n_f32(0.0f));
    case GQ_ACT_RELU_N1_TO_1:
      return vminq_f32(vmaxq_f32(v, vdupq_n_f32(-1.0f)), vdupq_n_f32(1.0f));
    case GQ_ACT_RELU6:
      return vminq_f32(vmaxq_f32(v, vdupq_n_f32(0.0f)), vdupq_n_f32(6.0f));
    default:
      return v;
  }
}

GQ_AI void gq_neon_store1(const gq_fc_args* a, size_t n, size_t o, int32_t acc, float scale) {
  const float b = a->bias != NULL ? a->bias[o] : 0.0f;
  const float v = (float)acc * scale + b;
  a->y[n * a->out_features + o] = gq_fc_activate(v, a->activation);
}

GQ_AI void gq_neon_run(const int bits, const gq_fc_args* a, const gq_fc_ws* ws,
                       const gq_neon_tables* T) {
  const size_t out = a->out_features;
  const size_t batch = a->batch;
  const size_t nblocks = ws->in_pad / GQ_FC_BLOCK;
  const size_t row_bytes = nblocks * 8u * (size_t)bits;
  const float sc = a->codebook->scale;
  const uint8_t* packed = a->packed;

  if (batch == 1) {
    const int8_t* x0 = ws->xq;
    const int RV = GQ_NEON_GEMV_ROWS(bits);
    const float scale = ws->sx[0] * sc;
    const float32x4_t vscale = vdupq_n_f32(scale);
    size_t o = 0;
    for (; o + 4 <= out; o += 4) {
      const uint8_t* w[4];
      GQ_UNROLL
      for (int r = 0; r < 4; ++r) {
        w[r] = packed + (o + (size_t)r) * row_bytes;
      }
      int32x4_t acc[4];
      GQ_UNROLL
      for (int r = 0; r < 4; r += RV) {
        gq_neon_tile(bits, RV, 1, w + r, &x0, nblocks, T, acc + r);
      }
      const int32x4_t sums = vpaddq_s32(vpaddq_s32(acc[0], acc[1]), vpaddq_s32(acc[2], acc[3]));
      float32x4_t v = vmulq_f32(vcvtq_f32_s32(sums), vscale);
      v = vaddq_f32(v, a->bias != NULL ? vld1q_f32(a->bias + o) : vdupq_n_f32(0.0f));
      vst1q_f32(a->y + o, gq_neon_activate4(v, a->activation));
    }
    for (; o < out; ++o) {
      const uint8_t* w = packed + o * row_bytes;
      int32x4_t acc;
      gq_neon_tile(bits, 1, 1, &w, &x0, nblocks, T, &acc);
      gq_neon_store1(a, 0, o, vaddvq_s32(acc), scale);
    }
    return;
  }

  const int R = GQ_NEON_GEMM_ROWS(bits);
  const int NB = GQ_NEON_GEMM_BATCH(bits);
  for (size_t o = 0; o < out; o += (size_t)R) {
    const size_t rows = out - o < (size_t)R ? out - o : (size_t)R;
    const uint8_t* w[2];
    GQ_UNROLL
    for (int r = 0; r < R; ++r) {
      /* A missing last row repeats the one before; its sums are dropped. */
      w[r] = packed + (o + ((size_t)r < rows ? (size_t)r : rows - 1)) * row_bytes;
    }
    size_t n = 0;
    while (n < batch) {
      /* Tiles of NB batch rows, then of 4, 2 or 1 for the rest; when 3 are
       * left, a tile of 4 whose fourth row repeats the third (dropped). */
      const size_t left = batch - n;
      const size_t nb = left >= (size_t)NB ? (size_t)NB : left >= 3 ? 4 : left;
      const size_t valid = left < nb ? left : nb;
      const int8_t* x[8];
      for (size_t i = 0; i < nb; ++i) {
        x[i] = ws->xq + (n + (i < valid ? i : valid - 1)) * ws->in_pad;
      }
      int32x4_t acc[8];
      if (NB == 8 && nb == 8) {
        gq_neon_tile(bits, R, 8, w, x, nblocks, T, acc);
      } else if (nb == 4) {
        gq_neon_tile(bits, R, 4, w, x, nblocks, T, acc);
      } else if (nb == 2) {
        gq_neon_tile(bits, R, 2, w, x, nblocks, T, acc);
      } else {
        gq_neon_tile(bits, R, 1, w, x, nblocks, T, acc);
      }
      for (size_t r = 0; r < rows; ++r) {
        for (size_t i = 0; i < valid; ++i) {
          gq_neon_store1(a, n + i, o + r, vaddvq_s32(acc[r * nb + i]), ws->sx[n + i] * sc);
        }
      }
      n += valid;
    }
  }
}

/* One copy of the loops per b, each with its constants folded. */
#define GQ_NEON_RUN_BITS(b)                                                         \
  static __attribute__((noinline)) void gq_neon_run_##b(                            \
      const gq_fc_args* a, const gq_fc_ws* ws, const gq_neon_tables* T) {           \
    gq_neon_run(b, a, ws, T);                                                       \
  }
GQ_NEON_RUN_BITS(1)
GQ_NEON_RUN_BITS(2)
GQ_NEON_RUN_BITS(3)
GQ_NEON_RUN_BITS(4)
GQ_NEON_RUN_BITS(5)
GQ_NEON_RUN_BITS(6)
GQ_NEON_RUN_BITS(7)
GQ_NEON_RUN_BITS(8)

void GQ_NEON_KERNEL(const gq_fc_args* a) {
  const gq_fc_ws ws = gq_fc_ws_layout(a->workspace, a->batch, a->in_features);
  for (size_t n = 0; n < a->batch; ++n) {
    gq_neon_quantize_row(a->x + n * a->in_features, a->in_features, ws.in_pad,
                         ws.xq + n * ws.in_pad, &ws.sx[n], &ws.xsum[n]);
  }
  gq_neon_tables T;
  gq_neon_tables_init(&T, a->codebook->q, a->bits);
  switch (a->bits) {
    case 1:
      gq_neon_run_1(a, &ws, &T);
      break;
    case 2:
      gq_neon_run_2(a, &ws, &T);
      break;
    case 3:
      gq_neon_run_3(a, &ws, &T);
      break;
    case 4:
      gq_neon_run_4(a, &ws, &T);
      break;
    case 5:
      gq_neon_run_5(a, &ws, &T);
      break;
    case 6:
      gq_neon_run_6(a, &ws, &T);
      break;
    case 7:
      gq_neon_run_7(a, &ws, &T);
      break;
    default:
      gq_neon_run_8(a, &ws, &T);
      break;
  }
}

#else
typedef int gq_fc_neon_empty_unit;
#endif
