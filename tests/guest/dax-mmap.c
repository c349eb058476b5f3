/* Guest helper for tests/guest_dax.rs: touch a file through mmap (with
 * `-o dax=always` the mapping is the DAX window itself).
 *   dax-mmap write FILE OFFSET STRING   mmap shared, copy STRING at OFFSET, msync, fsync
 *   dax-mmap read FILE OFFSET LEN       print LEN bytes at OFFSET read through mmap
 *   dax-mmap fsync FILE                 fsync the file
 *   dax-mmap seqread FILE BS            read the whole file with pread(BS); print MiB/s
 *   dax-mmap randread FILE COUNT        COUNT 4 KiB preads at random aligned offsets; print IOPS
 *   dax-mmap gen FILE SEED LEN          create FILE, ftruncate it to LEN, then pwrite the bytes of
 *                                       tests/common/s3.rs pseudo_random(SEED, LEN) in 1 MiB pieces
 *                                       (in place, so under dax=always through writable DAX
 *                                       mappings, not FUSE WRITE), fsync
 * Built statically by the test (gcc -static). Exit status 0 on success. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int die(const char *what) { perror(what); return 1; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int bench(int seq, const char *path, long arg) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return die("open");
    struct stat st;
    if (fstat(fd, &st) != 0) return die("fstat");
    size_t bs = seq ? (size_t)arg : 4096;
    char *buf = aligned_alloc(4096, bs);
    if (!buf) return die("malloc");
    unsigned long long x = 88172645463325252ULL, sum = 0, bytes = 0;
    long blocks = st.st_size / 4096;
    double t0 = now();
    if (seq) {
        for (off_t off = 0; off < st.st_size; off += bs) {
            ssize_t n = pread(fd, buf, bs, off);
            if (n <= 0) return die("pread");
            bytes += n;
            sum += (unsigned char)buf[0];
        }
    } else {
        for (long i = 0; i < arg; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            ssize_t n = pread(fd, buf, 4096, (off_t)(x % blocks) * 4096);
            if (n != 4096) return die("pread");
            bytes += n;
            sum += (unsigned char)buf[0];
        }
    }
    double t = now() - t0;
    if (seq)
        printf("BENCH seqread %.1f MiB/s (%llu bytes in %.3f s, sum %llu)\n", bytes / 1048576.0 / t, bytes, t, sum);
    else
        printf("BENCH randread %.0f IOPS (%ld reads in %.3f s, sum %llu)\n", arg / t, arg, t, sum);
    return close(fd) == 0 ? 0 : die("close");
}

/* The bytes of tests/common/s3.rs pseudo_random(seed, len), written into a
 * file already truncated to len (so no write extends it). */
static int gen(const char *path, unsigned long long seed, long long len) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return die("open");
    if (ftruncate(fd, len) != 0) return die("ftruncate");
    size_t bs = 1 << 20;
    unsigned char *buf = malloc(bs);
    if (!buf) return die("malloc");
    unsigned long long x = (seed * 0x9E3779B97F4A7C15ULL) | 1;
    for (long long off = 0; off < len; off += bs) {
        size_t n = len - off < (long long)bs ? (size_t)(len - off) : bs;
        for (size_t i = 0; i < n; i += 8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            unsigned long long v = x * 0x2545F4914F6CDD1DULL;
            for (size_t j = 0; j < 8 && i + j < n; j++) buf[i + j] = (unsigned char)(v >> (8 * j));
        }
        if (pwrite(fd, buf, n, off) != (ssize_t)n) return die("pwrite");
    }
    if (fsync(fd) != 0) return die("fsync");
    free(buf);
    return close(fd) == 0 ? 0 : die("close");
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "gen") == 0)
        return gen(argv[2], strtoull(argv[3], NULL, 0), strtoll(argv[4], NULL, 0));
    if (argc == 4 && (strcmp(argv[1], "seqread") == 0 || strcmp(argv[1], "randread") == 0))
        return bench(argv[1][0] == 's', argv[2], strtol(argv[3], NULL, 0));
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
