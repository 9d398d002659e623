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
 * The gate nonlinearities run in the cell update of the same instruction
 * set as the FC kernel (gq_fc.h: gq_lstm_cell, SIMD exp without libm).
 *
 * Pure C11, libc only. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/gq_fc.h"
#include "flexbuf.h"
#include "gq_common.h"
#include "gq_lstm.h"
#include "gq_threads.h"
#include "tflite_abi.h"

#define GQ_LSTM_OP_VERSION 1
#define GQ_LSTM_OPTIONS_VERSION 1

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

typedef struct gq_lstm_config {
  int kernel_bits;
  int recurrent_bits;
  int return_sequences;
  int return_state;
  size_t in_features;
  size_t units;
} gq_lstm_config;

typedef struct gq_lstm_op {
  gq_node_copy node; /* the original GQ_LSTM node */
  const gq_fc_kernel_info* kernel;
  gq_pool* pool; /* the delegate's threads (NULL: one) */
  /* Set by prepare. */
  int ready;
  int slot[LSTM_NUM_SLOTS];
  gq_lstm_config cfg; /* the validated options */
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

/* ------------------------------------------------------------- options */


static const char* const kOptionKeys[] = {
    "version",      "kernel_bits",      "recurrent_bits", "in_features",
    "units",        "return_sequences", "return_state",   "block_size",
};
#define LSTM_NUM_KEYS (sizeof kOptionKeys / sizeof kOptionKeys[0])
#define LSTM_KEYS_TEXT                                                                    \
  "version, kernel_bits, recurrent_bits, in_features, units, return_sequences, return_state, " \
  "block_size"

/* Reads integer option key into *value within [lo, hi]; reports otherwise. */
static int option_in(TfLiteContext* context, int node, const gq_flexmap* map, const char* key,
                     int64_t lo, int64_t hi, int64_t* value) {
  if (!gq_option_int(context, GQ_LSTM_OP_NAME, node, map, key, value)) {
    return 0;
  }
  if (*value < lo || *value > hi) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected option %s in %" PRId64 "..%" PRId64
              ", received %s=%" PRId64 ".", node, key, lo, hi, key, *value);
    return 0;
  }
  return 1;
}

static TfLiteStatus parse_options(TfLiteContext* context, const gq_lstm_op* op,
                                  gq_lstm_config* config) {
  const int node = op->node.node_index;
  gq_flexmap map;
  if (!gq_open_options(context, GQ_LSTM_OP_NAME, node, op->node.options, op->node.options_len,
                       kOptionKeys, LSTM_NUM_KEYS, LSTM_KEYS_TEXT, &map) ||
      !gq_option_version(context, GQ_LSTM_OP_NAME, node, &map, GQ_LSTM_OPTIONS_VERSION)) {
    return kTfLiteError;
  }
  int64_t kbits, rbits, in_f, units, seq, state;
  /* Tensor dimensions are C ints: 4 * units must be one. */
  if (!option_in(context, node, &map, "kernel_bits", 1, 8, &kbits) ||
      !option_in(context, node, &map, "recurrent_bits", 1, 8, &rbits) ||
      !option_in(context, node, &map, "in_features", 1, INT32_MAX, &in_f) ||
      !option_in(context, node, &map, "units", 1, INT32_MAX / 4, &units) ||
      !option_in(context, node, &map, "return_sequences", 0, 1, &seq) ||
      !option_in(context, node, &map, "return_state", 0, 1, &state)) {
    return kTfLiteError;
  }
  if (!gq_option_block_size(context, GQ_LSTM_OP_NAME, node, &map)) {
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

/* A packed matrix: uint8 [gq_fc_packed_size(bits, cols, rows)], constant. */
static int check_packed(TfLiteContext* context, int node, const TfLiteTensor* t, const char* what,
                        int bits, size_t cols, size_t rows) {
  const size_t need = gq_fc_packed_size(bits, cols, rows);
  size_t count;
  if (need == 0) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): the packed size of %s (bits=%d, %zu x %zu) "
              "does not fit in memory.", node, what, bits, rows, cols);
    return 0;
  }
  if (!gq_check_tensor(context, GQ_LSTM_OP_NAME, node, t, what, kTfLiteUInt8, 1, &count)) {
    return 0;
  }
  if (count != need) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of %zu bytes for bits=%d and a "
              "[%zu, %zu] matrix (planes64 layout), received %zu bytes.", node, what, need, bits,
              rows, cols, count);
    return 0;
  }
  if (t->allocation_type != kTfLiteMmapRo || t->data == NULL) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected %s to be a constant of the model "
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
  if (!gq_check_tensor(context, GQ_LSTM_OP_NAME, node, t, what, kTfLiteFloat32, 1, &count)) {
    return 0;
  }
  if (count != want) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of shape [%zu] (%s), received %s.",
              node, what, want, why, gq_shape_str(t->dims, shape, sizeof shape));
    return 0;
  }
  return 1;
}

/* Float32 [batch, units]. */
static int check_state(TfLiteContext* context, int node, const TfLiteTensor* t, const char* what,
                       size_t batch, size_t units) {
  size_t count;
  char shape[128];
  if (!gq_check_tensor(context, GQ_LSTM_OP_NAME, node, t, what, kTfLiteFloat32, 2, &count)) {
    return 0;
  }
  if ((size_t)t->dims->data[0] != batch || (size_t)t->dims->data[1] != units) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of shape [%zu, %zu] (batch, "
              "units), received %s.", node, what, batch, units,
              gq_shape_str(t->dims, shape, sizeof shape));
    return 0;
  }
  return 1;
}

/* Maps the node's inputs to slots (5..8 inputs, see the contract). */
static TfLiteStatus resolve_slots(TfLiteContext* context, gq_lstm_op* op) {
  const int node = op->node.node_index;
  const int n = op->node.num_inputs;
  if (n < 5 || n > 8) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected 5 to 8 inputs (x, kernel, kernel "
              "centroids, recurrent kernel, recurrent centroids[, bias][, h0, c0]), received %d.",
              node, n);
    return kTfLiteError;
  }
  for (int s = 0; s < LSTM_NUM_SLOTS; ++s) {
    op->slot[s] = kTfLiteOptionalTensor;
  }
  for (int s = 0; s < 5; ++s) {
    op->slot[s] = op->node.tensors[s];
    if (op->slot[s] == kTfLiteOptionalTensor) {
      gq_report(context, GQ_LSTM_OP_NAME " (node %d): %s (input %d) is required, received the "
                "optional-tensor index -1.", node, kSlotNames[s], s);
      return kTfLiteError;
    }
  }
  if (n == 6 || n == 8) {
    op->slot[LSTM_BIAS] = op->node.tensors[5];
  }
  if (n == 7 || n == 8) {
    op->slot[LSTM_H0] = op->node.tensors[n - 2];
    op->slot[LSTM_C0] = op->node.tensors[n - 1];
  }
  if ((op->slot[LSTM_H0] == kTfLiteOptionalTensor) != (op->slot[LSTM_C0] == kTfLiteOptionalTensor)) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected both h0 and c0 or neither, received "
              "only %s.", node, op->slot[LSTM_H0] == kTfLiteOptionalTensor ? "c0" : "h0");
    return kTfLiteError;
  }
  return kTfLiteOk;
}

/* ------------------------------------------------------------- prepare */

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

TfLiteStatus gq_lstm_prepare(TfLiteContext* context, TfLiteNode* node) {
  gq_lstm_op* op = (gq_lstm_op*)node->user_data;
  if (op == NULL) {
    gq_report(context, GQ_LSTM_OP_NAME ": delegate kernel state missing (out of memory in init).");
    return kTfLiteError;
  }
  op->ready = 0;
  const int n = op->node.node_index;
  if (!gq_check_node(context, GQ_LSTM_OP_NAME, &op->node, GQ_LSTM_OP_VERSION)) {
    return kTfLiteError;
  }
  gq_lstm_config cfg;
  if (parse_options(context, op, &cfg) != kTfLiteOk || resolve_slots(context, op) != kTfLiteOk) {
    return kTfLiteError;
  }
  const int want_outputs = cfg.return_state ? 3 : 1;
  if (op->node.num_outputs != want_outputs) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected %d output%s (return_state=%d), "
              "received %d.", n, want_outputs, want_outputs == 1 ? " (y)" : "s (y, h, c)",
              cfg.return_state, op->node.num_outputs);
    return kTfLiteError;
  }
  TfLiteTensor* in[LSTM_NUM_SLOTS] = {NULL};
  for (int s = 0; s < LSTM_NUM_SLOTS; ++s) {
    if (op->slot[s] != kTfLiteOptionalTensor) {
      in[s] = gq_tensor_at(context, GQ_LSTM_OP_NAME, n, op->slot[s], kSlotNames[s]);
      if (in[s] == NULL) return kTfLiteError;
    }
  }
  static const char* const kOutputNames[3] = {"output y", "output h", "output c"};
  TfLiteTensor* out[3] = {NULL, NULL, NULL};
  for (int k = 0; k < op->node.num_outputs; ++k) {
    const int t = op->node.tensors[op->node.num_inputs + k];
    out[k] = gq_tensor_at(context, GQ_LSTM_OP_NAME, n, t, kOutputNames[k]);
    if (out[k] == NULL) return kTfLiteError;
    /* Outputs are written while inputs are still read. */
    for (int j = 0; j < op->node.num_inputs + k; ++j) {
      if (op->node.tensors[j] == t) {
        gq_report(context, GQ_LSTM_OP_NAME " (node %d): %s (tensor %d) is also %s %d.", n,
                  kOutputNames[k], t, j < op->node.num_inputs ? "input" : "output",
                  j < op->node.num_inputs ? j : j - op->node.num_inputs);
        return kTfLiteError;
      }
    }
  }

  /* x: float32 [B, T, in] */
  char shape[128];
  size_t count;
  if (!gq_check_tensor(context, GQ_LSTM_OP_NAME, n, in[LSTM_X], kSlotNames[LSTM_X],
                       kTfLiteFloat32, 3, &count)) {
    return kTfLiteError;
  }
  if ((size_t)in[LSTM_X]->dims->data[2] != cfg.in_features) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected input x of shape [batch, steps, %zu] "
              "(in_features), received %s.", n, cfg.in_features,
              gq_shape_str(in[LSTM_X]->dims, shape, sizeof shape));
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
  for (int k = 0; k < op->node.num_outputs; ++k) {
    if (out[k]->type != kTfLiteFloat32) {
      gq_report(context, GQ_LSTM_OP_NAME " (node %d): expected %s of type FLOAT32, received %s "
                "(%d).", n, kOutputNames[k], gq_type_name((int)out[k]->type), (int)out[k]->type);
      return kTfLiteError;
    }
    if (out[k]->allocation_type == kTfLiteMmapRo ||
        out[k]->allocation_type == kTfLitePersistentRo) {
      gq_report(context, GQ_LSTM_OP_NAME " (node %d): %s is a read-only constant.", n,
                kOutputNames[k]);
      return kTfLiteError;
    }
  }

  /* Scratch: xp [B*T, 4u], z [B, 4u], h [B, u], c [B, u]. */
  int ok = 1;
  const size_t rows = gq_mul_size(batch, steps, &ok);
  const size_t xp_count = gq_mul_size(rows, gates, &ok);
  const size_t z_count = gq_mul_size(batch, gates, &ok);
  const size_t hc_count = gq_mul_size(batch, units, &ok);
  size_t scratch = xp_count;
  ok = ok && z_count <= SIZE_MAX - scratch;
  scratch += ok ? z_count : 0;
  ok = ok && hc_count <= (SIZE_MAX - scratch) / 2;
  scratch += ok ? 2 * hc_count : 0;
  ok = ok && scratch <= SIZE_MAX / sizeof(float);
  if (!ok) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): batch %zu x %zu steps x %zu gates does not fit "
              "in memory.", n, batch, steps, gates);
    return kTfLiteError;
  }
  if (!grow_scratch(op, scratch)) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): out of memory (%zu floats of scratch).", n,
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
      gq_report(context, GQ_LSTM_OP_NAME " (node %d): kernel workspace for %zu rows x %zu inputs "
                "does not fit in memory.", n, rows, cfg.in_features);
      return kTfLiteError;
    }
    const size_t need = ws_x > ws_h ? ws_x : ws_h;
    if (!gq_grow_aligned(&op->workspace, &op->workspace_size, need)) {
      gq_report(context, GQ_LSTM_OP_NAME " (node %d): out of memory (%zu bytes of kernel "
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
  if (gq_resize_output(context, GQ_LSTM_OP_NAME, n, out[0], kOutputNames[0],
                       cfg.return_sequences ? 3 : 2, cfg.return_sequences ? y_seq : y_last) !=
      kTfLiteOk) {
    return kTfLiteError;
  }
  for (int k = 1; k < op->node.num_outputs; ++k) {
    if (gq_resize_output(context, GQ_LSTM_OP_NAME, n, out[k], kOutputNames[k], 2, y_last) !=
        kTfLiteOk) {
      return kTfLiteError;
    }
  }

  op->cfg = cfg;
  op->batch = batch;
  op->steps = steps;
  op->ready = 1;
  return kTfLiteOk;
}

/* -------------------------------------------------------------- invoke */

static void run_fc(const gq_lstm_op* op, size_t batch, size_t in_features, int bits,
                   const float* x, const TfLiteTensor* packed, const TfLiteTensor* centroids,
                   const gq_fc_codebook* codebook, const float* bias, float* y) {
  gq_fc_args args;
  args.batch = batch;
  args.in_features = in_features;
  args.out_features = 4 * op->cfg.units;
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
    gq_report(context, GQ_LSTM_OP_NAME ": invoked before a successful prepare.");
    return kTfLiteError;
  }
  const int n = op->node.node_index;
  const size_t B = op->batch, T = op->steps, U = op->cfg.units, G = 4 * op->cfg.units;
  /* Pointers are fetched again: the runtime may move tensor storage between
   * prepare and invoke. Indices were range-checked in prepare. */
  const TfLiteTensor* in[LSTM_NUM_SLOTS] = {NULL};
  for (int s = 0; s < LSTM_NUM_SLOTS; ++s) {
    if (op->slot[s] != kTfLiteOptionalTensor) {
      in[s] = &context->tensors[op->slot[s]];
      if (in[s]->data == NULL && in[s]->bytes != 0) {
        gq_report(context, GQ_LSTM_OP_NAME " (node %d): %s has no data.", n, kSlotNames[s]);
        return kTfLiteError;
      }
    }
  }
  TfLiteTensor* out[3] = {NULL, NULL, NULL};
  for (int k = 0; k < op->node.num_outputs; ++k) {
    out[k] = &context->tensors[op->node.tensors[op->node.num_inputs + k]];
  }
  const size_t y_count = op->cfg.return_sequences ? B * T * U : B * U;
  if (in[LSTM_X]->bytes != B * T * op->cfg.in_features * sizeof(float) ||
      (in[LSTM_H0] != NULL && (in[LSTM_H0]->bytes != B * U * sizeof(float) ||
                               in[LSTM_C0]->bytes != B * U * sizeof(float))) ||
      (in[LSTM_BIAS] != NULL && in[LSTM_BIAS]->bytes != G * sizeof(float)) ||
      out[0]->bytes != y_count * sizeof(float) ||
      (op->cfg.return_state && (out[1]->bytes != B * U * sizeof(float) ||
                            out[2]->bytes != B * U * sizeof(float)))) {
    gq_report(context, GQ_LSTM_OP_NAME " (node %d): tensor sizes changed since prepare.", n);
    return kTfLiteError;
  }
  if (B == 0) {
    return kTfLiteOk;
  }
  for (int k = 0; k < op->node.num_outputs; ++k) {
    if (out[k]->data == NULL && out[k]->bytes != 0) {
      gq_report(context, GQ_LSTM_OP_NAME " (node %d): output %d has no data.", n, k);
      return kTfLiteError;
    }
  }
  if (op->kernel->qd8 && !op->kernel_codebook_constant) {
    gq_fc_codebook_init(&op->kernel_codebook, (const float*)in[LSTM_KERNEL_CENTROIDS]->data,
                        op->cfg.kernel_bits);
  }
  if (op->kernel->qd8 && !op->recurrent_codebook_constant) {
    gq_fc_codebook_init(&op->recurrent_codebook,
                        (const float*)in[LSTM_RECURRENT_CENTROIDS]->data, op->cfg.recurrent_bits);
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
    run_fc(op, B * T, op->cfg.in_features, op->cfg.kernel_bits, (const float*)in[LSTM_X]->data,
           in[LSTM_KERNEL], in[LSTM_KERNEL_CENTROIDS], &op->kernel_codebook,
           in[LSTM_BIAS] != NULL ? (const float*)in[LSTM_BIAS]->data : NULL, xp);
  }
  float* y = (float*)out[0]->data;
  for (size_t t = 0; t < T; ++t) {
    run_fc(op, B, U, op->cfg.recurrent_bits, h, in[LSTM_RECURRENT], in[LSTM_RECURRENT_CENTROIDS],
           &op->recurrent_codebook, NULL, z);
    for (size_t b = 0; b < B; ++b) {
      const float* xr = xp + (b * T + t) * G;
      const float* zr = z + b * G;
      float* hr = h + b * U;
      gq_lstm_cell(op->kernel, U, zr, xr, c + b * U, hr);
      if (op->cfg.return_sequences) {
        memcpy(y + (b * T + t) * U, hr, U * sizeof(float));
      }
    }
  }
  if (!op->cfg.return_sequences) {
    memcpy(y, h, B * U * sizeof(float));
  }
  if (op->cfg.return_state) {
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
  const TfLiteDelegateParams* params = gq_node_params(&op->node, buffer);
  if (params == NULL) {
    return op;
  }
  op->kernel = gq_delegate_kernel(params->delegate);
  op->pool = gq_delegate_pool(params->delegate);
  if (op->kernel == NULL) {
    op->node.init_error = "the delegate has no FC kernel.";
    return op;
  }
  gq_node_copy_in(context, &op->node);
  return op;
}

void gq_lstm_free(TfLiteContext* context, void* buffer) {
  (void)context;
  gq_lstm_op* op = (gq_lstm_op*)buffer;
  if (op != NULL) {
    gq_node_free(&op->node);
    free(op->workspace);
    free(op->scratch);
    free(op);
  }
}
