/* rtpgen: the RTP load generator of bench/bench_workers.py (compiled by it with the system's cc).
 *
 * A Python generator costs about as much CPU per packet as the relay it measures; on a 2-core
 * machine it would take a core from the workers. This one sends and counts 50 packets/s streams
 * for a few microseconds of CPU per packet, so the relay's capacity shows.
 *
 * Calls are pairs of UDP sockets on 127.0.0.1: the "client" socket sends stream 2i (to the relay's
 * client-side port) and receives stream 2i+1; the "pbx" socket sends stream 2i+1 and receives 2i.
 * Every stream sends one 172-byte RTP packet per 20 ms; each 20 ms period is spread over ten 2 ms
 * ticks (stream s sends on tick s % 10). The RTP timestamp carries the packet's number n (n * 160),
 * so a window counts exactly the packets sent in it, late or not.
 *
 * Control on stdin, one command per line, one reply line for those that answer:
 *   alloc K                 K new calls; reply "ports c0 p0 c1 p1 ..." (their client/pbx ports)
 *   dest I UP DOWN          call I sends stream 2I to 127.0.0.1:UP and 2I+1 to 127.0.0.1:DOWN
 *   key I HEX               call I's client stream (2I) is SDES-SRTP, AES_CM_128_HMAC_SHA1_80 with
 *                           this master key||salt (60 hex digits): 182-byte packets (RFC 3711,
 *                           key derivation rate 0; AES-CTR and HMAC-SHA1 from OpenSSL's libcrypto).
 *                           What comes back to the client is counted from its clear header.
 *                           Only when built with -DWITH_SRTP -lcrypto (bench_workers.py tries that first).
 *   active S                streams 0..S-1 send, the others are silent; reply "ok"
 *   start                   a window starts now (every stream's counters reset); reply "ok"
 *   stop                    the window ends now (later packets are not counted as sent); reply "ok"
 *   report                  reply "sent got lag_max_us resyncs" for the last window
 *   sizes                   reply "c172 c182 p172 p182": datagrams of 172 (RTP) and 182 bytes (SRTP)
 *                           received by the client and the PBX sockets since the last start
 *   quit
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef WITH_SRTP
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/evp.h>
#include <openssl/sha.h>
#endif

#define TICK_NS 2000000LL
#define MAX_CALLS 20000

#ifdef WITH_SRTP
typedef struct {
    EVP_CIPHER_CTX *cipher;   /* AES-128-CTR with the session key */
    unsigned char salt[14];   /* session salt */
    SHA_CTX inner, outer;     /* HMAC-SHA1 with the session auth key: the pads already hashed */
} srtp_t;
#endif

typedef struct {
    int fd;                 /* the socket this stream is sent from */
    struct sockaddr_in dst; /* where it goes */
    uint32_t ssrc;
    uint64_t n, lo, hi, got;
#ifdef WITH_SRTP
    srtp_t *srtp;           /* SDES-SRTP (client streams with a key), else NULL */
#endif
} stream_t;

static stream_t streams[2 * MAX_CALLS];
static int fds[2 * MAX_CALLS]; /* fds[2i] client socket (receives stream 2i+1), fds[2i+1] pbx socket */
static int ncalls, active, ep;
static int64_t lag_max;
static uint64_t sizes[2][2]; /* [pbx socket][182 bytes] */
static long resyncs;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int udp_socket(int *port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int buf = 1 << 18;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

static void alloc_calls(int k) {
    printf("ports");
    for (int j = 0; j < k && ncalls < MAX_CALLS; j++, ncalls++) {
        int i = ncalls;
        for (int side = 0; side < 2; side++) {
            int port = 0;
            int fd = udp_socket(&port);
            if (fd < 0) {
                printf(" error\n");
                fflush(stdout);
                exit(1);
            }
            fds[2 * i + side] = fd;
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(2 * i + side)};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            printf(" %d", port);
        }
        stream_t *up = &streams[2 * i], *down = &streams[2 * i + 1];
        memset(up, 0, sizeof *up);
        memset(down, 0, sizeof *down);
        up->fd = fds[2 * i];
        down->fd = fds[2 * i + 1];
        up->ssrc = 0x10000000u + (uint32_t)i;
        down->ssrc = 0x20000000u + (uint32_t)i;
        up->lo = down->lo = up->hi = down->hi = UINT64_MAX;
    }
    printf("\n");
    fflush(stdout);
}

static void set_dst(stream_t *s, int port) {
    memset(&s->dst, 0, sizeof s->dst);
    s->dst.sin_family = AF_INET;
    s->dst.sin_port = htons((uint16_t)port);
    s->dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

#ifdef WITH_SRTP
/* RFC 3711 s.4.3.1 with key derivation rate 0: AES-CM(master key, (salt ^ label<<48) || 0x0000) */
static void srtp_derive(const unsigned char *mkey, const unsigned char *msalt, unsigned char label,
                        unsigned char *out, int len) {
    unsigned char iv[16] = {0}, zero[32] = {0};
    memcpy(iv, msalt, 14);
    iv[7] ^= label;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int outl = 0;
    EVP_EncryptInit_ex(c, EVP_aes_128_ctr(), NULL, mkey, iv);
    EVP_EncryptUpdate(c, out, &outl, zero, len);
    EVP_CIPHER_CTX_free(c);
}

static int set_key(int call, const char *hex) {
    unsigned char master[30];
    if (call < 0 || call >= ncalls || strlen(hex) < 60) return -1;
    for (int i = 0; i < 30; i++) {
        unsigned int v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        master[i] = (unsigned char)v;
    }
    srtp_t *k = calloc(1, sizeof *k);
    unsigned char ekey[16], akey[20], pad[64];
    srtp_derive(master, master + 16, 0x00, ekey, 16);
    srtp_derive(master, master + 16, 0x01, akey, 20);
    srtp_derive(master, master + 16, 0x02, k->salt, 14);
    k->cipher = EVP_CIPHER_CTX_new();
    EVP_EncryptInit_ex(k->cipher, EVP_aes_128_ctr(), NULL, ekey, NULL);
    memset(pad, 0x36, 64);
    for (int i = 0; i < 20; i++) pad[i] ^= akey[i];
    SHA1_Init(&k->inner);
    SHA1_Update(&k->inner, pad, 64);
    memset(pad, 0x5c, 64);
    for (int i = 0; i < 20; i++) pad[i] ^= akey[i];
    SHA1_Init(&k->outer);
    SHA1_Update(&k->outer, pad, 64);
    streams[2 * call].srtp = k;
    return 0;
}

/* RTP (len bytes at pkt) -> SRTP in place, 10-byte tag appended; returns the new length */
static int srtp_protect(srtp_t *k, unsigned char *pkt, int len, uint32_t ssrc, uint64_t index) {
    unsigned char iv[16] = {0}, mac[SHA_DIGEST_LENGTH], roc[4];
    memcpy(iv, k->salt, 14);
    for (int i = 0; i < 4; i++) iv[4 + i] ^= (unsigned char)(ssrc >> (24 - 8 * i));
    for (int i = 0; i < 6; i++) iv[8 + i] ^= (unsigned char)(index >> (40 - 8 * i));
    int outl = 0;
    EVP_EncryptInit_ex(k->cipher, NULL, NULL, NULL, iv);
    EVP_EncryptUpdate(k->cipher, pkt + 12, &outl, pkt + 12, len - 12);
    uint32_t r = (uint32_t)(index >> 16);
    roc[0] = (unsigned char)(r >> 24), roc[1] = (unsigned char)(r >> 16);
    roc[2] = (unsigned char)(r >> 8), roc[3] = (unsigned char)r;
    SHA_CTX c = k->inner;
    SHA1_Update(&c, pkt, (size_t)len);
    SHA1_Update(&c, roc, 4);
    SHA1_Final(mac, &c);
    c = k->outer;
    SHA1_Update(&c, mac, SHA_DIGEST_LENGTH);
    SHA1_Final(mac, &c);
    memcpy(pkt + len, mac, 10);
    return len + 10;
}
#endif

static void send_slot(int slot) {
    unsigned char pkt[172 + 16];
    for (int s = slot; s < active; s += 10) {
        stream_t *st = &streams[s];
        uint64_t n = st->n++;
        uint16_t seq = htons((uint16_t)n);
        uint32_t ts = htonl((uint32_t)(n * 160));
        uint32_t ssrc = htonl(st->ssrc);
        int len = 172;
        pkt[0] = 0x80;
        pkt[1] = 0;
        memcpy(pkt + 2, &seq, 2);
        memcpy(pkt + 4, &ts, 4);
        memcpy(pkt + 8, &ssrc, 4);
        memset(pkt + 12, 0x5a, 160);
#ifdef WITH_SRTP
        if (st->srtp != NULL) len = srtp_protect(st->srtp, pkt, len, st->ssrc, n);
#endif
        sendto(st->fd, pkt, (size_t)len, 0, (struct sockaddr *)&st->dst, sizeof st->dst);
    }
}

static void receive(int sock_index) {
    /* the client socket (even index) receives stream 2i+1, the pbx socket stream 2i */
    stream_t *st = &streams[sock_index ^ 1];
    unsigned char buf[2048];
    for (;;) {
        ssize_t len = recv(fds[sock_index], buf, sizeof buf, 0);
        if (len < 0) return;
        if (len < 12 || (buf[0] >> 6) != 2) continue;
        if (len == 172 || len == 182) sizes[sock_index & 1][len == 182]++;
        uint32_t ts;
        memcpy(&ts, buf + 4, 4);
        uint64_t n = ntohl(ts) / 160;
        if (n >= st->lo && n < st->hi) st->got++;
    }
}

static char line[1 << 16];
static size_t used;

static int command(char *cmd) {
    int a, b, c;
    if (sscanf(cmd, "alloc %d", &a) == 1) {
        alloc_calls(a);
    } else if (sscanf(cmd, "dest %d %d %d", &a, &b, &c) == 3) {
        if (a >= 0 && a < ncalls) {
            set_dst(&streams[2 * a], b);
            set_dst(&streams[2 * a + 1], c);
        }
    } else if (strncmp(cmd, "key ", 4) == 0) {
        char hex[128];
        if (sscanf(cmd, "key %d %127s", &a, hex) == 2) {
#ifdef WITH_SRTP
            if (set_key(a, hex) < 0) fprintf(stderr, "rtpgen: bad key for call %d\n", a);
#else
            fprintf(stderr, "rtpgen: built without SRTP\n");
            exit(1);
#endif
        }
    } else if (sscanf(cmd, "active %d", &a) == 1) {
        active = a < 2 * ncalls ? a : 2 * ncalls;
        puts("ok");
    } else if (strncmp(cmd, "start", 5) == 0) {
        for (int s = 0; s < 2 * ncalls; s++) {
            streams[s].lo = streams[s].n;
            streams[s].hi = UINT64_MAX;
            streams[s].got = 0;
        }
        lag_max = 0;
        resyncs = 0;
        memset(sizes, 0, sizeof sizes);
        puts("ok");
    } else if (strncmp(cmd, "stop", 4) == 0) {
        for (int s = 0; s < 2 * ncalls; s++) streams[s].hi = streams[s].n;
        puts("ok");
    } else if (strncmp(cmd, "report", 6) == 0) {
        uint64_t sent = 0, got = 0;
        for (int s = 0; s < 2 * ncalls; s++) {
            if (streams[s].lo == UINT64_MAX || streams[s].hi == UINT64_MAX) continue;
            sent += streams[s].hi - streams[s].lo;
            got += streams[s].got;
        }
        printf("%llu %llu %lld %ld\n", (unsigned long long)sent, (unsigned long long)got,
               (long long)(lag_max / 1000), resyncs);
    } else if (strncmp(cmd, "sizes", 5) == 0) {
        printf("%llu %llu %llu %llu\n", (unsigned long long)sizes[0][0], (unsigned long long)sizes[0][1],
               (unsigned long long)sizes[1][0], (unsigned long long)sizes[1][1]);
    } else if (strncmp(cmd, "quit", 4) == 0) {
        return 0;
    }
    fflush(stdout);
    return 1;
}

static int read_commands(void) {
    ssize_t len = read(0, line + used, sizeof line - used - 1);
    if (len <= 0) return 0;
    used += (size_t)len;
    line[used] = 0;
    char *start = line, *nl;
    while ((nl = strchr(start, '\n')) != NULL) {
        *nl = 0;
        if (!command(start)) return 0;
        start = nl + 1;
    }
    used = (size_t)(line + used - start);
    memmove(line, start, used);
    return 1;
}

int main(void) {
    ep = epoll_create1(0);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    struct epoll_event events[256];
    int64_t next = now_ns();
    long k = 0;
    for (;;) {
        int64_t now = now_ns();
        while (now >= next) {
            int64_t lag = now - next;
            if (lag > 200000000LL) { /* stalled: skip the missed ticks */
                next = now;
                resyncs++;
                lag = 0;
            }
            if (lag > lag_max) lag_max = lag;
            send_slot((int)(k % 10));
            k++;
            next += TICK_NS;
            now = now_ns();
        }
        int timeout = (int)((next - now + 999999) / 1000000);
        int n = epoll_wait(ep, events, 256, timeout);
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == UINT32_MAX) {
                if (!read_commands()) return 0;
            } else {
                receive((int)events[i].data.u32);
            }
        }
    }
}
