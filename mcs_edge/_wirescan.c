/* mcs_edge._wirescan: the per-message byte work of the SIP WebSocket and of a refusal, in C
 * (optional speed-up; every function has a Python path that gives the same result).
 *
 * ws_messages(data, start, max_message) -> (events, pos)
 *     RFC 6455 frames from data[start:]: as long as the next frame is whole, masked, FIN, RSV
 *     bits clear, a text or binary data frame of at most max_message octets (and, for text, valid
 *     UTF-8), its payload is unmasked and appended as the event (1, payload, 0, "") (MESSAGE in
 *     mcs_edge/core/websocket/rfc6455.py). It stops at the first frame that is anything else (a
 *     control frame, a fragment, an error, an incomplete frame) and returns the offset of that
 *     frame: the Python decoder handles the rest, so every decision (1002, 1007, 1009, close,
 *     ping) stays in Python. The caller only uses it between frames (nothing buffered, no
 *     fragmented message open).
 *
 * shed_fields(data) -> (method, vias, from, to, call_id, cseq) or None
 *     what mcs_edge/core/sip/shed.py's shed_fields returns for the same bytes (its decision
 *     table; tests/core/sip/test_wirescan.py checks the two agree on arbitrary input).
 *
 * Pure functions on bytes: no I/O, no state of their own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *message_kind; /* int 1 */
static PyObject *zero;         /* int 0 */
static PyObject *empty_str;    /* "" */
static PyObject *m_register;   /* b"REGISTER" */
static PyObject *m_invite;     /* b"INVITE" */

/* Unmask n octets of src into dst with the 4-octet key; returns the OR of all output octets. */
static unsigned char unmask(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
                            const unsigned char *key)
{
    uint32_t k32;
    memcpy(&k32, key, 4);
    uint64_t k64 = ((uint64_t)k32 << 32) | k32, acc = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= k64;
        acc |= w;
        memcpy(dst + i, &w, 8);
    }
    unsigned char tail = 0;
    for (; i < n; i++) {
        unsigned char b = src[i] ^ key[i & 3];
        tail |= b;
        dst[i] = b;
    }
    for (int s = 0; s < 64; s += 8)
        tail |= (unsigned char)(acc >> s);
    return tail;
}

static PyObject *ws_messages(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, max_message;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &max_message))
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t n = view.len, pos = start < 0 ? 0 : start;
    PyObject *events = PyList_New(0);
    if (events == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    while (n - pos >= 6) {
        unsigned char b0 = data[pos], b1 = data[pos + 1];
        if ((b0 != 0x81 && b0 != 0x82) || !(b1 & 0x80))
            break; /* not FIN + text/binary with RSV clear, or unmasked: Python decides */
        Py_ssize_t length = b1 & 0x7F, head = pos + 2;
        if (length == 126) {
            length = ((Py_ssize_t)data[pos + 2] << 8) | data[pos + 3];
            head = pos + 4;
        } else if (length == 127) {
            if (n - pos < 10 || data[pos + 2] & 0x80)
                break;
            uint64_t l = 0;
            for (int i = 2; i < 10; i++)
                l = (l << 8) | data[pos + i];
            if (l > (uint64_t)PY_SSIZE_T_MAX / 2)
                break;
            length = (Py_ssize_t)l;
            head = pos + 10;
        }
        if (length > max_message || head + 4 > n || length > n - head - 4)
            break; /* too big (1009 in Python) or incomplete */
        PyObject *payload = PyBytes_FromStringAndSize(NULL, length);
        if (payload == NULL)
            goto error;
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(payload);
        unsigned char high = unmask(out, data + head + 4, length, data + head);
        if (b0 == 0x81 && (high & 0x80)) { /* text, not ASCII: strict UTF-8 or Python fails it */
            PyObject *u = PyUnicode_DecodeUTF8((const char *)out, length, "strict");
            if (u == NULL) {
                Py_DECREF(payload);
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                    goto error;
                PyErr_Clear();
                break;
            }
            Py_DECREF(u);
        }
        PyObject *event = PyTuple_Pack(4, message_kind, payload, zero, empty_str);
        Py_DECREF(payload);
        if (event == NULL)
            goto error;
        int rc = PyList_Append(events, event);
        Py_DECREF(event);
        if (rc < 0)
            goto error;
        pos = head + 4 + length;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", events, pos);
error:
    PyBuffer_Release(&view);
    Py_DECREF(events);
    return NULL;
}

/* -- shed_fields ------------------------------------------------------------------------------ */

enum { F_NONE = -1, F_VIA = 0, F_FROM, F_TO, F_CALLID, F_CSEQ };

static int lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static int name_is(const unsigned char *p, Py_ssize_t n, const char *name)
{
    Py_ssize_t k = (Py_ssize_t)strlen(name);
    if (n != k)
        return 0;
    for (Py_ssize_t i = 0; i < k; i++)
        if (lower(p[i]) != (unsigned char)name[i])
            return 0;
    return 1;
}

/* Which of the five headers a name is (RFC 3261 s.7.3.3 compact forms), or F_NONE. */
static int field_of(const unsigned char *p, Py_ssize_t n)
{
    switch (n) {
    case 1:
        switch (lower(p[0])) {
        case 'v': return F_VIA;
        case 'f': return F_FROM;
        case 't': return F_TO;
        case 'i': return F_CALLID;
        }
        return F_NONE;
    case 2: return name_is(p, n, "to") ? F_TO : F_NONE;
    case 3: return name_is(p, n, "via") ? F_VIA : F_NONE;
    case 4:
        if (name_is(p, n, "from"))
            return F_FROM;
        return name_is(p, n, "cseq") ? F_CSEQ : F_NONE;
    case 7: return name_is(p, n, "call-id") ? F_CALLID : F_NONE;
    }
    return F_NONE;
}

/* bytes.rstrip(): ASCII whitespace (SP, HT, LF, VT, FF, CR) */
static int strip_char(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* ;[ \t]*tag[ \t]*= anywhere in the value, ASCII case-insensitive (shed.py's _TAG) */
static int has_tag(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] != ';')
            continue;
        Py_ssize_t j = i + 1;
        while (j < n && (p[j] == ' ' || p[j] == '\t'))
            j++;
        if (j + 3 > n || lower(p[j]) != 't' || lower(p[j + 1]) != 'a' || lower(p[j + 2]) != 'g')
            continue;
        j += 3;
        while (j < n && (p[j] == ' ' || p[j] == '\t'))
            j++;
        if (j < n && p[j] == '=')
            return 1;
    }
    return 0;
}

static PyObject *shed_fields(PyObject *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "shed_fields() needs bytes");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    PyObject *method;
    if (n >= 9 && memcmp(data, "REGISTER ", 9) == 0)
        method = m_register;
    else if (n >= 7 && memcmp(data, "INVITE ", 7) == 0)
        method = m_invite;
    else
        Py_RETURN_NONE;
    /* head = data up to and including the CRLF before the first CRLF CRLF, else all of it */
    /* The head ends at the first CRLF CRLF (shed.py: data[:head_end + 2]); it is found on the way
     * (a header value stops at CR, so none runs past it), end = n until then. */
    Py_ssize_t end = n;
    Py_ssize_t start[5] = {0}, len[5] = {0};
    int seen[5] = {0};
    /* Via values: offsets in a small array, more on the heap (a Via per proxy on the path) */
    Py_ssize_t via_s[16], via_l[16], *vs = via_s, *vl = via_l, nvia = 0, cap = 16;
    PyObject *result = NULL;
    Py_ssize_t i = 0;
    while (i + 1 < end) {
        if (data[i] != '\r') { /* to the next CR (libc's memchr) */
            const unsigned char *cr = memchr(data + i, '\r', (size_t)(end - i));
            if (cr == NULL)
                break;
            i = cr - data;
            continue;
        }
        if (data[i + 1] != '\n') {
            i++;
            continue;
        }
        if (i + 3 < n && data[i + 2] == '\r' && data[i + 3] == '\n')
            break; /* the empty line: the end of the head */
        /* \r\n(via|v|from|f|to|t|call-id|i|cseq)[ \t]*:[ \t]*([^\r\n]*)(\r\n[ \t])? */
        Py_ssize_t p = i + 2, q = p;
        while (q < end && data[q] != ':' && data[q] != ' ' && data[q] != '\t' && data[q] != '\r' &&
               data[q] != '\n')
            q++;
        int which = field_of(data + p, q - p);
        Py_ssize_t r = q;
        while (r < end && (data[r] == ' ' || data[r] == '\t'))
            r++;
        if (which == F_NONE || r >= end || data[r] != ':') {
            i += 2; /* no match here: the next CRLF */
            continue;
        }
        r++;
        while (r < end && (data[r] == ' ' || data[r] == '\t'))
            r++;
        Py_ssize_t v = r;
        while (r < end && data[r] != '\r' && data[r] != '\n') /* [^\r\n]* */
            r++;
        Py_ssize_t vend = r;
        if (r + 3 <= end && data[r] == '\r' && data[r + 1] == '\n' && (data[r + 2] == ' ' || data[r + 2] == '\t'))
            goto none; /* folded: the parser unfolds it */
        while (vend > v && strip_char(data[vend - 1]))
            vend--;
        if (vend == v)
            goto none; /* empty: the parser answers 400 or drops it */
        if (which == F_VIA) {
            if (nvia == cap) {
                Py_ssize_t ncap = cap * 2;
                Py_ssize_t *ns = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)ncap);
                Py_ssize_t *nl = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)ncap);
                if (ns == NULL || nl == NULL) {
                    PyMem_Free(ns);
                    PyMem_Free(nl);
                    PyErr_NoMemory();
                    goto done;
                }
                memcpy(ns, vs, sizeof(Py_ssize_t) * (size_t)nvia);
                memcpy(nl, vl, sizeof(Py_ssize_t) * (size_t)nvia);
                if (vs != via_s) {
                    PyMem_Free(vs);
                    PyMem_Free(vl);
                }
                vs = ns;
                vl = nl;
                cap = ncap;
            }
            vs[nvia] = v;
            vl[nvia] = vend - v;
            nvia++;
        } else if (!seen[which]) {
            seen[which] = 1;
            start[which] = v;
            len[which] = vend - v;
        }
        i = r; /* findall goes on after the match */
    }
    if (nvia == 0 || !seen[F_FROM] || !seen[F_TO] || !seen[F_CALLID] || !seen[F_CSEQ])
        goto none;
    if (method == m_invite && has_tag(data + start[F_TO], len[F_TO]))
        goto none; /* within a dialog */
    PyObject *vias = PyList_New(nvia);
    if (vias == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < nvia; k++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)data + vs[k], vl[k]);
        if (b == NULL) {
            Py_DECREF(vias);
            goto done;
        }
        PyList_SET_ITEM(vias, k, b);
    }
    result = PyTuple_New(6);
    if (result == NULL) {
        Py_DECREF(vias);
        goto done;
    }
    Py_INCREF(method);
    PyTuple_SET_ITEM(result, 0, method);
    PyTuple_SET_ITEM(result, 1, vias);
    static const int order[4] = {F_FROM, F_TO, F_CALLID, F_CSEQ};
    for (int k = 0; k < 4; k++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)data + start[order[k]], len[order[k]]);
        if (b == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyTuple_SET_ITEM(result, 2 + k, b);
    }
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    if (vs != via_s) {
        PyMem_Free(vs);
        PyMem_Free(vl);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"ws_messages", ws_messages, METH_VARARGS,
     "ws_messages(data, start, max_message) -> (events, pos): whole data frames from data[start:]"},
    {"shed_fields", shed_fields, METH_O,
     "shed_fields(data) -> (method, vias, from, to, call_id, cseq) or None (core/sip/shed.py)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "mcs_edge._wirescan", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__wirescan(void)
{
    message_kind = PyLong_FromLong(1);
    zero = PyLong_FromLong(0);
    empty_str = PyUnicode_FromString("");
    m_register = PyBytes_FromString("REGISTER");
    m_invite = PyBytes_FromString("INVITE");
    if (!message_kind || !zero || !empty_str || !m_register || !m_invite)
        return NULL;
    return PyModule_Create(&module);
}
