/* GQ fully connected kernels: y = act(x @ W^T + bias), W given as packed
 * b-bit codebook indices in the planes64 layout (version 1).
 *
 * Layout (converters/layout.py is the writer and the full description):
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

#ifdef __cplusplus
}
#endif

#endif /* GQ_FC_H_ */
