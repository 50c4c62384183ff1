/*
 * podckpt bundle launcher: the only program of the bundle that the kernel starts directly.
 *
 * Why it exists: the bundle runs inside images that may have no shell and no libc (distroless,
 * scratch). Its Python and CRIU are ordinary glibc programs that need the bundle's own dynamic
 * loader, so something that needs nothing must start them: this static ELF (built with
 * musl-gcc -static). It finds the bundle from /proc/self/exe (so the bundle is relocatable: it
 * works at /.podckpt in a container and anywhere else on a build host) and execs the bundled
 * loader explicitly:
 *
 *   <bundle>/lib/ld-linux-x86-64.so.2 --library-path <bundle>/lib --argv0 ARGV0 PROGRAM ARGS...
 *
 * --library-path, unlike LD_LIBRARY_PATH, is private to the loaded program, so the application
 * that the agent starts never inherits the bundle's libraries.
 *
 * One source, three copies; the role comes from the copy's own path (not from argv[0], which
 * callers may set to anything):
 *   <bundle>/bin/podckpt-agent   python -I -S -m podckpt.agent ARGS   (PODCKPT_BUNDLE is set)
 *                                podckpt-agent install --to DIR [--key FILE]: copy the bundle
 *                                (and the store key) into DIR (the init container's job; no
 *                                Python needed for it)
 *                                podckpt-agent whoami --out FILE: write this process's uid,
 *                                gid, groups and HOME as JSON (the webhook's user probe, an
 *                                init container with the application's image and user: no
 *                                Python and no dynamic loader, so nothing of the image, not
 *                                even /etc/ld.so.preload, runs in it)
 *   <bundle>/bin/python3         python -I -S ARGS (what sys.executable points at)
 *   <bundle>/criu/criu           criu ARGS
 *   <bundle>/bin/podckpt-pidfloor FLOOR
 *                                move this PID namespace's counter to >= FLOOR by burning PIDs
 *                                with vfork (no Python involved: ~0.1 ms per PID instead of
 *                                ~0.4 ms for posix_spawn from the agent); prints the last PID.
 *                                Only for a fresh start: before a restore CRIU needs it low.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PYTHON_BIN "libexec/python3"
#define CRIU_BIN "libexec/criu"
#define LOADER "lib/ld-linux-x86-64.so.2"
/* CRIU gets a loader file of its own: started through it, that file is CRIU's /proc/self/exe,
 * and the kernel refuses to restore (PR_SET_MM_MAP: EBUSY) any process that maps the restoring
 * CRIU's exe file. With a separate copy, processes started from the bundle's Python (which
 * map lib/ld-linux-x86-64.so.2) can be checkpointed and restored too. */
#define CRIU_LOADER "criu/ld-linux-x86-64.so.2"

static void die(const char *what, const char *path)
{
	fprintf(stderr, "podckpt-agent launcher: %s %s: %s\n", what, path ? path : "", strerror(errno));
	exit(127);
}

static char *join(const char *a, const char *b)
{
	size_t n = strlen(a) + strlen(b) + 2;
	char *s = malloc(n);
	if (!s)
		die("out of memory", NULL);
	snprintf(s, n, "%s/%s", a, b);
	return s;
}

/* ---- install: copy the bundle tree (files, directories, symlinks) into an emptyDir ---- */

static int copy_file(int sfd, int dfd, off_t size)
{
	while (size > 0) {
		ssize_t n = copy_file_range(sfd, NULL, dfd, NULL, (size_t)size, 0);
		if (n <= 0) {
			if (n < 0 && errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP)
				return -1;
			break; /* fall back to read/write for what is left */
		}
		size -= n;
	}
	char buf[1 << 16];
	for (;;) {
		ssize_t n = read(sfd, buf, sizeof buf);
		if (n < 0)
			return -1;
		if (n == 0)
			return 0;
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(dfd, buf + off, (size_t)(n - off));
			if (w < 0)
				return -1;
			off += w;
		}
	}
}

static void copy_tree(const char *src, const char *dst)
{
	DIR *d = opendir(src);
	if (!d)
		die("cannot open", src);
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char *s = join(src, e->d_name), *t = join(dst, e->d_name);
		struct stat st;
		if (lstat(s, &st))
			die("cannot stat", s);
		if (S_ISDIR(st.st_mode)) {
			if (mkdir(t, st.st_mode & 07777) && errno != EEXIST)
				die("cannot create", t);
			copy_tree(s, t);
			chmod(t, st.st_mode & 07777);
		} else if (S_ISLNK(st.st_mode)) {
			char link[PATH_MAX];
			ssize_t n = readlink(s, link, sizeof link - 1);
			if (n < 0)
				die("cannot read link", s);
			link[n] = 0;
			unlink(t);
			if (symlink(link, t))
				die("cannot create link", t);
		} else if (S_ISREG(st.st_mode)) {
			/* Write beside, then rename: a re-run (pod sandbox recreated, emptyDir kept)
			 * replaces files without truncating one that something still maps. */
			char *tmp = join(dst, ".podckpt-install.tmp");
			int sfd = open(s, O_RDONLY | O_CLOEXEC);
			if (sfd < 0)
				die("cannot open", s);
			int dfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 07777);
			if (dfd < 0)
				die("cannot create", tmp);
			if (copy_file(sfd, dfd, st.st_size))
				die("cannot copy", s);
			fchmod(dfd, st.st_mode & 07777);
			close(sfd);
			if (close(dfd) || rename(tmp, t))
				die("cannot write", t);
			free(tmp);
		}
		free(s);
		free(t);
	}
	closedir(d);
}

/* The namespace's store key (docs/security.md): copied from the Secret mounted in the init
 * container only into DIR/.store-key/key (podckpt.api.contract.STORE_KEY_IN_BUNDLE), a 0400
 * file in a 0700 directory, both root's. Whatever the kubelet made of the Secret's mode (with
 * an fsGroup it is group-readable), a non-root application cannot read this copy. */
static void install_key(const char *key, const char *to)
{
	char *dir = join(to, ".store-key");
	if (mkdir(dir, 0700) && errno != EEXIST)
		die("cannot create", dir);
	if (chmod(dir, 0700))
		die("cannot secure", dir);
	int sfd = open(key, O_RDONLY | O_CLOEXEC);
	if (sfd < 0)
		die("cannot open the store key", key);
	struct stat st;
	if (fstat(sfd, &st))
		die("cannot stat", key);
	char *tmp = join(dir, ".key.tmp"), *dst = join(dir, "key");
	unlink(tmp);
	int dfd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
	if (dfd < 0)
		die("cannot create", tmp);
	if (copy_file(sfd, dfd, st.st_size) || fchmod(dfd, 0400) || fsync(dfd))
		die("cannot copy", key);
	close(sfd);
	if (close(dfd) || rename(tmp, dst))
		die("cannot write", dst);
	free(tmp);
	free(dst);
	free(dir);
}

static int install(const char *bundle, int argc, char **argv)
{
	const char *to = NULL, *key = NULL;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--to") && i + 1 < argc)
			to = argv[++i];
		else if (!strncmp(argv[i], "--to=", 5))
			to = argv[i] + 5;
		else if (!strcmp(argv[i], "--key") && i + 1 < argc)
			key = argv[++i];
		else if (!strncmp(argv[i], "--key=", 6))
			key = argv[i] + 6;
	}
	if (!to) {
		fprintf(stderr, "usage: podckpt-agent install --to DIR [--key FILE]\n");
		return 2;
	}
	if (mkdir(to, 0755) && errno != EEXIST)
		die("cannot create", to);
	/* The marker is removed first and written last: a half-copied bundle has none. */
	char *marker = join(to, ".installed");
	if (unlink(marker) && errno != ENOENT)
		die("cannot remove", marker);
	copy_tree(bundle, to);
	if (key)
		install_key(key, to);
	int fd = open(marker, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || close(fd))
		die("cannot create", marker);
	return 0;
}

/* ---- whoami: the user probe (podckpt.agent.appuser reads what it writes) ---- */

static void put_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

static int whoami(int argc, char **argv)
{
	const char *out = NULL;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--out") && i + 1 < argc)
			out = argv[++i];
		else if (!strncmp(argv[i], "--out=", 6))
			out = argv[i] + 6;
	}
	if (!out) {
		fprintf(stderr, "usage: podckpt-agent whoami --out FILE\n");
		return 2;
	}
	int n = getgroups(0, NULL);
	gid_t *groups = malloc(sizeof(gid_t) * (size_t)(n > 0 ? n : 1));
	if (n < 0 || !groups || (n = getgroups(n, groups)) < 0)
		die("cannot read", "the supplementary groups");
	/* Written beside the target and renamed: the agent never reads half of it. */
	char tmp[PATH_MAX];
	const char *slash = strrchr(out, '/');
	int dirlen = slash ? (int)(slash - out + 1) : 0;
	if (snprintf(tmp, sizeof tmp, "%.*s.%s.%d", dirlen, out, slash ? slash + 1 : out,
		     (int)getpid()) >= (int)sizeof tmp)
		die("path too long", out);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		die("cannot create", tmp);
	FILE *f = fdopen(fd, "w");
	if (!f)
		die("cannot write", tmp);
	fprintf(f, "{\"uid\":%u,\"gid\":%u,\"groups\":[", (unsigned)getuid(), (unsigned)getgid());
	for (int i = 0; i < n; i++)
		fprintf(f, "%s%u", i ? "," : "", (unsigned)groups[i]);
	fputs("],\"home\":", f);
	const char *home = getenv("HOME");
	if (home)
		put_json_string(f, home);
	else
		fputs("null", f);
	fputs("}\n", f);
	if (fclose(f) || rename(tmp, out))
		die("cannot write", out);
	return 0;
}

/* ---- pidfloor: burn PIDs until the namespace hands out PIDs >= floor ---- */

static int pidfloor(int argc, char **argv)
{
	long floor = argc == 2 ? strtol(argv[1], NULL, 10) : 0;
	if (floor < 2 || floor > 4194304) {
		fprintf(stderr, "usage: podckpt-pidfloor FLOOR (2..4194304)\n");
		return 2;
	}
	pid_t last = 0;
	for (long burned = 0; last < floor - 1 && burned < 4194304; burned++) {
		last = vfork();
		if (last == 0)
			_exit(0);
		if (last < 0) {
			perror("podckpt-pidfloor: vfork");
			return 1;
		}
		waitpid(last, NULL, 0);
	}
	printf("%d\n", (int)last);
	return 0;
}

/* ---- exec the bundled loader ---- */

int main(int argc, char **argv)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n < 0)
		die("cannot read", "/proc/self/exe (is /proc mounted?)");
	self[n] = 0;
	char *slash = strrchr(self, '/');
	if (!slash)
		die("odd executable path", self);
	*slash = 0;
	const char *role = slash + 1;
	const char *roledir = strrchr(self, '/') ? strrchr(self, '/') + 1 : self;
	char *bundle = strdup(self);
	char *up = strrchr(bundle, '/');
	if (!up)
		die("odd executable path", self);
	*up = 0;
	if (!*bundle)
		strcpy(bundle, "/");

	if (!strcmp(role, "podckpt-pidfloor"))
		return pidfloor(argc, argv);
	int is_criu = !strcmp(roledir, "criu") && !strcmp(role, "criu");
	int is_agent = !is_criu && !strcmp(role, "podckpt-agent");

	if (is_agent && argc > 1 && !strcmp(argv[1], "install"))
		return install(bundle, argc, argv);
	if (is_agent && argc > 1 && !strcmp(argv[1], "whoami"))
		return whoami(argc, argv);

	char *loader = join(bundle, is_criu ? CRIU_LOADER : LOADER);
	char *libdir = join(bundle, "lib");
	char **nargv = calloc((size_t)argc + 12, sizeof(char *));
	if (!nargv)
		die("out of memory", NULL);
	int k = 0;
	nargv[k++] = loader;
	nargv[k++] = "--library-path";
	nargv[k++] = libdir;
	nargv[k++] = "--argv0";
	if (is_criu) {
		nargv[k++] = join(self, "criu");
		nargv[k++] = join(bundle, CRIU_BIN);
	} else {
		/* sys.executable becomes <bundle>/bin/python3, itself a launcher copy, so that the
		 * agent can start Python subprocesses with sys.executable. */
		nargv[k++] = join(bundle, "bin/python3");
		nargv[k++] = join(bundle, PYTHON_BIN);
		/* -I: ignore the image's PYTHONHOME/PYTHONPATH/user site; -S: no site-packages (the
		 * agent is stdlib-only and lives in the bundle's stdlib directory). */
		nargv[k++] = "-I";
		nargv[k++] = "-S";
		if (is_agent) {
			nargv[k++] = "-m";
			nargv[k++] = "podckpt.agent";
		}
	}
	for (int i = 1; i < argc; i++)
		nargv[k++] = argv[i];
	nargv[k] = NULL;
	if (setenv("PODCKPT_BUNDLE", bundle, 1))
		die("cannot set", "PODCKPT_BUNDLE");
	execv(loader, nargv);
	die("cannot execute", loader);
	return 127;
}
