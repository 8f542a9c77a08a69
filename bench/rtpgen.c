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
 *                           Only when built with -DWITH_SRTP -lssl -lcrypto (bench_workers.py tries that
 *                           first), as are rkey, dtlscert, ice, dtls and auth.
 *   rkey I HEX              what the edge sends to call I's client socket is SRTP with this master
 *                           key||salt (SDES answer): each such packet's authentication tag is checked
 *                           (counted by "auth")
 *   dtlscert CERT KEY       the clients' DTLS certificate and key (PEM files; their SHA-256 is the
 *                           offers' a=fingerprint); reply "ok" or "error ..."
 *   ice I EUFRAG EPWD LUFRAG FP
 *                           call I's client is a WebRTC endpoint toward the ICE-lite edge (after "dest"):
 *                           it sends STUN Binding checks (USERNAME EUFRAG:LUFRAG, PRIORITY,
 *                           ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY with EPWD, FINGERPRINT)
 *                           to its destination until one is answered, then runs the DTLS handshake as
 *                           client (use_srtp SRTP_AES128_CM_SHA1_80, the edge's certificate checked
 *                           against FP: 64 hex digits of SHA-256), takes both directions' SRTP keys
 *                           from the exporter (RFC 5764 s.4.2) and only then sends its stream (SRTP)
 *                           and checks what comes back; then a consent check every 4-6 s (RFC 7675)
 *   dtls                    reply "keyed failed pending consent_sent consent_ok keyed_p50_us
 *                           keyed_p99_us": calls whose handshake gave keys (time from "ice" to keys)
 *   auth                    reply "srtp_ok srtp_bad rtcp stun dtls" received on client sockets since
 *                           the last start: SRTP packets whose tag verified or not (calls with a
 *                           receive key), RTCP, STUN and DTLS datagrams
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
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
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
    int held;               /* a WebRTC client stream before its DTLS handshake gave keys: silent */
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

#ifdef WITH_SRTP
enum { ICE_CHECKING = 1, DTLS_HANDSHAKE, KEYED, FAILED };

typedef struct {
    int state;
    char username[420]; /* the edge's ufrag ":" ours */
    char pwd[200];      /* the edge's ice-pwd: MESSAGE-INTEGRITY key of our checks */
    unsigned char fp[32];
    unsigned char txid[12], tiebreaker[8];
    int checks;
    int64_t started, next_check, rto, next_consent;
    SSL *ssl;
    BIO *rbio, *wbio;
} peer_t;

static srtp_t *rx_srtp[MAX_CALLS]; /* what the edge sends to call i's client: verified with this */
static peer_t *peers[MAX_CALLS];
static SSL_CTX *dtls_ctx;
static int64_t keyed_us[MAX_CALLS];
static uint64_t n_keyed, n_failed, consent_sent, consent_ok;
static uint64_t auth_ok, auth_bad, rx_rtcp, rx_stun, rx_dtls;
#endif

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

/* an SRTP direction (session keys of RFC 3711 s.4.3) from its 30-byte master key||salt */
static srtp_t *srtp_new(const unsigned char *master) {
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
    return k;
}

static int parse_hex(const char *hex, unsigned char *out, int n) {
    if ((int)strlen(hex) < 2 * n) return -1;
    for (int i = 0; i < n; i++) {
        unsigned int v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (unsigned char)v;
    }
    return 0;
}

static int set_key(int call, const char *hex, int rx) {
    unsigned char master[30];
    if (call < 0 || call >= ncalls || parse_hex(hex, master, 30) < 0) return -1;
    if (rx)
        rx_srtp[call] = srtp_new(master);
    else
        streams[2 * call].srtp = srtp_new(master);
    return 0;
}

/* HMAC-SHA1 of pkt[0..len) || ROC, the first 10 bytes (RFC 3711 s.4.2) */
static void srtp_tag(srtp_t *k, const unsigned char *pkt, int len, uint32_t r, unsigned char *mac) {
    unsigned char roc[4] = {(unsigned char)(r >> 24), (unsigned char)(r >> 16), (unsigned char)(r >> 8),
                            (unsigned char)r};
    SHA_CTX c = k->inner;
    SHA1_Update(&c, pkt, (size_t)len);
    SHA1_Update(&c, roc, 4);
    SHA1_Final(mac, &c);
    c = k->outer;
    SHA1_Update(&c, mac, SHA_DIGEST_LENGTH);
    SHA1_Final(mac, &c);
}

/* RTP (len bytes at pkt) -> SRTP in place, 10-byte tag appended; returns the new length */
static int srtp_protect(srtp_t *k, unsigned char *pkt, int len, uint32_t ssrc, uint64_t index) {
    unsigned char iv[16] = {0}, mac[SHA_DIGEST_LENGTH];
    memcpy(iv, k->salt, 14);
    for (int i = 0; i < 4; i++) iv[4 + i] ^= (unsigned char)(ssrc >> (24 - 8 * i));
    for (int i = 0; i < 6; i++) iv[8 + i] ^= (unsigned char)(index >> (40 - 8 * i));
    int outl = 0;
    EVP_EncryptInit_ex(k->cipher, NULL, NULL, NULL, iv);
    EVP_EncryptUpdate(k->cipher, pkt + 12, &outl, pkt + 12, len - 12);
    srtp_tag(k, pkt, len, (uint32_t)(index >> 16), mac);
    memcpy(pkt + len, mac, 10);
    return len + 10;
}

/* ------------------------------------------------------------ WebRTC client: ICE, DTLS-SRTP */

static uint32_t crc32_buf(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static size_t stun_attr(unsigned char *p, size_t off, uint16_t type, const void *val, size_t len) {
    p[off] = (unsigned char)(type >> 8), p[off + 1] = (unsigned char)type;
    p[off + 2] = (unsigned char)(len >> 8), p[off + 3] = (unsigned char)len;
    if (len) memcpy(p + off + 4, val, len);
    size_t padded = (len + 3) & ~(size_t)3;
    memset(p + off + 4 + len, 0, padded - len);
    return off + 4 + padded;
}

static void stun_length(unsigned char *p, size_t len) {
    p[2] = (unsigned char)(len >> 8), p[3] = (unsigned char)len;
}

/* an ICE connectivity check (RFC 8445 s.7.2.2; consent: RFC 7675) from call's client socket */
static void send_check(int call, int nominate) {
    peer_t *pe = peers[call];
    unsigned char p[512];
    static const unsigned char cookie[4] = {0x21, 0x12, 0xA4, 0x42};
    static const unsigned char priority[4] = {0x6e, 0x7f, 0x00, 0xff}; /* host, RFC 8445 s.5.1.2 */
    p[0] = 0x00, p[1] = 0x01;
    memcpy(p + 4, cookie, 4);
    RAND_bytes(pe->txid, 12);
    memcpy(p + 8, pe->txid, 12);
    size_t off = 20;
    off = stun_attr(p, off, 0x0006, pe->username, strlen(pe->username)); /* USERNAME */
    off = stun_attr(p, off, 0x0024, priority, 4);                        /* PRIORITY */
    off = stun_attr(p, off, 0x802A, pe->tiebreaker, 8);                  /* ICE-CONTROLLING */
    if (nominate) off = stun_attr(p, off, 0x0025, NULL, 0);               /* USE-CANDIDATE */
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    stun_length(p, off - 20 + 24);
    HMAC(EVP_sha1(), pe->pwd, (int)strlen(pe->pwd), p, off, mac, &maclen);
    off = stun_attr(p, off, 0x0008, mac, 20); /* MESSAGE-INTEGRITY */
    stun_length(p, off - 20 + 8);
    uint32_t crc = crc32_buf(p, off) ^ 0x5354554Eu;
    unsigned char fp[4] = {(unsigned char)(crc >> 24), (unsigned char)(crc >> 16), (unsigned char)(crc >> 8),
                           (unsigned char)crc};
    off = stun_attr(p, off, 0x8028, fp, 4); /* FINGERPRINT */
    stream_t *st = &streams[2 * call];
    sendto(st->fd, p, off, 0, (struct sockaddr *)&st->dst, sizeof st->dst);
}

static void peer_failed(int call, const char *why) {
    peer_t *pe = peers[call];
    if (pe->state == FAILED) return;
    if (n_failed < 5) {
        fprintf(stderr, "rtpgen: call %d: %s\n", call, why);
        ERR_print_errors_fp(stderr);
    }
    ERR_clear_error();
    pe->state = FAILED;
    n_failed++;
}

/* what OpenSSL wrote: one datagram (DTLS allows several records in one, RFC 6347 s.4.1) */
static void dtls_flush(int call) {
    peer_t *pe = peers[call];
    unsigned char buf[16384];
    int len;
    while ((len = BIO_read(pe->wbio, buf, sizeof buf)) > 0) {
        stream_t *st = &streams[2 * call];
        sendto(st->fd, buf, (size_t)len, 0, (struct sockaddr *)&st->dst, sizeof st->dst);
    }
}

static void dtls_keyed(int call) {
    peer_t *pe = peers[call];
    const SRTP_PROTECTION_PROFILE *prof = SSL_get_selected_srtp_profile(pe->ssl);
    if (prof == NULL || prof->id != SRTP_AES128_CM_SHA1_80) {
        peer_failed(call, "no SRTP_AES128_CM_SHA1_80 profile negotiated");
        return;
    }
    X509 *cert = SSL_get1_peer_certificate(pe->ssl);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = cert != NULL && X509_digest(cert, EVP_sha256(), md, &mdlen) == 1 && mdlen == 32 &&
             memcmp(md, pe->fp, 32) == 0;
    X509_free(cert);
    if (!ok) {
        peer_failed(call, "the edge's certificate does not match its a=fingerprint");
        return;
    }
    /* RFC 5764 s.4.2: client key, server key, client salt, server salt */
    unsigned char km[60], tx[30], rx[30];
    static const char label[] = "EXTRACTOR-dtls_srtp";
    if (SSL_export_keying_material(pe->ssl, km, sizeof km, label, strlen(label), NULL, 0, 0) != 1) {
        peer_failed(call, "exporter failed");
        return;
    }
    memcpy(tx, km, 16), memcpy(tx + 16, km + 32, 14);
    memcpy(rx, km + 16, 16), memcpy(rx + 16, km + 46, 14);
    streams[2 * call].srtp = srtp_new(tx);
    rx_srtp[call] = srtp_new(rx);
    int64_t now = now_ns();
    keyed_us[n_keyed++] = (now - pe->started) / 1000;
    pe->state = KEYED;
    pe->next_consent = now + 4000000000LL + (int64_t)(rand() % 2000) * 1000000LL;
    streams[2 * call].held = 0;
}

static void dtls_step(int call) {
    peer_t *pe = peers[call];
    int r = SSL_do_handshake(pe->ssl);
    dtls_flush(call);
    if (r == 1) {
        dtls_keyed(call);
        return;
    }
    int err = SSL_get_error(pe->ssl, r);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) peer_failed(call, "DTLS handshake failed");
}

static void stun_in(int call, const unsigned char *buf, ssize_t len) {
    peer_t *pe = peers[call];
    rx_stun++;
    if (pe == NULL || len < 20 || buf[0] != 0x01 || buf[1] != 0x01) return; /* Binding success only */
    if (pe->state == ICE_CHECKING && memcmp(buf + 8, pe->txid, 12) == 0) {
        pe->state = DTLS_HANDSHAKE;
        pe->ssl = SSL_new(dtls_ctx);
        pe->rbio = BIO_new(BIO_s_mem());
        pe->wbio = BIO_new(BIO_s_mem());
        BIO_set_mem_eof_return(pe->rbio, -1);
        SSL_set_bio(pe->ssl, pe->rbio, pe->wbio);
        SSL_set_mtu(pe->ssl, 1200);
        SSL_set_connect_state(pe->ssl);
        dtls_step(call);
    } else if (pe->state == KEYED) {
        consent_ok++;
    }
}

static void dtls_in(int call, const unsigned char *buf, ssize_t len) {
    peer_t *pe = peers[call];
    rx_dtls++;
    if (pe == NULL || pe->ssl == NULL || pe->state == FAILED) return;
    BIO_write(pe->rbio, buf, (int)len);
    if (pe->state == DTLS_HANDSHAKE) {
        dtls_step(call);
    } else {
        unsigned char sink[2048];
        while (SSL_read(pe->ssl, sink, sizeof sink) > 0) {
        }
        ERR_clear_error();
        dtls_flush(call);
    }
}

/* checks, DTLS retransmissions and consent of every WebRTC client: every 10 ms */
static void peers_service(int64_t now) {
    for (int call = 0; call < ncalls; call++) {
        peer_t *pe = peers[call];
        if (pe == NULL) continue;
        if (pe->state == ICE_CHECKING && now >= pe->next_check) {
            if (pe->checks++ >= 12) {
                peer_failed(call, "no answer to ICE checks");
                continue;
            }
            send_check(call, 1);
            pe->next_check = now + pe->rto;
            if (pe->rto < 1000000000LL) pe->rto *= 2;
        } else if (pe->state == DTLS_HANDSHAKE) {
            if (now - pe->started > 30000000000LL) {
                peer_failed(call, "DTLS handshake not done in 30 s");
                continue;
            }
            struct timeval tv;
            if (DTLSv1_get_timeout(pe->ssl, &tv) && tv.tv_sec == 0 && tv.tv_usec == 0) {
                DTLSv1_handle_timeout(pe->ssl);
                dtls_flush(call);
            }
        } else if (pe->state == KEYED && now >= pe->next_consent) {
            send_check(call, 0);
            consent_sent++;
            pe->next_consent = now + 4000000000LL + (int64_t)(rand() % 2000) * 1000000LL;
        }
    }
}

static int verify_any(int ok, X509_STORE_CTX *ctx) {
    (void)ok, (void)ctx;
    return 1; /* self-signed, as in WebRTC: the fingerprint is checked once the handshake is done */
}

static void dtls_cert(const char *cert, const char *key) {
    dtls_ctx = SSL_CTX_new(DTLS_client_method());
    if (dtls_ctx == NULL || SSL_CTX_use_certificate_file(dtls_ctx, cert, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(dtls_ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_set_tlsext_use_srtp(dtls_ctx, "SRTP_AES128_CM_SHA1_80") != 0) {
        puts("error loading the DTLS certificate");
        return;
    }
    SSL_CTX_set_verify(dtls_ctx, SSL_VERIFY_PEER, verify_any);
    SSL_CTX_set_options(dtls_ctx, SSL_OP_NO_QUERY_MTU);
    puts("ok");
}

static int start_ice(int call, const char *eufrag, const char *epwd, const char *lufrag, const char *fphex) {
    if (call < 0 || call >= ncalls || dtls_ctx == NULL || peers[call] != NULL) return -1;
    peer_t *pe = calloc(1, sizeof *pe);
    if (parse_hex(fphex, pe->fp, 32) < 0) {
        free(pe);
        return -1;
    }
    snprintf(pe->username, sizeof pe->username, "%s:%s", eufrag, lufrag);
    snprintf(pe->pwd, sizeof pe->pwd, "%s", epwd);
    RAND_bytes(pe->tiebreaker, 8);
    pe->state = ICE_CHECKING;
    pe->started = pe->next_check = now_ns();
    pe->rto = 50000000LL;
    peers[call] = pe;
    streams[2 * call].held = 1;
    return 0;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}
#endif

static void send_slot(int slot) {
    unsigned char pkt[172 + 16];
    for (int s = slot; s < active; s += 10) {
        stream_t *st = &streams[s];
        if (st->held) continue;
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
#ifdef WITH_SRTP
        if ((sock_index & 1) == 0 && len > 0) { /* a client socket: STUN and DTLS of WebRTC calls */
            if (buf[0] < 4) {
                stun_in(sock_index / 2, buf, len);
                continue;
            }
            if (buf[0] >= 20 && buf[0] <= 63) {
                dtls_in(sock_index / 2, buf, len);
                continue;
            }
        }
#endif
        if (len < 12 || (buf[0] >> 6) != 2) continue;
        if (buf[1] >= 192 && buf[1] <= 223) { /* RTCP (rtcp-mux, RFC 5761 s.4) */
#ifdef WITH_SRTP
            if ((sock_index & 1) == 0) rx_rtcp++;
#endif
            continue;
        }
        if (len == 172 || len == 182) sizes[sock_index & 1][len == 182]++;
        uint32_t ts;
        memcpy(&ts, buf + 4, 4);
        uint64_t n = ntohl(ts) / 160;
#ifdef WITH_SRTP
        srtp_t *k = (sock_index & 1) == 0 ? rx_srtp[sock_index / 2] : NULL;
        if (k != NULL) {
            unsigned char mac[SHA_DIGEST_LENGTH];
            if (len < 22) {
                auth_bad++;
                continue;
            }
            srtp_tag(k, buf, (int)len - 10, (uint32_t)(n >> 16), mac);
            if (memcmp(mac, buf + len - 10, 10) != 0) {
                auth_bad++;
                continue;
            }
            auth_ok++;
        }
#endif
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
            if (set_key(a, hex, 0) < 0) fprintf(stderr, "rtpgen: bad key for call %d\n", a);
#else
            fprintf(stderr, "rtpgen: built without SRTP\n");
            exit(1);
#endif
        }
#ifdef WITH_SRTP
    } else if (strncmp(cmd, "rkey ", 5) == 0) {
        char hex[128];
        if (sscanf(cmd, "rkey %d %127s", &a, hex) != 2 || set_key(a, hex, 1) < 0)
            fprintf(stderr, "rtpgen: bad receive key: %s\n", cmd);
    } else if (strncmp(cmd, "dtlscert ", 9) == 0) {
        char cert[4096], key[4096];
        if (sscanf(cmd, "dtlscert %4095s %4095s", cert, key) == 2)
            dtls_cert(cert, key);
        else
            puts("error: dtlscert CERT KEY");
    } else if (strncmp(cmd, "ice ", 4) == 0) {
        char eu[200], ep[200], lu[200], fp[200];
        if (sscanf(cmd, "ice %d %199s %199s %199s %199s", &a, eu, ep, lu, fp) != 5 || start_ice(a, eu, ep, lu, fp) < 0)
            fprintf(stderr, "rtpgen: bad ice command: %s\n", cmd);
    } else if (strncmp(cmd, "dtls", 4) == 0) {
        int64_t p50 = 0, p99 = 0;
        if (n_keyed) {
            int64_t *sorted = malloc(n_keyed * sizeof *sorted);
            memcpy(sorted, keyed_us, n_keyed * sizeof *sorted);
            qsort(sorted, n_keyed, sizeof *sorted, cmp_i64);
            p50 = sorted[n_keyed / 2];
            p99 = sorted[(n_keyed * 99) / 100 < n_keyed ? (n_keyed * 99) / 100 : n_keyed - 1];
            free(sorted);
        }
        uint64_t pending = 0;
        for (int i = 0; i < ncalls; i++)
            if (peers[i] != NULL && (peers[i]->state == ICE_CHECKING || peers[i]->state == DTLS_HANDSHAKE)) pending++;
        printf("%llu %llu %llu %llu %llu %lld %lld\n", (unsigned long long)n_keyed, (unsigned long long)n_failed,
               (unsigned long long)pending, (unsigned long long)consent_sent, (unsigned long long)consent_ok,
               (long long)p50, (long long)p99);
    } else if (strncmp(cmd, "auth", 4) == 0) {
        printf("%llu %llu %llu %llu %llu\n", (unsigned long long)auth_ok, (unsigned long long)auth_bad,
               (unsigned long long)rx_rtcp, (unsigned long long)rx_stun, (unsigned long long)rx_dtls);
#endif
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
#ifdef WITH_SRTP
        auth_ok = auth_bad = rx_rtcp = rx_stun = rx_dtls = 0;
#endif
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
#ifdef WITH_SRTP
            if (k % 5 == 0) peers_service(now);
#endif
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
