/* coopy front end (front.h): the box dir, made from the plan; stale ones swept; removal. */
#include "front.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int rm_at(int dirfd, const char *name);

static int rm_children(int fd)
{
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -1;
	}
	int rc = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (rm_at(dirfd(d), de->d_name) < 0)
			rc = -1;
	}
	closedir(d);
	return rc;
}

/* rm -rf NAME under DIRFD; directories overlay left without permissions are opened up. */
static int rm_at(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -1;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == EACCES && fchmodat(dirfd, name, 0700, 0) == 0)
		fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = rm_children(fd);
	if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		rc = -1;
	return rc;
}

static int make_entry(int dirfd, const struct entry *e)
{
	int rc = 0;
	switch (e->kind) {
	case 'd':
		if (strcmp(e->rel, ".") != 0)
			rc = mkdirat(dirfd, e->rel, (mode_t)e->mode);
		if (rc == 0)
			rc = fchmodat(dirfd, e->rel, (mode_t)e->mode, 0);
		break;
	case 'c':
		rc = mknodat(dirfd, e->rel, S_IFCHR | (mode_t)e->mode, (dev_t)e->rdev);
		break;
	case 'l':
		rc = symlinkat(e->to, dirfd, e->rel);
		break;
	default: {
		int fd = openat(dirfd, e->rel, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
				(mode_t)e->mode);
		if (fd < 0)
			return -1;
		char id[33];
		const char *data = e->data;
		size_t len = e->len;
		if (e->kind == 'm') { /* a fresh machine-id per box */
			uint8_t raw[16];
			if (getrandom(raw, sizeof raw, 0) != sizeof raw) {
				close(fd);
				return -1;
			}
			for (int i = 0; i < 16; i++)
				snprintf(id + 2 * i, 3, "%02x", raw[i]);
			id[32] = '\n';
			data = id;
			len = 33;
		}
		rc = write_all(fd, data, len);
		if (rc == 0)
			rc = fchmod(fd, (mode_t)e->mode);
		close(fd);
	}
	}
	if (rc == 0 && ((uid_t)e->uid != geteuid() || (gid_t)e->gid != getegid()))
		rc = fchownat(dirfd, e->rel, (uid_t)e->uid, (gid_t)e->gid, AT_SYMLINK_NOFOLLOW);
	return rc;
}

/* Remove the run directories whose owner is gone (their lock is free), as
 * coopy/state.py sweep_stale does on the Python path. */
static void sweep_stale(const char *base)
{
	DIR *d = opendir(base);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char *lock = xstrcat3(de->d_name, "/", "lock");
		int fd = openat(dirfd(d), lock, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
		free(lock);
		if (fd < 0)
			continue; /* a skeleton, or being created right now */
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			rm_at(dirfd(d), de->d_name); /* files of subordinate ids: `system prune` */
		close(fd);
	}
	if (d)
		closedir(d);
}

/* Make <base>/<random> and fill it from the plan; its lock is held while the box lives. */
char *make_box_dir(const struct plan *pl, int *lock_fd)
{
	uint8_t raw[6];
	char name[13];
	if (getrandom(raw, sizeof raw, 0) != sizeof raw)
		return NULL;
	for (int i = 0; i < 6; i++)
		snprintf(name + 2 * i, 3, "%02x", raw[i]);
	sweep_stale(pl->base);
	char *dir = xstrcat3(pl->base, "/", name);
	if (mkdir(dir, 0700) < 0) {
		say("mkdir %s: %s", dir, strerror(errno));
		return NULL;
	}
	int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	*lock_fd = dfd < 0 ? -1 : openat(dfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (*lock_fd < 0 || flock(*lock_fd, LOCK_EX) < 0)
		goto fail;
	for (int i = 0; i < pl->ntmpl; i++) {
		if (make_entry(dfd, &pl->tmpl[i]) < 0) {
			say("%s/%s: %s", dir, pl->tmpl[i].rel, strerror(errno));
			goto fail;
		}
	}
	close(dfd);
	return dir;
fail:
	if (dfd >= 0)
		close(dfd);
	rm_at(AT_FDCWD, dir);
	return NULL;
}

/* Remove the box dir; files of subordinate ids (rootless) as root of a user namespace
 * with the box's map, as coopy/userns.py run_in_userns. */
void remove_box_dir(const struct plan *pl, const char *dir)
{
	if (rm_at(AT_FDCWD, dir) == 0 || getuid() == 0 || !pl->helper_maps)
		return;
	int go[2];
	if (pipe2(go, O_CLOEXEC) < 0)
		return;
	pid_t child = fork();
	if (child == 0) {
		char x;
		unblock_forwarded();
		close(go[1]);
		if (unshare(CLONE_NEWUSER) < 0 || read(go[0], &x, 1) != 1)
			_exit(1);
		if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
			_exit(1);
		_exit(rm_at(AT_FDCWD, dir) == 0 ? 0 : 1);
	}
	close(go[0]);
	if (child > 0) {
		/* The child's namespace exists once its /proc/PID/ns/user differs from ours. */
		char path[64], a[64] = "", b[64] = "";
		snprintf(path, sizeof path, "/proc/%d/ns/user", child);
		for (int i = 0; i < 10000 && !strcmp(a, b); i++) {
			ssize_t n = readlink(path, a, sizeof a - 1);
			a[n > 0 ? n : 0] = 0;
			n = readlink("/proc/self/ns/user", b, sizeof b - 1);
			b[n > 0 ? n : 0] = 0;
			if (!strcmp(a, b))
				usleep(100);
		}
		if (write_maps(pl, child) == 0 && write(go[1], "x", 1) == 1)
			waitpid(child, NULL, 0);
		else {
			kill(child, SIGKILL);
			waitpid(child, NULL, 0);
		}
	}
	close(go[1]);
}
