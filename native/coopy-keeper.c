/*
 * coopy-keeper: the serving half of a persistent box's keeper (the relay).
 *
 * coopy/keeper.py starts it as its child once the box runs, hands it the box's sockets and
 * its agent's PTY master, and stays the box's parent (it waits for the box and keeps its
 * record).  This program holds the PTY masters, a scrollback ring and the log of each,
 * and serves the clients on the box's socket (coopy/proto.py: typed, length-prefixed
 * frames, HELLO in JSON).  It is C because the relay is: every 4 KiB a PTY master gives
 * is read, logged, kept and sent on, and per-chunk work in Python held the relay to half
 * of a raw PTY (docs/design.md, "the keeper").
 *
 * Contract (mirrored in coopy/keeper.py, serve):
 *   coopy-keeper LISTEN CONTROL LINK MASTER INIT_PIDFD SCROLLBACK LOG_MAX AUTO_RESTART
 *                RESTART_DELAY_MS BOX_DIR NAME -- AGENT_ARGV...
 *     LISTEN      the box's unix socket (0600), listening
 *     CONTROL     SOCK_SEQPACKET to coopy-init (its -k channel: "S"/"K"/"Q"/"W" out,
 *                 "P"/"E"/"X" in; see native/coopy-init.c)
 *     LINK        SOCK_SEQPACKET to the parent, fields separated by NUL:
 *                   parent → here  "end" STATUS    the box has ended with STATUS: read what
 *                                                  the PTYs still hold, tell the clients,
 *                                                  exit 0
 *                   here → parent  "command" ARGV  the agent now runs ARGV (a restart)
 *     MASTER      PTY 0's master (the agent's terminal)
 *     INIT_PIDFD  a pidfd of the box's init, for a signal init cannot pass on
 *     SCROLLBACK  bytes kept per PTY; LOG_MAX bytes per log file before it rotates to
 *                 .1; AUTO_RESTART 0|1 and RESTART_DELAY_MS: [session] auto_restart
 *     BOX_DIR     where log and shell-N.log are written; NAME the box's name (`ls`)
 *   env: COOPY_CLIENT_STALL_S (seconds a client may take nothing while the box waits on
 *        it; 0.1–600, default 10).  stderr: keeper.log.  Dies with its parent.
 *
 * Back-pressure, like a terminal that cannot keep up: while a client has more than
 * HIGH_WATER bytes queued, its PTY's master is not read, so the box's writes block in
 * the kernel (nothing is dropped: scrollback and log get every byte); reading resumes
 * when every client of that PTY is under LOW_WATER.  A client that takes nothing for
 * the stall time while the box waits on it is detached.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define VERSION 1 /* coopy/proto.py VERSION */
#define MAX_PAYLOAD (1u << 20)
enum { T_HELLO = 1, T_DATA, T_RESIZE, T_DETACH, T_EXIT, T_ERROR, T_INFO, T_KILL, T_OK };
static const char *const type_names[] = { "", "HELLO", "DATA", "RESIZE", "DETACH", "EXIT",
					  "ERROR", "INFO", "KILL", "OK" };

#define HIGH_WATER (1u << 20)
#define LOW_WATER (256u << 10)
#define READ_BATCH (256u << 10) /* ≤ MAX_PAYLOAD: one DATA frame */
#define LOG_BATCH (64u << 10)	/* the log is written in pieces this big, */
#define LOG_DELAY_MS 50		/* or this long after its first unwritten byte */
#define CRASH_COUNT 3		/* agent exits within CRASH_WINDOW_MS: stop restarting */
#define CRASH_WINDOW_MS 5000
#define KILL_AFTER_MS 10000 /* a restart's SIGTERM becomes SIGKILL */
#define MAX_ARGS 256

/* ---- small things ------------------------------------------------------------------- */

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("keeper: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	fflush(stderr);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		say("out of memory");
		exit(1);
	}
	return p;
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	return memcpy(xrealloc(NULL, n), s, n);
}

static int64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* A byte queue: appended at the tail, taken from the head. */
struct bytes {
	char *p;
	size_t head, len, cap;
};

static void bytes_add(struct bytes *b, const void *data, size_t n)
{
	if (b->head + b->len + n > b->cap) {
		if (b->head) {
			memmove(b->p, b->p + b->head, b->len);
			b->head = 0;
		}
		if (b->len + n > b->cap) {
			b->cap = b->cap ? b->cap : 4096;
			while (b->cap < b->len + n)
				b->cap *= 2;
			b->p = xrealloc(b->p, b->cap);
		}
	}
	memcpy(b->p + b->head + b->len, data, n);
	b->len += n;
}

static void bytes_take(struct bytes *b, size_t n)
{
	b->head += n;
	b->len -= n;
	if (!b->len)
		b->head = 0;
}

/* Write what b holds to fd until it would block: what was written, or -1 when fd is
 * gone (EIO, EPIPE…). */
static ssize_t bytes_write(int fd, struct bytes *b)
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

static void bytes_free(struct bytes *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}

/* NUL-separated argv lists: the agent's command, a shell's. */
struct argv {
	int n;
	char **v;
};

/* A copy of v (which may be a's own) replaces a's list. */
static void argv_set(struct argv *a, char **v, int n)
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

/* ---- JSON: HELLO in, INFO out (what coopy/proto.py's dumps writes: ASCII) ----------- */

struct hello {
	int version, verb_ok, rows, cols, pty, new, id, sig, has_command, has_shell, direct;
	char verb[16];
	struct argv command, shell;
};

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
static int parse_hello(const char *s, size_t n, struct hello *h)
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
				h->verb_ok = strlen(v) < sizeof h->verb;
				snprintf(h->verb, sizeof h->verb, "%s", v);
				free(v);
			} else if (!strcmp(key, "command")) {
				h->has_command = j.s < j.end && *j.s == '[';
				strings(&j, &h->command);
			} else if (!strcmp(key, "shell")) {
				h->has_shell = j.s < j.end && *j.s == '[';
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

static void json_str(struct bytes *out, const char *s)
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

static void json_argv(struct bytes *out, const struct argv *a)
{
	bytes_add(out, "[", 1);
	for (int i = 0; i < a->n; i++) {
		if (i)
			bytes_add(out, ", ", 2);
		json_str(out, a->v[i]);
	}
	bytes_add(out, "]", 1);
}

/* ---- state --------------------------------------------------------------------------- */

struct pty {
	int id, master, log_fd, used;
	int drained; /* its master said EOF/EIO */
	int paused;  /* a client of it is over HIGH_WATER: its master is not read */
	int status;  /* its process's exit status; -1 while it runs */
	unsigned events;
	int shell;
	struct argv command;
	char *ring; /* the scrollback: ring_len bytes ending at ring_end */
	size_t ring_end, ring_len;
	struct bytes to_master; /* input waiting for room */
	struct bytes log;	/* output not written to the log yet */
	int64_t log_since;
	off_t log_size;
	char log_path[4096];
};

struct client {
	int fd, used, greeted, pty; /* pty: attached to ptys[pty], or -1 */
	int exec_id;		    /* the `coopy exec` process it waits for, or -1 */
	int pending;		    /* waits for init to start its process */
	int rows, cols, writing, closing;
	int fds[3], nfds; /* exec's stdio, or its terminal, received with HELLO */
	int tty;	  /* its terminal, written directly (HELLO "direct"), or -1 */
	unsigned tty_events;
	struct argv command;
	struct bytes in, out, tout; /* out: frames for its socket; tout: bytes for its tty */
	int64_t since; /* its last progress, or when its queue began */
};

#define MAX_PTYS 256
#define MAX_CLIENTS 1024
static struct pty ptys[MAX_PTYS];
static struct client clients[MAX_CLIENTS];
static int ep, listen_fd, control = -1, link_fd, init_pidfd = -1;
static size_t scrollback;
static off_t log_max;
static int auto_restart, next_id = 1, stopping, ending = -1;
static int64_t restart_delay, stall, restart_at = -1, kill_at = -1;
static int64_t exits[CRASH_COUNT];
static int nexits;
static int restart_pending; /* `coopy restart`: start the agent again when it exits */
static struct argv restart_with, agent_command;
static const char *box_dir, *box_name;

/* epoll data: kind in the high bits, an index below */
enum { K_LISTEN = 1, K_CONTROL, K_LINK, K_PTY, K_CLIENT, K_TTY };
#define TAG(kind, i) (((uint64_t)(kind) << 32) | (uint32_t)(i))

static void watch(int fd, int op, unsigned events, uint64_t tag)
{
	struct epoll_event e = { .events = events, .data.u64 = tag };
	if (epoll_ctl(ep, op, fd, &e) < 0 && op != EPOLL_CTL_DEL)
		say("epoll_ctl: %s", strerror(errno));
}

static struct pty *find_pty(int id)
{
	for (int i = 0; i < MAX_PTYS; i++)
		if (ptys[i].used && ptys[i].id == id)
			return &ptys[i];
	return NULL;
}

/* Register its master for what is wanted now: output unless drained or paused, room
 * while input waits. */
static void pty_watch(struct pty *p)
{
	unsigned want = p->drained ? 0 : (p->paused ? 0 : EPOLLIN) | (p->to_master.len ? EPOLLOUT : 0);
	if (want == p->events)
		return;
	if (!p->events)
		watch(p->master, EPOLL_CTL_ADD, want, TAG(K_PTY, p - ptys));
	else if (!want)
		watch(p->master, EPOLL_CTL_DEL, 0, 0);
	else
		watch(p->master, EPOLL_CTL_MOD, want, TAG(K_PTY, p - ptys));
	p->events = want;
}

static struct pty *pty_new(int id, int master, int shell, const char *log_name)
{
	for (int i = 0; i < MAX_PTYS; i++) {
		struct pty *p = &ptys[i];
		if (p->used)
			continue;
		memset(p, 0, sizeof *p);
		p->used = 1;
		p->id = id;
		p->master = master;
		p->shell = shell;
		p->status = -1;
		p->ring = xrealloc(NULL, scrollback);
		snprintf(p->log_path, sizeof p->log_path, "%s/%s", box_dir, log_name);
		p->log_fd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		struct stat st;
		p->log_size = p->log_fd >= 0 && !fstat(p->log_fd, &st) ? st.st_size : 0;
		fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
		pty_watch(p);
		return p;
	}
	say("more than %d terminals", MAX_PTYS);
	close(master);
	return NULL;
}

/* ---- the log and the scrollback ------------------------------------------------------ */

static void log_flush(struct pty *p)
{
	struct bytes *b = &p->log;
	while (b->len && p->log_fd >= 0) {
		if (p->log_size >= log_max) {
			/* Rotate: one previous log is kept, so a chatty agent cannot fill the disk.
			 * log → log.1, shell-N.log → shell-N.1 (coopy/cli/logs.py reads them). */
			char old[sizeof p->log_path + 2];
			size_t len = strlen(p->log_path);
			int dotlog = len > 4 && !strcmp(p->log_path + len - 4, ".log");
			snprintf(old, sizeof old, "%.*s.1", (int)(dotlog ? len - 4 : len), p->log_path);
			rename(p->log_path, old);
			close(p->log_fd);
			p->log_fd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
			p->log_size = 0;
			continue;
		}
		size_t n = b->len < (size_t)(log_max - p->log_size) ? b->len : (size_t)(log_max - p->log_size);
		ssize_t w = write(p->log_fd, b->p + b->head, n);
		if (w <= 0)
			break; /* a full disk must not take the box down; the terminal still works */
		p->log_size += w;
		bytes_take(b, (size_t)w);
	}
	b->len = b->head = 0;
}

static void keep(struct pty *p, const char *data, size_t n)
{
	if (n >= scrollback) {
		memcpy(p->ring, data + n - scrollback, scrollback);
		p->ring_end = 0;
		p->ring_len = scrollback;
	} else {
		size_t first = scrollback - p->ring_end < n ? scrollback - p->ring_end : n;
		memcpy(p->ring + p->ring_end, data, first);
		memcpy(p->ring, data + first, n - first);
		p->ring_end = (p->ring_end + n) % scrollback;
		p->ring_len = p->ring_len + n > scrollback ? scrollback : p->ring_len + n;
	}
	if (!p->log.len)
		p->log_since = now_ms();
	bytes_add(&p->log, data, n);
	if (p->log.len >= LOG_BATCH)
		log_flush(p);
}

/* ---- clients ------------------------------------------------------------------------- */

static void pace(struct pty *p);
static void client_drop(struct client *c);

/* What it has not taken yet. */
static size_t queued(const struct client *c)
{
	return c->out.len + c->tout.len;
}

static void client_watch(struct client *c)
{
	int want = c->out.len > 0;
	if (want != c->writing) {
		watch(c->fd, EPOLL_CTL_MOD, EPOLLIN | (want ? EPOLLOUT : 0), TAG(K_CLIENT, c - clients));
		c->writing = want;
	}
}

/* Its terminal first: the frames of its socket (EXIT above all) wait until the output
 * before them is on the screen.  0 when the terminal is gone (then so is the client). */
static int tty_flush(struct client *c)
{
	ssize_t n = bytes_write(c->tty, &c->tout);
	if (n < 0)
		return 0;
	if (n > 0)
		c->since = now_ms();
	/* Watched only while output waits: a hung-up terminal is reported even to an
	 * entry that asks for nothing. */
	unsigned want = c->tout.len && !c->closing ? EPOLLOUT : 0;
	if (want != c->tty_events) {
		watch(c->tty, want ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, want, TAG(K_TTY, c - clients));
		c->tty_events = want;
	}
	return 1;
}

static void client_flush(struct client *c)
{
	if (c->tty >= 0 && !tty_flush(c)) {
		client_drop(c);
		return;
	}
	while (c->out.len && !c->tout.len) {
		ssize_t n = send(c->fd, c->out.p + c->out.head, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) { /* gone: forget its queue */
			bytes_free(&c->out);
			break;
		}
		bytes_take(&c->out, (size_t)n);
		c->since = now_ms();
	}
	if (!c->closing)
		client_watch(c);
	if (c->pty >= 0 && queued(c) < LOW_WATER) {
		struct pty *p = find_pty(c->pty);
		if (p && p->paused)
			pace(p);
	}
}

static void send_frame(struct client *c, int type, const void *payload, size_t n)
{
	unsigned char h[5] = { (unsigned char)type, (unsigned char)(n >> 24), (unsigned char)(n >> 16),
			       (unsigned char)(n >> 8), (unsigned char)n };
	if (!queued(c))
		c->since = now_ms();
	if (type == T_DATA && c->tty >= 0) {
		bytes_add(&c->tout, payload, n);
	} else {
		bytes_add(&c->out, h, 5);
		bytes_add(&c->out, payload, n);
	}
	client_flush(c);
}

static void send_int(struct client *c, int type, int32_t v)
{
	uint32_t u = (uint32_t)v;
	unsigned char b[4] = { (unsigned char)(u >> 24), (unsigned char)(u >> 16), (unsigned char)(u >> 8),
			       (unsigned char)u };
	send_frame(c, type, b, 4);
}

static void send_error(struct client *c, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	send_frame(c, T_ERROR, msg, strlen(msg));
}

/* What is queued goes out (waiting up to 2 s for a slow client), then it is dropped. */
static void client_final(struct client *c)
{
	int64_t until = now_ms() + 2000;
	c->closing = 1;
	while (c->tty >= 0 && c->tout.len && now_ms() < until) {
		struct pollfd pf = { c->tty, POLLOUT, 0 };
		poll(&pf, 1, 100);
		if (!tty_flush(c))
			break;
	}
	if (c->tout.len) /* its terminal took nothing for 2 s: no EXIT before that output */
		bytes_free(&c->out);
	while (c->out.len && now_ms() < until) {
		struct timeval tv = { 0, 100000 };
		setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		ssize_t n = send(c->fd, c->out.p + c->out.head, c->out.len, MSG_NOSIGNAL);
		if (n > 0)
			bytes_take(&c->out, (size_t)n);
		else if (n < 0 && errno != EAGAIN && errno != EINTR)
			break;
	}
	client_drop(c);
}

static void client_drop(struct client *c)
{
	if (!c->used)
		return;
	if (c->tty >= 0) { /* before the socket: its EOF tells the client we are done */
		if (c->tty_events)
			watch(c->tty, EPOLL_CTL_DEL, 0, 0);
		close(c->tty);
	}
	bytes_free(&c->tout);
	watch(c->fd, EPOLL_CTL_DEL, 0, 0);
	close(c->fd);
	for (int i = 0; i < c->nfds; i++)
		close(c->fds[i]);
	bytes_free(&c->in);
	bytes_free(&c->out);
	argv_set(&c->command, NULL, 0);
	free(c->command.v);
	int pty = c->pty;
	memset(c, 0, sizeof *c);
	struct pty *p = pty >= 0 ? find_pty(pty) : NULL;
	if (p && p->paused)
		pace(p);
}

/* Stop reading a PTY while a client of it is over HIGH_WATER; read it again when all
 * are under LOW_WATER. */
static void pace(struct pty *p)
{
	size_t most = 0;
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i].used && clients[i].pty == p->id && queued(&clients[i]) > most)
			most = queued(&clients[i]);
	int paused = most >= HIGH_WATER || (p->paused && most >= LOW_WATER);
	if (paused != p->paused) {
		p->paused = paused;
		pty_watch(p);
	}
}

/* ---- the box's terminals ------------------------------------------------------------- */

static void pty_close(struct pty *p)
{
	log_flush(p);
	if (p->events)
		watch(p->master, EPOLL_CTL_DEL, 0, 0);
	close(p->master);
	if (p->log_fd >= 0)
		close(p->log_fd);
	free(p->ring);
	bytes_free(&p->to_master);
	bytes_free(&p->log);
	argv_set(&p->command, NULL, 0);
	free(p->command.v);
	memset(p, 0, sizeof *p);
}

/* A shell whose process exited and whose output is drained: tell, forget. */
static void maybe_finish(struct pty *p)
{
	if (p->status < 0 || !p->drained)
		return;
	for (int i = 0; i < MAX_CLIENTS; i++) {
		struct client *c = &clients[i];
		if (c->used && c->pty == p->id) {
			send_int(c, T_EXIT, p->status);
			client_final(c);
		}
	}
	pty_close(p);
}

static void output(struct pty *p, const char *data, size_t n)
{
	keep(p, data, n);
	int behind = 0;
	for (int i = 0; i < MAX_CLIENTS; i++) {
		struct client *c = &clients[i];
		if (c->used && c->pty == p->id && !c->closing) {
			send_frame(c, T_DATA, data, n);
			behind |= c->used && queued(c) >= HIGH_WATER;
		}
	}
	if (behind)
		pace(p);
}

/* Read what the PTY has (up to READ_BATCH): scrollback, log, one DATA frame to each of
 * its clients.  A read of a master returns at most 4 KiB (n_tty's buffer). */
static void from_master(struct pty *p)
{
	static char buf[READ_BATCH];
	size_t size = 0;
	int eof = 0;
	while (size < READ_BATCH) {
		ssize_t n = read(p->master, buf + size, READ_BATCH - size);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) { /* EIO: the PTY's last slave is closed */
			eof = 1;
			break;
		}
		size += (size_t)n;
	}
	if (size)
		output(p, buf, size);
	if (eof) {
		p->drained = 1;
		pty_watch(p);
		if (p->shell)
			maybe_finish(p);
	}
}

static void flush_master(struct pty *p)
{
	if (bytes_write(p->master, &p->to_master) < 0)
		p->to_master.len = p->to_master.head = 0;
	pty_watch(p);
}

static void resize(struct pty *p, int rows, int cols)
{
	if (rows > 0 && cols > 0) {
		struct winsize w = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
		ioctl(p->master, TIOCSWINSZ, &w);
	}
}

/* The scrollback to a client that just attached. */
static void replay(struct client *c, struct pty *p)
{
	size_t start = (p->ring_end + scrollback - p->ring_len) % scrollback;
	size_t first = scrollback - start < p->ring_len ? scrollback - start : p->ring_len;
	if (first)
		send_frame(c, T_DATA, p->ring + start, first);
	if (p->ring_len > first)
		send_frame(c, T_DATA, p->ring, p->ring_len - first);
	pace(p);
}

/* A line from coopy in the agent's terminal (and its scrollback and log). */
static void note(const char *fmt, ...)
{
	char text[512], line[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	int n = snprintf(line, sizeof line, "\r\n[coopy: %s]\r\n", text);
	struct pty *agent = find_pty(0);
	if (agent)
		output(agent, line, (size_t)n);
}

/* ---- coopy-init ---------------------------------------------------------------------- */

static int ask_init(const char *const *fields, int n, const int *fds, int nfds)
{
	char msg[65536];
	size_t len = 0;
	for (int i = 0; i < n; i++) {
		size_t l = strlen(fields[i]) + 1;
		if (len + l > sizeof msg)
			return 0;
		memcpy(msg + len, fields[i], l);
		len += l;
	}
	if (control < 0)
		return 0;
	struct iovec iov = { msg, len };
	union {
		char buf[CMSG_SPACE(sizeof(int) * 3)];
		struct cmsghdr align;
	} u;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds) {
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	return sendmsg(control, &mh, MSG_NOSIGNAL) == (ssize_t)len;
}

static int ask_init2(const char *a, int b, int c)
{
	char x[16], y[16];
	snprintf(x, sizeof x, "%d", b);
	snprintf(y, sizeof y, "%d", c);
	const char *f[] = { a, x, y };
	return ask_init(f, a[0] == 'Q' || a[0] == 'W' ? 2 : 3, NULL, 0);
}

static void start_agent(const struct argv *command)
{
	argv_set(&agent_command, command->v, command->n);
	struct pty *agent = find_pty(0);
	if (agent)
		argv_set(&agent->command, command->v, command->n);
	/* the parent rewrites the record */
	const char *f[MAX_ARGS + 4] = { "command" };
	int n = 1;
	for (int i = 0; i < command->n && n < MAX_ARGS + 1; i++)
		f[n++] = command->v[i];
	char msg[65536];
	size_t len = 0;
	for (int i = 0; i < n; i++) {
		size_t l = strlen(f[i]) + 1;
		if (len + l <= sizeof msg) {
			memcpy(msg + len, f[i], l);
			len += l;
		}
	}
	send(link_fd, msg, len, MSG_NOSIGNAL);
	const char *s[MAX_ARGS + 4] = { "S", "0", "1" };
	n = 3;
	for (int i = 0; i < command->n && n < MAX_ARGS + 3; i++)
		s[n++] = command->v[i];
	ask_init(s, n, NULL, 0);
}

static void agent_exited(int status)
{
	int64_t now = now_ms();
	kill_at = -1;
	if (restart_pending && !stopping) {
		restart_pending = 0;
		start_agent(&restart_with);
		return;
	}
	if (auto_restart && !stopping) {
		int k = 0;
		for (int i = 0; i < nexits; i++)
			if (now - exits[i] < CRASH_WINDOW_MS)
				exits[k++] = exits[i];
		if (k == CRASH_COUNT)
			memmove(exits, exits + 1, sizeof exits[0] * --k);
		exits[k++] = now;
		nexits = k;
		if (nexits < CRASH_COUNT) {
			note("the agent exited with status %d; restarting it in %g s", status,
			     (double)restart_delay / 1000);
			restart_at = now + restart_delay;
			return;
		}
		note("the agent exited %d times within %g s (last status %d): not restarting it",
		     CRASH_COUNT, CRASH_WINDOW_MS / 1000.0, status);
	}
	/* Being killed, the other processes got SIGTERM too: let them finish (init ends the
	 * box when none is left; `coopy kill` sends SIGKILL after its grace period). */
	ask_init2(stopping ? "W" : "Q", status, 0);
}

static void from_init(void)
{
	char msg[65536];
	int fd = -1;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { msg, sizeof msg - 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			     .msg_controllen = sizeof u.buf };
	ssize_t n = recvmsg(control, &mh, MSG_CMSG_CLOEXEC);
	if (n <= 0) {
		if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
			watch(control, EPOLL_CTL_DEL, 0, 0);
			close(control);
			control = -1;
		}
		return;
	}
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			memcpy(&fd, CMSG_DATA(cm), sizeof fd);
	msg[n] = 0;
	char *f[4] = { msg, "", "", "" };
	for (int i = 1, at = 0; i < 4; i++) {
		at += (int)strlen(msg + at) + 1;
		if (at < n)
			f[i] = msg + at;
	}
	char kind = f[0][0];
	int ident = atoi(f[1]);
	struct client *c = NULL;
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i].used && clients[i].pending == ident + 1)
			c = &clients[i];
	if (c)
		c->pending = 0;
	if (kind == 'P' && ident == 0 && fd >= 0) { /* the restarted agent's new terminal */
		struct pty *agent = find_pty(0);
		if (agent) {
			while (!agent->drained && agent->events) {
				size_t before = agent->ring_len;
				size_t end = agent->ring_end;
				from_master(agent); /* the old agent's last words first */
				if (agent->ring_end == end && agent->ring_len == before)
					break;
			}
			if (agent->events)
				watch(agent->master, EPOLL_CTL_DEL, 0, 0);
			agent->events = 0;
			close(agent->master);
			agent->master = fd;
			agent->drained = 0;
			agent->status = -1;
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
			pty_watch(agent);
		} else {
			close(fd);
		}
	} else if (kind == 'P') {
		if (fd >= 0) { /* a shell: its PTY master */
			char name[64];
			snprintf(name, sizeof name, "shell-%d.log", ident);
			struct pty *p = pty_new(ident, fd, 1, name);
			if (p && c) {
				argv_set(&p->command, c->command.v, c->command.n);
				c->pty = ident;
				resize(p, c->rows, c->cols);
			}
		} else if (c) {
			c->exec_id = ident;
		}
	} else if (kind == 'E' && c) {
		int err = atoi(f[3]);
		int code = !strcmp(f[2], "exec") && (err == ENOENT || err == ENOTDIR) ? 127 : 126;
		send_error(c, "cannot run '%s' in the box: %s", c->command.n ? c->command.v[0] : "",
			   code == 127 ? "not found" : strerror(err));
		send_int(c, T_EXIT, code);
	} else if (kind == 'X' && ident == 0) {
		agent_exited(atoi(f[2]));
	} else if (kind == 'X') {
		int status = atoi(f[2]);
		struct pty *done = find_pty(ident);
		if (done) {
			done->status = status;
			maybe_finish(done);
		}
		for (int i = 0; i < MAX_CLIENTS; i++)
			if (clients[i].used && clients[i].exec_id == ident) {
				send_int(&clients[i], T_EXIT, status);
				client_final(&clients[i]);
			}
	} else if (fd >= 0) {
		close(fd);
	}
}

/* ---- HELLO and the frames after it --------------------------------------------------- */

static void info(struct client *c)
{
	struct bytes out = { 0 };
	char num[64];
	int agent_clients = 0;
	for (int i = 0; i < MAX_CLIENTS; i++)
		agent_clients += clients[i].used && clients[i].pty == 0;
	bytes_add(&out, "{\"name\": ", 9);
	json_str(&out, box_name);
	snprintf(num, sizeof num, ", \"state\": \"running\", \"clients\": %d, \"shells\": [",
		 agent_clients);
	bytes_add(&out, num, strlen(num));
	int first = 1;
	for (int i = 0; i < MAX_PTYS; i++) {
		struct pty *p = &ptys[i];
		if (!p->used || !p->shell || p->status >= 0)
			continue;
		int n = 0;
		for (int k = 0; k < MAX_CLIENTS; k++)
			n += clients[k].used && clients[k].pty == p->id;
		snprintf(num, sizeof num, "%s{\"id\": %d, \"command\": ", first ? "" : ", ", p->id);
		bytes_add(&out, num, strlen(num));
		json_argv(&out, &p->command);
		snprintf(num, sizeof num, ", \"clients\": %d}", n);
		bytes_add(&out, num, strlen(num));
		first = 0;
	}
	snprintf(num, sizeof num, "], \"pid\": %d}", (int)getppid());
	bytes_add(&out, num, strlen(num));
	send_frame(c, T_INFO, out.p + out.head, out.len);
	bytes_free(&out);
}

/* The client's terminal, opened anew: a file description of our own, so that O_NONBLOCK
 * here does not make the client's (and after it, its shell's) terminal non-blocking.
 * -1 when it is no terminal or cannot be opened: then its output goes in DATA frames. */
static int open_tty(int fd)
{
	char path[64];
	if (!isatty(fd))
		return -1;
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	int tty = open(path, O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (tty >= 0 && !isatty(tty)) {
		close(tty);
		tty = -1;
	}
	return tty;
}

static void attach_to(struct client *c, struct pty *p, int rows, int cols)
{
	c->pty = p->id;
	resize(p, rows, cols);
	replay(c, p);
}

static void hello(struct client *c, const char *payload, size_t n)
{
	struct hello h;
	if (!parse_hello(payload, n, &h)) {
		send_error(c, "HELLO: bad JSON payload");
		client_final(c);
		goto out;
	}
	if (h.version != VERSION) {
		send_error(c, "this box's keeper speaks protocol %d; restart the box with this coopy",
			   VERSION);
		client_final(c);
		goto out;
	}
	c->greeted = 1;
	if (h.direct && c->nfds == 1 && (!strcmp(h.verb, "attach") || !strcmp(h.verb, "shell"))) {
		c->tty = open_tty(c->fds[0]);
		close(c->fds[0]);
		c->nfds = 0;
	}
	if (!strcmp(h.verb, "attach")) {
		struct pty *p = find_pty(h.pty);
		if (!p)
			send_error(c, "no shell %d in this box", h.pty);
		else
			attach_to(c, p, h.rows, h.cols);
	} else if (!strcmp(h.verb, "info")) {
		info(c);
	} else if (!strcmp(h.verb, "shell") || !strcmp(h.verb, "exec")) {
		int shell = h.verb[0] == 's';
		struct argv *command = &h.command;
		if (shell && !h.new && !command->n) {
			for (int i = 0; i < MAX_PTYS; i++)
				if (ptys[i].used && ptys[i].shell && ptys[i].status < 0) {
					attach_to(c, &ptys[i], h.rows, h.cols);
					goto out;
				}
		}
		if (!command->n) {
			static char sh[] = "sh", dash_l[] = "-l";
			char *dflt[] = { sh, dash_l };
			if (h.has_shell && h.shell.n)
				argv_set(&c->command, h.shell.v, h.shell.n);
			else
				argv_set(&c->command, dflt, 2);
		} else {
			argv_set(&c->command, command->v, command->n);
		}
		c->rows = h.rows;
		c->cols = h.cols;
		if (!shell && c->nfds != 3) {
			send_error(c, "exec needs its 3 stdio fds");
			goto out;
		}
		int ident = next_id++;
		char id[16];
		snprintf(id, sizeof id, "%d", ident);
		const char *f[MAX_ARGS + 3] = { "S", id, shell ? "1" : "0" };
		int nf = 3;
		for (int i = 0; i < c->command.n && nf < MAX_ARGS + 3; i++)
			f[nf++] = c->command.v[i];
		c->pending = ident + 1;
		int ok = ask_init(f, nf, shell ? NULL : c->fds, shell ? 0 : 3);
		for (int i = 0; i < c->nfds; i++)
			close(c->fds[i]);
		c->nfds = 0;
		if (!ok) {
			c->pending = 0;
			send_error(c, "this box cannot start processes");
		}
	} else if (!strcmp(h.verb, "restart")) {
		if (h.has_command && h.command.n)
			argv_set(&restart_with, h.command.v, h.command.n);
		else
			argv_set(&restart_with, agent_command.v, agent_command.n);
		restart_pending = 1;
		ask_init2("K", 0, SIGTERM);
		kill_at = now_ms() + KILL_AFTER_MS;
		send_frame(c, T_OK, "", 0);
	} else if (!strcmp(h.verb, "signal")) {
		ask_init2("K", h.id, h.sig);
		send_frame(c, T_OK, "", 0);
	}
out:
	argv_set(&h.command, NULL, 0);
	argv_set(&h.shell, NULL, 0);
	free(h.command.v);
	free(h.shell.v);
}

static void frame(struct client *c, int type, const char *payload, uint32_t n)
{
	if (!c->greeted) {
		hello(c, type == T_HELLO ? payload : "{}", type == T_HELLO ? n : 2);
		return;
	}
	struct pty *p = c->pty >= 0 ? find_pty(c->pty) : NULL;
	if (type == T_DATA && p) {
		bytes_add(&p->to_master, payload, n);
		flush_master(p);
	} else if (type == T_RESIZE && p) {
		if (n != 4) {
			send_error(c, "RESIZE: expected 4 bytes");
			client_final(c);
			return;
		}
		const unsigned char *b = (const unsigned char *)payload;
		resize(p, b[0] << 8 | b[1], b[2] << 8 | b[3]);
	} else if (type == T_DETACH) {
		client_drop(c);
	} else if (type == T_KILL) {
		if (n != 4) {
			send_error(c, "KILL: expected 4 bytes");
			client_final(c);
			return;
		}
		const unsigned char *b = (const unsigned char *)payload;
		int sig = (int)((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]);
		int target = c->pty > 0 ? c->pty : c->exec_id > 0 ? c->exec_id : 0;
		if (target) {
			ask_init2("K", target, sig);
		} else {
			/* `coopy kill`: every process of the box gets it, not only the agent (init:
			 * kill(-1)); SIGKILL goes to init itself, which ends them all. */
			stopping = 1;
			if (sig == SIGKILL || !ask_init2("K", -1, sig))
				syscall(SYS_pidfd_send_signal, init_pidfd, sig, NULL, 0);
		}
		send_frame(c, T_OK, "", 0);
	} else if (type != T_DATA && type != T_RESIZE) {
		send_error(c, "unexpected %s", type_names[type]);
	}
}

static void from_client(struct client *c, unsigned events)
{
	if (events & EPOLLOUT)
		client_flush(c);
	if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || !c->used)
		return;
	char buf[65536];
	union {
		char buf[CMSG_SPACE(sizeof(int) * 3)];
		struct cmsghdr align;
	} u;
	struct iovec iov = { buf, sizeof buf };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			     .msg_controllen = sizeof u.buf };
	ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); n >= 0 && cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		int *fds = (int *)CMSG_DATA(cm);
		for (int i = 0; i < k; i++) {
			if (c->nfds < 3)
				c->fds[c->nfds++] = fds[i];
			else
				close(fds[i]);
		}
	}
	if (n <= 0) {
		client_drop(c);
		return;
	}
	bytes_add(&c->in, buf, (size_t)n);
	while (c->used && !c->closing && c->in.len >= 5) {
		const unsigned char *h = (const unsigned char *)c->in.p + c->in.head;
		uint32_t len = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
		if (len > MAX_PAYLOAD || h[0] < T_HELLO || h[0] > T_OK) {
			if (len > MAX_PAYLOAD)
				send_error(c, "frame of %u bytes is too large", len);
			else
				send_error(c, "unknown frame type %d", h[0]);
			client_final(c);
			return;
		}
		if (c->in.len < 5 + (size_t)len)
			break;
		int type = h[0];
		/* the payload stays put while it is handled: the queue only grows on recv */
		frame(c, type, (const char *)h + 5, len);
		if (c->used)
			bytes_take(&c->in, 5 + (size_t)len);
	}
}

static void accept_client(void)
{
	int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	for (int i = 0; i < MAX_CLIENTS; i++) {
		struct client *c = &clients[i];
		if (c->used)
			continue;
		memset(c, 0, sizeof *c);
		c->used = 1;
		c->fd = fd;
		c->pty = -1;
		c->exec_id = -1;
		c->tty = -1;
		watch(fd, EPOLL_CTL_ADD, EPOLLIN, TAG(K_CLIENT, i));
		return;
	}
	close(fd);
}

/* ---- timers and the loop ------------------------------------------------------------- */

static int timeout_ms(void)
{
	int64_t soonest = -1, now = now_ms();
	int64_t times[2] = { restart_at, kill_at };
	for (int i = 0; i < 2; i++)
		if (times[i] >= 0 && (soonest < 0 || times[i] < soonest))
			soonest = times[i];
	for (int i = 0; i < MAX_PTYS; i++)
		if (ptys[i].used && ptys[i].log.len) {
			int64_t t = ptys[i].log_since + LOG_DELAY_MS;
			if (soonest < 0 || t < soonest)
				soonest = t;
		}
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i].used && queued(&clients[i]) >= HIGH_WATER) {
			int64_t t = clients[i].since + stall;
			if (soonest < 0 || t < soonest)
				soonest = t;
		}
	if (soonest < 0)
		return -1;
	return soonest <= now ? 0 : (int)(soonest - now);
}

static void timers(void)
{
	int64_t now = now_ms();
	for (int i = 0; i < MAX_CLIENTS; i++) {
		struct client *c = &clients[i];
		if (c->used && queued(c) >= HIGH_WATER && now - c->since >= stall) {
			/* It has taken nothing for that long while its PTY waited on it (a frozen
			 * terminal, a suspended ssh): the box goes on without it. */
			say("a client of PTY %d took nothing for %g s while the box waited on it: "
			    "detached it", c->pty, (double)stall / 1000);
			client_drop(c);
		}
	}
	for (int i = 0; i < MAX_PTYS; i++)
		if (ptys[i].used && ptys[i].log.len && now - ptys[i].log_since >= LOG_DELAY_MS)
			log_flush(&ptys[i]);
	if (restart_at >= 0 && now >= restart_at) {
		restart_at = -1;
		start_agent(&agent_command);
	}
	if (kill_at >= 0 && now >= kill_at) {
		kill_at = -1;
		ask_init2("K", 0, SIGKILL);
	}
}

static void from_link(void)
{
	char msg[256];
	ssize_t n = recv(link_fd, msg, sizeof msg - 1, 0);
	if (n < 0 && errno == EINTR)
		return;
	if (n <= 0)
		exit(1); /* the parent is gone: so is the box */
	msg[n] = 0;
	if (!strcmp(msg, "end") && (size_t)n > 4)
		ending = atoi(msg + 4);
}

/* The box has ended: what its terminals still hold, then EXIT to every client. */
static void finish(void)
{
	for (int i = 0; i < MAX_PTYS; i++) {
		struct pty *p = &ptys[i];
		for (int k = 0; p->used && !p->drained && k < 1024; k++) {
			size_t len = p->ring_len, end = p->ring_end;
			from_master(p);
			if (p->ring_len == len && p->ring_end == end)
				break;
		}
		if (p->used)
			log_flush(p);
	}
	for (int i = 0; i < MAX_CLIENTS; i++) {
		struct client *c = &clients[i];
		if (!c->used)
			continue;
		if (c->greeted)
			send_int(c, T_EXIT, ending);
		client_final(c);
	}
}

static double stall_seconds(const char *s)
{
	char *end;
	double v = s ? strtod(s, &end) : NAN;
	if (!s || end == s || *end || isnan(v))
		return 10.0;
	return v < 0.1 ? 0.1 : v > 600 ? 600 : v;
}

int main(int argc, char **argv)
{
	if (argc < 13 || strcmp(argv[12], "--")) {
		fprintf(stderr, "usage: coopy-keeper LISTEN CONTROL LINK MASTER INIT_PIDFD "
				"SCROLLBACK LOG_MAX AUTO_RESTART RESTART_DELAY_MS BOX_DIR NAME -- "
				"AGENT...\n(started by coopy's keeper, not by hand)\n");
		return 2;
	}
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGPIPE, SIG_IGN);
	listen_fd = atoi(argv[1]);
	control = atoi(argv[2]);
	link_fd = atoi(argv[3]);
	int master = atoi(argv[4]);
	init_pidfd = atoi(argv[5]);
	scrollback = strtoul(argv[6], NULL, 10);
	scrollback = scrollback < 4096 ? 4096 : scrollback;
	log_max = (off_t)strtoll(argv[7], NULL, 10);
	log_max = log_max < 4096 ? 4096 : log_max; /* [session] log_max may say 0 */
	auto_restart = atoi(argv[8]);
	restart_delay = strtoll(argv[9], NULL, 10);
	box_dir = argv[10];
	box_name = argv[11];
	stall = (int64_t)(stall_seconds(getenv("COOPY_CLIENT_STALL_S")) * 1000);
	argv_set(&agent_command, argv + 13, argc - 13);
	if (getppid() == 1) /* the parent died before PDEATHSIG was set */
		return 1;
	ep = epoll_create1(EPOLL_CLOEXEC);
	fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
	watch(listen_fd, EPOLL_CTL_ADD, EPOLLIN, TAG(K_LISTEN, 0));
	watch(link_fd, EPOLL_CTL_ADD, EPOLLIN, TAG(K_LINK, 0));
	if (control >= 0)
		watch(control, EPOLL_CTL_ADD, EPOLLIN, TAG(K_CONTROL, 0));
	struct pty *agent = pty_new(0, master, 0, "log");
	if (agent)
		argv_set(&agent->command, agent_command.v, agent_command.n);
	while (ending < 0) {
		struct epoll_event ev[64];
		int n = epoll_wait(ep, ev, 64, timeout_ms());
		for (int i = 0; i < n && ending < 0; i++) {
			int kind = (int)(ev[i].data.u64 >> 32), at = (int)(uint32_t)ev[i].data.u64;
			if (kind == K_LISTEN) {
				accept_client();
			} else if (kind == K_CONTROL) {
				if (control >= 0)
					from_init();
			} else if (kind == K_LINK) {
				from_link();
			} else if (kind == K_PTY) {
				struct pty *p = &ptys[at];
				if (!p->used)
					continue;
				if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
					from_master(p);
				if (p->used && ev[i].events & EPOLLOUT)
					flush_master(p);
			} else if (kind == K_CLIENT && clients[at].used) {
				from_client(&clients[at], ev[i].events);
			} else if (kind == K_TTY && clients[at].used) {
				if (ev[i].events & (EPOLLERR | EPOLLHUP))
					client_drop(&clients[at]); /* its terminal is gone */
				else
					client_flush(&clients[at]);
			}
		}
		timers();
	}
	finish();
	return 0;
}
