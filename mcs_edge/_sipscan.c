/* mcs_edge._sipscan: the head of a SIP message cut into fields in C (optional speed-up).
 *
 * scan(data, max_line, max_count, key_cache, compact, cache_max) returns
 * (start_line, fields, end) for the common message: a head (the octets before the first CRLF CRLF)
 * of printable ASCII and HTAB only, every line ended by CRLF (no bare CR or LF), no folded line
 * (RFC 3261 s.7.3.1), every header line "name [WSP] : value" with a token name, no line longer
 * than max_line and at most max_count fields. ``fields`` is the list of
 * (key, name, value, raw) tuples that mcs_edge/core/sip/message.py's Python loop builds for the
 * same head: key = the lower-case long name (compact forms expanded through ``compact``; names
 * already seen looked up in ``key_cache``, which is filled up to ``cache_max`` entries, the same
 * dict the Python path uses), name = as written without trailing WSP, value = without surrounding
 * SP/HTAB, raw = the whole line. ``end`` is the offset of the CRLF CRLF.
 *
 * Anything else returns None and the caller runs the Python path, which gives the same result or
 * the same error (tests/core/sip/test_sipscan.py checks the two agree on arbitrary input). The
 * module is a pure function on bytes: no I/O, no state of its own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 3261 s.25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~") */
static unsigned char token_char[256];
/* word (RFC 3261 s.25.1): the token characters and ( ) < > : \ DQUOTE / [ ] ? { } */
static unsigned char word_char[256];

static void init_tables(void)
{
    const char *extra = "-.!%*_+`'~";
    for (int c = '0'; c <= '9'; c++)
        token_char[c] = 1;
    for (int c = 'a'; c <= 'z'; c++)
        token_char[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++)
        token_char[c] = 1;
    for (const char *p = extra; *p; p++)
        token_char[(unsigned char)*p] = 1;
    const char *word_extra = "()<>:\\\"/[]?{}";
    for (int c = 0; c < 256; c++)
        word_char[c] = token_char[c];
    for (const char *p = word_extra; *p; p++)
        word_char[(unsigned char)*p] = 1;
}

/* An ASCII str of n octets (the caller checked they are ASCII). */
static PyObject *ascii_str(const char *p, Py_ssize_t n)
{
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL && n > 0)
        memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
    return s;
}

static PyObject *key_of(const char *name, Py_ssize_t n, PyObject *name_obj, PyObject *key_cache,
                        PyObject *compact, Py_ssize_t cache_max)
{
    PyObject *key = PyDict_GetItemWithError(key_cache, name_obj);
    if (key != NULL) {
        Py_INCREF(key);
        return key;
    }
    if (PyErr_Occurred())
        return NULL;
    char low[256];
    PyObject *lower;
    if (n <= (Py_ssize_t)sizeof(low)) {
        for (Py_ssize_t i = 0; i < n; i++) {
            char c = name[i];
            low[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
        lower = ascii_str(low, n);
    } else {
        lower = PyObject_CallMethod(name_obj, "lower", NULL);
    }
    if (lower == NULL)
        return NULL;
    key = PyDict_GetItemWithError(compact, lower);
    if (key != NULL) {
        Py_INCREF(key);
        Py_DECREF(lower);
    } else if (PyErr_Occurred()) {
        Py_DECREF(lower);
        return NULL;
    } else {
        key = lower;
    }
    if (PyDict_GET_SIZE(key_cache) < cache_max && PyDict_SetItem(key_cache, name_obj, key) < 0) {
        Py_DECREF(key);
        return NULL;
    }
    return key;
}

static PyObject *scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "scan(data, max_line, max_count, key_cache, compact, cache_max)");
        return NULL;
    }
    PyObject *key_cache = args[3], *compact = args[4];
    if (!PyDict_CheckExact(key_cache) || !PyDict_CheckExact(compact)) {
        PyErr_SetString(PyExc_TypeError, "key_cache and compact must be dicts");
        return NULL;
    }
    /* bytes only: immutable, so nothing run during the scan (a finalizer in key_of) can change
       what was already checked */
    if (!PyBytes_CheckExact(args[0]))
        Py_RETURN_NONE; /* any other buffer: the Python path */
    Py_ssize_t max_line = PyLong_AsSsize_t(args[1]);
    if (max_line == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t max_count = PyLong_AsSsize_t(args[2]);
    if (max_count == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t cache_max = PyLong_AsSsize_t(args[5]);
    if (cache_max == -1 && PyErr_Occurred())
        return NULL;
    const char *data = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    PyObject *result = NULL, *fields = NULL, *start = NULL;

    /* the head: up to the first CRLF CRLF; every octet printable ASCII or HTAB, CR only before LF */
    Py_ssize_t end = -1;
    Py_ssize_t nlines = 1;
    for (Py_ssize_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c >= 0x20 && c < 0x7f)
            continue;
        if (c == '\t')
            continue;
        if (c == '\r' && i + 1 < size && data[i + 1] == '\n') {
            if (i + 3 < size && data[i + 2] == '\r' && data[i + 3] == '\n') {
                end = i;
                break;
            }
            if (i + 2 < size && (data[i + 2] == ' ' || data[i + 2] == '\t'))
                goto fallback; /* a folded line: the Python path unfolds it */
            nlines++;
            i++;
            continue;
        }
        goto fallback; /* bare CR/LF, a control character or non-ASCII: the Python path decides */
    }
    if (end < 0 || nlines - 1 > max_count)
        goto fallback;

    fields = PyList_New(nlines - 1);
    if (fields == NULL)
        goto done;
    Py_ssize_t pos = 0, index = -1;
    while (pos <= end) {
        const char *line = data + pos;
        const char *nl = memchr(line, '\r', (size_t)(end - pos));
        Py_ssize_t len = nl == NULL ? end - pos : nl - line;
        if (len > max_line)
            goto fallback;
        if (index < 0) {
            start = ascii_str(line, len);
            if (start == NULL)
                goto done;
        } else {
            const char *colon = memchr(line, ':', (size_t)len);
            if (colon == NULL)
                goto fallback;
            Py_ssize_t name_len = colon - line;
            while (name_len > 0 && (line[name_len - 1] == ' ' || line[name_len - 1] == '\t'))
                name_len--;
            if (name_len == 0)
                goto fallback;
            for (Py_ssize_t k = 0; k < name_len; k++)
                if (!token_char[(unsigned char)line[k]])
                    goto fallback;
            const char *v = colon + 1, *v_end = line + len;
            while (v < v_end && (*v == ' ' || *v == '\t'))
                v++;
            while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t'))
                v_end--;
            PyObject *item = PyTuple_New(4);
            if (item == NULL)
                goto done;
            PyList_SET_ITEM(fields, index, item);
            PyObject *name = ascii_str(line, name_len);
            if (name == NULL)
                goto done;
            PyTuple_SET_ITEM(item, 1, name);
            PyObject *key = key_of(line, name_len, name, key_cache, compact, cache_max);
            if (key == NULL)
                goto done;
            PyTuple_SET_ITEM(item, 0, key);
            PyObject *value = ascii_str(v, v_end - v);
            if (value == NULL)
                goto done;
            PyTuple_SET_ITEM(item, 2, value);
            PyObject *raw = ascii_str(line, len);
            if (raw == NULL)
                goto done;
            PyTuple_SET_ITEM(item, 3, raw);
        }
        index++;
        pos += len + 2;
    }
    result = Py_BuildValue("(NNn)", start, fields, end);
    start = fields = NULL;
    goto done;

fallback:
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(start);
    Py_XDECREF(fields);
    return result;
}

/* via(text) -> (transport, host, port, params, protocol) or None.
 *
 * One via-parm (RFC 3261 s.20.42) of the common form, all of it ASCII:
 *
 *     token "/" token "/" token SP host [ ":" port ] *( ";" token [ "=" token ] )
 *
 * with no other whitespace, no comma, no quoted string and no IPv6 reference; host a hostname
 * (RFC 3261 s.25.1: labels of alphanumerics with inner "-", dot-separated, one trailing dot
 * allowed; an IPv4address is one), port 1 to 5 digits up to 65535. Returned as
 * mcs_edge/core/sip/headers.py's Python path builds its Via: transport upper-cased, host as
 * written, port an int or None, params a tuple of (name, value-or-None), protocol "SIP/2.0" when
 * it reads so in any case, else as written. Everything else returns None and the Python path
 * (the grammar's regular expression) decides: this function only ever accepts, never refuses
 * (tests/core/sip/test_sipscan.py checks it against the Python path). */
static PyObject *via(PyObject *module, PyObject *text)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_COMPACT_ASCII(text))
        Py_RETURN_NONE;
    const char *p = (const char *)PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), i = 0;
    Py_ssize_t tok[3][2];
    for (int t = 0; t < 3; t++) { /* protocol-name / protocol-version / transport */
        Py_ssize_t s0 = i;
        while (i < n && token_char[(unsigned char)p[i]])
            i++;
        if (i == s0)
            Py_RETURN_NONE;
        tok[t][0] = s0;
        tok[t][1] = i;
        if (t < 2) {
            if (i >= n || p[i] != '/')
                Py_RETURN_NONE;
            i++;
        }
    }
    if (i >= n || p[i] != ' ')
        Py_RETURN_NONE;
    i++;
    /* host: hostname = *( domainlabel "." ) toplabel [ "." ] (toplabel relaxed as the regex is) */
    Py_ssize_t h0 = i;
    int labels = 0;
    for (;;) {
        Py_ssize_t l0 = i;
        while (i < n && (Py_ISALNUM((unsigned char)p[i]) || p[i] == '-'))
            i++;
        if (i == l0) {
            if (labels > 0 && p[i - 1] == '.' && (i - 1) > h0)
                break; /* the one trailing dot */
            Py_RETURN_NONE;
        }
        if (p[l0] == '-' || p[i - 1] == '-')
            Py_RETURN_NONE;
        labels++;
        if (i < n && p[i] == '.') {
            i++;
            continue;
        }
        break;
    }
    Py_ssize_t h1 = i;
    long port = -1;
    if (i < n && p[i] == ':') {
        i++;
        Py_ssize_t d0 = i;
        port = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9' && i - d0 < 6) {
            port = port * 10 + (p[i] - '0');
            i++;
        }
        if (i == d0 || i - d0 > 5 || port > 65535)
            Py_RETURN_NONE;
    }
    /* params: *( ";" token [ "=" token ] ) to the end */
    Py_ssize_t nparams = 0;
    Py_ssize_t ps[64][4];
    while (i < n) {
        if (p[i] != ';' || nparams == 64)
            Py_RETURN_NONE;
        i++;
        Py_ssize_t k0 = i;
        while (i < n && token_char[(unsigned char)p[i]])
            i++;
        if (i == k0)
            Py_RETURN_NONE;
        ps[nparams][0] = k0;
        ps[nparams][1] = i;
        ps[nparams][2] = ps[nparams][3] = -1;
        if (i < n && p[i] == '=') {
            i++;
            Py_ssize_t v0 = i;
            while (i < n && token_char[(unsigned char)p[i]])
                i++;
            if (i == v0)
                Py_RETURN_NONE;
            ps[nparams][2] = v0;
            ps[nparams][3] = i;
        }
        nparams++;
    }

    PyObject *params = PyTuple_New(nparams), *result = NULL;
    if (params == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < nparams; k++) {
        PyObject *name = ascii_str(p + ps[k][0], ps[k][1] - ps[k][0]), *value;
        if (name == NULL)
            goto done;
        if (ps[k][2] < 0) {
            value = Py_None;
            Py_INCREF(value);
        } else if ((value = ascii_str(p + ps[k][2], ps[k][3] - ps[k][2])) == NULL) {
            Py_DECREF(name);
            goto done;
        }
        PyObject *pair = PyTuple_Pack(2, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (pair == NULL)
            goto done;
        PyTuple_SET_ITEM(params, k, pair);
    }
    char upper[64];
    Py_ssize_t tl = tok[2][1] - tok[2][0];
    PyObject *transport;
    if (tl <= (Py_ssize_t)sizeof(upper)) {
        for (Py_ssize_t k = 0; k < tl; k++)
            upper[k] = Py_TOUPPER((unsigned char)p[tok[2][0] + k]);
        transport = ascii_str(upper, tl);
    } else {
        PyObject *as_written = ascii_str(p + tok[2][0], tl);
        transport = as_written == NULL ? NULL : PyObject_CallMethod(as_written, "upper", NULL);
        Py_XDECREF(as_written);
    }
    if (transport == NULL)
        goto done;
    Py_ssize_t pl = tok[1][1] - tok[0][0]; /* "name/version" as written */
    PyObject *protocol;
    if (pl == 7 && (p[tok[0][0]] | 0x20) == 's' && (p[tok[0][0] + 1] | 0x20) == 'i' &&
        (p[tok[0][0] + 2] | 0x20) == 'p' && memcmp(p + tok[0][0] + 3, "/2.0", 4) == 0)
        protocol = PyUnicode_FromString("SIP/2.0");
    else
        protocol = ascii_str(p + tok[0][0], pl);
    if (protocol == NULL) {
        Py_DECREF(transport);
        goto done;
    }
    PyObject *host = ascii_str(p + h0, h1 - h0);
    if (host == NULL) {
        Py_DECREF(transport);
        Py_DECREF(protocol);
        goto done;
    }
    PyObject *port_obj = port < 0 ? Py_None : PyLong_FromLong(port);
    if (port < 0)
        Py_INCREF(port_obj);
    if (port_obj == NULL) {
        Py_DECREF(transport);
        Py_DECREF(protocol);
        Py_DECREF(host);
        goto done;
    }
    result = PyTuple_Pack(5, transport, host, port_obj, params, protocol);
    Py_DECREF(transport);
    Py_DECREF(host);
    Py_DECREF(port_obj);
    Py_DECREF(protocol);
done:
    Py_DECREF(params);
    return result;
}

/* call_id(text) -> True or False: whether text is a callid (RFC 3261 s.25.1: callid = word
 * [ "@" word ], word = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" /
 * "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" / "?" / "{" / "}")), as
 * mcs_edge/core/sip/_abnf.py's CALL_ID_RE decides it; None for a str that is not ASCII (the
 * regular expression decides). */

static PyObject *call_id(PyObject *module, PyObject *text)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_COMPACT_ASCII(text))
        Py_RETURN_NONE;
    const unsigned char *p = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), i = 0;
    while (i < n && word_char[p[i]])
        i++;
    if (i == 0)
        Py_RETURN_FALSE;
    if (i < n) {
        if (p[i] != '@')
            Py_RETURN_FALSE;
        Py_ssize_t w = ++i;
        while (i < n && word_char[p[i]])
            i++;
        if (i == w || i < n)
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"call_id", (PyCFunction)call_id, METH_O, "call_id(text) -> whether text is a Call-ID value (None: not ASCII)"},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, max_line, max_count, key_cache, compact, cache_max) -> (start_line, fields, end) or None"},
    {"via", (PyCFunction)via, METH_O,
     "via(text) -> (transport, host, port, params, protocol) of a common one-element Via value, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "mcs_edge._sipscan",
    "The head of a SIP message cut into header fields in C (see mcs_edge/core/sip/message.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sipscan(void)
{
    init_tables();
    return PyModule_Create(&moduledef);
}
