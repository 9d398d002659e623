/* Helpers shared by the delegate's ops (gq_common.h). C11 + POSIX. */
/* posix_memalign: Android's libc declares C11 aligned_alloc only from API 28,
 * and the delegate is built for API 24 too. */
#define _POSIX_C_SOURCE 200112L
#include "gq_common.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/gq_fc.h"

/* ---------------------------------------------------------------- errors */

void gq_report(TfLiteContext* context, const char* fmt, ...) {
  char msg[GQ_MSG_LEN];
  va_list args;
  va_start(args, fmt);
  vsnprintf(msg, sizeof msg, fmt, args);
  va_end(args);
  if (context != NULL && context->ReportError != NULL) {
    context->ReportError(context, "%s", msg);
  }
}

const char* gq_printable(const char* s, size_t len, char* out, size_t out_len) {
  /* Room is kept for one escape (4), "..." (3) and the NUL. */
  size_t o = 0, i = 0;
  for (; i < len && o + 8 <= out_len; ++i) {
    const unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out[o++] = (char)c;
    } else {
      o += (size_t)snprintf(out + o, out_len - o, "\\x%02x", c);
    }
  }
  if (i < len) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

const char* gq_type_name(int type) {
  switch (type) {
    case kTfLiteNoType: return "NOTYPE";
    case kTfLiteFloat32: return "FLOAT32";
    case kTfLiteInt32: return "INT32";
    case kTfLiteUInt8: return "UINT8";
    case kTfLiteInt64: return "INT64";
    case kTfLiteString: return "STRING";
    case kTfLiteBool: return "BOOL";
    case kTfLiteInt16: return "INT16";
    case kTfLiteComplex64: return "COMPLEX64";
    case kTfLiteInt8: return "INT8";
    case kTfLiteFloat16: return "FLOAT16";
    case kTfLiteFloat64: return "FLOAT64";
    default: return "type code";
  }
}

const char* gq_shape_str(const TfLiteIntArray* dims, char* out, size_t out_len) {
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

size_t gq_mul_size(size_t a, size_t b, int* ok) {
  if (a != 0 && b > SIZE_MAX / a) {
    *ok = 0;
    return 0;
  }
  return a * b;
}

int gq_grow_aligned(void** buffer, size_t* size, size_t need) {
  if (need <= *size) {
    return 1;
  }
  /* 64-byte aligned, for the SIMD kernels' row buffers. */
  void* grown = NULL;
  if (posix_memalign(&grown, 64, need) != 0) {
    return 0;
  }
  free(*buffer);
  *buffer = grown;
  *size = need;
  return 1;
}

/* ---------------------------------------------------------------- options */

const char* gq_flex_status_text(int status) {
  switch (status) {
    case GQ_FLEX_MALFORMED: return "malformed flexbuffer";
    case GQ_FLEX_NOT_MAP: return "the flexbuffer root is not a map";
    case GQ_FLEX_MISSING: return "missing";
    case GQ_FLEX_WRONG_TYPE: return "wrong value type";
    default: return "unknown flexbuffer error";
  }
}

int gq_open_options(TfLiteContext* context, const char* op_name, int node,
                    const uint8_t* options, size_t options_len, const char* const* keys,
                    size_t num_keys, const char* keys_text, gq_flexmap* map) {
  if (options == NULL || options_len == 0) {
    gq_report(context, "%s (node %d): expected custom options (a flexbuffer map with keys %s), "
              "received none.", op_name, node, keys_text);
    return 0;
  }
  int status = gq_flexmap_open(map, options, options_len);
  if (status != GQ_FLEX_OK) {
    gq_report(context, "%s (node %d): expected custom options to be a flexbuffer map, received "
              "%zu bytes that are not one (%s).", op_name, node, options_len,
              gq_flex_status_text(status));
    return 0;
  }
  /* The key set must be exact: an unknown key means a writer newer than this
   * reader, whose meaning we would otherwise silently ignore. */
  int seen[GQ_MAX_OPTION_KEYS] = {0};
  for (size_t i = 0; i < map->count; ++i) {
    const char* key;
    size_t key_len;
    status = gq_flexmap_key_at(map, i, &key, &key_len);
    if (status != GQ_FLEX_OK) {
      gq_report(context, "%s (node %d): cannot read option key %zu of %zu: %s.", op_name, node, i,
                map->count, gq_flex_status_text(status));
      return 0;
    }
    size_t k = 0;
    while (k < num_keys &&
           !(strlen(keys[k]) == key_len && memcmp(keys[k], key, key_len) == 0)) {
      ++k;
    }
    if (k == num_keys) {
      char shown[96];
      gq_report(context, "%s (node %d): unknown option key '%s' (expected exactly the keys %s).",
                op_name, node, gq_printable(key, key_len, shown, sizeof shown), keys_text);
      return 0;
    }
    if (seen[k]++) {
      gq_report(context, "%s (node %d): option key '%s' appears more than once.", op_name, node,
                keys[k]);
      return 0;
    }
  }
  for (size_t k = 0; k < num_keys; ++k) {
    if (!seen[k]) {
      gq_report(context, "%s (node %d): missing option '%s' (expected exactly the keys %s).",
                op_name, node, keys[k], keys_text);
      return 0;
    }
  }
  return 1;
}

int gq_option_int(TfLiteContext* context, const char* op_name, int node, const gq_flexmap* map,
                  const char* key, int64_t* value) {
  const int status = gq_flexmap_get_int(map, key, value);
  if (status == GQ_FLEX_OK) {
    return 1;
  }
  if (status == GQ_FLEX_WRONG_TYPE) {
    gq_report(context, "%s (node %d): expected option '%s' to be an integer, received another "
              "flexbuffer type.", op_name, node, key);
  } else if (status == GQ_FLEX_MISSING) {
    /* Every key was found by the scan before, so the lookup (a binary
     * search) failed because the map's keys are not sorted. */
    gq_report(context, "%s (node %d): cannot look up option '%s': the custom options map is not "
              "sorted by key (not written by a flexbuffer writer).", op_name, node, key);
  } else {
    gq_report(context, "%s (node %d): cannot read option '%s': %s.", op_name, node, key,
              gq_flex_status_text(status));
  }
  return 0;
}

int gq_option_version(TfLiteContext* context, const char* op_name, int node,
                      const gq_flexmap* map, int version) {
  int64_t value;
  if (!gq_option_int(context, op_name, node, map, "version", &value)) {
    return 0;
  }
  if (value != version) {
    gq_report(context, "%s (node %d): expected option version %d, received version=%" PRId64
              " (a model written for a newer delegate?).", op_name, node, version, value);
    return 0;
  }
  return 1;
}

int gq_option_block_size(TfLiteContext* context, const char* op_name, int node,
                         const gq_flexmap* map) {
  int64_t block;
  if (!gq_option_int(context, op_name, node, map, "block_size", &block)) {
    return 0;
  }
  if (block != GQ_FC_BLOCK) {
    gq_report(context, "%s (node %d): expected option block_size=%d (layout planes64), received "
              "block_size=%" PRId64 ".", op_name, node, GQ_FC_BLOCK, block);
    return 0;
  }
  return 1;
}

/* ---------------------------------------------------------------- tensors */

TfLiteTensor* gq_tensor_at(TfLiteContext* context, const char* op_name, int node, int index,
                           const char* what) {
  if (index < 0 || (size_t)index >= context->tensors_size || context->tensors == NULL) {
    gq_report(context, "%s (node %d): %s has tensor index %d, expected 0..%zu.", op_name, node,
              what, index, context->tensors_size == 0 ? (size_t)0 : context->tensors_size - 1);
    return NULL;
  }
  return &context->tensors[index];
}

int gq_check_tensor(TfLiteContext* context, const char* op_name, int node, const TfLiteTensor* t,
                    const char* what, int type, int rank, size_t* count) {
  char shape[128];
  if (t->type != (TfLiteType)type) {
    gq_report(context, "%s (node %d): expected %s of type %s, received %s (%d).", op_name, node,
              what, gq_type_name(type), gq_type_name((int)t->type), (int)t->type);
    return 0;
  }
  if (t->dims == NULL || t->dims->size < 0 || t->dims->size > 16 ||
      (rank >= 0 ? t->dims->size != rank : t->dims->size < 1)) {
    if (rank >= 0) {
      gq_report(context, "%s (node %d): expected %s of rank %d, received shape %s.", op_name,
                node, what, rank, gq_shape_str(t->dims, shape, sizeof shape));
    } else {
      gq_report(context, "%s (node %d): expected %s of rank 1..16, received shape %s.", op_name,
                node, what, gq_shape_str(t->dims, shape, sizeof shape));
    }
    return 0;
  }
  /* Negative dims or size_t overflow: invalid. A zero dimension is legal. */
  int ok = 1;
  size_t n = 1;
  for (int i = 0; i < t->dims->size && ok; ++i) {
    if (t->dims->data[i] < 0) {
      ok = 0;
    } else {
      n = gq_mul_size(n, (size_t)t->dims->data[i], &ok);
    }
  }
  const size_t bytes = gq_mul_size(n, type == kTfLiteUInt8 ? 1 : 4, &ok);
  if (!ok) {
    gq_report(context, "%s (node %d): %s has an invalid shape %s.", op_name, node, what,
              gq_shape_str(t->dims, shape, sizeof shape));
    return 0;
  }
  if (t->bytes != bytes) {
    gq_report(context, "%s (node %d): %s of shape %s needs %zu bytes, the tensor has %zu.",
              op_name, node, what, gq_shape_str(t->dims, shape, sizeof shape), bytes, t->bytes);
    return 0;
  }
  *count = n;
  return 1;
}

TfLiteStatus gq_resize_output(TfLiteContext* context, const char* op_name, int node,
                              TfLiteTensor* out, const char* what, int rank, const size_t* shape) {
  TfLiteIntArray* dims = malloc(sizeof(TfLiteIntArray) + (size_t)rank * sizeof(int));
  if (dims == NULL) {
    gq_report(context, "%s (node %d): out of memory.", op_name, node);
    return kTfLiteError;
  }
  dims->size = rank;
  for (int i = 0; i < rank; ++i) {
    dims->data[i] = (int)shape[i]; /* every entry came from an int dimension */
  }
  /* ResizeTensor owns dims from here on, on success and failure. */
  if (context->ResizeTensor(context, out, dims) != kTfLiteOk) {
    gq_report(context, "%s (node %d): could not resize %s.", op_name, node, what);
    return kTfLiteError;
  }
  return kTfLiteOk;
}

/* ------------------------------------------------------------ init/prepare */

const TfLiteDelegateParams* gq_node_params(gq_node_copy* node, const char* buffer) {
  node->node_index = -1;
  const TfLiteDelegateParams* params = (const TfLiteDelegateParams*)(const void*)buffer;
  if (params == NULL || params->delegate == NULL || params->nodes_to_replace == NULL ||
      params->nodes_to_replace->size != 1) {
    node->init_error = "delegate kernel created without exactly one node to replace.";
    return NULL;
  }
  node->node_index = params->nodes_to_replace->data[0];
  return params;
}

void gq_node_copy_in(TfLiteContext* context, gq_node_copy* node) {
  TfLiteNode* orig = NULL;
  TfLiteRegistration* reg = NULL;
  if (context->GetNodeAndRegistration(context, node->node_index, &orig, &reg) != kTfLiteOk ||
      orig == NULL || reg == NULL) {
    node->init_error = "cannot look up the original node.";
    return;
  }
  node->op_version = reg->version;
  if (orig->inputs == NULL || orig->outputs == NULL || orig->inputs->size < 0 ||
      orig->outputs->size < 0 || orig->inputs->size > GQ_MAX_NODE_LIST ||
      orig->outputs->size > GQ_MAX_NODE_LIST) {
    node->init_error = "the node's input or output list is missing or implausibly long.";
    return;
  }
  node->num_inputs = orig->inputs->size;
  node->num_outputs = orig->outputs->size;
  node->tensors = malloc(((size_t)node->num_inputs + (size_t)node->num_outputs + 1) * sizeof(int));
  if (node->tensors == NULL) {
    node->init_error = "out of memory.";
    return;
  }
  memcpy(node->tensors, orig->inputs->data, (size_t)node->num_inputs * sizeof(int));
  memcpy(node->tensors + node->num_inputs, orig->outputs->data,
         (size_t)node->num_outputs * sizeof(int));
  if (orig->custom_initial_data != NULL && orig->custom_initial_data_size > 0) {
    node->options_len = (size_t)orig->custom_initial_data_size;
    node->options = malloc(node->options_len);
    if (node->options == NULL) {
      node->init_error = "out of memory.";
      return;
    }
    memcpy(node->options, orig->custom_initial_data, node->options_len);
  }
}

void gq_node_free(gq_node_copy* node) {
  free(node->tensors);
  free(node->options);
}

int gq_check_node(TfLiteContext* context, const char* op_name, const gq_node_copy* node,
                  int version) {
  if (node->init_error != NULL) {
    gq_report(context, "%s (node %d): %s", op_name, node->node_index, node->init_error);
    return 0;
  }
  if (node->op_version != version) {
    gq_report(context, "%s (node %d): expected op version %d, received version %d (a model "
              "written for a newer delegate?).", op_name, node->node_index, version,
              node->op_version);
    return 0;
  }
  return 1;
}
