/* Guest helper for tests/guest_dax.rs: touch a file through mmap (with
 * `-o dax=always` the mapping is the DAX window itself).
 *   dax-mmap write FILE OFFSET STRING   mmap shared, copy STRING at OFFSET, msync, fsync
 *   dax-mmap read FILE OFFSET LEN       print LEN bytes at OFFSET read through mmap
 *   dax-mmap fsync FILE                 fsync the file
 * Built statically by the test (gcc -static). Exit status 0 on success. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int die(const char *what) { perror(what); return 1; }

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "fsync") == 0) {
        int fd = open(argv[2], O_RDWR);
        if (fd < 0) return die("open");
        if (fsync(fd) != 0) return die("fsync");
        return close(fd) == 0 ? 0 : die("close");
    }
    if (argc != 5) { fprintf(stderr, "usage: dax-mmap write|read FILE OFFSET STRING|LEN\n"); return 2; }
    int wr = strcmp(argv[1], "write") == 0;
    off_t off = strtoll(argv[3], NULL, 0);
    size_t n = wr ? strlen(argv[4]) : (size_t)strtoull(argv[4], NULL, 0);
    int fd = open(argv[2], wr ? O_RDWR : O_RDONLY);
    if (fd < 0) return die("open");
    struct stat st;
    if (fstat(fd, &st) != 0) return die("fstat");
    if (off + (off_t)n > st.st_size) { fprintf(stderr, "range past EOF\n"); return 1; }
    char *p = mmap(NULL, st.st_size, wr ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return die("mmap");
    if (wr) {
        memcpy(p + off, argv[4], n);
        if (msync(p, st.st_size, MS_SYNC) != 0) return die("msync");
        if (fsync(fd) != 0) return die("fsync");
    } else {
        fwrite(p + off, 1, n, stdout);
        putchar('\n');
    }
    if (munmap(p, st.st_size) != 0) return die("munmap");
    return close(fd) == 0 ? 0 : die("close");
}
