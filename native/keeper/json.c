/* coopy-keeper: JSON, only as much as the protocol needs — HELLO in, INFO out
 * (what coopy/proto.py's dumps writes: ASCII, ", " and ": "). */
#include "keeper.h"

/* ---- JSON: HELLO in, INFO out (what coopy/proto.py's dumps writes: ASCII) ----------- */


struct json {
	const char *s, *end;
	int bad;
};

static void ws(struct json *j)
{
	while (j->s < j->end && strchr(" \t\r\n", *j->s))
		j->s++;
}

static int eat(struct json *j, char c)
{
	ws(j);
	if (j->s < j->end && *j->s == c) {
		j->s++;
		return 1;
	}
	return 0;
}

static void put_utf8(struct bytes *out, unsigned c)
{
	unsigned char b[4];
	size_t n;
	if (c < 0x80) {
		b[0] = (unsigned char)c;
		n = 1;
	} else if (c < 0x800) {
		b[0] = (unsigned char)(0xc0 | c >> 6);
		b[1] = (unsigned char)(0x80 | (c & 0x3f));
		n = 2;
	} else if (c < 0x10000) {
		b[0] = (unsigned char)(0xe0 | c >> 12);
		b[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
		b[2] = (unsigned char)(0x80 | (c & 0x3f));
		n = 3;
	} else {
		b[0] = (unsigned char)(0xf0 | c >> 18);
		b[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3f));
		b[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
		b[3] = (unsigned char)(0x80 | (c & 0x3f));
		n = 4;
	}
	bytes_add(out, b, n);
}

static unsigned hex4(struct json *j)
{
	unsigned v = 0;
	for (int i = 0; i < 4; i++, j->s++) {
		char c = j->s < j->end ? *j->s : 0;
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
			: c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0) {
			j->bad = 1;
			return 0;
		}
		v = v * 16 + (unsigned)d;
	}
	return v;
}

/* A string (the opening quote next), as a NUL-terminated copy; "" on error. */
static char *string(struct json *j)
{
	struct bytes out = { 0 };
	if (!eat(j, '"')) {
		j->bad = 1;
		return xstrdup("");
	}
	while (j->s < j->end && *j->s != '"') {
		char c = *j->s++;
		if (c != '\\') {
			bytes_add(&out, &c, 1);
			continue;
		}
		c = j->s < j->end ? *j->s++ : 0;
		const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t", *at;
		if (c == 'u') {
			unsigned u = hex4(j);
			if (u >= 0xd800 && u < 0xdc00 && j->end - j->s >= 6 && j->s[0] == '\\'
			    && j->s[1] == 'u') {
				j->s += 2;
				unsigned lo = hex4(j);
				u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
			}
			if (u == 0)
				j->bad = 1; /* a NUL cannot be in an argv */
			put_utf8(&out, u);
		} else if (c && (at = strchr(from, c))) {
			bytes_add(&out, &to[at - from], 1);
		} else {
			j->bad = 1;
		}
	}
	if (!eat(j, '"'))
		j->bad = 1;
	bytes_add(&out, "", 1);
	char *s = xstrdup(out.p + out.head);
	bytes_free(&out);
	return s;
}

static long number(struct json *j)
{
	ws(j);
	char *e;
	long v = strtol(j->s, &e, 10);
	if (e == j->s || e > j->end)
		j->bad = 1;
	j->s = e;
	if (j->s < j->end && strchr(".eE", *j->s)) { /* a float: skip it, keep the integer part */
		while (j->s < j->end && strchr("0123456789.eE+-", *j->s))
			j->s++;
	}
	return v;
}


static void skip(struct json *j, int depth);

static void strings(struct json *j, struct argv *a)
{
	char *v[MAX_ARGS];
	int n = 0;
	if (!eat(j, '[')) {
		skip(j, 0);
		return;
	}
	if (!eat(j, ']')) {
		do {
			ws(j);
			if (j->s < j->end && *j->s == '"' && n < MAX_ARGS)
				v[n++] = string(j);
			else
				skip(j, 0);
		} while (!j->bad && eat(j, ','));
		if (!eat(j, ']'))
			j->bad = 1;
	}
	argv_set(a, v, n);
	for (int i = 0; i < n; i++)
		free(v[i]);
}

static void skip(struct json *j, int depth)
{
	ws(j);
	if (depth > 32 || j->s >= j->end) {
		j->bad = 1;
		return;
	}
	char c = *j->s;
	if (c == '"') {
		free(string(j));
	} else if (c == '[' || c == '{') {
		j->s++;
		char close = c == '[' ? ']' : '}';
		if (eat(j, close))
			return;
		do {
			if (c == '{') {
				free(string(j));
				if (!eat(j, ':'))
					j->bad = 1;
			}
			skip(j, depth + 1);
		} while (!j->bad && eat(j, ','));
		if (!eat(j, close))
			j->bad = 1;
	} else if (!strncmp(j->s, "true", 4) || !strncmp(j->s, "null", 4)) {
		j->s += 4;
	} else if (!strncmp(j->s, "false", 5)) {
		j->s += 5;
	} else {
		number(j);
	}
}

/* HELLO's fields; 0 when the payload is not a JSON object. */
int parse_hello(const char *s, size_t n, struct hello *h)
{
	struct json j = { s, s + n, 0 };
	memset(h, 0, sizeof *h);
	h->id = -1;
	h->sig = SIGTERM;
	if (!eat(&j, '{'))
		return 0;
	if (!eat(&j, '}')) {
		do {
			char *key = string(&j);
			if (!eat(&j, ':'))
				j.bad = 1;
			ws(&j);
			int truth = j.s < j.end && *j.s == 't';
			if (!strcmp(key, "verb") && j.s < j.end && *j.s == '"') {
				char *v = string(&j);
				snprintf(h->verb, sizeof h->verb, "%s", v);
				free(v);
			} else if (!strcmp(key, "command")) {
				strings(&j, &h->command);
			} else if (!strcmp(key, "shell")) {
				strings(&j, &h->shell);
			} else if (!strcmp(key, "new") || !strcmp(key, "direct")) {
				*(key[0] == 'n' ? &h->new : &h->direct) = truth;
				skip(&j, 0);
			} else {
				int *field = !strcmp(key, "version") ? &h->version
					: !strcmp(key, "rows") ? &h->rows : !strcmp(key, "cols") ? &h->cols
					: !strcmp(key, "pty") ? &h->pty : !strcmp(key, "id") ? &h->id
					: !strcmp(key, "signal") ? &h->sig : NULL;
				if (field && j.s < j.end && (*j.s == '-' || (*j.s >= '0' && *j.s <= '9')))
					*field = (int)number(&j);
				else
					skip(&j, 0);
			}
			free(key);
		} while (!j.bad && eat(&j, ','));
		if (!eat(&j, '}'))
			j.bad = 1;
	}
	ws(&j);
	return !j.bad && j.s == j.end;
}

void json_str(struct bytes *out, const char *s)
{
	bytes_add(out, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			bytes_add(out, esc, 2);
		} else if (c < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			bytes_add(out, esc, 6);
		} else {
			bytes_add(out, s, 1); /* UTF-8 as is: valid JSON */
		}
	}
	bytes_add(out, "\"", 1);
}

void json_argv(struct bytes *out, const struct argv *a)
{
	bytes_add(out, "[", 1);
	for (int i = 0; i < a->n; i++) {
		if (i)
			bytes_add(out, ", ", 2);
		json_str(out, a->v[i]);
	}
	bytes_add(out, "]", 1);
}
