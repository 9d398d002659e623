/* GQ fully connected kernels: y = act(x @ W^T + bias), W given as packed
 * b-bit codebook indices in the planes64 layout (version 1).
 *
 * Layout (converters/layout.py is the writer and the full description;
 * gq_fc_layout.c is its C twin, defining the sizes below):
 *  - W is [out, in]; each row is cut into blocks of 64 weights, the last block
 *    padded with index 0; a block takes 8*b bytes, a row ceil(in/64)*8*b bytes,
 *    rows follow each other.
 *  - the b bits of an index are split into planes, widest first: b == 8 is one
 *    plane of width 8, otherwise one plane per width 4, 2, 1 set in b. The
 *    first plane holds the lowest bits. A plane of width w takes 8*w bytes.
 *  - in a plane of width w, bits [w*s, w*s+w) of byte k hold the plane's bits
 *    of weight s*8*w + k of the block.
 *
 * This header is pure C11 and knows nothing of TFLite. */
#ifndef GQ_FC_H_
#define GQ_FC_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GQ_FC_BLOCK 64

/* Fused activations; the values are TFLite's TfLiteFusedActivation codes. */
enum gq_activation {
  GQ_ACT_NONE = 0,
  GQ_ACT_RELU = 1,
  GQ_ACT_RELU_N1_TO_1 = 2,
  GQ_ACT_RELU6 = 3,
};

/* Bytes of one packed row; 0 when bits is not in 1..8, in_features == 0, or
 * the size does not fit in size_t. */
size_t gq_fc_row_bytes(int bits, size_t in_features);

/* Bytes of the whole packed matrix; 0 on bad arguments or size_t overflow. */
size_t gq_fc_packed_size(int bits, size_t in_features, size_t out_features);

/* Portable reference kernel. x is [batch, in] row-major, y is [batch, out].
 * bias may be NULL. Decodes each weight on the fly: it never materialises a
 * decoded copy of W. The caller has validated every argument. y must not
 * overlap any input (the kernel uses it as its accumulator); an activation
 * outside enum gq_activation is applied as GQ_ACT_NONE. */
void gq_f32_fc_ukernel__ref(size_t batch, size_t in_features, size_t out_features, int bits,
                            const float* x, const uint8_t* packed, const float* centroids,
                            const float* bias, int activation, float* y);

/* ------------------------------------------------------------------------
 * Kernel interface shared by every variant (reference and SIMD).
 *
 * The fast variants are "qd8" kernels: like XNNPACK's dynamic-range int8
 * FULLY_CONNECTED they round x to int8 per batch row and compute the dot
 * products in int32, and they round the 2^b centroids to int8 codes (one
 * scale per codebook). The arithmetic is defined exactly, so that every
 * variant gives the same int32 sums and the tests can check them against a
 * NumPy model of it:
 *
 *   per batch row n:  m = max_i |x[n,i]|  (float32)
 *                     inv = m > 0 ? 127.0f / m : 0.0f
 *                     xq[n,i] = (int8) rint(clamp(x[n,i] * inv, -127, 127))
 *                     (float32 product, rounded half to even)
 *                     sx[n] = m / 127.0f
 *   codebook:         the same with the centroids: q[k], sc
 *   output:           acc = sum_i xq[n,i] * q[idx[o,i]]   (int32, exact)
 *                     y[n,o] = act((float)acc * (sx[n] * sc) + bias[o])
 *
 * The error against exact float arithmetic is at most
 *   sum_i (|x_i| * sc/2 + |c(idx_i)| * sx/2 + sx*sc/4)
 * plus float32 rounding of the last line (see docs/KERNELS.md). Inputs
 * holding NaN or infinity give unspecified outputs (never a crash).
 * in_features must be <= GQ_FC_QD8_MAX_IN so that acc fits in int32
 * (127 * 127 * in < 2^31); the dispatcher falls back to the reference
 * kernel above that. */

#define GQ_FC_QD8_MAX_IN 131072

/* The int8 codes of one codebook (entries at and above 2^bits are 0). */
typedef struct gq_fc_codebook {
  int8_t q[256];
  float scale; /* sc */
  int bits;
} gq_fc_codebook;

/* Fills cb from 2^bits float32 centroids as defined above. */
void gq_fc_codebook_init(gq_fc_codebook* cb, const float* centroids, int bits);

/* Bytes of scratch memory a kernel call needs (64-byte aligned by the
 * caller); 0 on overflow. The layout is internal to the kernels. */
size_t gq_fc_workspace_size(size_t batch, size_t in_features);

typedef struct gq_fc_args {
  size_t batch;
  size_t in_features;
  size_t out_features;
  int bits;
  int activation;              /* enum gq_activation */
  const float* x;              /* [batch, in] */
  const uint8_t* packed;       /* planes64, gq_fc_packed_size bytes */
  const float* centroids;      /* [2^bits], read by exact kernels */
  const gq_fc_codebook* codebook; /* from centroids, read by qd8 kernels */
  const float* bias;           /* [out] or NULL */
  float* y;                    /* [batch, out], overlaps no input */
  void* workspace;             /* gq_fc_workspace_size bytes, 64-byte aligned */
} gq_fc_args;

typedef void (*gq_fc_fn)(const gq_fc_args* args);

/* One LSTM cell update over `units` units (the gate nonlinearities of
 * GQ_LSTM), Keras' gate order i, f, g, o in z and xp, each [4 * units]:
 *
 *   a = z + xp
 *   c[j] = sigmoid(a[u + j]) * c[j] + sigmoid(a[j]) * tanh(a[2u + j])
 *   h[j] = sigmoid(a[3u + j]) * tanh(c[j])
 *
 * c is read and written, h written; h and c overlap neither z nor xp.
 * e^x is evaluated in float32 without libm (gq_lstm_cell.c: range
 * reduction to |r| <= ln2/2 and a degree-7 polynomial); every variant uses
 * the same method, the SIMD ones with fused multiply-adds (and, on x86,
 * reciprocal estimates refined by a Newton step). Error: each sigmoid and
 * tanh is within 4e-7 of the exact value (absolute; measured largest
 * 2.2e-7 for AVX2's estimates, 1.2e-7 for the others, over 420,000 points in
 * [-20, 20], rounding of the result included), so one update moves c by
 * at most 1e-6 * (2 + |c|) and h by at most 1e-6 * (3 + |c|) from exact
 * arithmetic on the same a (the
 * tests hold every variant to that against float64). Non-finite inputs give
 * unspecified outputs, never a crash. */
typedef void (*gq_lstm_cell_fn)(size_t units, const float* z, const float* xp, float* c, float* h);

typedef struct gq_fc_kernel_info {
  const char* name;   /* "reference", "scalar", "avx2", "avx512", "neon", "neondot" */
  gq_fc_fn fn;
  int qd8;            /* 1: int8 arithmetic defined above; 0: float32 */
  int rank;           /* higher is preferred by "auto" */
  gq_lstm_cell_fn cell; /* the LSTM cell update of the same instruction set */
} gq_fc_kernel_info;

/* Kernels compiled into this build (for this architecture), whether or not
 * this CPU can run them; i in [0, gq_fc_kernel_count()). */
size_t gq_fc_kernel_count(void);
const gq_fc_kernel_info* gq_fc_kernel_at(size_t i);

/* 1 when this CPU (and OS) has every instruction set the kernel uses. */
int gq_fc_kernel_supported(const gq_fc_kernel_info* kernel);

/* "auto": the supported kernel of highest rank; otherwise the kernel of that
 * name if it is compiled in and supported. NULL when there is none. */
const gq_fc_kernel_info* gq_fc_kernel_find(const char* name);

/* Runs kernel on args; when the kernel is qd8 and in_features exceeds
 * GQ_FC_QD8_MAX_IN, runs the reference kernel instead. */
void gq_fc_run(const gq_fc_kernel_info* kernel, const gq_fc_args* args);

/* The LSTM cell update above with kernel's instruction set. */
void gq_lstm_cell(const gq_fc_kernel_info* kernel, size_t units, const float* z, const float* xp,
                  float* c, float* h);

#ifdef __cplusplus
}
#endif

#endif /* GQ_FC_H_ */
