/* coopy front end (front.h): the key of an invocation, and where plans are kept. */
#include "front.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int by_string(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ignored_var(const char *kv)
{
	static const char *const names[] = { "_=", "OLDPWD=", "SHLVL=", "COOPY_PLAN_KEY=",
					     "COOPY_PLAN_STRICT=", "COOPY_DEBUG_FRONTEND=" };
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strncmp(kv, names[i], strlen(names[i])) == 0)
			return 1;
	return 0;
}

/* Where the box's command starts: after the first `--`; 0 without one. */
int command_at(int argc, char **argv)
{
	for (int i = 2; i < argc; i++)
		if (!strcmp(argv[i], "--"))
			return i + 1 < argc ? i + 1 : 0;
	return 0;
}

int compute_key(int argc, char **argv, char out[65])
{
	struct sha s;
	struct stat st;
	char buf[PATH_MAX + 64];
	sha_init(&s);
	sha_str(&s, PLAN_MAGIC);
	if (stat("/proc/self/exe", &st) < 0)
		return -1;
	snprintf(buf, sizeof buf, "%lu:%lu:%lld:%ld.%09ld", (unsigned long)st.st_dev,
		 (unsigned long)st.st_ino, (long long)st.st_size, (long)st.st_mtim.tv_sec,
		 st.st_mtim.tv_nsec);
	sha_str(&s, buf);
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, 64) : -1;
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	sha_str(&s, buf);
	snprintf(buf, sizeof buf, "%u:%u", getuid(), getgid());
	sha_str(&s, buf);
	if (!getcwd(buf, sizeof buf))
		return -1;
	sha_str(&s, buf);
	/* The command after `--` is not part of the key: one plan serves every command
	 * run with the same options (Python writes such a plan only when the command it
	 * resolved is exactly what follows `--`). */
	int upto = command_at(argc, argv) ? command_at(argc, argv) : argc;
	snprintf(buf, sizeof buf, "%d%s", upto, upto < argc ? " --" : "");
	sha_str(&s, buf);
	for (int i = 1; i < upto; i++)
		sha_str(&s, argv[i]);
	extern char **environ;
	size_t count = 0;
	while (environ[count])
		count++;
	char **vars = malloc((count + 1) * sizeof *vars);
	if (!vars)
		return -1;
	size_t kept = 0;
	for (size_t i = 0; i < count; i++)
		if (!ignored_var(environ[i]))
			vars[kept++] = environ[i];
	qsort(vars, kept, sizeof *vars, by_string);
	for (size_t i = 0; i < kept; i++)
		sha_str(&s, vars[i]);
	free(vars);
	sha_hex(&s, out);
	return 0;
}

/* <state>/plans, as coopy/paths.py state_dir() finds <state>. */
char *plans_dir(void)
{
	const char *home = getenv("COOPY_HOME");
	if (home && *home)
		return xstrcat3(home, "/state", "/plans");
	const char *xdg = getenv("XDG_STATE_HOME");
	if (xdg && xdg[0] == '/')
		return xstrcat3(xdg, "/coopy", "/plans");
	home = getenv("HOME");
	if (!home || home[0] != '/')
		return NULL;
	return xstrcat3(home, "/.local/state/coopy", "/plans");
}
