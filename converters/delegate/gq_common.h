/* Helpers shared by the delegate's ops (gq_delegate.c: GQ_FULLY_CONNECTED,
 * gq_lstm.c: GQ_LSTM): error reporting, message formatting, option and
 * tensor checks, the copy of a node in init. Every message starts with the
 * op name the caller passes, as "<op> (node <n>): ...".
 *
 * Internal to the library (hidden visibility). Pure C11. */
#ifndef GQ_COMMON_H_
#define GQ_COMMON_H_

#include <stddef.h>
#include <stdint.h>

#include "flexbuf.h"
#include "tflite_abi.h"

#if defined(__GNUC__)
#define GQ_HIDDEN __attribute__((visibility("hidden")))
#define GQ_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define GQ_HIDDEN
#define GQ_PRINTF(fmt, args)
#endif

/* Longest input/output list copied from a node. */
#define GQ_MAX_NODE_LIST 64

/* Most option keys an op may have (gq_open_options). */
#define GQ_MAX_OPTION_KEYS 16

/* Length of the buffer messages are formatted in. */
#define GQ_MSG_LEN 512

/* Formats a message (at most GQ_MSG_LEN - 1 characters) and hands it to ReportError as
 * "%s": model-controlled text never becomes a format string. */
GQ_HIDDEN void gq_report(TfLiteContext* context, const char* fmt, ...) GQ_PRINTF(2, 3);

/* Copies model-controlled bytes into out as printable ASCII (\xNN escapes),
 * truncated, so that a corrupt key cannot garble or flood the message. */
GQ_HIDDEN const char* gq_printable(const char* s, size_t len, char* out, size_t out_len);

/* "FLOAT32", "UINT8", ... for messages. */
GQ_HIDDEN const char* gq_type_name(int type);

/* Writes a shape as "[2, 3, 70]" (or "NULL") for messages. */
GQ_HIDDEN const char* gq_shape_str(const TfLiteIntArray* dims, char* out, size_t out_len);

/* a * b, or 0 with *ok = 0 on size_t overflow. */
GQ_HIDDEN size_t gq_mul_size(size_t a, size_t b, int* ok);

/* Grows a 64-byte aligned buffer to need bytes (contents not kept); 0 when
 * out of memory, the old buffer then unchanged. */
GQ_HIDDEN int gq_grow_aligned(void** buffer, size_t* size, size_t need);

/* ---------------------------------------------------------------- options */

/* A flexbuffer status as text. */
GQ_HIDDEN const char* gq_flex_status_text(int status);

/* Opens the custom options as a flexbuffer map whose keys are exactly keys
 * (num_keys <= GQ_MAX_OPTION_KEYS of them; keys_text lists them for
 * messages). Reports and returns
 * 0 on any failure. */
GQ_HIDDEN int gq_open_options(TfLiteContext* context, const char* op_name, int node,
                              const uint8_t* options, size_t options_len,
                              const char* const* keys, size_t num_keys, const char* keys_text,
                              gq_flexmap* map);

/* Reads an integer option; reports and returns 0 on any failure. */
GQ_HIDDEN int gq_option_int(TfLiteContext* context, const char* op_name, int node,
                            const gq_flexmap* map, const char* key, int64_t* value);

/* Reads the options' "version" and "block_size" and checks them against
 * version and GQ_FC_BLOCK; reports and returns 0 otherwise. */
GQ_HIDDEN int gq_option_version(TfLiteContext* context, const char* op_name, int node,
                                const gq_flexmap* map, int version);
GQ_HIDDEN int gq_option_block_size(TfLiteContext* context, const char* op_name, int node,
                                   const gq_flexmap* map);

/* ---------------------------------------------------------------- tensors */

/* Resolves a tensor index from the node; reports and returns NULL when it is
 * out of range. */
GQ_HIDDEN TfLiteTensor* gq_tensor_at(TfLiteContext* context, const char* op_name, int node,
                                     int index, const char* what);

/* Checks a tensor's type and that dims and bytes describe the same size
 * (float32 or uint8 elements); *count = elements. rank < 0 means any rank
 * 1..16. */
GQ_HIDDEN int gq_check_tensor(TfLiteContext* context, const char* op_name, int node,
                              const TfLiteTensor* t, const char* what, int type, int rank,
                              size_t* count);

/* Resizes out to shape (rank entries, each from an int dimension). */
GQ_HIDDEN TfLiteStatus gq_resize_output(TfLiteContext* context, const char* op_name, int node,
                                        TfLiteTensor* out, const char* what, int rank,
                                        const size_t* shape);

/* ------------------------------------------------------------ init/prepare */

/* What a delegate kernel copies from its original node in init, while
 * GetNodeAndRegistration may still be called (not once kernels run). */
typedef struct gq_node_copy {
  int node_index; /* the original node, for messages; -1 when unknown */
  const char* init_error;
  int op_version;
  size_t options_len;
  uint8_t* options;
  int num_inputs;
  int num_outputs;
  int* tensors; /* num_inputs + num_outputs tensor indices, outputs last */
} gq_node_copy;

/* The delegate params of a kernel's init buffer; NULL (with node->init_error
 * set) unless they name exactly one node. Sets node->node_index. */
GQ_HIDDEN const TfLiteDelegateParams* gq_node_params(gq_node_copy* node, const char* buffer);

/* Copies the lists, options and version of node->node_index; on failure sets
 * node->init_error. */
GQ_HIDDEN void gq_node_copy_in(TfLiteContext* context, gq_node_copy* node);

GQ_HIDDEN void gq_node_free(gq_node_copy* node);

/* The start of every prepare: reports an init error or an op version other
 * than version; returns 0 then. */
GQ_HIDDEN int gq_check_node(TfLiteContext* context, const char* op_name, const gq_node_copy* node,
                            int version);

#endif /* GQ_COMMON_H_ */
