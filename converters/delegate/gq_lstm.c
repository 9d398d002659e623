/* GQ_LSTM (version 1): a Keras-default LSTM layer whose two weight matrices
 * are packed GQ codebook indices, run by the GQ delegate.
 *
 * Contract (docs/EXPORT.md has the same text; converters/tfops.py:gq_lstm
 * writes it):
 *
 *   inputs   0 x                float32 [B, T, in]
 *            1 kernel           uint8, planes64 (gq_fc.h) of W   = kernel^T,
 *                               [4u, in], rows in Keras' gate order i, f, c, o
 *            2 kernel centroids float32 [2^kernel_bits]
 *            3 recurrent kernel uint8, planes64 of Wr = recurrent_kernel^T, [4u, u]
 *            4 recurrent centr. float32 [2^recurrent_bits]
 *            then the optional inputs, in this order: bias float32 [4u];
 *            h0, c0 float32 [B, u] (both or neither). The node lists 5
 *            (neither), 6 (bias), 7 (h0, c0) or 8 (bias, h0, c0) inputs; an
 *            absent optional input may also be given as TFLite's optional
 *            tensor index -1 in its slot (h0 and c0 together).
 *   outputs  0 y   float32 [B, T, u] if return_sequences, else [B, u] (= h_T);
 *            then, if return_state, 1 h_T and 2 c_T, float32 [B, u].
 *   options  a flexbuffer map with exactly the integer keys version (1),
 *            kernel_bits (1..8), recurrent_bits (1..8), in_features, units,
 *            return_sequences (0/1), return_state (0/1), block_size (64).
 *   math     xp = x W^T + bias for all T steps at once (one GEMM), then per
 *            step t one GEMV:  z = xp_t + h Wr^T;  i, f, g, o = z's four
 *            u-wide parts;  c = sigmoid(f) c + sigmoid(i) tanh(g);
 *            h = sigmoid(o) tanh(c).  (h, c) start at (h0, c0), or zeros.
 *   state    none across invokes: unlike TFLite's builtin LSTM (which keeps
 *            h and c in variable tensors), every invoke starts from h0/c0.
 *
 * Both matrices are read packed, in place, through the FC kernel the
 * delegate selected, on its threads (gq_fc_run_parallel): the exact float
 * "reference" kernel or a qd8 kernel, which rounds x and h to int8 per row
 * (gq_fc.h). The gates are
 * float32. Prepare checks everything above and reports what it expected and
 * what it received; nothing from the model is trusted before that.
 *
 * Scratch (activations, never weights): xp [B*T, 4u], z [B, 4u], h and c
 * [B, u], and the FC kernel's workspace, allocated in prepare.
 *
 * Pure C11, libc only (the exponential below avoids a libm dependency). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/gq_fc.h"
#include "flexbuf.h"
#include "gq_lstm.h"
#include "gq_threads.h"
#include "tflite_abi.h"

#if defined(__GNUC__)
#define GQ_LSTM_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define GQ_LSTM_PRINTF(fmt, args)
#endif

#define GQ_LSTM_OP_VERSION 1
#define GQ_LSTM_OPTIONS_VERSION 1
#define GQ_LSTM_MSG_LEN 512
#define GQ_LSTM_MAX_LIST 64 /* longest input/output list copied from a node */

/* Logical inputs; slot[] maps them to tensor indices (-1: absent). */
enum {
  LSTM_X = 0,
  LSTM_KERNEL,
  LSTM_KERNEL_CENTROIDS,
  LSTM_RECURRENT,
  LSTM_RECURRENT_CENTROIDS,
  LSTM_BIAS,
  LSTM_H0,
  LSTM_C0,
  LSTM_NUM_SLOTS
};

static const char* const kSlotNames[LSTM_NUM_SLOTS] = {
    "input x",         "input kernel (packed)",         "input kernel centroids",
    "input recurrent kernel (packed)", "input recurrent centroids", "input bias",
    "input h0",        "input c0",
};

typedef struct gq_lstm_op {
  int node_index; /* the original GQ_LSTM node, for messages */
  const char* init_error;
  int op_version;
  size_t options_len;
  uint8_t* options;
  int num_inputs;
  int num_outputs;
  int* tensors; /* num_inputs + num_outputs tensor indices, outputs last */
  const gq_fc_kernel_info* kernel;
  gq_pool* pool; /* the delegate's threads (NULL: one) */
  /* Set by prepare. */
  int ready;
  int slot[LSTM_NUM_SLOTS];
  int kernel_bits;
  int recurrent_bits;
  int return_sequences;
  int return_state;
  size_t in_features;
  size_t units;
  size_t batch;
  size_t steps;
  gq_fc_codebook kernel_codebook;
  gq_fc_codebook recurrent_codebook;
  int kernel_codebook_constant;
  int recurrent_codebook_constant;
  void* workspace; /* FC kernel scratch (gq_fc_parallel_workspace), 64-byte aligned */
  size_t workspace_size;
  float* scratch; /* xp, z, h, c */
  size_t scratch_count;
} gq_lstm_op;

/* ---------------------------------------------------------------- errors */

static void report(TfLiteContext* context, const char* fmt, ...) GQ_LSTM_PRINTF(2, 3);

/* Messages are formatted here and handed to ReportError as "%s", so text
 * from the model never becomes a format string. */
static void report(TfLiteContext* context, const char* fmt, ...) {
  char msg[GQ_LSTM_MSG_LEN];
  va_list args;
  va_start(args, fmt);
  vsnprintf(msg, sizeof msg, fmt, args);
  va_end(args);
  if (context != NULL && context->ReportError != NULL) {
    context->ReportError(context, "%s", msg);
  }
}

/* Model-controlled bytes as printable ASCII (\xNN escapes), truncated. */
static const char* printable(const char* s, size_t len, char* out, size_t out_len) {
  size_t o = 0, i = 0;
  for (; i < len && o + 8 <= out_len; ++i) {
    const unsigned char ch = (unsigned char)s[i];
    if (ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '\'') {
      out[o++] = (char)ch;
    } else {
      o += (size_t)snprintf(out + o, out_len - o, "\\x%02x", ch);
    }
  }
  if (i < len) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

static const char* type_name(int type) {
  switch (type) {
    case kTfLiteFloat32: return "FLOAT32";
    case kTfLiteInt32: return "INT32";
    case kTfLiteUInt8: return "UINT8";
    case kTfLiteInt64: return "INT64";
    case kTfLiteInt8: return "INT8";
    case kTfLiteInt16: return "INT16";
    case kTfLiteFloat16: return "FLOAT16";
    case kTfLiteFloat64: return "FLOAT64";
    case kTfLiteBool: return "BOOL";
    case kTfLiteString: return "STRING";
    default: return "another type";
  }
}

static const char* shape_str(const TfLiteIntArray* dims, char* out, size_t out_len) {
  if (dims == NULL) {
    snprintf(out, out_len, "NULL");
    return out;
  }
  size_t o = (size_t)snprintf(out, out_len, "[");
  for (int i = 0; i < dims->size && o < out_len; ++i) {
    o += (size_t)snprintf(out + o, out_len - o, i ? ", %d" : "%d", dims->data[i]);
  }
  if (o < out_len) {
    snprintf(out + o, out_len - o, "]");
  }
  return out;
}

/* a * b, or 0 with *ok = 0 on size_t overflow. */
static size_t mul_size(size_t a, size_t b, int* ok) {
  if (a != 0 && b > SIZE_MAX / a) {
    *ok = 0;
    return 0;
  }
  return a * b;
}

/* ------------------------------------------------------------- options */

typedef struct gq_lstm_config {
  int kernel_bits;
  int recurrent_bits;
  int return_sequences;
  int return_state;
  size_t in_features;
  size_t units;
} gq_lstm_config;

static const char* const kOptionKeys[] = {
    "version",      "kernel_bits",      "recurrent_bits", "in_features",
    "units",        "return_sequences", "return_state",   "block_size",
};
#define LSTM_NUM_KEYS (sizeof kOptionKeys / sizeof kOptionKeys[0])
#define LSTM_KEYS_TEXT                                                                    \
  "version, kernel_bits, recurrent_bits, in_features, units, return_sequences, return_state, " \
  "block_size"

static const char* flex_text(int status) {
  switch (status) {
    case GQ_FLEX_MALFORMED: return "malformed flexbuffer";
    case GQ_FLEX_NOT_MAP: return "the flexbuffer root is not a map";
    case GQ_FLEX_MISSING: return "missing";
    case GQ_FLEX_WRONG_TYPE: return "wrong value type";
    default: return "unknown flexbuffer error";
  }
}

/* Reads integer option key into *value within [lo, hi]; reports otherwise. */
static int option_in(TfLiteContext* context, int node, const gq_flexmap* map, const char* key,
                     int64_t lo, int64_t hi, int64_t* value) {
  const int status = gq_flexmap_get_int(map, key, value);
  if (status == GQ_FLEX_WRONG_TYPE) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected option '%s' to be an integer, "
           "received another flexbuffer type.", node, key);
    return 0;
  }
  if (status == GQ_FLEX_MISSING) {
    /* The key scan found it, so the binary search failed: unsorted keys. */
    report(context, GQ_LSTM_OP_NAME " (node %d): cannot look up option '%s': the custom options "
           "map is not sorted by key (not written by a flexbuffer writer).", node, key);
    return 0;
  }
  if (status != GQ_FLEX_OK) {
    report(context, GQ_LSTM_OP_NAME " (node %d): cannot read option '%s': %s.", node, key,
           flex_text(status));
    return 0;
  }
  if (*value < lo || *value > hi) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected option %s in %" PRId64 "..%" PRId64
           ", received %s=%" PRId64 ".", node, key, lo, hi, key, *value);
    return 0;
  }
  return 1;
}

static TfLiteStatus parse_options(TfLiteContext* context, const gq_lstm_op* op,
                                  gq_lstm_config* config) {
  const int node = op->node_index;
  if (op->options == NULL || op->options_len == 0) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected custom options (a flexbuffer map with "
           "keys " LSTM_KEYS_TEXT "), received none.", node);
    return kTfLiteError;
  }
  gq_flexmap map;
  int status = gq_flexmap_open(&map, op->options, op->options_len);
  if (status != GQ_FLEX_OK) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected custom options to be a flexbuffer map, "
           "received %zu bytes that are not one (%s).", node, op->options_len, flex_text(status));
    return kTfLiteError;
  }
  /* Exactly the known keys: an unknown one would come from a newer writer
   * whose meaning this reader would silently drop. */
  int seen[LSTM_NUM_KEYS] = {0};
  for (size_t i = 0; i < map.count; ++i) {
    const char* key;
    size_t key_len;
    status = gq_flexmap_key_at(&map, i, &key, &key_len);
    if (status != GQ_FLEX_OK) {
      report(context, GQ_LSTM_OP_NAME " (node %d): cannot read option key %zu of %zu: %s.", node,
             i, map.count, flex_text(status));
      return kTfLiteError;
    }
    size_t k = 0;
    while (k < LSTM_NUM_KEYS &&
           !(strlen(kOptionKeys[k]) == key_len && memcmp(kOptionKeys[k], key, key_len) == 0)) {
      ++k;
    }
    if (k == LSTM_NUM_KEYS) {
      char shown[96];
      report(context, GQ_LSTM_OP_NAME " (node %d): unknown option key '%s' (expected exactly the "
             "keys " LSTM_KEYS_TEXT ").", node, printable(key, key_len, shown, sizeof shown));
      return kTfLiteError;
    }
    if (seen[k]++) {
      report(context, GQ_LSTM_OP_NAME " (node %d): option key '%s' appears more than once.", node,
             kOptionKeys[k]);
      return kTfLiteError;
    }
  }
  for (size_t k = 0; k < LSTM_NUM_KEYS; ++k) {
    if (!seen[k]) {
      report(context, GQ_LSTM_OP_NAME " (node %d): missing option '%s' (expected exactly the keys "
             LSTM_KEYS_TEXT ").", node, kOptionKeys[k]);
      return kTfLiteError;
    }
  }
  int64_t version, kbits, rbits, in_f, units, seq, state, block;
  if (!option_in(context, node, &map, "version", INT64_MIN, INT64_MAX, &version)) {
    return kTfLiteError;
  }
  if (version != GQ_LSTM_OPTIONS_VERSION) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected option version %d, received version=%"
           PRId64 " (a model written for a newer delegate?).", node, GQ_LSTM_OPTIONS_VERSION,
           version);
    return kTfLiteError;
  }
  /* Tensor dimensions are C ints: 4 * units must be one. */
  if (!option_in(context, node, &map, "kernel_bits", 1, 8, &kbits) ||
      !option_in(context, node, &map, "recurrent_bits", 1, 8, &rbits) ||
      !option_in(context, node, &map, "in_features", 1, INT32_MAX, &in_f) ||
      !option_in(context, node, &map, "units", 1, INT32_MAX / 4, &units) ||
      !option_in(context, node, &map, "return_sequences", 0, 1, &seq) ||
      !option_in(context, node, &map, "return_state", 0, 1, &state)) {
    return kTfLiteError;
  }
  if (!option_in(context, node, &map, "block_size", INT64_MIN, INT64_MAX, &block)) {
    return kTfLiteError;
  }
  if (block != GQ_FC_BLOCK) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected option block_size=%d (layout "
           "planes64), received block_size=%" PRId64 ".", node, GQ_FC_BLOCK, block);
    return kTfLiteError;
  }
  config->kernel_bits = (int)kbits;
  config->recurrent_bits = (int)rbits;
  config->in_features = (size_t)in_f;
  config->units = (size_t)units;
  config->return_sequences = (int)seq;
  config->return_state = (int)state;
  return kTfLiteOk;
}

/* ------------------------------------------------------- tensor checks */

static TfLiteTensor* tensor_at(TfLiteContext* context, int node, int index, const char* what) {
  if (index < 0 || (size_t)index >= context->tensors_size || context->tensors == NULL) {
    report(context, GQ_LSTM_OP_NAME " (node %d): %s has tensor index %d, expected 0..%zu.", node,
           what, index, context->tensors_size == 0 ? (size_t)0 : context->tensors_size - 1);
    return NULL;
  }
  return &context->tensors[index];
}

/* Checks type, rank and that dims and bytes agree; *count = elements. */
static int check_tensor(TfLiteContext* context, int node, const TfLiteTensor* t, const char* what,
                        TfLiteType type, int rank, size_t* count) {
  char shape[128];
  if (t->type != type) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of type %s, received %s (%d).", node,
           what, type_name((int)type), type_name((int)t->type), (int)t->type);
    return 0;
  }
  if (t->dims == NULL || t->dims->size != rank) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of rank %d, received shape %s.",
           node, what, rank, shape_str(t->dims, shape, sizeof shape));
    return 0;
  }
  int ok = 1;
  size_t n = 1;
  for (int i = 0; i < rank && ok; ++i) {
    if (t->dims->data[i] < 0) {
      ok = 0;
    } else {
      n = mul_size(n, (size_t)t->dims->data[i], &ok);
    }
  }
  const size_t elem = type == kTfLiteUInt8 ? 1 : 4;
  const size_t bytes = mul_size(n, elem, &ok);
  if (!ok) {
    report(context, GQ_LSTM_OP_NAME " (node %d): %s has an invalid shape %s.", node, what,
           shape_str(t->dims, shape, sizeof shape));
    return 0;
  }
  if (t->bytes != bytes) {
    report(context, GQ_LSTM_OP_NAME " (node %d): %s of shape %s needs %zu bytes, the tensor has "
           "%zu.", node, what, shape_str(t->dims, shape, sizeof shape), bytes, t->bytes);
    return 0;
  }
  *count = n;
  return 1;
}

/* A packed matrix: uint8 [gq_fc_packed_size(bits, cols, rows)], constant. */
static int check_packed(TfLiteContext* context, int node, const TfLiteTensor* t, const char* what,
                        int bits, size_t cols, size_t rows) {
  const size_t need = gq_fc_packed_size(bits, cols, rows);
  size_t count;
  if (need == 0) {
    report(context, GQ_LSTM_OP_NAME " (node %d): the packed size of %s (bits=%d, %zu x %zu) does "
           "not fit in memory.", node, what, bits, rows, cols);
    return 0;
  }
  if (!check_tensor(context, node, t, what, kTfLiteUInt8, 1, &count)) {
    return 0;
  }
  if (count != need) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of %zu bytes for bits=%d and a "
           "[%zu, %zu] matrix (planes64 layout), received %zu bytes.", node, what, need, bits,
           rows, cols, count);
    return 0;
  }
  if (t->allocation_type != kTfLiteMmapRo || t->data == NULL) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected %s to be a constant of the model "
           "(read-only allocation with data), received allocation type %d%s.", node, what,
           (int)t->allocation_type, t->data == NULL ? " without data" : "");
    return 0;
  }
  return 1;
}

static int check_vector(TfLiteContext* context, int node, const TfLiteTensor* t, const char* what,
                        size_t want, const char* why) {
  size_t count;
  char shape[128];
  if (!check_tensor(context, node, t, what, kTfLiteFloat32, 1, &count)) {
    return 0;
  }
  if (count != want) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of shape [%zu] (%s), received %s.",
           node, what, want, why, shape_str(t->dims, shape, sizeof shape));
    return 0;
  }
  return 1;
}

/* Float32 [batch, units]. */
static int check_state(TfLiteContext* context, int node, const TfLiteTensor* t, const char* what,
                       size_t batch, size_t units) {
  size_t count;
  char shape[128];
  if (!check_tensor(context, node, t, what, kTfLiteFloat32, 2, &count)) {
    return 0;
  }
  if ((size_t)t->dims->data[0] != batch || (size_t)t->dims->data[1] != units) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of shape [%zu, %zu] (batch, units), "
           "received %s.", node, what, batch, units, shape_str(t->dims, shape, sizeof shape));
    return 0;
  }
  return 1;
}

/* Maps the node's inputs to slots (5..8 inputs, see the contract). */
static TfLiteStatus resolve_slots(TfLiteContext* context, gq_lstm_op* op) {
  const int node = op->node_index;
  const int n = op->num_inputs;
  if (n < 5 || n > 8) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected 5 to 8 inputs (x, kernel, kernel "
           "centroids, recurrent kernel, recurrent centroids[, bias][, h0, c0]), received %d.",
           node, n);
    return kTfLiteError;
  }
  for (int s = 0; s < LSTM_NUM_SLOTS; ++s) {
    op->slot[s] = kTfLiteOptionalTensor;
  }
  for (int s = 0; s < 5; ++s) {
    op->slot[s] = op->tensors[s];
    if (op->slot[s] == kTfLiteOptionalTensor) {
      report(context, GQ_LSTM_OP_NAME " (node %d): %s (input %d) is required, received the "
             "optional-tensor index -1.", node, kSlotNames[s], s);
      return kTfLiteError;
    }
  }
  if (n == 6 || n == 8) {
    op->slot[LSTM_BIAS] = op->tensors[5];
  }
  if (n == 7 || n == 8) {
    op->slot[LSTM_H0] = op->tensors[n - 2];
    op->slot[LSTM_C0] = op->tensors[n - 1];
  }
  if ((op->slot[LSTM_H0] == kTfLiteOptionalTensor) != (op->slot[LSTM_C0] == kTfLiteOptionalTensor)) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected both h0 and c0 or neither, received "
           "only %s.", node, op->slot[LSTM_H0] == kTfLiteOptionalTensor ? "c0" : "h0");
    return kTfLiteError;
  }
  return kTfLiteOk;
}

/* ------------------------------------------------------------- prepare */

static int grow_workspace(gq_lstm_op* op, size_t need) {
  if (need <= op->workspace_size) {
    return 1;
  }
  /* 64-byte aligned; aligned_alloc wants a multiple of the alignment. */
  void* grown = aligned_alloc(64, (need + 63u) & ~(size_t)63u);
  if (grown == NULL) {
    return 0;
  }
  free(op->workspace);
  op->workspace = grown;
  op->workspace_size = need;
  return 1;
}

static int grow_scratch(gq_lstm_op* op, size_t count) {
  if (count <= op->scratch_count) {
    return 1;
  }
  float* grown = malloc(count * sizeof(float));
  if (grown == NULL) {
    return 0;
  }
  free(op->scratch);
  op->scratch = grown;
  op->scratch_count = count;
  return 1;
}

static TfLiteStatus resize_output(TfLiteContext* context, int node, TfLiteTensor* out,
                                  const char* what, int rank, const size_t* shape) {
  TfLiteIntArray* dims = malloc(sizeof(TfLiteIntArray) + (size_t)rank * sizeof(int));
  if (dims == NULL) {
    report(context, GQ_LSTM_OP_NAME " (node %d): out of memory.", node);
    return kTfLiteError;
  }
  dims->size = rank;
  for (int i = 0; i < rank; ++i) {
    dims->data[i] = (int)shape[i]; /* every entry came from an int dimension */
  }
  /* ResizeTensor owns dims from here on, on success and failure. */
  if (context->ResizeTensor(context, out, dims) != kTfLiteOk) {
    report(context, GQ_LSTM_OP_NAME " (node %d): could not resize %s.", node, what);
    return kTfLiteError;
  }
  return kTfLiteOk;
}

TfLiteStatus gq_lstm_prepare(TfLiteContext* context, TfLiteNode* node) {
  gq_lstm_op* op = (gq_lstm_op*)node->user_data;
  if (op == NULL) {
    report(context, GQ_LSTM_OP_NAME ": delegate kernel state missing (out of memory in init).");
    return kTfLiteError;
  }
  op->ready = 0;
  const int n = op->node_index;
  if (op->init_error != NULL) {
    report(context, GQ_LSTM_OP_NAME " (node %d): %s", n, op->init_error);
    return kTfLiteError;
  }
  if (op->op_version != GQ_LSTM_OP_VERSION) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected op version %d, received version %d "
           "(a model written for a newer delegate?).", n, GQ_LSTM_OP_VERSION, op->op_version);
    return kTfLiteError;
  }
  gq_lstm_config cfg;
  if (parse_options(context, op, &cfg) != kTfLiteOk || resolve_slots(context, op) != kTfLiteOk) {
    return kTfLiteError;
  }
  const int want_outputs = cfg.return_state ? 3 : 1;
  if (op->num_outputs != want_outputs) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected %d output%s (return_state=%d), "
           "received %d.", n, want_outputs, want_outputs == 1 ? " (y)" : "s (y, h, c)",
           cfg.return_state, op->num_outputs);
    return kTfLiteError;
  }
  TfLiteTensor* in[LSTM_NUM_SLOTS] = {NULL};
  for (int s = 0; s < LSTM_NUM_SLOTS; ++s) {
    if (op->slot[s] != kTfLiteOptionalTensor) {
      in[s] = tensor_at(context, n, op->slot[s], kSlotNames[s]);
      if (in[s] == NULL) return kTfLiteError;
    }
  }
  static const char* const kOutputNames[3] = {"output y", "output h", "output c"};
  TfLiteTensor* out[3] = {NULL, NULL, NULL};
  for (int k = 0; k < op->num_outputs; ++k) {
    const int t = op->tensors[op->num_inputs + k];
    out[k] = tensor_at(context, n, t, kOutputNames[k]);
    if (out[k] == NULL) return kTfLiteError;
    /* Outputs are written while inputs are still read. */
    for (int j = 0; j < op->num_inputs + k; ++j) {
      if (op->tensors[j] == t) {
        report(context, GQ_LSTM_OP_NAME " (node %d): %s (tensor %d) is also %s %d.", n,
               kOutputNames[k], t, j < op->num_inputs ? "input" : "output",
               j < op->num_inputs ? j : j - op->num_inputs);
        return kTfLiteError;
      }
    }
  }

  /* x: float32 [B, T, in] */
  char shape[128];
  size_t count;
  if (!check_tensor(context, n, in[LSTM_X], kSlotNames[LSTM_X], kTfLiteFloat32, 3, &count)) {
    return kTfLiteError;
  }
  if ((size_t)in[LSTM_X]->dims->data[2] != cfg.in_features) {
    report(context, GQ_LSTM_OP_NAME " (node %d): expected input x of shape [batch, steps, %zu] "
           "(in_features), received %s.", n, cfg.in_features,
           shape_str(in[LSTM_X]->dims, shape, sizeof shape));
    return kTfLiteError;
  }
  const size_t batch = (size_t)in[LSTM_X]->dims->data[0];
  const size_t steps = (size_t)in[LSTM_X]->dims->data[1];
  const size_t units = cfg.units, gates = 4 * cfg.units;

  if (!check_packed(context, n, in[LSTM_KERNEL], kSlotNames[LSTM_KERNEL], cfg.kernel_bits,
                    cfg.in_features, gates) ||
      !check_vector(context, n, in[LSTM_KERNEL_CENTROIDS], kSlotNames[LSTM_KERNEL_CENTROIDS],
                    (size_t)1 << cfg.kernel_bits, "2**kernel_bits") ||
      !check_packed(context, n, in[LSTM_RECURRENT], kSlotNames[LSTM_RECURRENT],
                    cfg.recurrent_bits, units, gates) ||
      !check_vector(context, n, in[LSTM_RECURRENT_CENTROIDS],
                    kSlotNames[LSTM_RECURRENT_CENTROIDS], (size_t)1 << cfg.recurrent_bits,
                    "2**recurrent_bits")) {
    return kTfLiteError;
  }
  if (in[LSTM_BIAS] != NULL &&
      !check_vector(context, n, in[LSTM_BIAS], kSlotNames[LSTM_BIAS], gates, "4 * units")) {
    return kTfLiteError;
  }
  if (in[LSTM_H0] != NULL &&
      (!check_state(context, n, in[LSTM_H0], kSlotNames[LSTM_H0], batch, units) ||
       !check_state(context, n, in[LSTM_C0], kSlotNames[LSTM_C0], batch, units))) {
    return kTfLiteError;
  }
  for (int k = 0; k < op->num_outputs; ++k) {
    if (out[k]->type != kTfLiteFloat32) {
      report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of type FLOAT32, received %s "
             "(%d).", n, kOutputNames[k], type_name((int)out[k]->type), (int)out[k]->type);
      return kTfLiteError;
    }
    if (out[k]->allocation_type == kTfLiteMmapRo ||
        out[k]->allocation_type == kTfLitePersistentRo) {
      report(context, GQ_LSTM_OP_NAME " (node %d): %s is a read-only constant.", n,
             kOutputNames[k]);
      return kTfLiteError;
    }
  }

  /* Scratch: xp [B*T, 4u], z [B, 4u], h [B, u], c [B, u]. */
  int ok = 1;
  const size_t rows = mul_size(batch, steps, &ok);
  const size_t xp_count = mul_size(rows, gates, &ok);
  const size_t z_count = mul_size(batch, gates, &ok);
  const size_t hc_count = mul_size(batch, units, &ok);
  size_t scratch = xp_count;
  ok = ok && z_count <= SIZE_MAX - scratch;
  scratch += ok ? z_count : 0;
  ok = ok && hc_count <= (SIZE_MAX - scratch) / 2;
  scratch += ok ? 2 * hc_count : 0;
  ok = ok && scratch <= SIZE_MAX / sizeof(float);
  if (!ok) {
    report(context, GQ_LSTM_OP_NAME " (node %d): batch %zu x %zu steps x %zu gates does not fit "
           "in memory.", n, batch, steps, gates);
    return kTfLiteError;
  }
  if (!grow_scratch(op, scratch)) {
    report(context, GQ_LSTM_OP_NAME " (node %d): out of memory (%zu floats of scratch).", n,
           scratch);
    return kTfLiteError;
  }
  {
    /* Sized for the larger of the two calls: the input projection (B*T rows
     * of in) and a recurrent step (B rows of u). */
    const int threads = gq_pool_threads(op->pool);
    const size_t ws_x = gq_fc_parallel_workspace(threads, rows, cfg.in_features);
    const size_t ws_h = gq_fc_parallel_workspace(threads, batch, units);
    if ((ws_x == 0 && rows != 0) || (ws_h == 0 && batch != 0)) {
      report(context, GQ_LSTM_OP_NAME " (node %d): kernel workspace for %zu rows x %zu inputs "
             "does not fit in memory.", n, rows, cfg.in_features);
      return kTfLiteError;
    }
    const size_t need = ws_x > ws_h ? ws_x : ws_h;
    if (!grow_workspace(op, need)) {
      report(context, GQ_LSTM_OP_NAME " (node %d): out of memory (%zu bytes of kernel "
             "workspace).", n, need);
      return kTfLiteError;
    }
  }
  if (op->kernel->qd8) {
    const TfLiteTensor* kc = in[LSTM_KERNEL_CENTROIDS];
    const TfLiteTensor* rc = in[LSTM_RECURRENT_CENTROIDS];
    op->kernel_codebook_constant = kc->allocation_type == kTfLiteMmapRo && kc->data != NULL;
    op->recurrent_codebook_constant = rc->allocation_type == kTfLiteMmapRo && rc->data != NULL;
    if (op->kernel_codebook_constant) {
      gq_fc_codebook_init(&op->kernel_codebook, (const float*)kc->data, cfg.kernel_bits);
    }
    if (op->recurrent_codebook_constant) {
      gq_fc_codebook_init(&op->recurrent_codebook, (const float*)rc->data, cfg.recurrent_bits);
    }
  }

  const size_t y_seq[3] = {batch, steps, units};
  const size_t y_last[2] = {batch, units};
  if (resize_output(context, n, out[0], kOutputNames[0], cfg.return_sequences ? 3 : 2,
                    cfg.return_sequences ? y_seq : y_last) != kTfLiteOk) {
    return kTfLiteError;
  }
  for (int k = 1; k < op->num_outputs; ++k) {
    if (resize_output(context, n, out[k], kOutputNames[k], 2, y_last) != kTfLiteOk) {
      return kTfLiteError;
    }
  }

  op->kernel_bits = cfg.kernel_bits;
  op->recurrent_bits = cfg.recurrent_bits;
  op->return_sequences = cfg.return_sequences;
  op->return_state = cfg.return_state;
  op->in_features = cfg.in_features;
  op->units = units;
  op->batch = batch;
  op->steps = steps;
  op->ready = 1;
  return kTfLiteOk;
}

/* -------------------------------------------------------------- invoke */

/* e^x in float32 without libm: x = n ln2 + r, |r| <= ln2/2, e^r by its
 * degree-7 Taylor polynomial (truncation < 6e-9 relative), times 2^n built
 * in the exponent bits. A few ulp, far below what the gates need. x is
 * clamped so that 2^n stays a normal float; NaN passes through. */
static float gq_expf(float x) {
  if (x != x) {
    return x;
  }
  if (x > 88.0f) x = 88.0f;
  if (x < -87.0f) x = -87.0f;
  const float t = x * 1.44269504f;
  const int n = (int)(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float fn = (float)n;
  float r = x - fn * 0.693145751953125f; /* ln 2, high part: exact product */
  r = r - fn * 1.428606765330187e-06f;  /* ln 2, low part */
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union {
    uint32_t u;
    float f;
  } scale;
  scale.u = (uint32_t)(n + 127) << 23;
  return p * scale.f;
}

static float gq_sigmoid(float x) { return 1.0f / (1.0f + gq_expf(-x)); }

static float gq_tanh(float x) {
  const float a = x < 0.0f ? -x : x;
  const float e = gq_expf(-2.0f * a);
  const float t = (1.0f - e) / (1.0f + e);
  return x < 0.0f ? -t : t;
}

static void run_fc(const gq_lstm_op* op, size_t batch, size_t in_features, int bits,
                   const float* x, const TfLiteTensor* packed, const TfLiteTensor* centroids,
                   const gq_fc_codebook* codebook, const float* bias, float* y) {
  gq_fc_args args;
  args.batch = batch;
  args.in_features = in_features;
  args.out_features = 4 * op->units;
  args.bits = bits;
  args.activation = GQ_ACT_NONE;
  args.x = x;
  args.packed = (const uint8_t*)packed->data;
  args.centroids = (const float*)centroids->data;
  args.codebook = codebook;
  args.bias = bias;
  args.y = y;
  args.workspace = op->workspace;
  gq_fc_run_parallel(op->pool, op->kernel, &args);
}

TfLiteStatus gq_lstm_invoke(TfLiteContext* context, TfLiteNode* node) {
  gq_lstm_op* op = (gq_lstm_op*)node->user_data;
  if (op == NULL || !op->ready) {
    report(context, GQ_LSTM_OP_NAME ": invoked before a successful prepare.");
    return kTfLiteError;
  }
  const int n = op->node_index;
  const size_t B = op->batch, T = op->steps, U = op->units, G = 4 * op->units;
  /* Pointers are fetched again: the runtime may move tensor storage between
   * prepare and invoke. Indices were range-checked in prepare. */
  const TfLiteTensor* in[LSTM_NUM_SLOTS] = {NULL};
  for (int s = 0; s < LSTM_NUM_SLOTS; ++s) {
    if (op->slot[s] != kTfLiteOptionalTensor) {
      in[s] = &context->tensors[op->slot[s]];
      if (in[s]->data == NULL && in[s]->bytes != 0) {
        report(context, GQ_LSTM_OP_NAME " (node %d): %s has no data.", n, kSlotNames[s]);
        return kTfLiteError;
      }
    }
  }
  TfLiteTensor* out[3] = {NULL, NULL, NULL};
  for (int k = 0; k < op->num_outputs; ++k) {
    out[k] = &context->tensors[op->tensors[op->num_inputs + k]];
  }
  const size_t y_count = op->return_sequences ? B * T * U : B * U;
  if (in[LSTM_X]->bytes != B * T * op->in_features * sizeof(float) ||
      (in[LSTM_H0] != NULL && (in[LSTM_H0]->bytes != B * U * sizeof(float) ||
                               in[LSTM_C0]->bytes != B * U * sizeof(float))) ||
      (in[LSTM_BIAS] != NULL && in[LSTM_BIAS]->bytes != G * sizeof(float)) ||
      out[0]->bytes != y_count * sizeof(float) ||
      (op->return_state && (out[1]->bytes != B * U * sizeof(float) ||
                            out[2]->bytes != B * U * sizeof(float)))) {
    report(context, GQ_LSTM_OP_NAME " (node %d): tensor sizes changed since prepare.", n);
    return kTfLiteError;
  }
  if (B == 0) {
    return kTfLiteOk;
  }
  for (int k = 0; k < op->num_outputs; ++k) {
    if (out[k]->data == NULL && out[k]->bytes != 0) {
      report(context, GQ_LSTM_OP_NAME " (node %d): output %d has no data.", n, k);
      return kTfLiteError;
    }
  }
  if (op->kernel->qd8 && !op->kernel_codebook_constant) {
    gq_fc_codebook_init(&op->kernel_codebook, (const float*)in[LSTM_KERNEL_CENTROIDS]->data,
                        op->kernel_bits);
  }
  if (op->kernel->qd8 && !op->recurrent_codebook_constant) {
    gq_fc_codebook_init(&op->recurrent_codebook,
                        (const float*)in[LSTM_RECURRENT_CENTROIDS]->data, op->recurrent_bits);
  }
  float* xp = op->scratch;
  float* z = xp + B * T * G;
  float* h = z + B * G;
  float* c = h + B * U;
  if (in[LSTM_H0] != NULL) {
    memcpy(h, in[LSTM_H0]->data, B * U * sizeof(float));
    memcpy(c, in[LSTM_C0]->data, B * U * sizeof(float));
  } else {
    for (size_t k = 0; k < B * U; ++k) {
      h[k] = 0.0f;
      c[k] = 0.0f;
    }
  }
  /* The input projection of every step at once: rows b*T + t of x. */
  if (T != 0) {
    run_fc(op, B * T, op->in_features, op->kernel_bits, (const float*)in[LSTM_X]->data,
           in[LSTM_KERNEL], in[LSTM_KERNEL_CENTROIDS], &op->kernel_codebook,
           in[LSTM_BIAS] != NULL ? (const float*)in[LSTM_BIAS]->data : NULL, xp);
  }
  float* y = (float*)out[0]->data;
  for (size_t t = 0; t < T; ++t) {
    run_fc(op, B, U, op->recurrent_bits, h, in[LSTM_RECURRENT], in[LSTM_RECURRENT_CENTROIDS],
           &op->recurrent_codebook, NULL, z);
    for (size_t b = 0; b < B; ++b) {
      const float* xr = xp + (b * T + t) * G;
      const float* zr = z + b * G;
      float* hr = h + b * U;
      float* cr = c + b * U;
      for (size_t j = 0; j < U; ++j) {
        const float ig = gq_sigmoid(zr[j] + xr[j]);
        const float fg = gq_sigmoid(zr[U + j] + xr[U + j]);
        const float gg = gq_tanh(zr[2 * U + j] + xr[2 * U + j]);
        const float og = gq_sigmoid(zr[3 * U + j] + xr[3 * U + j]);
        cr[j] = fg * cr[j] + ig * gg;
        hr[j] = og * gq_tanh(cr[j]);
      }
      if (op->return_sequences) {
        memcpy(y + (b * T + t) * U, hr, U * sizeof(float));
      }
    }
  }
  if (!op->return_sequences) {
    memcpy(y, h, B * U * sizeof(float));
  }
  if (op->return_state) {
    memcpy(out[1]->data, h, B * U * sizeof(float));
    memcpy(out[2]->data, c, B * U * sizeof(float));
  }
  return kTfLiteOk;
}

/* ----------------------------------------------------------- init/free */

void* gq_lstm_init(TfLiteContext* context, const char* buffer, size_t length) {
  (void)length;
  gq_lstm_op* op = calloc(1, sizeof *op);
  if (op == NULL) {
    return NULL;
  }
  op->node_index = -1;
  const TfLiteDelegateParams* params = (const TfLiteDelegateParams*)(const void*)buffer;
  if (params == NULL || params->delegate == NULL || params->nodes_to_replace == NULL ||
      params->nodes_to_replace->size != 1) {
    op->init_error = "delegate kernel created without exactly one node to replace.";
    return op;
  }
  op->kernel = gq_delegate_kernel(params->delegate);
  op->pool = gq_delegate_pool(params->delegate);
  op->node_index = params->nodes_to_replace->data[0];
  if (op->kernel == NULL) {
    op->init_error = "the delegate has no FC kernel.";
    return op;
  }
  /* Copied now: GetNodeAndRegistration may not be called once kernels run. */
  TfLiteNode* orig = NULL;
  TfLiteRegistration* reg = NULL;
  if (context->GetNodeAndRegistration(context, op->node_index, &orig, &reg) != kTfLiteOk ||
      orig == NULL || reg == NULL) {
    op->init_error = "cannot look up the original node.";
    return op;
  }
  op->op_version = reg->version;
  if (orig->inputs == NULL || orig->outputs == NULL || orig->inputs->size < 0 ||
      orig->outputs->size < 0 || orig->inputs->size > GQ_LSTM_MAX_LIST ||
      orig->outputs->size > GQ_LSTM_MAX_LIST) {
    op->init_error = "the node's input or output list is missing or implausibly long.";
    return op;
  }
  op->num_inputs = orig->inputs->size;
  op->num_outputs = orig->outputs->size;
  op->tensors = malloc(((size_t)op->num_inputs + (size_t)op->num_outputs + 1) * sizeof(int));
  if (op->tensors == NULL) {
    op->init_error = "out of memory.";
    return op;
  }
  memcpy(op->tensors, orig->inputs->data, (size_t)op->num_inputs * sizeof(int));
  memcpy(op->tensors + op->num_inputs, orig->outputs->data,
         (size_t)op->num_outputs * sizeof(int));
  if (orig->custom_initial_data != NULL && orig->custom_initial_data_size > 0) {
    op->options_len = (size_t)orig->custom_initial_data_size;
    op->options = malloc(op->options_len);
    if (op->options == NULL) {
      op->init_error = "out of memory.";
      return op;
    }
    memcpy(op->options, orig->custom_initial_data, op->options_len);
  }
  return op;
}

void gq_lstm_free(TfLiteContext* context, void* buffer) {
  (void)context;
  gq_lstm_op* op = (gq_lstm_op*)buffer;
  if (op != NULL) {
    free(op->tensors);
    free(op->options);
    free(op->workspace);
    free(op->scratch);
    free(op);
  }
}
