/* coopy front end (front.h): a plan parsed, its files checked, rebased on a new box dir. */
#include "front.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct reader { char *p, *end; int bad; };

static char *tok(struct reader *r)
{
	if (r->bad || r->p >= r->end) {
		r->bad = 1;
		return (char *)"";
	}
	char *s = r->p, *z = memchr(s, 0, (size_t)(r->end - s));
	if (!z) {
		r->bad = 1;
		return (char *)"";
	}
	r->p = z + 1;
	return s;
}

static long num(struct reader *r)
{
	char *s = tok(r), *e;
	errno = 0;
	long v = strtol(s, &e, 10);
	if (*s == 0 || *e || errno)
		r->bad = 1;
	return v;
}

static const char *blob(struct reader *r, size_t *len)
{
	long n = num(r);
	if (r->bad || n < 0 || n + 1 > r->end - r->p || r->p[n] != 0) {
		r->bad = 1;
		return NULL;
	}
	const char *data = r->p;
	*len = (size_t)n;
	r->p += n + 1;
	return data;
}

/* A file's signature as coopy/plancache.py writes it: "-" when absent; a directory that
 * was not listed only by identity. */
static void signature(const struct stat *st, int rc, int err, int listed, char *out, size_t n)
{
	if (rc < 0)
		snprintf(out, n, (err == ENOENT || err == ENOTDIR) ? "-" : "E%d", err);
	else if (S_ISDIR(st->st_mode) && !listed)
		snprintf(out, n, "d:%lu:%lu:%o:%u:%u", (unsigned long)st->st_dev,
			 (unsigned long)st->st_ino, st->st_mode, st->st_uid, st->st_gid);
	else
		snprintf(out, n, "%lu:%lu:%lld:%lld:%lld:%o:%u:%u", (unsigned long)st->st_dev,
			 (unsigned long)st->st_ino, (long long)st->st_size,
			 (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec,
			 (long long)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec,
			 st->st_mode, st->st_uid, st->st_gid);
}

static int unchanged(const char *path, int listed, const char *lsig, const char *ssig)
{
	struct stat st;
	char sig[200];
	int rc = lstat(path, &st);
	signature(&st, rc, errno, listed, sig, sizeof sig);
	if (strcmp(sig, lsig) != 0)
		return 0;
	if (rc == 0 && S_ISLNK(st.st_mode)) {
		rc = stat(path, &st);
		signature(&st, rc, errno, listed, sig, sizeof sig);
	}
	return strcmp(sig, ssig) == 0;
}

/* Parse a plan; 0 when it is complete and every file it was made from is unchanged. */
int parse_plan(char *buf, size_t len, struct plan *pl)
{
	struct reader r = { buf, buf + len, 0 };
	memset(pl, 0, sizeof *pl);
	pl->tty = -1;
	if (strcmp(tok(&r), PLAN_MAGIC) != 0) {
		say("not a plan of this version");
		return -1;
	}
	for (;;) {
		char *k = tok(&r);
		if (r.bad)
			break;
		if (!strcmp(k, "end"))
			return (pl->base && pl->box && pl->init && pl->cwd && pl->nargs) ? 0 : -1;
		if (!strcmp(k, "v") || !strcmp(k, "vl")) {
			char *path = tok(&r), *lsig = tok(&r), *ssig = tok(&r);
			if (!r.bad && !unchanged(path, k[1] == 'l', lsig, ssig)) {
				say("%s changed since the plan was made", path);
				return -1;
			}
		} else if (!strcmp(k, "base")) {
			pl->base = tok(&r);
		} else if (!strcmp(k, "box")) {
			pl->box = tok(&r);
		} else if (strchr("dfclm", k[0]) && k[1] == 0) {
			GROW(pl->tmpl, pl->ntmpl);
			struct entry *e = &pl->tmpl[pl->ntmpl++];
			memset(e, 0, sizeof *e);
			e->kind = k[0];
			e->rel = tok(&r);
			if (e->kind == 'l')
				e->to = tok(&r);
			else
				e->mode = num(&r);
			e->uid = num(&r);
			e->gid = num(&r);
			if (e->kind == 'f')
				e->data = blob(&r, &e->len);
			if (e->kind == 'c')
				e->rdev = num(&r);
		} else if (!strcmp(k, "uid") || !strcmp(k, "gid")) {
			int *n = k[0] == 'u' ? &pl->nuids : &pl->ngids;
			struct range *ra = k[0] == 'u' ? pl->uids : pl->gids;
			if (*n >= 64)
				return -1;
			ra[*n].in = (unsigned long)num(&r);
			ra[*n].out = (unsigned long)num(&r);
			ra[*n].len = (unsigned long)num(&r);
			(*n)++;
		} else if (!strcmp(k, "maps")) {
			pl->helper_maps = !strcmp(tok(&r), "helper");
		} else if (!strcmp(k, "newuidmap")) {
			pl->newuidmap = tok(&r);
		} else if (!strcmp(k, "newgidmap")) {
			pl->newgidmap = tok(&r);
		} else if (!strcmp(k, "rootbox")) {
			pl->rootbox = (int)num(&r);
		} else if (!strcmp(k, "userxattr")) {
			pl->userxattr = (int)num(&r);
		} else if (!strcmp(k, "net")) {
			pl->net_host = !strcmp(tok(&r), "host");
		} else if (!strcmp(k, "hostname")) {
			pl->hostname = tok(&r);
		} else if (!strcmp(k, "cwd")) {
			pl->cwd = tok(&r);
		} else if (!strcmp(k, "attach")) {
			pl->attach = tok(&r);
		} else if (!strcmp(k, "init")) {
			pl->init = tok(&r);
		} else if (!strcmp(k, "initarg")) {
			GROW(pl->initargs, pl->ninitargs);
			pl->initargs[pl->ninitargs++] = tok(&r);
		} else if (!strcmp(k, "seccomp")) {
			pl->seccomp = blob(&r, &pl->seccomp_len);
		} else if (!strcmp(k, "tty")) {
			char *t = tok(&r);
			pl->tty = !strcmp(t, "auto") ? -1 : atoi(t);
		} else if (!strcmp(k, "env")) {
			GROW(pl->env, pl->nenv);
			pl->env[pl->nenv++] = tok(&r);
		} else if (!strcmp(k, "cmdargv")) {
			pl->cmdargv = 1;
		} else if (!strcmp(k, "termdefault")) {
			pl->termdefault = 1;
		} else if (!strcmp(k, "helper")) {
			GROW(pl->helper, pl->nhelper);
			pl->helper[pl->nhelper++] = tok(&r);
		} else if (!strcmp(k, "blocked")) {
			GROW(pl->blocked, pl->nblocked);
			pl->blocked[pl->nblocked++] = tok(&r);
		} else if (!strcmp(k, "cgroup")) {
			pl->cg_parent = tok(&r);
			pl->cg_prefix = tok(&r);
		} else if (!strcmp(k, "cglimit")) {
			GROW(pl->cg_files, pl->ncg);
			pl->cg_files[pl->ncg++] = tok(&r);
			GROW(pl->cg_files, pl->ncg);
			pl->cg_files[pl->ncg++] = tok(&r);
		} else if (!strcmp(k, "netlog")) {
			pl->netlog = tok(&r);
		} else if (!strcmp(k, "arg")) {
			GROW(pl->args, pl->nargs);
			pl->args[pl->nargs++] = tok(&r);
		} else {
			static const char *const kinds[] = {
				"overlay", "bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue",
				"devnode", "mkdir", "symlink", "mask", "readonly", "pivot" };
			int kind = -1;
			for (int i = 0; i < (int)(sizeof kinds / sizeof kinds[0]); i++)
				if (!strcmp(k, kinds[i]))
					kind = i;
			if (kind < 0) {
				say("unknown record %s", k);
				return -1;
			}
			GROW(pl->ops, pl->nops);
			struct op *o = &pl->ops[pl->nops++];
			memset(o, 0, sizeof *o);
			o->kind = (enum op_kind)kind;
			switch (o->kind) {
			case OP_OVERLAY:
				o->a = tok(&r);
				o->nlowers = (int)num(&r);
				if (r.bad || o->nlowers < 1 || o->nlowers > 500)
					return -1;
				o->lowers = calloc((size_t)o->nlowers, sizeof *o->lowers);
				for (int i = 0; i < o->nlowers; i++)
					o->lowers[i] = tok(&r);
				o->b = tok(&r);
				o->work = tok(&r);
				break;
			case OP_BIND:
				o->a = tok(&r);
				o->b = tok(&r);
				o->flags = num(&r);
				break;
			case OP_TMPFS:
				o->a = tok(&r);
				o->mode = num(&r);
				o->size = num(&r);
				o->flags = num(&r);
				break;
			case OP_DEVPTS:
				o->a = tok(&r);
				o->gid = num(&r);
				break;
			case OP_MKDIR:
				o->a = tok(&r);
				o->mode = num(&r);
				break;
			case OP_SYMLINK:
				o->a = tok(&r);
				o->b = tok(&r);
				break;
			case OP_PIVOT:
				break;
			default:
				o->a = tok(&r);
			}
		}
	}
	say("the plan is cut short");
	return -1;
}

/* The plan's box dir prefix replaced by this run's. */
static char *in_box(const struct plan *pl, const char *newbox, char *s)
{
	size_t n = strlen(pl->box);
	if (s && strncmp(s, pl->box, n) == 0 && (s[n] == 0 || s[n] == '/'))
		return xstrcat3(newbox, s + n, "");
	return s;
}

void rebase(struct plan *pl, const char *newbox)
{
	for (int i = 0; i < pl->nops; i++) {
		struct op *o = &pl->ops[i];
		o->a = in_box(pl, newbox, o->a);
		if (o->kind == OP_OVERLAY || o->kind == OP_BIND)
			o->b = in_box(pl, newbox, o->b);
		o->work = in_box(pl, newbox, o->work);
		for (int j = 0; j < o->nlowers; j++)
			o->lowers[j] = in_box(pl, newbox, o->lowers[j]);
	}
	pl->netlog = in_box(pl, newbox, pl->netlog);
	pl->box = (char *)newbox;
}
