/* The part of the TensorFlow Lite C ABI that the GQ delegate touches.
 *
 * Neither the TensorFlow nor the LiteRT wheel ships TFLite's headers, and the
 * project does not copy third-party header text, so these are the project's
 * own declarations. Only the memory layout has to agree with the runtime:
 * field order, field types and (where the runtime indexes arrays of them or
 * reads them by value) the full struct size. Names follow TFLite's so that
 * the code reads like any other delegate.
 *
 * Rules of thumb used here, from TFLite's "append only" ABI policy:
 *  - structs the runtime hands us (TfLiteContext, TfLiteNode, TfLiteTensor
 *    behind a pointer) only need to be right up to the last field we read;
 *    they are nonetheless declared further where the order is known, and
 *    tests run the delegate in every supported runtime;
 *  - structs we hand to the runtime (TfLiteDelegate, which it keeps a pointer
 *    to, and TfLiteRegistration, which it receives *by value*) must be at
 *    least as large as the runtime's own definition and zero-filled: the
 *    runtime reads trailing fields that older releases did not have;
 *  - TfLiteTensor must have the runtime's exact size because
 *    TfLiteContext.tensors is an array of them; the delegate checks this at
 *    run time against TfLiteContext.GetTensor where the runtime provides it
 *    (TF 2.21 and LiteRT 2.3 do not: tests/converters/test_delegate.py is the check).
 *
 * Layout facts were taken from TFLite's public common.h / c_api_types.h
 * (TensorFlow 2.21 era, LiteRT 2.3); older runtimes are prefixes of it.
 * Targets: LP64 and ILP32 with the platform's natural C alignment. */
#ifndef GQ_TFLITE_ABI_H_
#define GQ_TFLITE_ABI_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- enums (stored as C enums, i.e. int-sized, in every struct below) ---- */

typedef enum TfLiteStatus {
  kTfLiteOk = 0,
  kTfLiteError = 1,
  kTfLiteDelegateError = 2,
} TfLiteStatus;

/* Only the element types the delegate names; the runtime may store others,
 * which the delegate treats as "wrong type" by value. */
typedef enum TfLiteType {
  kTfLiteNoType = 0,
  kTfLiteFloat32 = 1,
  kTfLiteInt32 = 2,
  kTfLiteUInt8 = 3,
  kTfLiteInt64 = 4,
  kTfLiteString = 5,
  kTfLiteBool = 6,
  kTfLiteInt16 = 7,
  kTfLiteComplex64 = 8,
  kTfLiteInt8 = 9,
  kTfLiteFloat16 = 10,
  kTfLiteFloat64 = 11,
} TfLiteType;

typedef enum TfLiteAllocationType {
  kTfLiteMemNone = 0,
  kTfLiteMmapRo = 1, /* model constants: read-only, live as long as the model */
  kTfLiteArenaRw = 2,
  kTfLiteArenaRwPersistent = 3,
  kTfLiteDynamic = 4,
  kTfLitePersistentRo = 5,
  kTfLiteCustom = 6,
  kTfLiteVariantObject = 7,
  kTfLiteNonCpu = 8,
} TfLiteAllocationType;

/* Bit flags of TfLiteDelegate.flags. */
enum {
  kTfLiteDelegateFlagsNone = 0,
  kTfLiteDelegateFlagsAllowDynamicTensors = 1,
  kTfLiteDelegateFlagsRequirePropagatedShapes = 2,
  kTfLiteDelegateFlagsPerOperatorProfiling = 4,
};

/* BuiltinOperator codes from the model schema. */
enum {
  kTfLiteBuiltinCustom = 32,
  kTfLiteBuiltinDelegate = 51,
};

/* A tensor index that stands for "no tensor" (an omitted optional input). */
#define kTfLiteOptionalTensor (-1)

/* ---- plain data ---- */

/* Length-prefixed int array (shapes, tensor index lists). A flexible array
 * member: allocate sizeof(TfLiteIntArray) + n * sizeof(int). The runtime frees
 * arrays it takes ownership of (ResizeTensor) with free(). */
typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;

/* Legacy per-tensor quantization, embedded by value in TfLiteTensor. */
typedef struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;

/* Newer quantization descriptor, embedded by value in TfLiteTensor. */
typedef struct TfLiteQuantization {
  int type; /* a C enum in TFLite: int-sized */
  void* params;
} TfLiteQuantization;

struct TfLiteDelegate;
struct TfLiteContext;
struct TfLiteRegistration;

/* The runtime's tensor record. The data field is a union of pointers in
 * TFLite; one void* has the same size and alignment. */
typedef struct TfLiteTensor {
  TfLiteType type;
  void* data;
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  TfLiteAllocationType allocation_type;
  size_t bytes;
  const void* allocation;
  const char* name;
  struct TfLiteDelegate* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void* sparsity;
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

/* One node of the graph. custom_initial_data is the op's custom options,
 * pointing into the model buffer. */
typedef struct TfLiteNode {
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
  struct TfLiteDelegate* delegate;
  bool might_have_side_effect;
} TfLiteNode;

/* What a delegate kernel's init receives (as its buffer argument) for the
 * subset of nodes it replaces. */
typedef struct TfLiteDelegateParams {
  struct TfLiteDelegate* delegate;
  TfLiteIntArray* nodes_to_replace;
  TfLiteIntArray* input_tensors;
  TfLiteIntArray* output_tensors;
} TfLiteDelegateParams;

/* The interpreter's view handed to kernels and delegates. Function pointers
 * the delegate never calls are declared with generic signatures (void*
 * arguments have the same size); only the slot positions matter for them. */
typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context, TfLiteIntArray** plan);
  TfLiteTensor* tensors;
  void* impl_;
  /* Takes ownership of new_size (freed by the runtime with free()). */
  TfLiteStatus (*ResizeTensor)(struct TfLiteContext* context, TfLiteTensor* tensor,
                               TfLiteIntArray* new_size);
  void (*ReportError)(struct TfLiteContext* context, const char* format, ...);
  TfLiteStatus (*AddTensors)(struct TfLiteContext* context, int count, int* first_new_index);
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext* context, int node_index,
                                         TfLiteNode** node,
                                         struct TfLiteRegistration** registration);
  /* The registration is passed BY VALUE: see TfLiteRegistration. Does not take
   * ownership of nodes_to_replace. */
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext* context,
                                                        struct TfLiteRegistration registration,
                                                        const TfLiteIntArray* nodes_to_replace,
                                                        struct TfLiteDelegate* delegate);
  int recommended_num_threads;
  void* (*GetExternalContext)(struct TfLiteContext* context, int type);
  void (*SetExternalContext)(struct TfLiteContext* context, int type, void* external);
  bool allow_fp32_relax_to_fp16;
  void* profiler;
  void* (*AllocatePersistentBuffer)(struct TfLiteContext* context, size_t bytes);
  TfLiteStatus (*AllocateBufferForEval)(struct TfLiteContext* context, size_t bytes, void** ptr);
  TfLiteStatus (*RequestScratchBufferInArena)(struct TfLiteContext* context, size_t bytes,
                                              int* buffer_index);
  void* (*GetScratchBuffer)(struct TfLiteContext* context, int buffer_index);
  TfLiteStatus (*ResizeTensorExplicit)(struct TfLiteContext* context, TfLiteTensor* tensor,
                                       int dims, const int* shape);
  TfLiteStatus (*PreviewDelegatePartitioning)(struct TfLiteContext* context,
                                              const TfLiteIntArray* nodes_to_replace,
                                              TfLiteDelegateParams** partition_params,
                                              int* num_partitions);
  /* May be NULL; the delegate uses it only to check the TfLiteTensor size. */
  TfLiteTensor* (*GetTensor)(const struct TfLiteContext* context, int tensor_index);
  /* Later slots (GetEvalTensor, GetModelMetadata, subgraph context access and,
   * on Windows only, int-array helpers) are never touched and not declared:
   * the delegate never allocates a TfLiteContext. */
} TfLiteContext;

/* An op implementation, also used for delegate kernels. Passed by value to
 * ReplaceNodeSubsetsWithDelegateKernels, so it must be declared with all
 * fields of the newest runtime (it has grown three times) and zero-filled. */
typedef struct TfLiteRegistration {
  void* (*init)(TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const TfLiteContext* context, const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name; /* NULL for builtins */
  int version;
  void* registration_external; /* TfLiteOperator*; NULL for us */
  void* (*async_kernel)(TfLiteContext* context, TfLiteNode* node);
  uint64_t inplace_operator; /* a bit mask; 0 = no in-place sharing */
} TfLiteRegistration;

/* A delegate instance, owned by the plugin; the runtime keeps a pointer. */
typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context, struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                       int buffer_handle, TfLiteTensor* tensor);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                     int buffer_handle, TfLiteTensor* tensor);
  void (*FreeBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                           int* buffer_handle);
  int64_t flags;
  /* When non-NULL the runtime would use it instead of Prepare: keep NULL. */
  void* opaque_delegate_builder;
} TfLiteDelegate;

/* Compile-time checks of the LP64 layout (the offsets a mismatch would move
 * first); other data models are trusted to follow the same C rules. */
#if defined(__LP64__) || defined(_LP64)
_Static_assert(sizeof(TfLiteTensor) == 112, "TfLiteTensor size (LP64)");
_Static_assert(offsetof(TfLiteTensor, bytes) == 40, "TfLiteTensor.bytes offset (LP64)");
_Static_assert(offsetof(TfLiteNode, custom_initial_data) == 48, "TfLiteNode layout (LP64)");
_Static_assert(offsetof(TfLiteContext, ReplaceNodeSubsetsWithDelegateKernels) == 64,
               "TfLiteContext layout (LP64)");
_Static_assert(offsetof(TfLiteContext, GetTensor) == 160, "TfLiteContext layout (LP64)");
_Static_assert(sizeof(TfLiteRegistration) == 88, "TfLiteRegistration size (LP64)");
_Static_assert(sizeof(TfLiteDelegate) == 56, "TfLiteDelegate size (LP64)");
#endif

#ifdef __cplusplus
}
#endif

#endif /* GQ_TFLITE_ABI_H_ */
