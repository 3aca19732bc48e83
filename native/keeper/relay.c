/* coopy-keeper: the relay — the box's PTYs (scrollback ring, log), the clients' queues
 * (their socket, or their terminal written directly), back-pressure. */
#include "keeper.h"

static void pace(struct pty *p);

void watch(int fd, int op, unsigned events, uint64_t tag)
{
	struct epoll_event e = { .events = events, .data.u64 = tag };
	if (epoll_ctl(ep, op, fd, &e) < 0 && op != EPOLL_CTL_DEL)
		say("epoll_ctl: %s", strerror(errno));
}

struct pty *find_pty(int id)
{
	for (int i = 0; i < ptys_in_use; i++)
		if (ptys[i].used && ptys[i].id == id)
			return &ptys[i];
	return NULL;
}

/* Register its master for what is wanted now: output unless drained or paused, room
 * while input waits. */
void pty_watch(struct pty *p)
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

struct pty *pty_new(int id, int master, int shell, const char *log_name)
{
	for (int i = 0; i < MAX_PTYS; i++) {
		struct pty *p = &ptys[i];
		if (p->used)
			continue;
		memset(p, 0, sizeof *p);
		p->used = 1;
		ptys_in_use = i + 1 > ptys_in_use ? i + 1 : ptys_in_use;
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

void log_flush(struct pty *p)
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


/* What it has not taken yet. */
size_t queued(const struct client *c)
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

void client_flush(struct client *c)
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

void send_frame(struct client *c, int type, const void *payload, size_t n)
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

void send_int(struct client *c, int type, int32_t v)
{
	uint32_t u = (uint32_t)v;
	unsigned char b[4] = { (unsigned char)(u >> 24), (unsigned char)(u >> 16), (unsigned char)(u >> 8),
			       (unsigned char)u };
	send_frame(c, type, b, 4);
}

void send_error(struct client *c, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	send_frame(c, T_ERROR, msg, strlen(msg));
}

/* What is queued goes out (waiting up to 2 s for a slow client), then it is dropped. */
void client_final(struct client *c)
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

void client_drop(struct client *c)
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
	while (clients_in_use && !clients[clients_in_use - 1].used)
		clients_in_use--;
	struct pty *p = pty >= 0 ? find_pty(pty) : NULL;
	if (p && p->paused)
		pace(p);
}

/* Stop reading a PTY while a client of it is over HIGH_WATER; read it again when all
 * are under LOW_WATER. */
static void pace(struct pty *p)
{
	size_t most = 0;
	for (int i = 0; i < clients_in_use; i++)
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
	while (ptys_in_use && !ptys[ptys_in_use - 1].used)
		ptys_in_use--;
}

/* A shell whose process exited and whose output is drained: tell, forget. */
void maybe_finish(struct pty *p)
{
	if (p->status < 0 || !p->drained)
		return;
	for (int i = 0; i < clients_in_use; i++) {
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
	for (int i = 0; i < clients_in_use; i++) {
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
size_t from_master(struct pty *p)
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
	return size;
}

/* What a PTY still holds, its writer ended or being replaced: read until there is nothing,
 * at most DRAIN_READS times, so that a process still writing cannot hold the keeper. */
void drain_master(struct pty *p)
{
	for (int k = 0; k < DRAIN_READS && p->used && !p->drained; k++)
		if (!from_master(p))
			break;
}

void flush_master(struct pty *p)
{
	if (bytes_write(p->master, &p->to_master) < 0)
		p->to_master.len = p->to_master.head = 0;
	pty_watch(p);
}

void resize(struct pty *p, int rows, int cols)
{
	if (rows > 0 && cols > 0) {
		struct winsize w = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
		ioctl(p->master, TIOCSWINSZ, &w);
	}
}

/* The scrollback to a client that just attached. */
void replay(struct client *c, struct pty *p)
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
void note(const char *fmt, ...)
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
