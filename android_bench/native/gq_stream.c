/* gq_stream: the whole streaming recognizer of an export directory, natively.
 *
 *   gq_stream --tflite LIB --delegate LIB [--kernel K] [--threads N] [--max-symbols N]
 *             [--frame-ms MS] [--warmup N] EXPORT_DIR FEATURES.npy [FEATURES.npy ...]
 *
 * Loads the three step graphs of EXPORT_DIR (streaming.json: encoder chunk,
 * prediction, joint), each in a TFLite interpreter with the GQ delegate
 * (tflite_plugin_create_delegate of --delegate, option kernel=K), and
 * streams each features file (NumPy .npy, float32 [T, n_mels]) through them
 * as gq_speech.deploy.StreamingRecognizer does: chunks of chunk_frames
 * frames, the last completed with the feature mean, greedy RNN-T decoding
 * with at most --max-symbols symbols per encoder frame. Times are replayed
 * against the audio clock as gq_speech.deploy.stream_timed does (frame j is
 * ready at (j + 1) * frame_ms; UPL = when the final transcript is ready
 * minus the end of the audio).
 *
 * The TFLite C API is loaded with dlopen from --tflite (any build that
 * exports it: Debian's libtensorflow-lite, Android's libtensorflowlite_c),
 * so this program links only libc and libdl.
 *
 * Output: lines of tab-separated fields, the first naming the record
 * (android_bench.recognizer parses them; format version in the first line):
 *   gq_stream\t1
 *   runtime\t<TfLiteVersion()>\tkernel\t<K>\tthreads\t<N>
 *   utterance\t<i>\t<path>\tframes\t<T>\tchunks\t<n>\tupl_ms\t<x>\tbusy_ms\t<x>\ttokens\t<t,t,...>\ttext\t<text>
 *   chunk_ms\t<i>\t<ms>\t<ms>...        (every chunk's latency of utterance i)
 *   calls\t<i>\tencoder\t<n>\tprediction\t<n>\tjoint\t<n>
 *   summary\tutterances\t<n>\tchunks\t<n>\tchunk_p50_ms\t<x>\tchunk_p90_ms\t<x>\tupl_p50_ms\t<x>\tupl_p90_ms\t<x>
 *          \trtf\t<x>\tpeak_rss_kb\t<n>
 * Errors: one line "error\t<message>" on stderr and exit status 2.
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gq_json.h"

/* ------------------------------------------------------------ the TFLite C API, loaded at run time */

/* Opaque handles of the C API; enum values as the C API defines them. */
typedef struct TfLiteModel TfLiteModel;
typedef struct TfLiteInterpreterOptions TfLiteInterpreterOptions;
typedef struct TfLiteInterpreter TfLiteInterpreter;
typedef struct TfLiteTensor TfLiteTensor;
typedef struct TfLiteDelegate TfLiteDelegate;
enum { kStatusOk = 0 };
enum { kTypeFloat32 = 1, kTypeInt32 = 2 };

typedef struct {
  const char* (*Version)(void);
  TfLiteModel* (*ModelCreateFromFile)(const char*);
  void (*ModelDelete)(TfLiteModel*);
  TfLiteInterpreterOptions* (*OptionsCreate)(void);
  void (*OptionsDelete)(TfLiteInterpreterOptions*);
  void (*OptionsSetNumThreads)(TfLiteInterpreterOptions*, int32_t);
  void (*OptionsAddDelegate)(TfLiteInterpreterOptions*, TfLiteDelegate*);
  void (*OptionsSetErrorReporter)(TfLiteInterpreterOptions*, void (*)(void*, const char*, va_list), void*);
  TfLiteInterpreter* (*InterpreterCreate)(const TfLiteModel*, const TfLiteInterpreterOptions*);
  void (*InterpreterDelete)(TfLiteInterpreter*);
  int (*AllocateTensors)(TfLiteInterpreter*);
  int (*Invoke)(TfLiteInterpreter*);
  int32_t (*InputCount)(const TfLiteInterpreter*);
  TfLiteTensor* (*Input)(const TfLiteInterpreter*, int32_t);
  int32_t (*OutputCount)(const TfLiteInterpreter*);
  const TfLiteTensor* (*Output)(const TfLiteInterpreter*, int32_t);
  int (*TensorType)(const TfLiteTensor*);
  size_t (*TensorByteSize)(const TfLiteTensor*);
  const char* (*TensorName)(const TfLiteTensor*);
  int (*CopyFromBuffer)(TfLiteTensor*, const void*, size_t);
  int (*CopyToBuffer)(const TfLiteTensor*, void*, size_t);
} Api;

typedef TfLiteDelegate* (*CreateDelegateFn)(char**, char**, size_t, void (*)(const char*));
typedef void (*DestroyDelegateFn)(TfLiteDelegate*);

static void die(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  fputs("error\t", stderr);
  vfprintf(stderr, fmt, args);
  fputc('\n', stderr);
  va_end(args);
  exit(2);
}

static void* need_symbol(void* lib, const char* path, const char* name) {
  void* f = dlsym(lib, name);
  if (f == NULL) die("expected %s to export the TFLite C API function %s; it does not", path, name);
  return f;
}

static void load_api(const char* path, Api* api) {
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) die("cannot load the TFLite C library %s: %s", path, dlerror());
#define SYM(field, name) *(void**)(&api->field) = need_symbol(lib, path, name)
  SYM(Version, "TfLiteVersion");
  SYM(ModelCreateFromFile, "TfLiteModelCreateFromFile");
  SYM(ModelDelete, "TfLiteModelDelete");
  SYM(OptionsCreate, "TfLiteInterpreterOptionsCreate");
  SYM(OptionsDelete, "TfLiteInterpreterOptionsDelete");
  SYM(OptionsSetNumThreads, "TfLiteInterpreterOptionsSetNumThreads");
  SYM(OptionsAddDelegate, "TfLiteInterpreterOptionsAddDelegate");
  SYM(OptionsSetErrorReporter, "TfLiteInterpreterOptionsSetErrorReporter");
  SYM(InterpreterCreate, "TfLiteInterpreterCreate");
  SYM(InterpreterDelete, "TfLiteInterpreterDelete");
  SYM(AllocateTensors, "TfLiteInterpreterAllocateTensors");
  SYM(Invoke, "TfLiteInterpreterInvoke");
  SYM(InputCount, "TfLiteInterpreterGetInputTensorCount");
  SYM(Input, "TfLiteInterpreterGetInputTensor");
  SYM(OutputCount, "TfLiteInterpreterGetOutputTensorCount");
  SYM(Output, "TfLiteInterpreterGetOutputTensor");
  SYM(TensorType, "TfLiteTensorType");
  SYM(TensorByteSize, "TfLiteTensorByteSize");
  SYM(TensorName, "TfLiteTensorName");
  SYM(CopyFromBuffer, "TfLiteTensorCopyFromBuffer");
  SYM(CopyToBuffer, "TfLiteTensorCopyToBuffer");
#undef SYM
}

static char last_runtime_error[1024];

/* The runtime may report several lines for one failure (the op, then "Registration failed."): keep them all. */
static void report_runtime(void* user, const char* fmt, va_list args) {
  (void)user;
  size_t used = strlen(last_runtime_error);
  if (used + 3 >= sizeof(last_runtime_error)) return;
  if (used) {
    memcpy(last_runtime_error + used, "; ", 3);
    used += 2;
  }
  vsnprintf(last_runtime_error + used, sizeof(last_runtime_error) - used, fmt, args);
  for (char* c = last_runtime_error + used; *c; ++c)
    if (*c == '\n' || *c == '\t') *c = ' ';
}

static void report_delegate(const char* message) {
  snprintf(last_runtime_error, sizeof(last_runtime_error), "%s", message);
}

/* ------------------------------------------------------------ files */

static char* read_file(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) die("cannot open %s: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) != 0) die("cannot read %s", path);
  long n = ftell(f);
  if (n < 0 || fseek(f, 0, SEEK_SET) != 0) die("cannot read %s", path);
  char* buf = (char*)malloc((size_t)n + 1);
  if (buf == NULL) die("out of memory reading %s", path);
  if (fread(buf, 1, (size_t)n, f) != (size_t)n) die("cannot read %s", path);
  fclose(f);
  buf[n] = '\0';
  if (size) *size = (size_t)n;
  return buf;
}

/* A float32 [T, n_mels] .npy file (version 1-3, little-endian, C order). */
static float* read_npy(const char* path, int n_mels, long* frames) {
  size_t size;
  char* buf = read_file(path, &size);
  if (size < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) die("expected %s to be a NumPy .npy file; it is not", path);
  const int major = (unsigned char)buf[6];
  size_t header_len, offset;
  if (major == 1) {
    header_len = (unsigned char)buf[8] | ((size_t)(unsigned char)buf[9] << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) die("expected %s to be a NumPy .npy file; its header is cut", path);
    header_len = (unsigned char)buf[8] | ((size_t)(unsigned char)buf[9] << 8) |
                 ((size_t)(unsigned char)buf[10] << 16) | ((size_t)(unsigned char)buf[11] << 24);
    offset = 12;
  } else {
    die("expected a .npy file of format version 1-3; %s has version %d", path, major);
  }
  if (header_len > size - offset) die("expected %s to be a NumPy .npy file; its header is cut", path);
  char header[1024];
  const size_t hl = header_len < sizeof(header) - 1 ? header_len : sizeof(header) - 1;
  memcpy(header, buf + offset, hl);
  header[hl] = '\0';
  if (strstr(header, "'descr': '<f4'") == NULL)
    die("expected %s to hold float32 features ('<f4'); its header is %s", path, header);
  if (strstr(header, "'fortran_order': False") == NULL) die("expected %s in C order; its header is %s", path, header);
  const char* shape = strstr(header, "'shape': (");
  long t = -1, f = -1;
  if (shape == NULL || sscanf(shape, "'shape': (%ld, %ld)", &t, &f) != 2 || t < 0 || f < 0)
    die("expected %s to hold a 2-D array [frames, %d]; its header is %s", path, n_mels, header);
  if (f != n_mels) die("expected %s to hold [frames, %d] features; it holds [%ld, %ld]", path, n_mels, t, f);
  const size_t data = offset + header_len;
  if ((size_t)t * (size_t)f * 4 != size - data)
    die("expected %s to hold %ld x %ld float32 values (%ld bytes); it has %zu bytes of data", path, t, f, t * f * 4,
        size - data);
  float* out = (float*)malloc((size_t)(t * f + 1) * sizeof(float));
  if (out == NULL) die("out of memory reading %s", path);
  memcpy(out, buf + data, (size_t)(t * f) * sizeof(float));
  free(buf);
  *frames = t;
  return out;
}

/* ------------------------------------------------------------ one step graph */

#define MAX_IO 64

typedef struct {
  char name[128];        /* the manifest's name (a state, "features", "token", ...) */
  TfLiteTensor* tensor;  /* inputs */
  const TfLiteTensor* out;
  size_t bytes;
  int type;
  float* state;          /* a state's current value (inputs) */
} Io;

typedef struct {
  const char* part;
  TfLiteModel* model;
  TfLiteInterpreter* interpreter;
  Io in[MAX_IO], out[MAX_IO];
  int n_in, n_out;
  long calls;
} Graph;

static const GqJson* need(const GqJson* node, const char* key, GqJsonType type, const char* where) {
  const GqJson* v = gq_json_get(node, key);
  if (v == NULL || v->type != type) die("expected streaming.json %s to have a %s '%s'", where,
                                        type == GQ_JSON_STRING ? "text" : type == GQ_JSON_NUMBER ? "number" :
                                        type == GQ_JSON_ARRAY ? "list" : "object", key);
  return v;
}

static void open_graph(const Api* api, Graph* g, const char* dir, const GqJson* manifest, const char* part,
                       TfLiteDelegate* delegate, int threads) {
  char where[64];
  snprintf(where, sizeof(where), "graphs.%s", part);
  const GqJson* spec = need(need(manifest, "graphs", GQ_JSON_OBJECT, "(top level)"), part, GQ_JSON_OBJECT, "graphs");
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, need(spec, "file", GQ_JSON_STRING, where)->string);
  g->part = part;
  g->model = api->ModelCreateFromFile(path);
  if (g->model == NULL) die("cannot read the %s graph %s as a TFLite model", part, path);
  TfLiteInterpreterOptions* options = api->OptionsCreate();
  api->OptionsSetNumThreads(options, threads);
  api->OptionsSetErrorReporter(options, report_runtime, NULL);
  api->OptionsAddDelegate(options, delegate);
  last_runtime_error[0] = '\0';
  g->interpreter = api->InterpreterCreate(g->model, options);
  api->OptionsDelete(options);
  if (g->interpreter == NULL) die("cannot build an interpreter for %s: %s", path, last_runtime_error);
  if (api->AllocateTensors(g->interpreter) != kStatusOk) die("cannot allocate %s: %s", path, last_runtime_error);
  /* The manifest names each input and output and the model's tensor behind it. */
  for (int io = 0; io < 2; ++io) {
    const GqJson* rows = need(spec, io == 0 ? "inputs" : "outputs", GQ_JSON_ARRAY, where);
    if (rows->count > MAX_IO) die("expected at most %d %s of the %s graph", MAX_IO, io ? "outputs" : "inputs", part);
    const int32_t n = io == 0 ? api->InputCount(g->interpreter) : api->OutputCount(g->interpreter);
    /* Inputs one to one; two output names may share a tensor (a one-layer LSTM's output and its h state). */
    if (io == 0 ? (size_t)n != rows->count : (size_t)n > rows->count)
      die("expected the %s graph %s to have the %zu %s streaming.json lists; it has %d", part, path, rows->count,
          io ? "outputs" : "inputs", n);
    int k = 0;
    for (const GqJson* row = rows->child; row != NULL; row = row->next, ++k) {
      Io* slot = io == 0 ? &g->in[k] : &g->out[k];
      const char* name = need(row, "name", GQ_JSON_STRING, where)->string;
      const char* tensor = need(row, "tensor", GQ_JSON_STRING, where)->string;
      snprintf(slot->name, sizeof(slot->name), "%s", name);
      int found = 0;
      for (int32_t i = 0; i < n && !found; ++i) {
        const TfLiteTensor* t = io == 0 ? api->Input(g->interpreter, i) : api->Output(g->interpreter, i);
        const char* tn = api->TensorName(t);
        if (tn != NULL && strcmp(tn, tensor) == 0) {
          found = 1;
          if (io == 0) slot->tensor = api->Input(g->interpreter, i);
          slot->out = t;
          slot->bytes = api->TensorByteSize(t);
          slot->type = api->TensorType(t);
        }
      }
      if (!found) die("expected the %s graph %s to have the tensor '%s' (%s); it has not", part, path, tensor, name);
    }
    if (io == 0) g->n_in = k; else g->n_out = k;
  }
}

static Io* input(Graph* g, const char* name) {
  for (int i = 0; i < g->n_in; ++i)
    if (strcmp(g->in[i].name, name) == 0) return &g->in[i];
  die("expected the %s graph to have an input '%s'", g->part, name);
  return NULL;
}

static Io* output(Graph* g, const char* name) {
  for (int i = 0; i < g->n_out; ++i)
    if (strcmp(g->out[i].name, name) == 0) return &g->out[i];
  die("expected the %s graph to have an output '%s' in streaming.json (exports before 2026-12-05 may name a "
      "shared output once: export again)", g->part, name);
  return NULL;
}

/* The graph's state inputs (streaming.json "states") get zero values; each output of the same name feeds them back. */
static void init_states(Graph* g, const GqJson* manifest) {
  const GqJson* spec = gq_json_get(gq_json_get(manifest, "graphs"), g->part);
  const GqJson* states = need(spec, "states", GQ_JSON_ARRAY, g->part);
  for (const GqJson* s = states->child; s != NULL; s = s->next) {
    if (s->type != GQ_JSON_STRING) die("expected the %s graph's states to be names", g->part);
    Io* in = input(g, s->string);
    output(g, s->string);
    if (in->type != kTypeFloat32) die("expected the %s state '%s' to be float32", g->part, s->string);
    in->state = (float*)calloc(in->bytes / 4 + 1, sizeof(float));
    if (in->state == NULL) die("out of memory");
  }
}

static void zero_states(Graph* g) {
  for (int i = 0; i < g->n_in; ++i)
    if (g->in[i].state) memset(g->in[i].state, 0, g->in[i].bytes);
}

static void set(const Api* api, Io* io, const void* data, size_t bytes) {
  if (bytes != io->bytes) die("expected %zu bytes for input '%s'; the runner has %zu", io->bytes, io->name, bytes);
  if (api->CopyFromBuffer(io->tensor, data, bytes) != kStatusOk) die("cannot set input '%s'", io->name);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void run(const Api* api, Graph* g) {
  for (int i = 0; i < g->n_in; ++i)
    if (g->in[i].state) set(api, &g->in[i], g->in[i].state, g->in[i].bytes);
  if (api->Invoke(g->interpreter) != kStatusOk) die("the %s graph failed: %s", g->part, last_runtime_error);
  g->calls++;
  for (int i = 0; i < g->n_out; ++i) {
    for (int j = 0; j < g->n_in; ++j) {
      if (g->in[j].state && strcmp(g->in[j].name, g->out[i].name) == 0) {
        if (g->out[i].bytes != g->in[j].bytes) die("expected state '%s' to keep its size", g->out[i].name);
        api->CopyToBuffer(g->out[i].out, g->in[j].state, g->in[j].bytes);
      }
    }
  }
}

/* ------------------------------------------------------------ the recognizer */

typedef struct {
  const Api* api;
  Graph enc, pred, joint;
  int n_mels, chunk_frames, blank, vocab, max_symbols;
  size_t enc_dim, pred_dim;
  float* pad;          /* [n_mels] feature mean */
  float* pred_out;     /* current prediction output */
  float* enc_out;      /* [frames per chunk, enc_dim] */
  float* logits;
  int* tokens;
  size_t n_tokens, cap_tokens;
} Recognizer;

static void pred_step(Recognizer* r, int token) {
  const int32_t t = token;
  set(r->api, input(&r->pred, "token"), &t, sizeof(t));
  run(r->api, &r->pred);
  r->api->CopyToBuffer(output(&r->pred, "pred_out")->out, r->pred_out, r->pred_dim * sizeof(float));
}

static void reset(Recognizer* r) {
  zero_states(&r->enc);
  zero_states(&r->pred);
  r->n_tokens = 0;
  pred_step(r, r->blank);
}

static int argmax(const float* v, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;  /* the first maximum, as np.argmax */
  return best;
}

static void run_chunk(Recognizer* r, const float* chunk) {
  Io* feats = input(&r->enc, "features");
  set(r->api, feats, chunk, (size_t)r->chunk_frames * (size_t)r->n_mels * sizeof(float));
  run(r->api, &r->enc);
  Io* out = output(&r->enc, "encoder_out");
  const size_t frames = out->bytes / sizeof(float) / r->enc_dim;
  r->api->CopyToBuffer(out->out, r->enc_out, out->bytes);
  Io* enc_in = input(&r->joint, "enc");
  Io* pred_in = input(&r->joint, "pred");
  Io* logits = output(&r->joint, "logits");
  for (size_t f = 0; f < frames; ++f) {
    for (int s = 0; s < r->max_symbols; ++s) {
      set(r->api, enc_in, r->enc_out + f * r->enc_dim, r->enc_dim * sizeof(float));
      set(r->api, pred_in, r->pred_out, r->pred_dim * sizeof(float));
      run(r->api, &r->joint);
      r->api->CopyToBuffer(logits->out, r->logits, (size_t)r->vocab * sizeof(float));
      const int k = argmax(r->logits, r->vocab);
      if (k == r->blank) break;
      if (r->n_tokens == r->cap_tokens) {
        r->cap_tokens = r->cap_tokens ? 2 * r->cap_tokens : 256;
        r->tokens = (int*)realloc(r->tokens, r->cap_tokens * sizeof(int));
        if (r->tokens == NULL) die("out of memory");
      }
      r->tokens[r->n_tokens++] = k;
      pred_step(r, k);
    }
  }
}

/* ------------------------------------------------------------ statistics */

static int cmp_double(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

/* The q-th percentile with linear interpolation (NumPy's default). */
static double percentile(const double* values, size_t n, double q) {
  if (n == 0) return NAN;
  double* s = (double*)malloc(n * sizeof(double));
  if (s == NULL) die("out of memory");
  memcpy(s, values, n * sizeof(double));
  qsort(s, n, sizeof(double), cmp_double);
  const double pos = q / 100.0 * (double)(n - 1);
  const size_t lo = (size_t)floor(pos);
  const size_t hi = lo + 1 < n ? lo + 1 : lo;
  const double v = s[lo] + (pos - (double)lo) * (s[hi] - s[lo]);
  free(s);
  return v;
}

static long peak_rss_kb(void) {
  FILE* f = fopen("/proc/self/status", "r");
  if (f == NULL) return -1;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof(line), f))
    if (strncmp(line, "VmHWM:", 6) == 0) kb = strtol(line + 6, NULL, 10);
  fclose(f);
  return kb;
}

/* ------------------------------------------------------------ main */

static int int_value(const GqJson* node, const char* key, const char* where) {
  const double v = need(node, key, GQ_JSON_NUMBER, where)->number;
  if (v != floor(v) || v < 0 || v > 1e9) die("expected streaming.json %s '%s' to be a count; it is %g", where, key, v);
  return (int)v;
}

static void usage(void) {
  die("usage: gq_stream --tflite LIB --delegate LIB [--kernel K] [--threads N] [--max-symbols N] [--frame-ms MS] "
      "[--warmup N] EXPORT_DIR FEATURES.npy [FEATURES.npy ...]");
}

int main(int argc, char** argv) {
  const char *tflite = NULL, *delegate_path = NULL, *kernel = "auto";
  int threads = 1, max_symbols = 5, warmup = 1;
  double frame_ms = 10.0;
  int first = 1;
  for (; first < argc && strncmp(argv[first], "--", 2) == 0; first += 2) {
    if (first + 1 >= argc) usage();
    const char *key = argv[first], *value = argv[first + 1];
    char* end = NULL;
    if (strcmp(key, "--tflite") == 0) tflite = value;
    else if (strcmp(key, "--delegate") == 0) delegate_path = value;
    else if (strcmp(key, "--kernel") == 0) kernel = value;
    else if (strcmp(key, "--threads") == 0) threads = (int)strtol(value, &end, 10);
    else if (strcmp(key, "--max-symbols") == 0) max_symbols = (int)strtol(value, &end, 10);
    else if (strcmp(key, "--warmup") == 0) warmup = (int)strtol(value, &end, 10);
    else if (strcmp(key, "--frame-ms") == 0) frame_ms = strtod(value, &end);
    else die("unknown option %s", key);
    if (end != NULL && (*end != '\0' || end == value)) die("expected a number after %s; received '%s'", key, value);
  }
  if (tflite == NULL || delegate_path == NULL || argc - first < 2) usage();
  if (threads < 1 || max_symbols < 1 || warmup < 0 || !(frame_ms > 0)) die("expected positive --threads, "
      "--max-symbols, --frame-ms and --warmup >= 0");
  const char* dir = argv[first];

  char path[4096];
  snprintf(path, sizeof(path), "%s/streaming.json", dir);
  char error[256];
  char* text = read_file(path, NULL);
  GqJson* manifest = gq_json_parse(text, error, sizeof(error));
  free(text);
  if (manifest == NULL) die("expected %s to be JSON: %s", path, error);
  const GqJson* cfg = need(manifest, "config", GQ_JSON_OBJECT, "(top level)");

  Api api;
  load_api(tflite, &api);
  void* plugin = dlopen(delegate_path, RTLD_NOW | RTLD_LOCAL);
  if (plugin == NULL) die("cannot load the GQ delegate %s: %s", delegate_path, dlerror());
  CreateDelegateFn create = (CreateDelegateFn)(uintptr_t)need_symbol(plugin, delegate_path,
                                                                     "tflite_plugin_create_delegate");
  DestroyDelegateFn destroy = (DestroyDelegateFn)(uintptr_t)need_symbol(plugin, delegate_path,
                                                                        "tflite_plugin_destroy_delegate");
  char* keys[] = {(char*)"kernel"};
  char* values[] = {(char*)kernel};
  TfLiteDelegate* delegate = create(keys, values, 1, report_delegate);
  if (delegate == NULL) die("the GQ delegate refused its options: %s", last_runtime_error);

  Recognizer r;
  memset(&r, 0, sizeof(r));
  r.api = &api;
  r.n_mels = int_value(cfg, "n_mels", "config");
  r.vocab = int_value(cfg, "vocab_size", "config");
  r.chunk_frames = int_value(manifest, "chunk_frames", "(top level)");
  r.blank = gq_json_get(manifest, "blank") ? int_value(manifest, "blank", "(top level)") : 0;
  r.max_symbols = max_symbols;
  if (r.n_mels < 1 || r.vocab < 1 || r.chunk_frames < 1 || r.blank >= r.vocab)
    die("expected positive n_mels, vocab_size, chunk_frames and blank < vocab_size in %s", path);
  const GqJson* mean = need(cfg, "feature_mean", GQ_JSON_ARRAY, "config");
  if (mean->count != (size_t)r.n_mels) die("expected %d values in config.feature_mean; it has %zu", r.n_mels,
                                            mean->count);
  r.pad = (float*)malloc((size_t)r.n_mels * sizeof(float));
  if (r.pad == NULL) die("out of memory");
  int m = 0;
  for (const GqJson* v = mean->child; v != NULL; v = v->next, ++m) {
    if (v->type != GQ_JSON_NUMBER) die("expected numbers in config.feature_mean");
    r.pad[m] = (float)v->number;
  }
  open_graph(&api, &r.enc, dir, manifest, "encoder", delegate, threads);
  open_graph(&api, &r.pred, dir, manifest, "prediction", delegate, threads);
  open_graph(&api, &r.joint, dir, manifest, "joint", delegate, threads);
  init_states(&r.enc, manifest);
  init_states(&r.pred, manifest);
  if (input(&r.enc, "features")->bytes != (size_t)r.chunk_frames * (size_t)r.n_mels * sizeof(float))
    die("expected the encoder's 'features' input to hold %d x %d float32 values", r.chunk_frames, r.n_mels);
  if (input(&r.pred, "token")->type != kTypeInt32 || input(&r.pred, "token")->bytes != sizeof(int32_t))
    die("expected the prediction graph's 'token' input to be one int32");
  r.pred_dim = output(&r.pred, "pred_out")->bytes / sizeof(float);
  r.enc_dim = input(&r.joint, "enc")->bytes / sizeof(float);
  if (input(&r.joint, "pred")->bytes != r.pred_dim * sizeof(float) || r.enc_dim == 0 ||
      output(&r.enc, "encoder_out")->bytes % (r.enc_dim * sizeof(float)) != 0 ||
      output(&r.joint, "logits")->bytes != (size_t)r.vocab * sizeof(float))
    die("expected the step graphs' sizes to fit each other (encoder_out -> enc, pred_out -> pred, logits = "
        "vocab_size)");
  r.pred_out = (float*)calloc(r.pred_dim, sizeof(float));
  r.enc_out = (float*)malloc(output(&r.enc, "encoder_out")->bytes);
  r.logits = (float*)malloc((size_t)r.vocab * sizeof(float));
  float* chunk = (float*)malloc((size_t)r.chunk_frames * (size_t)r.n_mels * sizeof(float));
  if (!r.pred_out || !r.enc_out || !r.logits || !chunk) die("out of memory");
  const GqJson* vocabulary = gq_json_get(manifest, "vocabulary");
  if (vocabulary != NULL && (vocabulary->type != GQ_JSON_ARRAY || vocabulary->count != (size_t)r.vocab))
    die("expected streaming.json 'vocabulary' to list vocab_size (%d) tokens", r.vocab);

  printf("gq_stream\t1\n");
  printf("runtime\t%s\tkernel\t%s\tthreads\t%d\n", api.Version(), kernel, threads);
  const int n_files = argc - first - 1;
  double* all_chunks = NULL;
  size_t n_all = 0, cap_all = 0;
  double* upls = (double*)malloc((size_t)n_files * sizeof(double));
  double busy_total = 0.0, audio_total = 0.0;
  if (upls == NULL) die("out of memory");
  for (int pass = 0; pass < warmup + 1; ++pass) {
    const int timed = pass == warmup;
    for (int u = 0; u < n_files; ++u) {
      const char* fpath = argv[first + 1 + u];
      long frames;
      float* feats = read_npy(fpath, r.n_mels, &frames);
      reset(&r);
      r.enc.calls = r.pred.calls = r.joint.calls = 0;
      const long c = r.chunk_frames, full = frames / c;
      double clock = 0.0, busy = 0.0;
      const size_t first_chunk = n_all;
      for (long k = 0; k < full + 1; ++k) {
        const int last = k == full;
        const long have = last ? frames - full * c : c;
        if (last && have == 0) {
          /* finish() with an empty buffer: nothing to run */
          clock = fmax(clock, (double)frames * frame_ms / 1000.0);
          break;
        }
        const double t0 = now_s();
        memcpy(chunk, feats + k * c * r.n_mels, (size_t)have * (size_t)r.n_mels * sizeof(float));
        for (long j = have; j < c; ++j) memcpy(chunk + j * r.n_mels, r.pad, (size_t)r.n_mels * sizeof(float));
        run_chunk(&r, chunk);
        const double dt = now_s() - t0;
        busy += dt;
        const double ready = last ? (double)frames * frame_ms / 1000.0 : (double)((k + 1) * c) * frame_ms / 1000.0;
        clock = fmax(clock, ready) + dt;
        if (timed) {
          if (n_all == cap_all) {
            cap_all = cap_all ? 2 * cap_all : 1024;
            all_chunks = (double*)realloc(all_chunks, cap_all * sizeof(double));
            if (all_chunks == NULL) die("out of memory");
          }
          all_chunks[n_all++] = 1000.0 * dt;
        }
      }
      free(feats);
      if (!timed) continue;
      const double audio = (double)frames * frame_ms / 1000.0;
      upls[u] = 1000.0 * (clock - audio);
      busy_total += busy;
      audio_total += audio;
      printf("utterance\t%d\t%s\tframes\t%ld\tchunks\t%zu\tupl_ms\t%.4f\tbusy_ms\t%.4f\ttokens\t", u, fpath, frames,
             n_all - first_chunk, upls[u], 1000.0 * busy);
      for (size_t t = 0; t < r.n_tokens; ++t) printf(t ? ",%d" : "%d", r.tokens[t]);
      printf("\ttext\t");
      if (vocabulary != NULL) {
        for (size_t t = 0; t < r.n_tokens; ++t) {
          const GqJson* tok = gq_json_at(vocabulary, (size_t)r.tokens[t]);
          if (tok != NULL && tok->type == GQ_JSON_STRING) fputs(tok->string, stdout);
        }
      }
      printf("\nchunk_ms\t%d", u);
      for (size_t i = first_chunk; i < n_all; ++i) printf("\t%.4f", all_chunks[i]);
      printf("\ncalls\t%d\tencoder\t%ld\tprediction\t%ld\tjoint\t%ld\n", u, r.enc.calls, r.pred.calls, r.joint.calls);
    }
  }
  printf("summary\tutterances\t%d\tchunks\t%zu\tchunk_p50_ms\t%.4f\tchunk_p90_ms\t%.4f\tupl_p50_ms\t%.4f\t"
         "upl_p90_ms\t%.4f\trtf\t%.5f\tpeak_rss_kb\t%ld\n", n_files, n_all, percentile(all_chunks, n_all, 50),
         percentile(all_chunks, n_all, 90), percentile(upls, (size_t)n_files, 50),
         percentile(upls, (size_t)n_files, 90), audio_total > 0 ? busy_total / audio_total : 0.0, peak_rss_kb());
  fflush(stdout);
  api.InterpreterDelete(r.enc.interpreter);
  api.InterpreterDelete(r.pred.interpreter);
  api.InterpreterDelete(r.joint.interpreter);
  api.ModelDelete(r.enc.model);
  api.ModelDelete(r.pred.model);
  api.ModelDelete(r.joint.model);
  destroy(delegate);
  gq_json_free(manifest);
  return 0;
}
