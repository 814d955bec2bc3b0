/* The ZeroBuffer ring's per-frame hot path, compiled.
 *
 * - fetch_add / fetch_sub / compare_exchange: sequentially consistent u64 atomics at a raw
 *   address (the shared free-space word), the twin of libatomic through ctypes in
 *   transports/_shm.py without ctypes' per-call conversions (~0.05 us instead of 0.3-0.4 us).
 * - put / take_run: the common small frame written, or a run of them copied out, in one call;
 *   take_run takes each frame's sem-w post through the reader's own handle on the semaphore
 *   (sem_attach / sem_detach). They only do the memory work of the cases they handle and
 *   answer "not handled" (-1 / an empty list) for everything else (wraps, full ring, gone
 *   reader, sequence gaps, corruption), which the Python code in transports/zerobuffer.py then
 *   handles, so the protocol logic stays there.
 * - address: where a contiguous buffer lives, for alignment checks (no pyarrow round trip).
 * - stream_copy: a large copy with non-temporal stores and the GIL released, so several threads
 *   can each copy a part (zcser/_copy.py). glibc's memcpy only streams above ~3/4 of the cache
 *   per thread (99 MiB on the benchmark VM); a part below that used cached stores, and two
 *   threads copying 100 MiB were then no faster than one.
 *
 * Internal: callers pass addresses inside a live mapping; a wrong address crashes the process,
 * as with ctypes. Layout offsets come from transports/_layout.py through configure().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <semaphore.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HOTPATH_STREAMING 1
#else
#define HOTPATH_STREAMING 0
#endif
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOTPATH_LITTLE_ENDIAN 1
#else
#define HOTPATH_LITTLE_ENDIAN 0 /* the wire format is little endian: put/take_run decline */
#endif

static struct {
    int configured;
    uint64_t off_free, off_write_pos, off_written, off_reader_pid, header_size;
} layout;

static int
parse_u64s(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage,
           uint64_t *out)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments, got %zd", usage, want, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++) {
        if (!PyLong_Check(args[i])) {
            PyErr_Format(PyExc_TypeError, "%s: argument %zd must be an int", usage, i + 1);
            return -1;
        }
        unsigned long long value = PyLong_AsUnsignedLongLong(args[i]);
        if (value == (unsigned long long)-1 && PyErr_Occurred()) {
            return -1;
        }
        out[i] = (uint64_t)value;
    }
    return 0;
}

static int
check_address(uint64_t address)
{
    if (address == 0 || address % sizeof(uint64_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "address must be a non-zero multiple of 8");
        return -1;
    }
    return 0;
}

static int
check_configured(void)
{
    if (!layout.configured) {
        PyErr_SetString(PyExc_RuntimeError, "transports._native.configure() was not called");
        return -1;
    }
    return 0;
}

/* --- atomics ---------------------------------------------------------------------------- */

static PyObject *
fetch_add(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[2];
    if (parse_u64s(args, nargs, 2, "fetch_add(address, value)", a) < 0 || check_address(a[0]) < 0) {
        return NULL;
    }
    uint64_t old = __atomic_fetch_add((uint64_t *)(uintptr_t)a[0], a[1], __ATOMIC_SEQ_CST);
    return PyLong_FromUnsignedLongLong(old);
}

static PyObject *
fetch_sub(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[2];
    if (parse_u64s(args, nargs, 2, "fetch_sub(address, value)", a) < 0 || check_address(a[0]) < 0) {
        return NULL;
    }
    uint64_t old = __atomic_fetch_sub((uint64_t *)(uintptr_t)a[0], a[1], __ATOMIC_SEQ_CST);
    return PyLong_FromUnsignedLongLong(old);
}

static PyObject *
compare_exchange(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[3];
    if (parse_u64s(args, nargs, 3, "compare_exchange(address, expected, desired)", a) < 0 ||
        check_address(a[0]) < 0) {
        return NULL;
    }
    uint64_t seen = a[1];
    int swapped = __atomic_compare_exchange_n((uint64_t *)(uintptr_t)a[0], &seen, a[2], 0,
                                              __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return Py_BuildValue("(NK)", PyBool_FromLong(swapped), (unsigned long long)seen);
}

/* --- frames ----------------------------------------------------------------------------- */

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[5];
    if (parse_u64s(args, nargs, 5,
                   "configure(off_free, off_write_pos, off_written, off_reader_pid, header_size)",
                   a) < 0) {
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        if (a[i] % sizeof(uint64_t) != 0) {
            PyErr_SetString(PyExc_ValueError, "OIEB offsets must be multiples of 8");
            return NULL;
        }
    }
    if (a[4] != 2 * sizeof(uint64_t)) {
        PyErr_SetString(PyExc_ValueError, "a frame header is two u64");
        return NULL;
    }
    layout.off_free = a[0];
    layout.off_write_pos = a[1];
    layout.off_written = a[2];
    layout.off_reader_pid = a[3];
    layout.header_size = a[4];
    layout.configured = 1;
    Py_RETURN_NONE;
}

/* put(addr, base, size, pos, data, seq, written, sem) -> new write_pos, or -1 when not handled.
 * Writes one frame of len(data) bytes at ring offset `pos` when it fits before the ring's end,
 * a reader is attached and the free counter covers it: data, header, then free -= 16+N,
 * write_pos, written_count (PROTOCOL.md order), then posts sem-w through `sem` (a handle from
 * sem_attach; 0: the caller posts). A count already at its maximum says "wake up" as it is. */
static PyObject *
put(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError,
                     "put(addr, base, size, pos, data, seq, written, sem) takes 8 arguments, "
                     "got %zd",
                     nargs);
        return NULL;
    }
    if (check_configured() < 0) {
        return NULL;
    }
    PyObject *data = args[4];
    if (!PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "put(): data must be bytes");
        return NULL;
    }
    PyObject *const nums[7] = {args[0], args[1], args[2], args[3], args[5], args[6], args[7]};
    uint64_t a[7];
    if (parse_u64s(nums, 7, 7, "put(addr, base, size, pos, data, seq, written, sem)", a) < 0 ||
        check_address(a[0]) < 0) {
        return NULL;
    }
    uint64_t addr = a[0], base = a[1], size = a[2], pos = a[3], seq = a[4], written = a[5];
    sem_t *sem = (sem_t *)(uintptr_t)a[6];
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(data);
    uint64_t total = n + layout.header_size;
    if (!HOTPATH_LITTLE_ENDIAN || n == 0 || pos > size || total > size - pos) {
        return PyLong_FromLong(-1);
    }
    char *oieb = (char *)(uintptr_t)addr;
    uint64_t *free_word = (uint64_t *)(oieb + layout.off_free);
    if (__atomic_load_n((uint64_t *)(oieb + layout.off_reader_pid), __ATOMIC_ACQUIRE) == 0) {
        return PyLong_FromLong(-1);
    }
    uint64_t free_bytes = __atomic_load_n(free_word, __ATOMIC_ACQUIRE);
    if (free_bytes < total || free_bytes > size) {
        return PyLong_FromLong(-1);
    }
    char *frame = oieb + base + pos;
    memcpy(frame + layout.header_size, PyBytes_AS_STRING(data), (size_t)n);
    uint64_t header[2] = {n, seq};
    memcpy(frame, header, sizeof header);
    __atomic_fetch_sub(free_word, total, __ATOMIC_SEQ_CST);
    __atomic_store_n((uint64_t *)(oieb + layout.off_write_pos), pos + total, __ATOMIC_RELEASE);
    __atomic_store_n((uint64_t *)(oieb + layout.off_written), written, __ATOMIC_RELEASE);
    if (sem != NULL) {
        sem_post(sem); /* fails only with EOVERFLOW: 2**31 posts pending already wake the reader */
    }
    return PyLong_FromUnsignedLongLong(pos + total);
}

/* sem_attach(name) -> handle: this process's sem_t for an existing named semaphore (glibc hands
 * back the mapping posix_ipc already has, counted), for take_run. Release with sem_detach. */
static PyObject *
sem_attach(PyObject *module, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "sem_attach(name): name must be a str");
        return NULL;
    }
    const char *cname = PyUnicode_AsUTF8(name);
    if (cname == NULL) {
        return NULL;
    }
    sem_t *sem = sem_open(cname, 0);
    if (sem == SEM_FAILED) {
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
    }
    return PyLong_FromVoidPtr(sem);
}

/* sem_detach(handle): close a handle from sem_attach; the handle must not be used again. */
static PyObject *
sem_detach(PyObject *module, PyObject *handle)
{
    void *sem = PyLong_AsVoidPtr(handle);
    if (sem == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "sem_detach(handle): handle is 0");
        }
        return NULL;
    }
    if (sem_close((sem_t *)sem) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* take_run(addr, base, size, pos, limit, expected, max_frames, max_bytes, sem) -> list[bytes].
 * Copies out consecutive frames from ring offset `pos` while each one's sem-w post can be taken
 * without waiting and the frame is a plain one (not a wrap marker, 1..limit bytes, fits before
 * the ring's end, sequence expected, expected + 1, ...), up to max_frames frames and, past the
 * first, max_bytes bytes; stops after a frame that ends
 * exactly at the ring's end. A post taken for a frame it does not handle is posted back, so an
 * empty list means nothing changed. The caller does the accounting for the frames returned. */
static PyObject *
take_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[9];
    if (parse_u64s(args, nargs, 9,
                   "take_run(addr, base, size, pos, limit, expected, max_frames, max_bytes, sem)",
                   a) < 0 ||
        check_address(a[0]) < 0 || check_configured() < 0) {
        return NULL;
    }
    uint64_t addr = a[0], base = a[1], size = a[2], pos = a[3], limit = a[4], expected = a[5];
    uint64_t max_frames = a[6], max_bytes = a[7];
    sem_t *sem = (sem_t *)(uintptr_t)a[8];
    if (sem == NULL) {
        PyErr_SetString(PyExc_ValueError, "take_run(): sem handle is 0");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    uint64_t copied = 0;
    while (HOTPATH_LITTLE_ENDIAN && (uint64_t)PyList_GET_SIZE(out) < max_frames &&
           (copied == 0 || copied < max_bytes) && pos <= size &&
           size - pos >= layout.header_size) {
        if (sem_trywait(sem) != 0) {
            break; /* no post (EAGAIN) or a signal (EINTR): the caller waits its own way */
        }
        const char *frame = (const char *)(uintptr_t)addr + base + pos;
        uint64_t header[2];
        memcpy(header, frame, sizeof header);
        uint64_t n = header[0];
        if (n == 0 || n > limit || header[1] != expected ||
            n > size - pos - layout.header_size || n > (uint64_t)PY_SSIZE_T_MAX) {
            sem_post(sem);
            break;
        }
        PyObject *data = PyBytes_FromStringAndSize(frame + layout.header_size, (Py_ssize_t)n);
        if (data == NULL || PyList_Append(out, data) < 0) {
            Py_XDECREF(data);
            sem_post(sem);
            if (PyList_GET_SIZE(out) == 0) {
                Py_DECREF(out);
                return NULL;
            }
            PyErr_Clear(); /* return what was taken: the next call reports the shortage */
            break;
        }
        Py_DECREF(data);
        copied += n;
        expected += 1;
        pos += n + layout.header_size; /* at the ring's end the loop's test ends the run */
    }
    return out;
}

/* address(buffer) -> int: where a contiguous buffer's first byte lives (0 when empty). */
static PyObject *
address(PyObject *module, PyObject *obj)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uintptr_t where = view.len ? (uintptr_t)view.buf : 0;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong((unsigned long long)where);
}

/* --- streaming copy ---------------------------------------------------------------------- */

#if HOTPATH_STREAMING
#define STREAM_BLOCK 128

/* Keeps the compiler from reordering the stores: streamed stores in address order fill one
 * write-combining buffer (a cache line) at a time; interleaving two lines was ~10% slower. */
#define STORE_ORDER() __asm__ __volatile__("" ::: "memory")

/* dst is 32-byte aligned; n a multiple of STREAM_BLOCK. */
__attribute__((target("avx2"))) static void
stream_avx2(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i += STREAM_BLOCK) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(src + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(src + i + 96));
        STORE_ORDER();
        _mm256_stream_si256((__m256i *)(dst + i), a);
        STORE_ORDER();
        _mm256_stream_si256((__m256i *)(dst + i + 32), b);
        STORE_ORDER();
        _mm256_stream_si256((__m256i *)(dst + i + 64), c);
        STORE_ORDER();
        _mm256_stream_si256((__m256i *)(dst + i + 96), d);
    }
}

/* The same with SSE2, which every x86-64 has. */
static void
stream_sse2(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i += 16) {
        _mm_stream_si128((__m128i *)(dst + i), _mm_loadu_si128((const __m128i *)(src + i)));
    }
}

static void
stream(char *dst, const char *src, size_t n)
{
    size_t head = (32 - ((uintptr_t)dst & 31)) & 31;
    if (head >= n) {
        memcpy(dst, src, n);
        return;
    }
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    size_t body = n - n % STREAM_BLOCK;
    if (__builtin_cpu_supports("avx2")) {
        stream_avx2(dst, src, body);
    } else {
        stream_sse2(dst, src, body);
    }
    _mm_sfence(); /* streamed stores are weakly ordered: visible before anything after this */
    memcpy(dst + body, src + body, n - body);
}
#else
static void
stream(char *dst, const char *src, size_t n)
{
    memcpy(dst, src, n);
}
#endif

/* stream_copy(dst, src): dst[:] = src for two contiguous buffers of one size, with streaming
 * (non-temporal) stores where the CPU has them, the GIL released. Overlapping buffers are
 * copied with memmove. For large copies: streamed data is not left in the cache. */
static PyObject *
stream_copy(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "stream_copy(dst, src) takes 2 arguments, got %zd", nargs);
        return NULL;
    }
    Py_buffer dst, src;
    if (PyObject_GetBuffer(args[0], &dst, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &src, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&dst);
        return NULL;
    }
    if (dst.len != src.len) {
        PyErr_Format(PyExc_ValueError, "stream_copy(): dst has %zd bytes, src %zd", dst.len,
                     src.len);
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        return NULL;
    }
    char *d = dst.buf;
    const char *s = src.buf;
    size_t n = (size_t)dst.len;
    uintptr_t dn = (uintptr_t)d, sn = (uintptr_t)s;
    Py_BEGIN_ALLOW_THREADS
    if (n && (dn + n <= sn || sn + n <= dn)) {
        stream(d, s, n);
    } else if (n) {
        memmove(d, s, n);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"address", (PyCFunction)address, METH_O,
     "address(buffer) -> int: absolute address of a contiguous buffer's first byte (0 if empty)."},
    {"fetch_add", (PyCFunction)(void (*)(void))fetch_add, METH_FASTCALL,
     "fetch_add(address, value) -> old: atomically add to the u64 at address."},
    {"fetch_sub", (PyCFunction)(void (*)(void))fetch_sub, METH_FASTCALL,
     "fetch_sub(address, value) -> old: atomically subtract from the u64 at address."},
    {"compare_exchange", (PyCFunction)(void (*)(void))compare_exchange, METH_FASTCALL,
     "compare_exchange(address, expected, desired) -> (swapped, seen)."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(off_free, off_write_pos, off_written, off_reader_pid, header_size): the layout."},
    {"put", (PyCFunction)(void (*)(void))put, METH_FASTCALL,
     "put(addr, base, size, pos, data, seq, written, sem) -> new write_pos, or -1 if not handled."},
    {"take_run", (PyCFunction)(void (*)(void))take_run, METH_FASTCALL,
     "take_run(addr, base, size, pos, limit, expected, max_frames, max_bytes, sem) -> list[bytes]."},
    {"stream_copy", (PyCFunction)(void (*)(void))stream_copy, METH_FASTCALL,
     "stream_copy(dst, src): dst[:] = src with streaming stores, the GIL released."},
    {"sem_attach", (PyCFunction)sem_attach, METH_O,
     "sem_attach(name) -> handle: this process's sem_t of an existing named semaphore."},
    {"sem_detach", (PyCFunction)sem_detach, METH_O,
     "sem_detach(handle): close a handle from sem_attach."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "transports._native",
    "The ZeroBuffer ring's per-frame hot path: u64 atomics and small-frame put/take_run.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModule_Create(&module_def);
}
