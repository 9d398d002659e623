/* A bounded reader for the flexbuffer maps TFLite stores as custom options.
 * Every read is checked against the buffer length: a malformed buffer gives
 * an error code, never an out-of-bounds read. Pure C11, no TFLite types. */
#ifndef GQ_FLEXBUF_H_
#define GQ_FLEXBUF_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum gq_flex_status {
  GQ_FLEX_OK = 0,
  GQ_FLEX_MALFORMED = 1,  /* offsets/widths/lengths outside the buffer, bad type codes */
  GQ_FLEX_NOT_MAP = 2,    /* the root is not a map */
  GQ_FLEX_MISSING = 3,    /* no such key */
  GQ_FLEX_WRONG_TYPE = 4, /* the key exists with a value of another type */
};

/* The root map of a flexbuffer. Filled by gq_flexmap_open; plain data. */
typedef struct gq_flexmap {
  const uint8_t* buf;
  size_t len;
  size_t count;      /* number of entries */
  size_t values;     /* offset of the value vector */
  size_t types;      /* offset of the packed type bytes (after the values) */
  size_t keys;       /* offset of the key vector */
  uint8_t width;     /* byte width of the values */
  uint8_t key_width; /* byte width of the key offsets */
} gq_flexmap;

/* Opens the root of buf[0..len) as a map. Returns a gq_flex_status. */
int gq_flexmap_open(gq_flexmap* map, const uint8_t* buf, size_t len);

/* Key of entry i (0 <= i < map->count), NUL-terminated inside the buffer;
 * *key_len excludes the NUL. i >= map->count gives GQ_FLEX_MISSING. */
int gq_flexmap_key_at(const gq_flexmap* map, size_t i, const char** key, size_t* key_len);

/* Lookups by key are binary searches, as in TFLite's own reader: every
 * flexbuffer writer sorts the keys bytewise. In a map with unsorted keys a
 * present key may be reported GQ_FLEX_MISSING (but nothing is read unsafely). */

/* Integer value of key: accepts int, uint, bool and indirect int/uint (the
 * format has no indirect bool); a bool gives 0 or 1; a uint above INT64_MAX
 * is GQ_FLEX_WRONG_TYPE. */
int gq_flexmap_get_int(const gq_flexmap* map, const char* key, int64_t* out);

/* String value of key (type string or key): pointer into the buffer, NUL
 * terminated inside it, *len excludes the NUL. */
int gq_flexmap_get_string(const gq_flexmap* map, const char* key, const char** s, size_t* len);

#ifdef __cplusplus
}
#endif

#endif /* GQ_FLEXBUF_H_ */
