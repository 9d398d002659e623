/* TFLite delegate plugin that runs the GQ_FULLY_CONNECTED and GQ_LSTM
 * custom ops (GQ_LSTM itself is in gq_lstm.c).
 *
 * Why a delegate and not a custom-op registration: neither the TensorFlow
 * nor the LiteRT wheel exports the C++ op-resolver API, while both load
 * delegate plugins through two plain C entry points and talk to them only
 * through function pointers in TfLiteContext. The library therefore needs
 * nothing from the host but libc (see tflite_abi.h for the ABI it assumes).
 *
 * Life cycle:
 *  - tflite_plugin_create_delegate parses the plugin options;
 *  - the delegate's Prepare claims every CUSTOM node named GQ_FULLY_CONNECTED
 *    or GQ_LSTM, one node per ReplaceNodeSubsetsWithDelegateKernels call
 *    (merging neighbours would leave tensors between them unallocated);
 *  - kernel init copies what it needs from the original node while
 *    GetNodeAndRegistration is still callable (the runtime forbids it once
 *    kernels run);
 *  - kernel prepare validates everything against the op contract (DESIGN.md,
 *    "Custom op contract (version 1)") and reports what it expected and what
 *    it received; nothing from the model file is trusted before that;
 *  - kernel invoke reads the packed weights in place from the model buffer,
 *    with the kernel the `kernel` option chose (gq_fc_dispatch.c: the best
 *    one this CPU runs by default, any compiled one by name).
 *
 * Pure C11. */
#include <inttypes.h>
#include <stdarg.h>
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

#if defined(__GNUC__)
#define GQ_EXPORT __attribute__((visibility("default")))
#else
#define GQ_EXPORT
#endif

#define GQ_OP_NAME "GQ_FULLY_CONNECTED"
#define GQ_OP_VERSION 1
#define GQ_OPTIONS_VERSION 1
#define GQ_KERNEL_NODE_NAME "GqDelegate"

typedef struct gq_delegate {
  TfLiteDelegate base; /* first, so a TfLiteDelegate* is a gq_delegate* */
  const gq_fc_kernel_info* kernel;
  /* Threads follow the interpreter's num_threads (recommended_num_threads),
   * read when the delegate is applied; NULL pool: one thread. */
  gq_pool* pool;
  int threads;
} gq_delegate;

/* What the delegate's other ops (gq_lstm.h) read from it. */
const gq_fc_kernel_info* gq_delegate_kernel(const TfLiteDelegate* delegate) {
  return ((const gq_delegate*)(const void*)delegate)->kernel;
}

gq_pool* gq_delegate_pool(const TfLiteDelegate* delegate) {
  return ((const gq_delegate*)(const void*)delegate)->pool;
}

/* Per delegated node. Everything copied in init, checked in prepare. */
typedef struct gq_fc_op {
  gq_node_copy node; /* the original GQ node */
  const gq_fc_kernel_info* kernel;
  gq_delegate* delegate; /* outlives the op: the pool */
  /* Scratch of the qd8 kernels (gq_fc_parallel_workspace), grown in prepare. */
  void* workspace;
  size_t workspace_size;
  /* The centroids' int8 codes: built once in prepare when the centroids
   * are a model constant, else at every invoke. */
  gq_fc_codebook codebook;
  int codebook_constant;
  /* Set by prepare. */
  int ready;
  int bits;
  int activation;
  int has_bias;
  size_t in_features;
  size_t out_features;
  size_t batch;
} gq_fc_op;

/* ------------------------------------------------------- option parsing */

typedef struct gq_fc_config {
  int bits;
  int activation;
  size_t in_features;
  size_t out_features;
} gq_fc_config;

static const char* const kOptionKeys[] = {
    "version", "bits", "in_features", "out_features", "block_size", "fused_activation",
};
#define GQ_NUM_OPTION_KEYS (sizeof kOptionKeys / sizeof kOptionKeys[0])
#define GQ_KNOWN_KEYS_TEXT "version, bits, in_features, out_features, block_size, fused_activation"

static const char* const kActivations[] = {"NONE", "RELU", "RELU_N1_TO_1", "RELU6"};

static TfLiteStatus parse_options(TfLiteContext* context, const gq_fc_op* op,
                                  gq_fc_config* config) {
  const int node = op->node.node_index;
  gq_flexmap map;
  if (!gq_open_options(context, GQ_OP_NAME, node, op->node.options, op->node.options_len,
                       kOptionKeys, GQ_NUM_OPTION_KEYS, GQ_KNOWN_KEYS_TEXT, &map) ||
      !gq_option_version(context, GQ_OP_NAME, node, &map, GQ_OPTIONS_VERSION)) {
    return kTfLiteError;
  }
  int64_t bits, in_f, out_f;
  if (!gq_option_int(context, GQ_OP_NAME, node, &map, "bits", &bits)) return kTfLiteError;
  if (bits < 1 || bits > 8) {
    gq_report(context, GQ_OP_NAME " (node %d): expected option bits in 1..8, received bits=%" PRId64
              ".", node, bits);
    return kTfLiteError;
  }
  if (!gq_option_int(context, GQ_OP_NAME, node, &map, "in_features", &in_f)) return kTfLiteError;
  if (!gq_option_int(context, GQ_OP_NAME, node, &map, "out_features", &out_f)) return kTfLiteError;
  /* Tensor dimensions are C ints, so larger feature counts cannot match any
   * tensor; rejecting them here also keeps later size arithmetic small. */
  if (in_f < 1 || in_f > INT32_MAX) {
    gq_report(context, GQ_OP_NAME " (node %d): expected option in_features in 1..%d, received "
              "in_features=%" PRId64 ".", node, INT32_MAX, in_f);
    return kTfLiteError;
  }
  if (out_f < 1 || out_f > INT32_MAX) {
    gq_report(context, GQ_OP_NAME " (node %d): expected option out_features in 1..%d, received "
              "out_features=%" PRId64 ".", node, INT32_MAX, out_f);
    return kTfLiteError;
  }
  if (!gq_option_block_size(context, GQ_OP_NAME, node, &map)) return kTfLiteError;
  const char* act;
  size_t act_len;
  const int status = gq_flexmap_get_string(&map, "fused_activation", &act, &act_len);
  if (status != GQ_FLEX_OK) {
    gq_report(context, GQ_OP_NAME " (node %d): expected option fused_activation to be a string "
              "(NONE, RELU, RELU_N1_TO_1 or RELU6), %s.", node,
              status == GQ_FLEX_WRONG_TYPE ? "received another flexbuffer type"
              : status == GQ_FLEX_MISSING  ? "cannot look it up: the map is not sorted by key"
                                           : gq_flex_status_text(status));
    return kTfLiteError;
  }
  int activation = -1;
  for (int a = 0; a < 4; ++a) {
    if (strlen(kActivations[a]) == act_len && memcmp(kActivations[a], act, act_len) == 0) {
      activation = a; /* table order is the gq_activation code */
    }
  }
  if (activation < 0) {
    char shown[96];
    gq_report(context, GQ_OP_NAME " (node %d): expected option fused_activation in NONE, RELU, "
              "RELU_N1_TO_1, RELU6, received '%s'.", node,
              gq_printable(act, act_len, shown, sizeof shown));
    return kTfLiteError;
  }
  config->bits = (int)bits;
  config->activation = activation;
  config->in_features = (size_t)in_f;
  config->out_features = (size_t)out_f;
  return kTfLiteOk;
}

/* ------------------------------------------------------- tensor checks */

static TfLiteStatus fc_prepare(TfLiteContext* context, TfLiteNode* node) {
  gq_fc_op* op = (gq_fc_op*)node->user_data;
  if (op == NULL) {
    gq_report(context, GQ_OP_NAME ": delegate kernel state missing (out of memory in init).");
    return kTfLiteError;
  }
  op->ready = 0;
  const int n = op->node.node_index;
  if (!gq_check_node(context, GQ_OP_NAME, &op->node, GQ_OP_VERSION)) {
    return kTfLiteError;
  }
  gq_fc_config cfg;
  if (parse_options(context, op, &cfg) != kTfLiteOk) {
    return kTfLiteError;
  }
  if (op->node.num_inputs != 3 && op->node.num_inputs != 4) {
    gq_report(context, GQ_OP_NAME " (node %d): expected 3 or 4 inputs (x, packed, "
              "centroids[, bias]), received %d.", n, op->node.num_inputs);
    return kTfLiteError;
  }
  if (op->node.num_outputs != 1) {
    gq_report(context, GQ_OP_NAME " (node %d): expected 1 output, received %d.", n,
              op->node.num_outputs);
    return kTfLiteError;
  }
  const int has_bias = op->node.num_inputs == 4 && op->node.tensors[3] != kTfLiteOptionalTensor;
  static const char* const kInputNames[] = {"input 0 (x)", "input 1 (packed)",
                                            "input 2 (centroids)", "input 3 (bias)"};
  TfLiteTensor* in[4] = {NULL, NULL, NULL, NULL};
  for (int i = 0; i < 3 + has_bias; ++i) {
    in[i] = gq_tensor_at(context, GQ_OP_NAME, n, op->node.tensors[i], kInputNames[i]);
    if (in[i] == NULL) return kTfLiteError;
  }
  const int out_index = op->node.tensors[op->node.num_inputs];
  TfLiteTensor* out = gq_tensor_at(context, GQ_OP_NAME, n, out_index, "output 0");
  if (out == NULL) return kTfLiteError;
  for (int i = 0; i < op->node.num_inputs; ++i) {
    if (op->node.tensors[i] == out_index) {
      gq_report(context, GQ_OP_NAME " (node %d): the output tensor %d is also input %d.", n,
                out_index, i);
      return kTfLiteError;
    }
  }

  char shape[128];
  size_t x_count, packed_count, cent_count, bias_count;
  /* x: float32 [..., in] */
  if (!gq_check_tensor(context, GQ_OP_NAME, n, in[0], kInputNames[0], kTfLiteFloat32, -1,
                       &x_count)) {
    return kTfLiteError;
  }
  const int x_rank = in[0]->dims->size;
  if ((size_t)in[0]->dims->data[x_rank - 1] != cfg.in_features) {
    gq_report(context, GQ_OP_NAME " (node %d): expected x of shape [..., %zu] (in_features), "
              "received %s.", n, cfg.in_features, gq_shape_str(in[0]->dims, shape, sizeof shape));
    return kTfLiteError;
  }
  const size_t batch = x_count / cfg.in_features;

  /* packed: uint8 [packed_size], a model constant read in place. */
  const size_t need = gq_fc_packed_size(cfg.bits, cfg.in_features, cfg.out_features);
  if (need == 0) {
    gq_report(context, GQ_OP_NAME " (node %d): the packed size for bits=%d, in_features=%zu, "
              "out_features=%zu does not fit in memory.", n, cfg.bits, cfg.in_features,
              cfg.out_features);
    return kTfLiteError;
  }
  if (!gq_check_tensor(context, GQ_OP_NAME, n, in[1], kInputNames[1], kTfLiteUInt8, 1,
                       &packed_count)) {
    return kTfLiteError;
  }
  if (packed_count != need) {
    gq_report(context, GQ_OP_NAME " (node %d): expected packed weights of %zu bytes for bits=%d, "
              "in_features=%zu, out_features=%zu (planes64 layout), received %zu bytes.", n, need,
              cfg.bits, cfg.in_features, cfg.out_features, packed_count);
    return kTfLiteError;
  }
  if (in[1]->allocation_type != kTfLiteMmapRo || in[1]->data == NULL) {
    gq_report(context, GQ_OP_NAME " (node %d): expected packed weights to be a constant of the "
              "model (read-only allocation with data), received allocation type %d%s.", n,
              (int)in[1]->allocation_type, in[1]->data == NULL ? " without data" : "");
    return kTfLiteError;
  }

  /* centroids: float32 [2**bits] */
  if (!gq_check_tensor(context, GQ_OP_NAME, n, in[2], kInputNames[2], kTfLiteFloat32, 1,
                       &cent_count)) {
    return kTfLiteError;
  }
  if (cent_count != ((size_t)1 << cfg.bits)) {
    gq_report(context, GQ_OP_NAME " (node %d): expected centroids of shape [%zu] (2**bits, "
              "bits=%d), received %s.", n, (size_t)1 << cfg.bits, cfg.bits,
              gq_shape_str(in[2]->dims, shape, sizeof shape));
    return kTfLiteError;
  }

  /* bias: float32 [out] */
  if (has_bias) {
    if (!gq_check_tensor(context, GQ_OP_NAME, n, in[3], kInputNames[3], kTfLiteFloat32, 1,
                         &bias_count)) {
      return kTfLiteError;
    }
    if (bias_count != cfg.out_features) {
      gq_report(context, GQ_OP_NAME " (node %d): expected bias of shape [%zu] (out_features), "
                "received %s.", n, cfg.out_features,
                gq_shape_str(in[3]->dims, shape, sizeof shape));
      return kTfLiteError;
    }
  }

  /* output: float32, writable, shape of x with the last dim = out */
  if (out->type != kTfLiteFloat32) {
    gq_report(context, GQ_OP_NAME " (node %d): expected output of type FLOAT32, received %s "
              "(%d).", n, gq_type_name((int)out->type), (int)out->type);
    return kTfLiteError;
  }
  if (out->allocation_type == kTfLiteMmapRo || out->allocation_type == kTfLitePersistentRo) {
    gq_report(context, GQ_OP_NAME " (node %d): the output tensor is a read-only constant.", n);
    return kTfLiteError;
  }
  if (batch != 0 && cfg.out_features > SIZE_MAX / sizeof(float) / batch) {
    gq_report(context, GQ_OP_NAME " (node %d): output of %zu x %zu floats does not fit in memory.",
              n, batch, cfg.out_features);
    return kTfLiteError;
  }
  size_t out_shape[16]; /* x's shape, the last dimension out_features */
  for (int i = 0; i < x_rank; ++i) {
    out_shape[i] = (size_t)in[0]->dims->data[i];
  }
  out_shape[x_rank - 1] = cfg.out_features;
  if (gq_resize_output(context, GQ_OP_NAME, n, out, "the output", x_rank, out_shape) !=
      kTfLiteOk) {
    return kTfLiteError;
  }

  op->bits = cfg.bits;
  op->activation = cfg.activation;
  op->in_features = cfg.in_features;
  op->out_features = cfg.out_features;
  op->has_bias = has_bias;
  {
    const size_t ws_need = gq_fc_parallel_workspace(gq_pool_threads(op->delegate->pool), batch,
                                                 cfg.in_features);
    if (ws_need == 0 && batch != 0) {
      gq_report(context, GQ_OP_NAME " (node %d): kernel workspace for batch %zu x %zu inputs does "
                "not fit in memory.", n, batch, cfg.in_features);
      return kTfLiteError;
    }
    if (!gq_grow_aligned(&op->workspace, &op->workspace_size, ws_need)) {
      gq_report(context, GQ_OP_NAME " (node %d): out of memory (%zu bytes of kernel workspace).",
                n, ws_need);
      return kTfLiteError;
    }
    op->codebook_constant = in[2]->allocation_type == kTfLiteMmapRo && in[2]->data != NULL;
    if (op->kernel->qd8 && op->codebook_constant) {
      gq_fc_codebook_init(&op->codebook, (const float*)in[2]->data, cfg.bits);
    }
  }
  op->batch = batch;
  op->ready = 1;
  return kTfLiteOk;
}

static TfLiteStatus fc_invoke(TfLiteContext* context, TfLiteNode* node) {
  gq_fc_op* op = (gq_fc_op*)node->user_data;
  if (op == NULL || !op->ready) {
    gq_report(context, GQ_OP_NAME ": invoked before a successful prepare.");
    return kTfLiteError;
  }
  const int n = op->node.node_index;
  /* Indices were range-checked in prepare; pointers are fetched again
   * because the runtime may move tensor storage between prepare and invoke. */
  const TfLiteTensor* x = &context->tensors[op->node.tensors[0]];
  const TfLiteTensor* packed = &context->tensors[op->node.tensors[1]];
  const TfLiteTensor* cent = &context->tensors[op->node.tensors[2]];
  const TfLiteTensor* bias = op->has_bias ? &context->tensors[op->node.tensors[3]] : NULL;
  TfLiteTensor* y = &context->tensors[op->node.tensors[op->node.num_inputs]];
  const size_t x_bytes = op->batch * op->in_features * sizeof(float);
  const size_t y_bytes = op->batch * op->out_features * sizeof(float);
  if (x->bytes != x_bytes || y->bytes != y_bytes) {
    gq_report(context, GQ_OP_NAME " (node %d): tensor sizes changed since prepare (x %zu bytes, "
              "expected %zu; output %zu bytes, expected %zu).", n, x->bytes, x_bytes, y->bytes,
              y_bytes);
    return kTfLiteError;
  }
  if (op->batch == 0) {
    return kTfLiteOk;
  }
  if (x->data == NULL || packed->data == NULL || cent->data == NULL || y->data == NULL ||
      (bias != NULL && bias->data == NULL)) {
    gq_report(context, GQ_OP_NAME " (node %d): an input or output tensor has no data.", n);
    return kTfLiteError;
  }
  if (op->kernel->qd8 && !op->codebook_constant) {
    gq_fc_codebook_init(&op->codebook, (const float*)cent->data, op->bits);
  }
  gq_fc_args args;
  args.batch = op->batch;
  args.in_features = op->in_features;
  args.out_features = op->out_features;
  args.bits = op->bits;
  args.activation = op->activation;
  args.x = (const float*)x->data;
  args.packed = (const uint8_t*)packed->data;
  args.centroids = (const float*)cent->data;
  args.codebook = &op->codebook;
  args.bias = bias != NULL ? (const float*)bias->data : NULL;
  args.y = (float*)y->data;
  args.workspace = op->workspace;
  gq_fc_run_parallel(op->delegate->pool, op->kernel, &args);
  return kTfLiteOk;
}

static void* fc_init(TfLiteContext* context, const char* buffer, size_t length) {
  (void)length;
  gq_fc_op* op = calloc(1, sizeof *op);
  if (op == NULL) {
    return NULL;
  }
  const TfLiteDelegateParams* params = gq_node_params(&op->node, buffer);
  if (params == NULL) {
    return op;
  }
  const gq_delegate* delegate = (const gq_delegate*)params->delegate;
  op->kernel = delegate->kernel;
  op->delegate = (gq_delegate*)params->delegate;
  gq_node_copy_in(context, &op->node);
  return op;
}

static void fc_free(TfLiteContext* context, void* buffer) {
  (void)context;
  gq_fc_op* op = (gq_fc_op*)buffer;
  if (op != NULL) {
    gq_node_free(&op->node);
    free(op->workspace);
    free(op);
  }
}

/* ------------------------------------------------------------- delegate */

/* Refuses to run when TfLiteTensor's size here differs from the runtime's:
 * every tensor access would then read the wrong record. Only checkable when
 * the runtime fills the GetTensor slot, which TF 2.21 and LiteRT 2.3 leave
 * NULL; there the tests (tensors at high indices, in both runtimes) and the
 * bytes-versus-shape check of every tensor in prepare stand in for it. */
static TfLiteStatus check_tensor_abi(TfLiteContext* context) {
  if (context->GetTensor == NULL || context->tensors == NULL || context->tensors_size == 0 ||
      context->tensors_size > (size_t)INT32_MAX) {
    return kTfLiteOk;
  }
  const int last = (int)(context->tensors_size - 1);
  const TfLiteTensor* theirs = context->GetTensor(context, last);
  if (theirs != NULL && theirs != &context->tensors[last]) {
    gq_report(context, "gq_delegate: TfLiteTensor ABI mismatch (this library assumes %zu bytes per "
              "tensor); rebuild the delegate for this runtime.", sizeof(TfLiteTensor));
    return kTfLiteError;
  }
  return kTfLiteOk;
}

/* Every ReplaceNodeSubsetsWithDelegateKernels call runs the runtime's graph
 * partitioner, which trusts the node's tensor lists: TF 2.21's crashes when a
 * node reads a tensor that it or a later node writes (a cycle), and a
 * malformed model can ask for that. So a node is checked before it is
 * claimed; producer[t] is the last plan position that writes tensor t. */
static TfLiteStatus check_claim(TfLiteContext* context, const TfLiteIntArray* plan, int position,
                                const TfLiteNode* node, const int* producer, const char* op_name) {
  const int n = plan->data[position];
  if (node->inputs == NULL || node->outputs == NULL) {
    gq_report(context, "%s (node %d): the node has no input or output list.", op_name, n);
    return kTfLiteError;
  }
  const size_t last = context->tensors_size == 0 ? 0 : context->tensors_size - 1;
  for (int k = 0; k < node->inputs->size; ++k) {
    const int t = node->inputs->data[k];
    if (t == kTfLiteOptionalTensor) {
      continue;
    }
    if (t < 0 || (size_t)t >= context->tensors_size) {
      gq_report(context, "%s (node %d): input %d has tensor index %d, expected 0..%zu.", op_name,
                n, k, t, last);
      return kTfLiteError;
    }
    if (producer[t] >= position) {
      gq_report(context, "%s (node %d): input %d (tensor %d) is written by node %d, which does not "
                "run before it: the graph has a cycle.", op_name, n, k, t, plan->data[producer[t]]);
      return kTfLiteError;
    }
  }
  for (int k = 0; k < node->outputs->size; ++k) {
    const int t = node->outputs->data[k];
    if (t < 0 || (size_t)t >= context->tensors_size) {
      gq_report(context, "%s (node %d): output %d has tensor index %d, expected 0..%zu.", op_name,
                n, k, t, last);
      return kTfLiteError;
    }
  }
  return kTfLiteOk;
}

static TfLiteStatus delegate_prepare(TfLiteContext* context, TfLiteDelegate* delegate) {
  if (check_tensor_abi(context) != kTfLiteOk) {
    return kTfLiteError;
  }
  gq_delegate* gq = (gq_delegate*)delegate;
  const int threads = context->recommended_num_threads > 1 ? context->recommended_num_threads : 1;
  if (gq->pool == NULL && threads > 1) {
    gq->pool = gq_pool_create(threads < 64 ? threads : 64); /* NULL: run on one thread */
  }
  TfLiteIntArray* plan = NULL;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk || plan == NULL || plan->size < 0 ||
      context->tensors_size > (size_t)INT32_MAX) {
    gq_report(context, "gq_delegate: cannot read the execution plan.");
    return kTfLiteError;
  }
  /* The plan changes with every replacement: collect first, replace after. */
  int* claimed = malloc(((size_t)plan->size + 1) * sizeof(int));
  unsigned char* claimed_lstm = malloc((size_t)plan->size + 1); /* 1: GQ_LSTM, 0: GQ_FC */
  int* producer = malloc((context->tensors_size + 1) * sizeof(int));
  TfLiteIntArray* one = malloc(sizeof(TfLiteIntArray) + sizeof(int));
  TfLiteStatus status = kTfLiteOk;
  if (claimed == NULL || claimed_lstm == NULL || producer == NULL || one == NULL) {
    gq_report(context, "gq_delegate: out of memory.");
    status = kTfLiteError;
  }
  int count = 0;
  if (status == kTfLiteOk) {
    for (size_t t = 0; t < context->tensors_size; ++t) {
      producer[t] = -1;
    }
    for (int i = 0; i < plan->size; ++i) {
      TfLiteNode* node = NULL;
      TfLiteRegistration* reg = NULL;
      if (context->GetNodeAndRegistration(context, plan->data[i], &node, &reg) != kTfLiteOk ||
          node == NULL || node->outputs == NULL) {
        continue;
      }
      for (int k = 0; k < node->outputs->size; ++k) {
        const int t = node->outputs->data[k];
        if (t >= 0 && (size_t)t < context->tensors_size) {
          producer[t] = i;
        }
      }
    }
  }
  for (int i = 0; i < plan->size && status == kTfLiteOk; ++i) {
    TfLiteNode* node = NULL;
    TfLiteRegistration* reg = NULL;
    if (context->GetNodeAndRegistration(context, plan->data[i], &node, &reg) != kTfLiteOk ||
        node == NULL || reg == NULL) {
      continue;
    }
    if (reg->builtin_code != kTfLiteBuiltinCustom || reg->custom_name == NULL) {
      continue;
    }
    const int is_lstm = strcmp(reg->custom_name, GQ_LSTM_OP_NAME) == 0;
    if (is_lstm || strcmp(reg->custom_name, GQ_OP_NAME) == 0) {
      status = check_claim(context, plan, i, node, producer, reg->custom_name);
      claimed_lstm[count] = (unsigned char)is_lstm;
      claimed[count++] = plan->data[i];
    }
  }
  for (int i = 0; i < count && status == kTfLiteOk; ++i) {
    TfLiteRegistration kernel;
    memset(&kernel, 0, sizeof kernel); /* trailing fields must read as zero */
    kernel.init = claimed_lstm[i] ? gq_lstm_init : fc_init;
    kernel.free = claimed_lstm[i] ? gq_lstm_free : fc_free;
    kernel.prepare = claimed_lstm[i] ? gq_lstm_prepare : fc_prepare;
    kernel.invoke = claimed_lstm[i] ? gq_lstm_invoke : fc_invoke;
    kernel.builtin_code = kTfLiteBuiltinDelegate;
    kernel.custom_name = GQ_KERNEL_NODE_NAME;
    kernel.version = 1;
    one->size = 1;
    one->data[0] = claimed[i];
    status = context->ReplaceNodeSubsetsWithDelegateKernels(context, kernel, one, delegate);
  }
  free(one);
  free(producer);
  free(claimed_lstm);
  free(claimed);
  return status;
}

/* --------------------------------------------------------- plugin ABI */

static void plugin_error(void (*report_error)(const char*), const char* fmt, ...)
    GQ_PRINTF(2, 3);

static void plugin_error(void (*report_error)(const char*), const char* fmt, ...) {
  char msg[GQ_MSG_LEN];
  va_list args;
  va_start(args, fmt);
  vsnprintf(msg, sizeof msg, fmt, args);
  va_end(args);
  if (report_error != NULL) {
    report_error(msg);
  }
}

GQ_EXPORT TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                                        void (*report_error)(const char*));

/* ", 'a', 'b'" for the kernels this CPU runs. */
static void kernel_list(char* out, size_t len) {
  size_t o = 0;
  out[0] = '\0';
  for (size_t i = 0; i < gq_fc_kernel_count(); ++i) {
    const gq_fc_kernel_info* k = gq_fc_kernel_at(i);
    if (gq_fc_kernel_supported(k) && o < len) {
      const int w = snprintf(out + o, len - o, ", '%s'", k->name);
      o += w > 0 ? (size_t)w : 0;
    }
  }
}

static int kernel_compiled(const char* name) {
  for (size_t i = 0; i < gq_fc_kernel_count(); ++i) {
    if (strcmp(gq_fc_kernel_at(i)->name, name) == 0) {
      return 1;
    }
  }
  return 0;
}
GQ_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate);

GQ_EXPORT TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                                        void (*report_error)(const char*)) {
  /* "auto" is the best kernel this build has for this CPU. */
  const gq_fc_kernel_info* kernel = gq_fc_kernel_find("auto");
  for (size_t i = 0; i < n; ++i) {
    const char* key = keys != NULL ? keys[i] : NULL;
    const char* value = values != NULL ? values[i] : NULL;
    char shown_key[96], shown_value[96];
    if (key == NULL || value == NULL) {
      plugin_error(report_error, "gq_delegate: option %zu has no key or no value.", i);
      return NULL;
    }
    if (strcmp(key, "kernel") != 0) {
      plugin_error(report_error, "gq_delegate: unknown option '%s' (known options: kernel).",
                   gq_printable(key, strlen(key), shown_key, sizeof shown_key));
      return NULL;
    }
    kernel = gq_fc_kernel_find(value);
    if (kernel == NULL) {
      char known[256];
      kernel_list(known, sizeof known);
      plugin_error(report_error, "gq_delegate: expected option kernel in 'auto'%s, received "
                   "'%s'%s.", known, gq_printable(value, strlen(value), shown_value,
                                                  sizeof shown_value),
                   kernel_compiled(value) ? " (compiled in, but this CPU lacks its instructions)"
                                          : "");
      return NULL;
    }
  }
  gq_delegate* d = calloc(1, sizeof *d);
  if (d == NULL) {
    plugin_error(report_error, "gq_delegate: out of memory.");
    return NULL;
  }
  d->base.data_ = d;
  d->base.Prepare = delegate_prepare;
  /* Without this flag the runtime prepares the unresolved custom-op
   * placeholder before delegation, which fails. */
  d->base.flags = kTfLiteDelegateFlagsAllowDynamicTensors;
  d->kernel = kernel;
  return &d->base;
}

GQ_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  if (delegate != NULL) {
    gq_pool_destroy(((gq_delegate*)delegate)->pool);
  }
  free(delegate); /* the gq_delegate starts with its TfLiteDelegate */
}
