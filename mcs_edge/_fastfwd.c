/* mcs_edge._fastfwd: the media relay's in-process forwarding table (docs/performance.md,
 * "In-process forwarding").
 *
 * A Port is one bound UDP socket of the relay, registered with the asyncio loop as a reader
 * (``loop.add_reader(fd, port)``: the Port itself is the callable, so the loop calls C without a
 * Python frame). On each readiness it reads up to BATCH datagrams with one recvmmsg(2). A datagram
 * that matches the Port's optional *rule* is forwarded here; every other datagram goes to the
 * Python handler ``received(data, addr)`` unchanged (the general packet path of the Leg).
 *
 * The rule is the Python fast path of ``Leg.receive`` (mcs_edge/core/media/session.py) for a leg
 * with no rewrite toward its target, its checks in the same order:
 *   RTP (first byte 128..191, not an RTCP second byte 192..223, at least 12 bytes) from the latched
 *   source -> same SSRC as the last packet and the next sequence number in order, no longer than
 *   the rule takes (else: handed to Python before anything is charged, so Python's
 *   SequenceTracker.update, or libsrtp's refusal of a long packet, sees it) -> police (the leg's
 *   token bucket, the exact arithmetic of core/shaping/token_bucket.py TokenBucket.consume) ->
 *   SRTP unprotect in place when the leg decrypts (refused: the leg's "srtp" drop, as in Python)
 *   -> last_rx, packets, bytes (the received length), sequence -> the plain packet is the target
 *   leg's last_rtp -> SRTP protect in place when the target encrypts (refused: the target's
 *   "srtp-protect" drop) -> sendto from the target leg's socket to the target's remote -> tx
 *   packets/bytes.
 * SRTP runs through libsrtp's own functions and sessions, handed over by Python as integers
 * (core/rtp/srtp.py SrtpOffload: pylibsrtp's statically linked libsrtp, no build dependency here):
 * the same srtp_t as the Python path, so replay window and rollover counter stay one whichever
 * path a packet takes. The rule holds a reference to each session's owner, so the srtp_t lives as
 * long as the rule uses it.
 * Counters accumulate here; Python takes them (``take``) when it needs them and folds them into
 * the Leg (Leg.absorb_offload), or ``revoke``s the rule (take + remove) before the Leg's state
 * changes. Bad input never raises: a datagram is either forwarded, counted as policed, or handed on.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* the first exception of a batch, raised once the batch is done (3.11 has no GetRaisedException) */
typedef struct {
    PyObject *type, *value, *tb;
} Saved;

static inline void
keep_error(Saved *e)
{
    if (e->type == NULL)
        PyErr_Fetch(&e->type, &e->value, &e->tb);
    else
        PyErr_Clear();
}

#define BATCH 16
#define SLOT 65536       /* any UDP datagram (the area is paged in only as far as it is used) */
#define RULE_PKT 2048    /* larger RTP packets go the Python way */
#define MAX_DROPOUT 3000 /* core/media/forwarding.py */
#define MAX_TRACK 4      /* SSRCs one rule follows (audio + video bundled, RTX ...) */
/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t, void *rtp_hdr, int *len) (and srtp_unprotect);
 * protect writes the auth tag (and MKI) after the packet: the receive slot has SLOT bytes */
typedef int (*SrtpFunction)(void *session, void *packet, int *len);
#define SRTP_TRAILER_MAX (16 + 128) /* SRTP_MAX_TAG_LEN + SRTP_MAX_MKI_LEN */

_Static_assert(RULE_PKT + SRTP_TRAILER_MAX <= SLOT, "a protected packet must fit its receive slot");

typedef struct {
    socklen_t len;
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
        struct sockaddr_storage ss;
    } u;
} Addr;

typedef struct PortObject PortObject;

typedef struct {
    PyObject_HEAD
    unsigned long long value;
} TallyObject;

typedef struct {
    int active;
    Addr source;
    PortObject *target; /* strong reference */
    Addr dest;
    double rate, burst, tokens, last;
    int ntrack, current; /* the SSRCs tracked (the Leg's SequenceTrackers), the last packet's */
    Py_ssize_t limit;    /* longest datagram the rule takes (RULE_PKT, less when SRTP refuses more) */
    SrtpFunction unprotect, protect; /* NULL: no SRTP that way */
    void *rx_session, *tx_session;   /* srtp_t */
    PyObject *rx_owner, *tx_owner;   /* strong references: they own the srtp_t */
    unsigned char ssrc[MAX_TRACK][4];
    long max_seq[MAX_TRACK];
    unsigned long long received[MAX_TRACK];
    /* taken by Python */
    unsigned long long packets, bytes, policed, policed_bytes, tx_packets, tx_bytes, send_errors;
    unsigned long long srtp_drops, protect_drops;
    double last_rx;
    int have_rx;
    Py_ssize_t last_len; /* -1: nothing forwarded since the last take */
    unsigned char last_pkt[RULE_PKT];
} Rule;

struct PortObject {
    PyObject_HEAD
    int fd;
    PyObject *received; /* received(data, addr) */
    PyObject *on_error; /* on_error(kind) */
    PyObject *clock;    /* None: CLOCK_MONOTONIC (time.monotonic) */
    TallyObject *tally; /* datagrams read here and handled in C (forwarded or policed) */
    Rule *rule;
};

static PyTypeObject PortType;
static PyTypeObject TallyType;

/* one receive area for every Port: the loop runs one callback at a time, under the GIL */
static unsigned char rx_buf[BATCH][SLOT] __attribute__((aligned(16)));
static Addr rx_addr[BATCH];
static struct mmsghdr rx_msgs[BATCH];
static struct iovec rx_iov[BATCH];
static int busy;

/* ------------------------------------------------------------------------------ addresses */

static int
addr_from_tuple(PyObject *t, Addr *out)
{
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    memset(out, 0, sizeof(*out));
    if (!PyTuple_Check(t)) {
        PyErr_SetString(PyExc_TypeError, "address must be a tuple");
        return -1;
    }
    if (PyTuple_GET_SIZE(t) == 2) {
        if (!PyArg_ParseTuple(t, "si", &host, &port))
            return -1;
        if (port < 0 || port > 65535) {
            PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
            return -1;
        }
        if (inet_pton(AF_INET, host, &out->u.in4.sin_addr) == 1) {
            out->u.in4.sin_family = AF_INET;
            out->u.in4.sin_port = htons((unsigned short)port);
            out->len = sizeof(struct sockaddr_in);
            return 0;
        }
        if (inet_pton(AF_INET6, host, &out->u.in6.sin6_addr) == 1) {
            out->u.in6.sin6_family = AF_INET6;
            out->u.in6.sin6_port = htons((unsigned short)port);
            out->len = sizeof(struct sockaddr_in6);
            return 0;
        }
    }
    else if (PyTuple_GET_SIZE(t) == 4) {
        if (!PyArg_ParseTuple(t, "siII", &host, &port, &flowinfo, &scope_id))
            return -1;
        if (port < 0 || port > 65535) {
            PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
            return -1;
        }
        if (inet_pton(AF_INET6, host, &out->u.in6.sin6_addr) == 1) {
            out->u.in6.sin6_family = AF_INET6;
            out->u.in6.sin6_port = htons((unsigned short)port);
            out->u.in6.sin6_flowinfo = htonl(flowinfo);
            out->u.in6.sin6_scope_id = scope_id;
            out->len = sizeof(struct sockaddr_in6);
            return 0;
        }
    }
    PyErr_SetString(PyExc_ValueError, "not a numeric (host, port) address");
    return -1;
}

/* the address as the socket module reports it: (host, port) or (host, port, flowinfo, scope_id) */
static PyObject *
addr_to_tuple(const Addr *a)
{
    char host[INET6_ADDRSTRLEN];
    if (a->u.sa.sa_family == AF_INET) {
        if (!inet_ntop(AF_INET, &a->u.in4.sin_addr, host, sizeof(host)))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(a->u.in4.sin_port));
    }
    if (a->u.sa.sa_family == AF_INET6) {
        if (!inet_ntop(AF_INET6, &a->u.in6.sin6_addr, host, sizeof(host)))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->u.in6.sin6_port),
                             (unsigned int)ntohl(a->u.in6.sin6_flowinfo),
                             (unsigned int)a->u.in6.sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* the tuples' equality (Leg.receive compares ``addr == self.remote``) */
static inline int
addr_eq(const Addr *a, const Addr *b)
{
    if (a->u.sa.sa_family != b->u.sa.sa_family)
        return 0;
    if (a->u.sa.sa_family == AF_INET)
        return a->u.in4.sin_port == b->u.in4.sin_port &&
               a->u.in4.sin_addr.s_addr == b->u.in4.sin_addr.s_addr;
    return a->u.in6.sin6_port == b->u.in6.sin6_port &&
           a->u.in6.sin6_flowinfo == b->u.in6.sin6_flowinfo &&
           a->u.in6.sin6_scope_id == b->u.in6.sin6_scope_id &&
           memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, sizeof(struct in6_addr)) == 0;
}

/* ------------------------------------------------------------------------------------ Tally */

static PyObject *
Tally_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Tally", kwlist))
        return NULL;
    TallyObject *self = (TallyObject *)type->tp_alloc(type, 0);
    if (self)
        self->value = 0;
    return (PyObject *)self;
}

static PyMemberDef Tally_members[] = {
    {"value", T_ULONGLONG, offsetof(TallyObject, value), READONLY,
     "datagrams handled in C by the Ports sharing this tally"},
    {NULL},
};

static PyTypeObject TallyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mcs_edge._fastfwd.Tally",
    .tp_basicsize = sizeof(TallyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A counter shared by Ports (the relay's packet rate probe).",
    .tp_new = Tally_new,
    .tp_members = Tally_members,
};

/* ------------------------------------------------------------------------------------- Port */

/* drop the rule's references (its target and SRTP owners) */
static void
rule_clear_refs(Rule *r)
{
    /* every field is cleared before any reference is dropped: a finalizer run by a decref may
       install a new rule in this same memory, which must then stay as installed */
    PyObject *target = (PyObject *)r->target, *rx_owner = r->rx_owner, *tx_owner = r->tx_owner;
    r->target = NULL;
    r->rx_owner = r->tx_owner = NULL;
    r->unprotect = r->protect = NULL;
    r->rx_session = r->tx_session = NULL;
    Py_XDECREF(target);
    Py_XDECREF(rx_owner);
    Py_XDECREF(tx_owner);
}

static void
rule_free(Rule *r)
{
    if (r == NULL)
        return;
    rule_clear_refs(r);
    PyMem_Free(r);
}

static int
Port_traverse(PortObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->received);
    Py_VISIT(self->on_error);
    Py_VISIT(self->clock);
    Py_VISIT(self->tally);
    if (self->rule) {
        Py_VISIT(self->rule->target);
        Py_VISIT(self->rule->rx_owner);
        Py_VISIT(self->rule->tx_owner);
    }
    return 0;
}

static int
Port_clear(PortObject *self)
{
    Py_CLEAR(self->received);
    Py_CLEAR(self->on_error);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->tally);
    Rule *r = self->rule;
    self->rule = NULL;
    rule_free(r);
    return 0;
}

static void
Port_dealloc(PortObject *self)
{
    PyObject_GC_UnTrack(self);
    Port_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Port_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "received", "on_error", "clock", "tally", NULL};
    int fd;
    PyObject *received, *on_error, *clock = Py_None, *tally = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOO|OO:Port", kwlist, &fd, &received, &on_error,
                                     &clock, &tally))
        return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "fd must be >= 0");
        return NULL;
    }
    if (!PyCallable_Check(received) || !PyCallable_Check(on_error) ||
        (clock != Py_None && !PyCallable_Check(clock))) {
        PyErr_SetString(PyExc_TypeError, "received, on_error and clock must be callable");
        return NULL;
    }
    if (tally != Py_None && !PyObject_TypeCheck(tally, &TallyType)) {
        PyErr_SetString(PyExc_TypeError, "tally must be a Tally or None");
        return NULL;
    }
    PortObject *self = (PortObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = fd;
    self->received = Py_NewRef(received);
    self->on_error = Py_NewRef(on_error);
    self->clock = clock == Py_None ? NULL : Py_NewRef(clock);
    self->tally = tally == Py_None ? NULL : (TallyObject *)Py_NewRef(tally);
    self->rule = NULL;
    return (PyObject *)self;
}

static int
port_now(PortObject *self, double *now)
{
    if (self->clock == NULL) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        *now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
        return 0;
    }
    PyObject *clock = Py_NewRef(self->clock); /* the clock may close this port */
    PyObject *v = PyObject_CallNoArgs(clock);
    Py_DECREF(clock);
    if (v == NULL)
        return -1;
    *now = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int
call_on_error(PortObject *self, const char *kind)
{
    if (self->on_error == NULL)
        return 0;
    PyObject *on_error = Py_NewRef(self->on_error); /* the callback may close this port */
    PyObject *r = PyObject_CallFunction(on_error, "s", kind);
    Py_DECREF(on_error);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The rule's decision for one datagram: 1 handled here (forwarded or policed), 0 hand to Python. */
static inline int
rule_apply(Rule *r, unsigned char *data, Py_ssize_t n, const Addr *from, double now)
{
    if (n < 12 || data[0] < 128 || data[0] > 191 || (data[1] > 191 && data[1] < 224) ||
        !addr_eq(from, &r->source))
        return 0;
    long seq = ((long)data[2] << 8) | data[3];
    int k = r->current;
    if (memcmp(data + 8, r->ssrc[k], 4) != 0) {
        for (k = 0; k < r->ntrack; k++)
            if (memcmp(data + 8, r->ssrc[k], 4) == 0)
                break;
        if (k == r->ntrack)
            return 0; /* an SSRC without a tracker here: Python makes one */
    }
    long ahead = seq - r->max_seq[k];
    if (ahead <= 0 || ahead >= MAX_DROPOUT)
        return 0; /* a late packet, a wrap or a jump: SequenceTracker.update in Python */
    if (n > r->limit)
        return 0; /* longer than the rule or libsrtp takes: Python (it counts what libsrtp refuses) */
    /* TokenBucket.consume(n, now) */
    double tokens = r->tokens;
    double elapsed = now - r->last;
    int admit;
    if (elapsed > 0.0) {
        tokens += elapsed * r->rate;
        if (tokens > r->burst)
            tokens = r->burst;
        r->last = now;
        if ((double)n <= tokens) {
            r->tokens = tokens - (double)n;
            admit = 1;
        }
        else {
            r->tokens = tokens;
            admit = 0;
        }
    }
    else if ((double)n <= tokens) {
        r->tokens = tokens - (double)n;
        admit = 1;
    }
    else
        admit = 0;
    if (!admit) {
        r->policed++;
        r->policed_bytes += (unsigned long long)n;
        return 1;
    }
    /* n <= limit <= RULE_PKT: the plain packet fits last_pkt, the protected one its SLOT */
    int len = (int)n;
    if (r->unprotect != NULL) {
        /* in place; the header (sequence number, SSRC: checked above) is not encrypted */
        if (r->unprotect(r->rx_session, data, &len) != 0) {
            r->srtp_drops++; /* the fast path's counters.drop("srtp"), after policing */
            return 1;
        }
        if (len < 12 || len > n) { /* cannot happen (libsrtp only removes the trailer) */
            r->srtp_drops++;
            return 1;
        }
    }
    r->last_rx = now;
    r->have_rx = 1;
    r->packets++;
    r->bytes += (unsigned long long)n; /* the datagram's length, as Python counts it */
    r->max_seq[k] = seq;
    r->received[k]++;
    r->current = k;
    memcpy(r->last_pkt, data, (size_t)len);
    r->last_len = len;
    if (r->protect != NULL) {
        int plain = len;
        /* in place: libsrtp appends at most SRTP_TRAILER_MAX bytes, well inside the SLOT */
        if (r->protect(r->tx_session, data, &len) != 0) {
            r->protect_drops++; /* the target's counters.drop("srtp-protect") */
            return 1;
        }
        if (len < plain || len > plain + SRTP_TRAILER_MAX) { /* cannot happen */
            r->protect_drops++;
            return 1;
        }
    }
    int fd = r->target ? r->target->fd : -1;
    if (fd >= 0) {
        ssize_t sent;
        do {
            sent = sendto(fd, data, (size_t)len, 0, &r->dest.u.sa, r->dest.len);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0)
            r->send_errors++;
    }
    r->tx_packets++;
    r->tx_bytes += (unsigned long long)len;
    return 1;
}

/* Hand one datagram to Python; keeps the first exception in *exc (the batch goes on). */
static void
hand_on(PortObject *self, PyObject *data, const Addr *from, Saved *exc)
{
    PyObject *addr = addr_to_tuple(from);
    PyObject *r = NULL;
    if (addr != NULL) {
        PyObject *args[2] = {data, addr};
        PyObject *handler = Py_NewRef(self->received); /* the handler may close this port */
        r = PyObject_Vectorcall(handler, args, 2, NULL);
        Py_DECREF(handler);
        Py_DECREF(addr);
    }
    if (r == NULL) {
        keep_error(exc);
    }
    else
        Py_DECREF(r);
}

/* The loop's reader: one recvmmsg; forwarded here or handed on to ``received``. */
static PyObject *
Port_call(PortObject *self, PyObject *args, PyObject *kwds)
{
    if ((args && PyTuple_GET_SIZE(args)) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Port() takes no arguments");
        return NULL;
    }
    if (self->fd < 0)
        Py_RETURN_NONE;
    if (busy) {
        PyErr_SetString(PyExc_RuntimeError, "a Port was called from a received handler");
        return NULL;
    }
    busy = 1; /* the receive area is shared */
    Py_INCREF(self); /* the handler may close this port */
    Saved exc = {NULL, NULL, NULL};
    double now = 0.0;
    int have_now = 0;
    for (int i = 0; i < BATCH; i++) {
        rx_iov[i].iov_base = rx_buf[i];
        rx_iov[i].iov_len = SLOT;
        memset(&rx_msgs[i].msg_hdr, 0, sizeof(struct msghdr));
        rx_msgs[i].msg_hdr.msg_name = &rx_addr[i].u;
        rx_msgs[i].msg_hdr.msg_namelen = sizeof(rx_addr[i].u);
        rx_msgs[i].msg_hdr.msg_iov = &rx_iov[i];
        rx_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int got = recvmmsg(self->fd, rx_msgs, BATCH, MSG_DONTWAIT, NULL);
    if (got < 0) {
        int err = errno;
        if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
            /* e.g. ECONNREFUSED from an ICMP error: counted, nothing else (the datagram endpoint's
               error_received) */
            if (call_on_error(self, "icmp") < 0)
                keep_error(&exc);
        }
        got = 0;
    }
    for (int i = 0; i < got; i++) {
        Py_ssize_t n = (Py_ssize_t)rx_msgs[i].msg_len;
        rx_addr[i].len = rx_msgs[i].msg_hdr.msg_namelen;
        if (rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
            /* cannot happen for RTP here (MTU-sized); the datagram is gone: counted as an error */
            if (call_on_error(self, "truncated") < 0)
                keep_error(&exc);
            continue;
        }
        Rule *r = self->rule;
        if (r != NULL && r->active && self->fd >= 0) {
            if (!have_now) {
                if (port_now(self, &now) < 0) {
                    keep_error(&exc);
                    r = NULL;
                }
                else
                    have_now = 1;
                /* the clock is Python code when one was given: read the rule again after it */
                if (r != NULL) {
                    r = self->rule;
                    if (r != NULL && (!r->active || self->fd < 0))
                        r = NULL;
                }
            }
            if (r != NULL && rule_apply(r, rx_buf[i], n, &rx_addr[i], now)) {
                if (self->tally)
                    self->tally->value++;
                continue;
            }
        }
        if (self->received == NULL)
            continue;
        PyObject *data = PyBytes_FromStringAndSize((const char *)rx_buf[i], n);
        if (data == NULL) {
            keep_error(&exc);
            continue;
        }
        hand_on(self, data, &rx_addr[i], &exc);
        Py_DECREF(data);
        have_now = 0; /* the handler ran: a rule it installed starts at its own, later time */
    }
    busy = 0;
    Py_DECREF(self);
    if (exc.type != NULL) {
        PyErr_Restore(exc.type, exc.value, exc.tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Port_sendto(PortObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Addr dest;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sendto(data, addr)");
        return NULL;
    }
    if (addr_from_tuple(args[1], &dest) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    ssize_t sent = -1;
    if (self->fd >= 0) {
        do {
            sent = sendto(self->fd, view.buf, (size_t)view.len, 0, &dest.u.sa, dest.len);
        } while (sent < 0 && errno == EINTR);
    }
    PyBuffer_Release(&view);
    if (self->fd >= 0 && sent < 0 && call_on_error(self, "send") < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* One SRTP direction from Python: None, or (function, srtp_t, owner, room) (core/rtp/srtp.py
 * SrtpOffload). The integers are trusted to be libsrtp's function and a live session owned by
 * ``owner`` (the rule keeps ``owner``): only Python code of this package passes them. */
typedef struct {
    SrtpFunction function;
    void *session;
    PyObject *owner; /* borrowed */
    Py_ssize_t room;
} SrtpArg;

static int
srtp_arg(PyObject *o, SrtpArg *out)
{
    memset(out, 0, sizeof(*out));
    if (o == Py_None)
        return 0;
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 4) {
        PyErr_SetString(PyExc_TypeError, "SRTP is None or (function, session, owner, room)");
        return -1;
    }
    /* unsigned: a negative integer is an OverflowError, not an address */
    unsigned long long fn = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(o, 0));
    if (fn == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    unsigned long long session = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(o, 1));
    if (session == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    Py_ssize_t room = PyLong_AsSsize_t(PyTuple_GET_ITEM(o, 3));
    if (room == -1 && PyErr_Occurred())
        return -1;
    if (fn == 0 || session == 0 || room < 12) {
        PyErr_SetString(PyExc_ValueError, "SRTP needs a function, a session and room >= 12");
        return -1;
    }
    out->function = (SrtpFunction)(uintptr_t)fn;
    out->session = (void *)(uintptr_t)session;
    out->owner = PyTuple_GET_ITEM(o, 2);
    out->room = room;
    return 0;
}

static PyObject *
Port_install(PortObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"source", "target", "dest", "rate", "burst", "tokens", "last",
                             "trackers", "current", "unprotect", "protect", NULL};
    PyObject *source, *dest, *trackers, *unprotect = Py_None, *protect = Py_None;
    PortObject *target;
    double rate, burst, tokens, last;
    int current;
    unsigned char ssrc[MAX_TRACK][4];
    long max_seq[MAX_TRACK];
    SrtpArg rx, tx;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!OddddO!i|OO:install", kwlist, &source,
                                     &PortType, &target, &dest, &rate, &burst, &tokens, &last,
                                     &PyTuple_Type, &trackers, &current, &unprotect, &protect))
        return NULL;
    if (srtp_arg(unprotect, &rx) < 0 || srtp_arg(protect, &tx) < 0)
        return NULL;
    Py_ssize_t ntrack = PyTuple_GET_SIZE(trackers);
    if (ntrack < 1 || ntrack > MAX_TRACK || current < 0 || current >= ntrack) {
        PyErr_Format(PyExc_ValueError, "1-%d trackers and current one of them", MAX_TRACK);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < ntrack; k++) {
        const char *b;
        Py_ssize_t blen;
        PyObject *item = PyTuple_GET_ITEM(trackers, k);
        if (!PyTuple_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "a tracker is a tuple (4-byte ssrc, max_seq)");
            return NULL;
        }
        if (!PyArg_ParseTuple(item, "y#l", &b, &blen, &max_seq[k]))
            return NULL;
        if (blen != 4 || max_seq[k] < 0 || max_seq[k] > 65535) {
            PyErr_SetString(PyExc_ValueError, "a tracker is (4-byte ssrc, max_seq 0-65535)");
            return NULL;
        }
        memcpy(ssrc[k], b, 4);
    }
    if (self->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "port is closed");
        return NULL;
    }
    if (self->rule != NULL && self->rule->active) {
        PyErr_SetString(PyExc_RuntimeError, "a rule is installed: revoke it first");
        return NULL;
    }
    Addr src_addr, dest_addr;
    if (addr_from_tuple(source, &src_addr) < 0 || addr_from_tuple(dest, &dest_addr) < 0)
        return NULL;
    Rule *r = self->rule;
    if (r == NULL) {
        r = PyMem_Calloc(1, sizeof(Rule));
        if (r == NULL)
            return PyErr_NoMemory();
    }
    else {
        rule_clear_refs(r); /* an inactive rule holds none; kept for safety */
        memset(r, 0, offsetof(Rule, last_pkt));
    }
    r->source = src_addr;
    r->dest = dest_addr;
    r->ntrack = (int)ntrack;
    r->current = current;
    memcpy(r->ssrc, ssrc, sizeof(ssrc));
    memcpy(r->max_seq, max_seq, sizeof(max_seq));
    r->target = (PortObject *)Py_NewRef(target);
    r->limit = RULE_PKT;
    if (rx.function != NULL) {
        r->unprotect = rx.function;
        r->rx_session = rx.session;
        r->rx_owner = Py_NewRef(rx.owner);
        if (rx.room < r->limit)
            r->limit = rx.room;
    }
    if (tx.function != NULL) {
        r->protect = tx.function;
        r->tx_session = tx.session;
        r->tx_owner = Py_NewRef(tx.owner);
        if (tx.room < r->limit)
            r->limit = tx.room;
    }
    r->rate = rate;
    r->burst = burst;
    r->tokens = tokens;
    r->last = last;
    r->last_len = -1;
    r->active = 1;
    self->rule = r;
    Py_RETURN_NONE;
}

/* (packets, bytes, policed, policed_bytes, tx_packets, tx_bytes, send_errors, last_rx | None,
 *  tokens, last, ((max_seq, received), ...) per tracker, current, last_rtp | None, srtp_drops,
 *  protect_drops);
 * the deltas restart from 0 */
static PyObject *
rule_take(Rule *r)
{
    PyObject *last_rx, *last_rtp;
    if (r->have_rx)
        last_rx = PyFloat_FromDouble(r->last_rx);
    else
        last_rx = Py_NewRef(Py_None);
    if (last_rx == NULL)
        return NULL;
    if (r->last_len >= 0)
        last_rtp = PyBytes_FromStringAndSize((const char *)r->last_pkt, r->last_len);
    else
        last_rtp = Py_NewRef(Py_None);
    if (last_rtp == NULL) {
        Py_DECREF(last_rx);
        return NULL;
    }
    PyObject *tr = PyTuple_New(r->ntrack);
    if (tr == NULL) {
        Py_DECREF(last_rx);
        Py_DECREF(last_rtp);
        return NULL;
    }
    for (int k = 0; k < r->ntrack; k++) {
        PyObject *item = Py_BuildValue("(lK)", r->max_seq[k], r->received[k]);
        if (item == NULL) {
            Py_DECREF(tr);
            Py_DECREF(last_rx);
            Py_DECREF(last_rtp);
            return NULL;
        }
        PyTuple_SET_ITEM(tr, k, item);
    }
    PyObject *t = Py_BuildValue("(KKKKKKKNddNiNKK)", r->packets, r->bytes, r->policed,
                                r->policed_bytes, r->tx_packets, r->tx_bytes, r->send_errors, last_rx,
                                r->tokens, r->last, tr, r->current, last_rtp, r->srtp_drops,
                                r->protect_drops);
    if (t == NULL)
        return NULL;
    r->packets = r->bytes = r->policed = r->policed_bytes = 0;
    r->tx_packets = r->tx_bytes = r->send_errors = 0;
    r->srtp_drops = r->protect_drops = 0;
    memset(r->received, 0, sizeof(r->received));
    r->have_rx = 0;
    r->last_len = -1;
    return t;
}

static PyObject *
Port_take(PortObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->rule == NULL || !self->rule->active)
        Py_RETURN_NONE;
    return rule_take(self->rule);
}

static PyObject *
Port_revoke(PortObject *self, PyObject *Py_UNUSED(ignored))
{
    Rule *r = self->rule;
    if (r == NULL || !r->active)
        Py_RETURN_NONE;
    PyObject *t = rule_take(r);
    /* revoked even when the counters cannot be handed back (no memory): the caller has detached
       the leg already, so a rule left active would forward beside the Python path */
    r->active = 0;
    rule_clear_refs(r);
    return t;
}

static PyObject *
Port_close(PortObject *self, PyObject *Py_UNUSED(ignored))
{
    /* the fd belongs to the caller's socket object, closed by it after this */
    self->fd = -1;
    Port_clear(self);
    Py_RETURN_NONE;
}

static PyObject *
Port_get_installed(PortObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->rule != NULL && self->rule->active);
}

static PyObject *
Port_get_fd(PortObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->fd);
}

static PyMethodDef Port_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))Port_sendto, METH_FASTCALL,
     "sendto(data, addr): send on the socket; errors go to on_error('send'), never raised."},
    {"install", (PyCFunction)(void (*)(void))Port_install, METH_VARARGS | METH_KEYWORDS,
     "install(source, target, dest, rate, burst, tokens, last, trackers, current, unprotect=None, "
     "protect=None): the fast rule."},
    {"take", (PyCFunction)Port_take, METH_NOARGS,
     "The rule's counters since the last take (None without a rule); deltas restart at 0."},
    {"revoke", (PyCFunction)Port_revoke, METH_NOARGS, "take() and remove the rule."},
    {"close", (PyCFunction)Port_close, METH_NOARGS,
     "Forget the fd, the handlers and the rule (the caller closes its socket)."},
    {NULL},
};

static PyGetSetDef Port_getset[] = {
    {"installed", (getter)Port_get_installed, NULL, "True while a rule is installed", NULL},
    {"fd", (getter)Port_get_fd, NULL, "the socket's fd (-1 once closed)", NULL},
    {NULL},
};

static PyTypeObject PortType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mcs_edge._fastfwd.Port",
    .tp_basicsize = sizeof(PortObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One relay socket read by C: a fast rule, the rest to received(data, addr).",
    .tp_new = Port_new,
    .tp_dealloc = (destructor)Port_dealloc,
    .tp_traverse = (traverseproc)Port_traverse,
    .tp_clear = (inquiry)Port_clear,
    .tp_call = (ternaryfunc)Port_call,
    .tp_methods = Port_methods,
    .tp_getset = Port_getset,
};

static struct PyModuleDef fastfwd_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mcs_edge._fastfwd",
    .m_doc = "The media relay's in-process forwarding table (see docs/performance.md).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__fastfwd(void)
{
    if (PyType_Ready(&PortType) < 0 || PyType_Ready(&TallyType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastfwd_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Port", (PyObject *)&PortType) < 0 ||
        PyModule_AddObjectRef(m, "Tally", (PyObject *)&TallyType) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 || PyModule_AddIntConstant(m, "SLOT", SLOT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
