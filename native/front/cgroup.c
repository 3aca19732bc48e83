/* coopy front end (front.h): the box's cgroup (coopy/cgroup.py). */
#include "front.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static char *cg_path;

/* Make <parent>/<prefix><id> with its limits and the leaf the box's processes go in;
 * returns an fd of the leaf for clone3(CLONE_INTO_CGROUP), or -1. */
int make_cgroup(const struct plan *pl, const char *box)
{
	const char *id = strrchr(box, '/') + 1;
	char name[PATH_MAX];
	snprintf(name, sizeof name, "%s%s", pl->cg_prefix, id);
	/* The cgroups of this state dir's boxes whose run dir is gone (a SIGKILL). */
	DIR *d = opendir(pl->cg_parent);
	struct dirent *de;
	size_t plen = strlen(pl->cg_prefix);
	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, pl->cg_prefix, plen) != 0)
			continue;
		char *run = xstrcat3(pl->base, "/", de->d_name + plen);
		if (access(run, F_OK) < 0 && errno == ENOENT) {
			char *leaf = xstrcat3(de->d_name, "/", "box");
			unlinkat(dirfd(d), leaf, AT_REMOVEDIR);
			unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR);
			free(leaf);
		}
		free(run);
	}
	if (d)
		closedir(d);
	cg_path = xstrcat3(pl->cg_parent, "/", name);
	if (mkdir(cg_path, 0755) < 0)
		return -1;
	for (int i = 0; i + 1 < pl->ncg; i += 2) {
		char *file = xstrcat3(cg_path, "/", pl->cg_files[i]);
		int fd = open(file, O_WRONLY | O_CLOEXEC);
		int rc = fd < 0 ? -1 : write_all(fd, pl->cg_files[i + 1], strlen(pl->cg_files[i + 1]));
		if (fd >= 0)
			close(fd);
		free(file);
		if (rc < 0)
			return -1;
	}
	char *leaf = xstrcat3(cg_path, "/", "box");
	int fd = mkdir(leaf, 0755) < 0 ? -1 : open(leaf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(leaf);
	return fd;
}

/* Remove the box's cgroup once its processes are gone (EBUSY while any is exiting). */
void remove_cgroup(void)
{
	if (!cg_path)
		return;
	char *leaf = xstrcat3(cg_path, "/", "box");
	const char *paths[] = { leaf, cg_path };
	for (int i = 0; i < 2; i++)
		for (int tries = 0; tries < 200; tries++) {
			if (rmdir(paths[i]) == 0 || errno != EBUSY)
				break;
			usleep(10000);
		}
	free(leaf);
	cg_path = NULL;
}

/* fork(), but the child starts in the cgroup CGFD (clone3, Linux 5.7); without a cgroup,
 * or where clone3 is refused, a plain fork whose child joins through cgroup.procs. */
pid_t fork_box(int cgfd)
{
	if (cgfd < 0)
		return fork();
	struct clone_args args;
	memset(&args, 0, sizeof args);
	args.flags = CLONE_INTO_CGROUP;
	args.exit_signal = SIGCHLD;
	args.cgroup = (uint64_t)cgfd;
	pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
	if (pid >= 0 || (errno != ENOSYS && errno != EPERM))
		return pid;
	int procs = openat(cgfd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
	pid = fork();
	if (pid == 0 && (procs < 0 || write(procs, "0", 1) != 1))
		_exit(125);
	if (procs >= 0)
		close(procs);
	return pid;
}
