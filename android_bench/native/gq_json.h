/* A small strict JSON reader for the native runner (streaming.json).
 *
 * gq_json_parse builds a tree of GqJson nodes from a NUL-terminated text;
 * objects keep their keys in order. Every malformed input (bad syntax,
 * nesting deeper than GQ_JSON_MAX_DEPTH, trailing text) is an error with a
 * byte offset, never a crash. Strings are decoded (escapes, \uXXXX as UTF-8).
 */
#ifndef GQ_JSON_H_
#define GQ_JSON_H_

#include <stddef.h>

#define GQ_JSON_MAX_DEPTH 64

typedef enum { GQ_JSON_NULL, GQ_JSON_BOOL, GQ_JSON_NUMBER, GQ_JSON_STRING, GQ_JSON_ARRAY, GQ_JSON_OBJECT } GqJsonType;

typedef struct GqJson {
  GqJsonType type;
  double number;          /* NUMBER, and BOOL (0 or 1) */
  char* string;           /* STRING */
  char* key;              /* the key of a member of an OBJECT */
  struct GqJson* child;   /* first element or member */
  struct GqJson* next;    /* next sibling */
  size_t count;           /* elements or members */
} GqJson;

/* The tree of `text`, or NULL with a message in `error` (`error_size` bytes). */
GqJson* gq_json_parse(const char* text, char* error, size_t error_size);
void gq_json_free(GqJson* node);

/* The member `key` of an object (NULL if absent or not an object). */
const GqJson* gq_json_get(const GqJson* object, const char* key);
/* Element `index` of an array (NULL if out of range or not an array). */
const GqJson* gq_json_at(const GqJson* array, size_t index);

#endif  /* GQ_JSON_H_ */
