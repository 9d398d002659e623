/* See gq_json.h. Recursive descent over the text, depth-bounded. */
#include "gq_json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char* text;
  size_t pos;
  char* error;
  size_t error_size;
  int failed;
} Parser;

static void fail(Parser* p, const char* what) {
  if (!p->failed) {
    snprintf(p->error, p->error_size, "%s at byte %zu", what, p->pos);
    p->failed = 1;
  }
}

static void skip_space(Parser* p) {
  while (p->text[p->pos] == ' ' || p->text[p->pos] == '\t' || p->text[p->pos] == '\n' || p->text[p->pos] == '\r') {
    p->pos++;
  }
}

static GqJson* new_node(Parser* p, GqJsonType type) {
  GqJson* n = (GqJson*)calloc(1, sizeof(GqJson));
  if (n == NULL) {
    fail(p, "out of memory");
    return NULL;
  }
  n->type = type;
  return n;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Appends code point `cp` as UTF-8 to out[*len] (room for 4 bytes guaranteed by the caller). */
static void put_utf8(char* out, size_t* len, unsigned cp) {
  if (cp < 0x80) {
    out[(*len)++] = (char)cp;
  } else if (cp < 0x800) {
    out[(*len)++] = (char)(0xC0 | (cp >> 6));
    out[(*len)++] = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out[(*len)++] = (char)(0xE0 | (cp >> 12));
    out[(*len)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[(*len)++] = (char)(0x80 | (cp & 0x3F));
  } else {
    out[(*len)++] = (char)(0xF0 | (cp >> 18));
    out[(*len)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[(*len)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[(*len)++] = (char)(0x80 | (cp & 0x3F));
  }
}

static int read_hex4(Parser* p, unsigned* value) {
  unsigned v = 0;
  for (int i = 0; i < 4; ++i) {
    int h = hex_value(p->text[p->pos]);
    if (h < 0) {
      fail(p, "expected 4 hex digits after \\u");
      return 0;
    }
    v = v * 16 + (unsigned)h;
    p->pos++;
  }
  *value = v;
  return 1;
}

static char* parse_string_raw(Parser* p) {
  /* p->text[p->pos] == '"' */
  p->pos++;
  size_t start = p->pos, n = 0;
  while (p->text[start + n] != '"') {
    if (p->text[start + n] == '\0') {
      fail(p, "unterminated string");
      return NULL;
    }
    if (p->text[start + n] == '\\' && p->text[start + n + 1] != '\0') n++;
    n++;
  }
  char* out = (char*)malloc(4 * n + 1);  /* \uXXXX (6 bytes) -> at most 4 bytes; plain bytes 1:1 */
  if (out == NULL) {
    fail(p, "out of memory");
    return NULL;
  }
  size_t len = 0;
  while (p->text[p->pos] != '"') {
    unsigned char c = (unsigned char)p->text[p->pos];
    if (c < 0x20) {
      fail(p, "control character in string");
      free(out);
      return NULL;
    }
    if (c != '\\') {
      out[len++] = (char)c;
      p->pos++;
      continue;
    }
    p->pos++;
    char e = p->text[p->pos++];
    switch (e) {
      case '"': out[len++] = '"'; break;
      case '\\': out[len++] = '\\'; break;
      case '/': out[len++] = '/'; break;
      case 'b': out[len++] = '\b'; break;
      case 'f': out[len++] = '\f'; break;
      case 'n': out[len++] = '\n'; break;
      case 'r': out[len++] = '\r'; break;
      case 't': out[len++] = '\t'; break;
      case 'u': {
        unsigned cp;
        if (!read_hex4(p, &cp)) {
          free(out);
          return NULL;
        }
        if (cp >= 0xD800 && cp < 0xDC00 && p->text[p->pos] == '\\' && p->text[p->pos + 1] == 'u') {
          unsigned low;
          p->pos += 2;
          if (!read_hex4(p, &low)) {
            free(out);
            return NULL;
          }
          if (low >= 0xDC00 && low < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        put_utf8(out, &len, cp);
        break;
      }
      default:
        p->pos--;
        fail(p, "bad escape in string");
        free(out);
        return NULL;
    }
  }
  p->pos++;  /* closing quote */
  out[len] = '\0';
  return out;
}

static GqJson* parse_value(Parser* p, int depth);

static GqJson* parse_container(Parser* p, int depth, int is_object) {
  GqJson* node = new_node(p, is_object ? GQ_JSON_OBJECT : GQ_JSON_ARRAY);
  if (node == NULL) return NULL;
  const char close = is_object ? '}' : ']';
  p->pos++;
  skip_space(p);
  GqJson** tail = &node->child;
  if (p->text[p->pos] == close) {
    p->pos++;
    return node;
  }
  for (;;) {
    char* key = NULL;
    if (is_object) {
      skip_space(p);
      if (p->text[p->pos] != '"') {
        fail(p, "expected a string key");
        gq_json_free(node);
        return NULL;
      }
      key = parse_string_raw(p);
      if (key == NULL) {
        gq_json_free(node);
        return NULL;
      }
      skip_space(p);
      if (p->text[p->pos] != ':') {
        fail(p, "expected ':'");
        free(key);
        gq_json_free(node);
        return NULL;
      }
      p->pos++;
    }
    GqJson* item = parse_value(p, depth + 1);
    if (item == NULL) {
      free(key);
      gq_json_free(node);
      return NULL;
    }
    item->key = key;
    *tail = item;
    tail = &item->next;
    node->count++;
    skip_space(p);
    if (p->text[p->pos] == ',') {
      p->pos++;
      continue;
    }
    if (p->text[p->pos] == close) {
      p->pos++;
      return node;
    }
    fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    gq_json_free(node);
    return NULL;
  }
}

static GqJson* parse_value(Parser* p, int depth) {
  if (depth > GQ_JSON_MAX_DEPTH) {
    fail(p, "nesting too deep");
    return NULL;
  }
  skip_space(p);
  const char c = p->text[p->pos];
  if (c == '{' || c == '[') return parse_container(p, depth, c == '{');
  if (c == '"') {
    GqJson* n = new_node(p, GQ_JSON_STRING);
    if (n == NULL) return NULL;
    n->string = parse_string_raw(p);
    if (n->string == NULL) {
      free(n);
      return NULL;
    }
    return n;
  }
  static const struct { const char* word; GqJsonType type; double value; } words[] = {
      {"true", GQ_JSON_BOOL, 1.0}, {"false", GQ_JSON_BOOL, 0.0}, {"null", GQ_JSON_NULL, 0.0},
      /* Python's json writes these; read as numbers */
      {"NaN", GQ_JSON_NUMBER, 0.0}, {"Infinity", GQ_JSON_NUMBER, 1e308}, {"-Infinity", GQ_JSON_NUMBER, -1e308}};
  for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); ++i) {
    size_t len = strlen(words[i].word);
    if (strncmp(p->text + p->pos, words[i].word, len) == 0) {
      GqJson* n = new_node(p, words[i].type);
      if (n == NULL) return NULL;
      n->number = words[i].value;
      p->pos += len;
      return n;
    }
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    char* end = NULL;
    double v = strtod(p->text + p->pos, &end);
    if (end == p->text + p->pos) {
      fail(p, "bad number");
      return NULL;
    }
    GqJson* n = new_node(p, GQ_JSON_NUMBER);
    if (n == NULL) return NULL;
    n->number = v;
    p->pos = (size_t)(end - p->text);
    return n;
  }
  fail(p, c == '\0' ? "unexpected end of text" : "unexpected character");
  return NULL;
}

GqJson* gq_json_parse(const char* text, char* error, size_t error_size) {
  Parser p = {text, 0, error, error_size, 0};
  if (error_size) error[0] = '\0';
  GqJson* root = parse_value(&p, 0);
  if (root == NULL) return NULL;
  skip_space(&p);
  if (text[p.pos] != '\0') {
    fail(&p, "text after the value");
    gq_json_free(root);
    return NULL;
  }
  return root;
}

void gq_json_free(GqJson* node) {
  while (node != NULL) {
    GqJson* next = node->next;
    gq_json_free(node->child);
    free(node->string);
    free(node->key);
    free(node);
    node = next;
  }
}

const GqJson* gq_json_get(const GqJson* object, const char* key) {
  if (object == NULL || object->type != GQ_JSON_OBJECT) return NULL;
  for (const GqJson* m = object->child; m != NULL; m = m->next) {
    if (m->key != NULL && strcmp(m->key, key) == 0) return m;
  }
  return NULL;
}

const GqJson* gq_json_at(const GqJson* array, size_t index) {
  if (array == NULL || array->type != GQ_JSON_ARRAY) return NULL;
  const GqJson* e = array->child;
  for (size_t i = 0; e != NULL && i < index; ++i) e = e->next;
  return e;
}
