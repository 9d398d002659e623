/* Bounded reader of a flexbuffer root map (the TFLite custom-options format).
 *
 * Facts of the format this relies on (all little endian):
 *  - the buffer ends with [root value][packed type of root][root byte width];
 *    a packed type byte is (type << 2) | log2(byte width of the child);
 *  - a map value is an offset back (value position minus offset) to its value
 *    vector, which is preceded by three fields of the map's byte width:
 *    [key vector offset][key byte width][element count];
 *  - the values are followed by one packed type byte per element;
 *  - the key vector is a typed vector of offsets to NUL-terminated strings,
 *    its element count just before it;
 *  - inline scalars (int, uint, float, bool) take the map's byte width;
 *    indirect scalars and strings are an offset to data of the child width;
 *    a string is preceded by its length and followed by a NUL.
 *
 * The buffer comes from a model file, so nothing in it is trusted: every
 * offset is checked to stay inside [0, len) before it is dereferenced, every
 * width is checked to be 1/2/4/8, and element counts are compared by division
 * so that no product can wrap. */
#include "flexbuf.h"

#include <string.h>

enum {
  FBT_INT = 1,
  FBT_UINT = 2,
  FBT_KEY = 4,
  FBT_STRING = 5,
  FBT_INDIRECT_INT = 6,
  FBT_INDIRECT_UINT = 7,
  FBT_MAP = 9,
  FBT_BOOL = 26,
  FBT_VECTOR_BOOL = 36,
};

static int width_ok(size_t w) { return w == 1 || w == 2 || w == 4 || w == 8; }

/* Type codes outside the defined set mean a corrupt buffer rather than a
 * value of some other type, so callers can tell the two apart. */
static int type_defined(unsigned t) { return t <= FBT_BOOL || t == FBT_VECTOR_BOOL; }

/* True when [pos, pos + n) lies inside a buffer of len bytes. */
static int in_bounds(size_t len, size_t pos, size_t n) { return pos <= len && n <= len - pos; }

/* Little-endian unsigned read; the caller has checked the bounds. */
static uint64_t read_u(const uint8_t* p, size_t w) {
  uint64_t v = 0;
  for (size_t i = w; i-- > 0;) {
    v = (v << 8) | p[i];
  }
  return v;
}

/* Sign extension done on the unsigned value, and the final conversion split
 * so that no out-of-range unsigned-to-signed conversion (implementation
 * defined in C11) happens. */
static int64_t read_i(const uint8_t* p, size_t w) {
  uint64_t u = read_u(p, w);
  if (w < 8 && ((u >> (8 * w - 1)) & 1u) != 0) {
    u |= ~(uint64_t)0 << (8 * w);
  }
  if (u <= (uint64_t)INT64_MAX) {
    return (int64_t)u;
  }
  return -(int64_t)(~u) - 1;
}

/* Resolves the offset field of width w at pos; offsets only point backwards. */
static int follow(const uint8_t* buf, size_t len, size_t pos, size_t w, size_t* target) {
  if (!width_ok(w) || !in_bounds(len, pos, w)) {
    return GQ_FLEX_MALFORMED;
  }
  const uint64_t off = read_u(buf + pos, w);
  if (off > (uint64_t)pos) {
    return GQ_FLEX_MALFORMED;
  }
  *target = pos - (size_t)off;
  return GQ_FLEX_OK;
}

/* A NUL-terminated string at pos whose NUL must lie inside the buffer. */
static int c_string(const uint8_t* buf, size_t len, size_t pos, const char** s, size_t* n) {
  if (pos >= len) {
    return GQ_FLEX_MALFORMED;
  }
  const uint8_t* end = memchr(buf + pos, 0, len - pos);
  if (end == NULL) {
    return GQ_FLEX_MALFORMED;
  }
  *s = (const char*)(buf + pos);
  *n = (size_t)(end - (buf + pos));
  return GQ_FLEX_OK;
}

/* The struct is plain data the caller could have altered, so the accessors
 * re-check what they rely on instead of trusting gq_flexmap_open's result. */
static int map_ok(const gq_flexmap* m) {
  return m != NULL && m->buf != NULL && width_ok(m->width) && width_ok(m->key_width);
}

int gq_flexmap_open(gq_flexmap* map, const uint8_t* buf, size_t len) {
  if (map == NULL) {
    return GQ_FLEX_MALFORMED;
  }
  memset(map, 0, sizeof(*map));
  if (buf == NULL || len < 3) {
    return GQ_FLEX_MALFORMED;
  }
  const size_t root_width = buf[len - 1];
  const unsigned packed = buf[len - 2];
  if (!width_ok(root_width) || root_width > len - 2) {
    return GQ_FLEX_MALFORMED;
  }
  if (!type_defined(packed >> 2)) {
    return GQ_FLEX_MALFORMED;
  }
  if ((packed >> 2) != FBT_MAP) {
    return GQ_FLEX_NOT_MAP;
  }
  const size_t w = (size_t)1 << (packed & 3u);
  size_t values;
  int st = follow(buf, len, len - 2 - root_width, root_width, &values);
  if (st != GQ_FLEX_OK) {
    return st;
  }
  if (values < 3 * w) {
    return GQ_FLEX_MALFORMED;
  }
  const uint64_t count = read_u(buf + values - w, w);
  const uint64_t key_width = read_u(buf + values - 2 * w, w);
  if (key_width > 8 || !width_ok((size_t)key_width)) {
    return GQ_FLEX_MALFORMED;
  }
  /* count values of w bytes plus count type bytes must fit behind values. */
  if (count > (uint64_t)((len - values) / (w + 1))) {
    return GQ_FLEX_MALFORMED;
  }
  size_t keys;
  st = follow(buf, len, values - 3 * w, w, &keys);
  if (st != GQ_FLEX_OK) {
    return st;
  }
  const size_t kw = (size_t)key_width;
  if (keys < kw || read_u(buf + keys - kw, kw) != count) {
    return GQ_FLEX_MALFORMED;
  }
  if (count > (uint64_t)((len - keys) / kw)) {
    return GQ_FLEX_MALFORMED;
  }
  map->buf = buf;
  map->len = len;
  map->count = (size_t)count;
  map->values = values;
  map->types = values + (size_t)count * w;
  map->keys = keys;
  map->width = (uint8_t)w;
  map->key_width = (uint8_t)kw;
  return GQ_FLEX_OK;
}

int gq_flexmap_key_at(const gq_flexmap* map, size_t i, const char** key, size_t* key_len) {
  if (!map_ok(map) || key == NULL || key_len == NULL) {
    return GQ_FLEX_MALFORMED;
  }
  if (i >= map->count) {
    return GQ_FLEX_MISSING;
  }
  const size_t kw = map->key_width;
  /* Written as a division so keys + i * kw cannot wrap. */
  if (map->keys > map->len || i >= (map->len - map->keys) / kw) {
    return GQ_FLEX_MALFORMED;
  }
  size_t target;
  const int st = follow(map->buf, map->len, map->keys + i * kw, kw, &target);
  if (st != GQ_FLEX_OK) {
    return st;
  }
  return c_string(map->buf, map->len, target, key, key_len);
}

/* Binary search, as TFLite's own flexbuffers reader does, so a key is found
 * here exactly when TFLite would find it. On an unsorted (invalid) buffer it
 * may miss a key but still never reads outside the buffer. Key bytes compare
 * as unsigned, the order strcmp and the builders use. */
static int find(const gq_flexmap* map, const char* key, size_t* index) {
  if (!map_ok(map) || key == NULL) {
    return GQ_FLEX_MALFORMED;
  }
  size_t lo = 0;
  size_t hi = map->count;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    const char* k;
    size_t k_len;
    const int st = gq_flexmap_key_at(map, mid, &k, &k_len);
    if (st != GQ_FLEX_OK) {
      return st;
    }
    const int c = strcmp(key, k);
    if (c == 0) {
      *index = mid;
      return GQ_FLEX_OK;
    }
    if (c < 0) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return GQ_FLEX_MISSING;
}

/* Position, type and child width of the value of entry i. */
static int value_of(const gq_flexmap* map, size_t i, size_t* pos, unsigned* type, size_t* child) {
  const size_t w = map->width;
  if (i >= map->count || !in_bounds(map->len, map->types, map->count) ||
      map->count > map->len / w || !in_bounds(map->len, map->values, map->count * w)) {
    return GQ_FLEX_MALFORMED;
  }
  const unsigned packed = map->buf[map->types + i];
  if (!type_defined(packed >> 2)) {
    return GQ_FLEX_MALFORMED;
  }
  *pos = map->values + i * w;
  *type = packed >> 2;
  *child = (size_t)1 << (packed & 3u);
  return GQ_FLEX_OK;
}

static int lookup(const gq_flexmap* map, const char* key, size_t* pos, unsigned* type,
                  size_t* child) {
  size_t i = 0;
  const int st = find(map, key, &i);
  if (st != GQ_FLEX_OK) {
    return st;
  }
  return value_of(map, i, pos, type, child);
}

int gq_flexmap_get_int(const gq_flexmap* map, const char* key, int64_t* out) {
  size_t pos;
  size_t child;
  unsigned type;
  if (out == NULL) {
    return GQ_FLEX_MALFORMED;
  }
  int st = lookup(map, key, &pos, &type, &child);
  if (st != GQ_FLEX_OK) {
    return st;
  }
  const uint8_t* buf = map->buf;
  const size_t w = map->width;
  uint64_t u;
  switch (type) {
    case FBT_INT:
      *out = read_i(buf + pos, w);
      return GQ_FLEX_OK;
    case FBT_INDIRECT_INT:
      st = follow(buf, map->len, pos, w, &pos);
      if (st != GQ_FLEX_OK) {
        return st;
      }
      if (!in_bounds(map->len, pos, child)) {
        return GQ_FLEX_MALFORMED;
      }
      *out = read_i(buf + pos, child);
      return GQ_FLEX_OK;
    case FBT_BOOL:
      *out = read_u(buf + pos, w) != 0;
      return GQ_FLEX_OK;
    case FBT_UINT:
      u = read_u(buf + pos, w);
      break;
    case FBT_INDIRECT_UINT:
      st = follow(buf, map->len, pos, w, &pos);
      if (st != GQ_FLEX_OK) {
        return st;
      }
      if (!in_bounds(map->len, pos, child)) {
        return GQ_FLEX_MALFORMED;
      }
      u = read_u(buf + pos, child);
      break;
    default:
      return GQ_FLEX_WRONG_TYPE;
  }
  if (u > (uint64_t)INT64_MAX) {
    return GQ_FLEX_WRONG_TYPE;
  }
  *out = (int64_t)u;
  return GQ_FLEX_OK;
}

int gq_flexmap_get_string(const gq_flexmap* map, const char* key, const char** s, size_t* len) {
  size_t pos;
  size_t child;
  unsigned type;
  if (s == NULL || len == NULL) {
    return GQ_FLEX_MALFORMED;
  }
  int st = lookup(map, key, &pos, &type, &child);
  if (st != GQ_FLEX_OK) {
    return st;
  }
  if (type != FBT_STRING && type != FBT_KEY) {
    return GQ_FLEX_WRONG_TYPE;
  }
  size_t target;
  st = follow(map->buf, map->len, pos, map->width, &target);
  if (st != GQ_FLEX_OK) {
    return st;
  }
  if (type == FBT_KEY) {
    return c_string(map->buf, map->len, target, s, len);
  }
  /* A string has its length in front; the NUL behind it is required so the
   * caller may treat the result as a C string. */
  if (target < child || target >= map->len) {
    return GQ_FLEX_MALFORMED;
  }
  const uint64_t n = read_u(map->buf + target - child, child);
  if (n > (uint64_t)(map->len - target - 1) || map->buf[target + (size_t)n] != 0) {
    return GQ_FLEX_MALFORMED;
  }
  *s = (const char*)(map->buf + target);
  *len = (size_t)n;
  return GQ_FLEX_OK;
}
