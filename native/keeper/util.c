/* coopy-keeper: small things — messages, allocation, the clock, byte queues, argv lists. */
#include "keeper.h"

/* ---- small things ------------------------------------------------------------------- */

void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("keeper: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	fflush(stderr);
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		say("out of memory");
		exit(1);
	}
	return p;
}

char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	return memcpy(xrealloc(NULL, n), s, n);
}

int64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}


void bytes_add(struct bytes *b, const void *data, size_t n)
{
	if (b->head + b->len + n > b->cap) {
		/* Move what is queued to the front only when it is no more than what that
		 * frees (each byte moved paid for by one taken), else grow: a queue kept near
		 * full would otherwise move all of itself on every add. */
		if (b->head && b->head >= b->len) {
			memmove(b->p, b->p + b->head, b->len);
			b->head = 0;
		}
		if (b->head + b->len + n > b->cap) {
			b->cap = b->cap ? b->cap : 4096;
			while (b->cap < b->head + b->len + n)
				b->cap *= 2;
			b->p = xrealloc(b->p, b->cap);
		}
	}
	memcpy(b->p + b->head + b->len, data, n);
	b->len += n;
}

void bytes_take(struct bytes *b, size_t n)
{
	b->head += n;
	b->len -= n;
	if (!b->len) {
		b->head = 0;
		if (b->cap > QUEUE_KEEP) { /* a burst is over: give its memory back */
			free(b->p);
			b->p = NULL;
			b->cap = 0;
		}
	}
}

/* Write what b holds to fd until it would block: what was written, or -1 when fd is
 * gone (EIO, EPIPE…). */
ssize_t bytes_write(int fd, struct bytes *b)
{
	ssize_t done = 0;
	while (b->len) {
		ssize_t n = write(fd, b->p + b->head, b->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0)
			return -1;
		bytes_take(b, (size_t)n);
		done += n;
	}
	return done;
}

void bytes_free(struct bytes *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}


/* A copy of v (which may be a's own) replaces a's list. */
void argv_set(struct argv *a, char **v, int n)
{
	char **copy = xrealloc(NULL, sizeof(char *) * (size_t)(n + 1));
	for (int i = 0; i < n; i++)
		copy[i] = xstrdup(v[i]);
	copy[n] = NULL;
	for (int i = 0; i < a->n; i++)
		free(a->v[i]);
	free(a->v);
	a->v = copy;
	a->n = n;
}
