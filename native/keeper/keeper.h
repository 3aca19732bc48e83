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
#ifndef COOPY_KEEPER_H
#define COOPY_KEEPER_H
/* The files: util.c (small things), json.c (HELLO in, INFO out), relay.c (the PTYs, their
 * scrollback and log, the clients' queues), session.c (coopy-init, HELLO and the frames
 * after it), main.c (the loop, its timers, the end). */
#include "../common.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
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

#define HIGH_WATER (1u << 20)
#define LOW_WATER (256u << 10)
#define READ_BATCH (256u << 10) /* ≤ MAX_PAYLOAD: one DATA frame */
#define LOG_BATCH (64u << 10)	/* the log is written in pieces this big, */
#define LOG_DELAY_MS 50		/* or this long after its first unwritten byte */
#define CRASH_COUNT 3		/* agent exits within CRASH_WINDOW_MS: stop restarting */
#define CRASH_WINDOW_MS 5000
#define KILL_AFTER_MS 10000 /* a restart's SIGTERM becomes SIGKILL */
#define MAX_ARGS 256
#define DRAIN_READS 1024 /* drain_master: at most this many reads of READ_BATCH */
#define QUEUE_KEEP (256u << 10) /* an emptied byte queue bigger than this is freed */

/* A byte queue: appended at the tail, taken from the head. */
struct bytes {
	char *p;
	size_t head, len, cap;
};

/* NUL-separated argv lists: the agent's command, a shell's. */
struct argv {
	int n;
	char **v;
};

struct hello {
	int version, rows, cols, pty, new, id, sig, direct;
	char verb[16];
	struct argv command, shell;
};

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

/* epoll data: kind in the high bits, an index below */
enum { K_LISTEN = 1, K_CONTROL, K_LINK, K_PTY, K_CLIENT, K_TTY };
#define TAG(kind, i) (((uint64_t)(kind) << 32) | (uint32_t)(i))

extern struct pty ptys[MAX_PTYS];
extern struct client clients[MAX_CLIENTS];
/* Slots at and above these are unused: the loops over ptys and clients (several per 4 KiB
 * of output) stop there rather than walking the whole tables. */
extern int ptys_in_use, clients_in_use;
extern int ep, listen_fd, control, link_fd, init_pidfd;
extern size_t scrollback;
extern off_t log_max;
extern int auto_restart, next_id, stopping, ending;
extern int64_t restart_delay, stall, restart_at, kill_at;
extern int64_t exits[CRASH_COUNT];
extern int nexits;
extern int restart_pending; /* `coopy restart`: start the agent again when it exits */
extern struct argv restart_with, agent_command;
extern const char *box_dir, *box_name;

void say(const char *fmt, ...);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
int64_t now_ms(void);
void bytes_add(struct bytes *b, const void *data, size_t n);
void bytes_take(struct bytes *b, size_t n);
ssize_t bytes_write(int fd, struct bytes *b);
void bytes_free(struct bytes *b);
void argv_set(struct argv *a, char **v, int n);
int parse_hello(const char *s, size_t n, struct hello *h);
void json_str(struct bytes *out, const char *s);
void json_argv(struct bytes *out, const struct argv *a);
void watch(int fd, int op, unsigned events, uint64_t tag);
struct pty *find_pty(int id);
void pty_watch(struct pty *p);
struct pty *pty_new(int id, int master, int shell, const char *log_name);
void log_flush(struct pty *p);
size_t queued(const struct client *c);
void client_flush(struct client *c);
void send_frame(struct client *c, int type, const void *payload, size_t n);
void send_int(struct client *c, int type, int32_t v);
void send_error(struct client *c, const char *fmt, ...);
void client_final(struct client *c);
void client_drop(struct client *c);
void maybe_finish(struct pty *p);
size_t from_master(struct pty *p);
void drain_master(struct pty *p);
void flush_master(struct pty *p);
void resize(struct pty *p, int rows, int cols);
void replay(struct client *c, struct pty *p);
void note(const char *fmt, ...);
int ask_init2(const char *a, int b, int c);
void start_agent(const struct argv *command);
void from_init(void);
void from_client(struct client *c, unsigned events);
void accept_client(void);
#endif
