/* cget: an HTTP/1.0 GET over a plain socket, linked statically in the test:
 * no dynamic loader, so no LD_PRELOAD either. usage: cget IP PORT */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	inet_pton(AF_INET, argv[1], &a.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		perror("cget");
		return 1;
	}
	const char *req = "GET / HTTP/1.0\r\n\r\n";
	if (write(fd, req, strlen(req)) < 0)
		return 1;
	char buf[256];
	ssize_t n = read(fd, buf, sizeof buf - 1);
	if (n <= 0)
		return 1;
	buf[n] = 0;
	fputs(buf, stdout);
	return 0;
}
