/* coopy-keeper: the session — coopy-init's channel (shells, exec, the agent's restarts)
 * and the clients' requests (HELLO and the frames after it). */
#include "keeper.h"

static const char *const type_names[] = { "", "HELLO", "DATA", "RESIZE", "DETACH", "EXIT",
					  "ERROR", "INFO", "KILL", "OK" };

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

int ask_init2(const char *a, int b, int c)
{
	char x[16], y[16];
	snprintf(x, sizeof x, "%d", b);
	snprintf(y, sizeof y, "%d", c);
	const char *f[] = { a, x, y };
	return ask_init(f, a[0] == 'Q' || a[0] == 'W' ? 2 : 3, NULL, 0);
}

void start_agent(const struct argv *command)
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

void from_init(void)
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
	for (int i = 0; i < clients_in_use; i++)
		if (clients[i].used && clients[i].pending == ident + 1)
			c = &clients[i];
	if (c)
		c->pending = 0;
	if (kind == 'P' && ident == 0 && fd >= 0) { /* the restarted agent's new terminal */
		struct pty *agent = find_pty(0);
		if (agent) {
			drain_master(agent); /* the old agent's last words first */
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
		for (int i = 0; i < clients_in_use; i++)
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
	for (int i = 0; i < clients_in_use; i++)
		agent_clients += clients[i].used && clients[i].pty == 0;
	bytes_add(&out, "{\"name\": ", 9);
	json_str(&out, box_name);
	snprintf(num, sizeof num, ", \"state\": \"running\", \"clients\": %d, \"shells\": [",
		 agent_clients);
	bytes_add(&out, num, strlen(num));
	int first = 1;
	for (int i = 0; i < ptys_in_use; i++) {
		struct pty *p = &ptys[i];
		if (!p->used || !p->shell || p->status >= 0)
			continue;
		int n = 0;
		for (int k = 0; k < clients_in_use; k++)
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
			for (int i = 0; i < ptys_in_use; i++)
				if (ptys[i].used && ptys[i].shell && ptys[i].status < 0) {
					attach_to(c, &ptys[i], h.rows, h.cols);
					goto out;
				}
		}
		if (!command->n) {
			static char sh[] = "sh", dash_l[] = "-l";
			char *dflt[] = { sh, dash_l };
			if (h.shell.n)
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
		if (h.command.n)
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

void from_client(struct client *c, unsigned events)
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

void accept_client(void)
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
		clients_in_use = i + 1 > clients_in_use ? i + 1 : clients_in_use;
		c->fd = fd;
		c->pty = -1;
		c->exec_id = -1;
		c->tty = -1;
		watch(fd, EPOLL_CTL_ADD, EPOLLIN, TAG(K_CLIENT, i));
		return;
	}
	close(fd);
}
