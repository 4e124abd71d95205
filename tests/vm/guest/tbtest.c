// SPDX-License-Identifier: GPL-2.0
/*
 * tbtest: small checks of /dev/tbstreamN semantics that busybox cannot do.
 *   tbtest open-nb DEV            open O_NONBLOCK, print "ok" or the errno name
 *   tbtest open DEV               blocking open, print "ok" or errno
 *   tbtest read-nb DEV            O_NONBLOCK read, print count or errno
 *   tbtest poll DEV MS            print the poll revents after MS ms
 *   tbtest fill DEV               O_NONBLOCK writes of 1 MiB until EAGAIN:
 *                                 print the sizes (shows partial writes)
 *   tbtest write DEV N            write N bytes (blocking), print result/errno
 *   tbtest hold DEV SECS          open and keep it open SECS seconds
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *en(int e)
{
	switch (e) {
	case ENXIO: return "ENXIO";
	case EINVAL: return "EINVAL";
	case EAGAIN: return "EAGAIN";
	case EBUSY: return "EBUSY";
	case EINTR: return "EINTR";
	default: return strerror(e);
	}
}

int main(int argc, char **argv)
{
	static char buf[1 << 20];
	int fd;

	if (argc < 3)
		return 2;
	if (!strcmp(argv[1], "open-nb") || !strcmp(argv[1], "open")) {
		int fl = O_RDWR | (argv[1][4] ? O_NONBLOCK : 0);

		fd = open(argv[2], fl);
		printf("%s\n", fd < 0 ? en(errno) : "ok");
		return fd < 0;
	}
	fd = open(argv[2], O_RDWR | O_NONBLOCK);
	if (fd < 0) {
		printf("open: %s\n", en(errno));
		return 1;
	}
	if (!strcmp(argv[1], "read-nb")) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n < 0)
			printf("%s\n", en(errno));
		else
			printf("%zd\n", n);
	} else if (!strcmp(argv[1], "poll")) {
		struct pollfd p = { .fd = fd, .events = POLLIN | POLLOUT };
		int r = poll(&p, 1, argc > 3 ? atoi(argv[3]) : 0);

		printf("%d%s%s%s%s\n", r, p.revents & POLLIN ? " IN" : "",
		       p.revents & POLLOUT ? " OUT" : "",
		       p.revents & POLLHUP ? " HUP" : "",
		       p.revents & POLLERR ? " ERR" : "");
	} else if (!strcmp(argv[1], "fill")) {
		for (int i = 0; i < 64; i++) {
			ssize_t n = write(fd, buf, sizeof(buf));

			if (n < 0) {
				printf("%s\n", en(errno));
				break;
			}
			printf("%zd ", n);
		}
	} else if (!strcmp(argv[1], "write")) {
		fcntl(fd, F_SETFL, 0);
		size_t want = argc > 3 ? strtoul(argv[3], NULL, 0) : 4096;
		ssize_t n = write(fd, buf, want > sizeof(buf) ? sizeof(buf) : want);

		printf("%s\n", n < 0 ? en(errno) : "ok");
		if (n >= 0)
			printf("%zd\n", n);
	} else if (!strcmp(argv[1], "hold")) {
		sleep(argc > 3 ? atoi(argv[3]) : 1);
		printf("ok\n");
	}
	return 0;
}
