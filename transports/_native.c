/* The ZeroBuffer ring's per-frame hot path, compiled.
 *
 * - fetch_add / fetch_sub / compare_exchange: sequentially consistent u64 atomics at a raw
 *   address (the shared free-space word), the twin of libatomic through ctypes in
 *   transports/zerobuffer/posix.py without ctypes' per-call conversions.
 * - put: the common small frame written in one call (kept for callers of the old API).
 * - Publisher: the writer's commit. `p.put = data` writes and publishes a small frame,
 *   `p.publish = (skip, n)` publishes a frame whose data is in place; both update the writer's
 *   state words in the same step. They are attribute stores, not calls, on purpose: CPython runs
 *   Python signal handlers after every call returns but not after a store, so a
 *   KeyboardInterrupt can never arrive between a frame's publication and the end of the
 *   Python function that published it (see transports/zerobuffer/writer.py).
 * - take_run / take_post / give_back: the reader's accounting, each step in one call that also
 *   updates the reader's state words (and its queue of frames taken, not handed back yet), so
 *   a signal handler between two calls never finds a frame taken but not counted (see
 *   transports/zerobuffer/reader.py). Posts go through the reader's own handles on the
 *   semaphores (sem_attach / sem_detach).
 *   put, Publisher.put and take_run only do the cases they handle and answer "not handled"
 *   for everything else (wraps, full ring, gone reader, sequence gaps, corruption), which the
 *   Python code then handles, so the protocol logic stays there.
 * - FanoutPublisher / fanout_take / fanout_claim / fanout_wait: the fan-out segment's small
 *   message, published and taken in runs, and the claim of any other frame (transports/fanout;
 *   see the section "fan-out" below).
 * - pool_poll: a pool reader's spin over its rings before it sleeps (section "pools").
 * - address: where a contiguous buffer lives, for alignment checks (no pyarrow round trip).
 * - stream_copy: a large copy with non-temporal stores and the GIL released, so several threads
 *   can each copy a part (zcser's streaming copy). glibc's memcpy only streams above a share
 *   of the cache per thread; a part below that used cached stores, and two threads were then
 *   no faster than one (docs/benchmarks.md).
 *
 * Internal: callers pass addresses inside a live mapping; a wrong address crashes the process,
 * as with ctypes. Layout offsets come from transports/zerobuffer/layout.py through configure()
 * and configure_reader().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <sched.h>
#include <semaphore.h>
#include <time.h>
#include <poll.h>
#include <unistd.h>
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
    int configured, reader_configured;
    uint64_t off_free, off_write_pos, off_written, off_reader_pid, header_size;
    uint64_t off_read_pos, off_read_count;
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
 * write_pos, written_count (docs/protocol.md order), then posts sem-w through `sem` (a handle from
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

/* --- the reader's accounting ------------------------------------------------------------ */

/* The reader's state words, an array('Q') owned by the reader core (reader.py, ring.py):
 *
 *   [0] read_pos   ring offset of the next entry to read            (ring.py: ReaderRing)
 *   [1] count      entries read, frames and wraps: payload_read_count (ring.py)
 *   [2] first      token of the oldest entry not given back yet        (ring.py)
 *   [3] expected   sequence number of the next frame
 *   [4] frames     frames read
 *   [5] bytes      data bytes read
 *   [6] withheld   ring bytes read and released, not given back to the writer yet
 *   [7] posts      sem-w posts taken whose frames are not read yet
 */
enum { R_READ_POS, R_COUNT, R_FIRST, R_EXPECTED, R_FRAMES, R_BYTES, R_WITHHELD, R_POSTS, R_WORDS };

/* The reader's state words as a C array; 0 with the buffer held, -1 with an error set. */
static int
state_words(PyObject *obj, Py_buffer *view, Py_ssize_t want, uint64_t **words)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        return -1;
    }
    if (view->itemsize != sizeof(uint64_t) || view->len < want * (Py_ssize_t)sizeof(uint64_t) ||
        view->format == NULL || strcmp(view->format, "Q") != 0) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "state words must be an array('Q') of at least %zd", want);
        return -1;
    }
    *words = (uint64_t *)view->buf;
    return 0;
}

/* configure_reader(off_read_pos, off_read_count): the OIEB words only the reader writes. */
static PyObject *
configure_reader(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[2];
    if (parse_u64s(args, nargs, 2, "configure_reader(off_read_pos, off_read_count)", a) < 0) {
        return NULL;
    }
    if (a[0] % sizeof(uint64_t) != 0 || a[1] % sizeof(uint64_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "OIEB offsets must be multiples of 8");
        return NULL;
    }
    layout.off_read_pos = a[0];
    layout.off_read_count = a[1];
    layout.reader_configured = 1;
    Py_RETURN_NONE;
}

/* Hand `words[R_WITHHELD]` back to the writer: free += withheld, withheld = 0, and one post on
 * sem-r unless one is pending already (the writer re-tests the free counter after each wake). */
static void
give_back_words(char *oieb, uint64_t *words, sem_t *sem_r)
{
    uint64_t freed = words[R_WITHHELD];
    if (freed == 0) {
        return;
    }
    words[R_WITHHELD] = 0;
    __atomic_fetch_add((uint64_t *)(oieb + layout.off_free), freed, __ATOMIC_SEQ_CST);
    if (sem_r != NULL) {
        int value = 0;
        if (sem_getvalue(sem_r, &value) != 0 || value <= 0) {
            sem_post(sem_r);
        }
    }
}

/* give_back(addr, words, sem_r): free += words[withheld] (then 0), post sem-r; one step. sem_r
 * 0: no post (the caller posts). */
static PyObject *
give_back(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "give_back(addr, words, sem_r) takes 3 arguments, got %zd",
                     nargs);
        return NULL;
    }
    PyObject *const nums[2] = {args[0], args[2]};
    uint64_t a[2];
    if (parse_u64s(nums, 2, 2, "give_back(addr, words, sem_r)", a) < 0 ||
        check_address(a[0]) < 0 || check_configured() < 0) {
        return NULL;
    }
    Py_buffer view;
    uint64_t *words;
    if (state_words(args[1], &view, R_WORDS, &words) < 0) {
        return NULL;
    }
    give_back_words((char *)(uintptr_t)a[0], words, (sem_t *)(uintptr_t)a[1]);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* take_post(sem_w, words, seconds) -> bool: take one sem-w post, waiting up to `seconds` (0: one
 * try) with the GIL released, and count it in words[posts] in the same step. False on timeout
 * or when a signal arrived (the caller re-tests; Python's handlers then run). */
static PyObject *
take_post(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyFloat_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "take_post(sem_w, words, seconds: float)");
        return NULL;
    }
    uint64_t handle;
    if (parse_u64s(args, 1, 1, "take_post(sem_w, words, seconds)", &handle) < 0) {
        return NULL;
    }
    sem_t *sem = (sem_t *)(uintptr_t)handle;
    double seconds = PyFloat_AS_DOUBLE(args[2]);
    if (sem == NULL || !(seconds >= 0)) {
        PyErr_SetString(PyExc_ValueError, "take_post(): sem handle is 0 or seconds < 0");
        return NULL;
    }
    Py_buffer view;
    uint64_t *words;
    if (state_words(args[1], &view, R_WORDS, &words) < 0) {
        return NULL;
    }
    int got = sem_trywait(sem) == 0;
    if (!got && seconds > 0) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        double whole = (double)(time_t)seconds;
        until.tv_sec += (time_t)seconds;
        until.tv_nsec += (long)((seconds - whole) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec += 1;
            until.tv_nsec -= 1000000000L;
        }
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = sem_timedwait(sem, &until);
        Py_END_ALLOW_THREADS
        got = rc == 0;
    }
    if (got) {
        words[R_POSTS] += 1; /* with the GIL held: no Python code runs between take and count */
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(got);
}

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* A sched_yield() that took longer than this let another task run on this core; one that took
 * longer than WAIT_POST_SLICE_NS let it run a time slice: a task with other work (an unrelated
 * process), not a peer that answers between two polls. */
#define WAIT_POST_SWITCH_NS 3000u
#define WAIT_POST_SLICE_NS 50000u

static inline uint64_t
now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* wait_post(sem_w, words, busy_ns, rounds, limit_ns) -> int: the reader's spin before a
 * blocking wait, with the GIL released: poll sem-w (reading the count first, so polling writes
 * nothing the writer's cache line has to give up) for about `busy_ns`, then up to `rounds`
 * times yield the CPU and poll again; never longer than about `limit_ns` in all, so a signal's
 * handler runs at most that late. A post taken is counted in words[posts] once the GIL is held
 * again, before returning.
 *
 * How long each later poll lasts depends on the yield before it:
 * - it returned at once (nobody else wants this core): poll `busy_ns` again, the answer will
 *   come from another core;
 * - another task ran for a short while (WAIT_POST_SWITCH_NS..WAIT_POST_SLICE_NS): most likely
 *   the peer, sharing this core, which needs it to answer: poll only a few times before the
 *   next yield, so each answer costs one switch, not a poll plus a switch;
 * - another task ran a whole time slice: an unrelated one; yielding to it again would hand it
 *   the core for another slice, so poll `busy_ns` again.
 *
 * Returns 0: no post; 1: taken during the first poll; 2: taken later, no short switch (the
 * answer came from another core: a longer first poll would have caught it); 3: taken later,
 * after a short switch (the peer probably runs on this core: a long first poll delays its
 * answer). The reader sizes its next first poll from that (reader.py wait_frame). */
static PyObject *
wait_post(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const char usage[] = "wait_post(sem_w, words, busy_ns, rounds, limit_ns)";
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "%s takes 5 arguments, got %zd", usage, nargs);
        return NULL;
    }
    PyObject *const nums[4] = {args[0], args[2], args[3], args[4]};
    uint64_t a[4];
    if (parse_u64s(nums, 4, 4, usage, a) < 0) {
        return NULL;
    }
    sem_t *sem = (sem_t *)(uintptr_t)a[0];
    uint64_t busy_ns = a[1], rounds = a[2], limit_ns = a[3];
    if (sem == NULL) {
        PyErr_SetString(PyExc_ValueError, "wait_post(): sem handle is 0");
        return NULL;
    }
    Py_buffer view;
    uint64_t *words;
    if (state_words(args[1], &view, R_WORDS, &words) < 0) {
        return NULL;
    }
    long result = sem_trywait(sem) == 0;
    if (!result && (busy_ns > 0 || rounds > 0)) {
        Py_BEGIN_ALLOW_THREADS
        uint64_t start = now_ns(), round = 0, poll_ns = busy_ns;
        int shared = 0;
        for (;;) {
            uint64_t end = now_ns() + poll_ns;
            int got = 0;
            for (uint32_t i = 1;; i++) {
                int value = 0;
                if (sem_getvalue(sem, &value) == 0 && value > 0 && sem_trywait(sem) == 0) {
                    got = 1;
                    break;
                }
                cpu_relax();
                if ((i & 7) == 0 && now_ns() >= end) {
                    break;
                }
            }
            if (got) {
                result = round == 0 ? 1 : shared ? 3 : 2;
                break;
            }
            if (round++ >= rounds || now_ns() - start >= limit_ns) {
                break;
            }
            uint64_t before = now_ns();
            sched_yield();
            uint64_t took = now_ns() - before;
            if (took > WAIT_POST_SWITCH_NS && took < WAIT_POST_SLICE_NS) {
                shared = 1;
                poll_ns = 0; /* the loop's first 8 polls, then the next yield */
            } else {
                poll_ns = busy_ns;
            }
        }
        Py_END_ALLOW_THREADS
    }
    if (result) {
        words[R_POSTS] += 1; /* with the GIL held: no Python code runs between take and count */
    }
    PyBuffer_Release(&view);
    return PyLong_FromLong(result);
}

/* take_run(addr, base, size, words, limit, max_frames, max_bytes, sem_w, sem_r, pending) -> k.
 * Copies out consecutive plain frames from words[read_pos] (not a wrap marker, 1..limit bytes,
 * fitting before the ring's end, sequence words[expected], expected + 1, ...) while each one has
 * a post (one counted in words[posts] first, else one taken from sem-w without waiting), up to
 * max_frames frames and, past the first, max_bytes bytes; stops after a frame that ends exactly
 * at the ring's end. Nothing held may be pending (the caller checks ring.held).
 *
 * Then, in the same call, the accounting (the order of docs/protocol.md "frame read"): the
 * frames' bytes objects are appended to `pending` (a list) as they are copied; the state words
 * advance (read_pos, count, first, expected, frames, bytes); the OIEB's payload_read_pos and
 * payload_read_count are stored before any byte goes back (the reference writer decides where to wrap from them);
 * then the run's bytes and anything withheld go back (free += ..., one sem-r post). A post
 * taken for a frame it does not handle stays counted in words[posts] for the Python path.
 * Returns the number of frames taken (0: nothing changed but words[posts]). */
static PyObject *
take_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const char usage[] =
        "take_run(addr, base, size, words, limit, max_frames, max_bytes, sem_w, sem_r, pending)";
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "%s takes 10 arguments, got %zd", usage, nargs);
        return NULL;
    }
    PyObject *const nums[8] = {args[0], args[1], args[2], args[4],
                               args[5], args[6], args[7], args[8]};
    uint64_t a[8];
    if (parse_u64s(nums, 8, 8, usage, a) < 0 || check_address(a[0]) < 0 ||
        check_configured() < 0) {
        return NULL;
    }
    if (!layout.reader_configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure_reader() was not called");
        return NULL;
    }
    uint64_t addr = a[0], base = a[1], size = a[2], limit = a[3];
    uint64_t max_frames = a[4], max_bytes = a[5];
    sem_t *sem_w = (sem_t *)(uintptr_t)a[6];
    sem_t *sem_r = (sem_t *)(uintptr_t)a[7];
    PyObject *pending = args[9];
    if (sem_w == NULL) {
        PyErr_SetString(PyExc_ValueError, "take_run(): sem handle is 0");
        return NULL;
    }
    Py_buffer view;
    uint64_t *words;
    if (state_words(args[3], &view, R_WORDS, &words) < 0) {
        return NULL;
    }
    if (!PyList_CheckExact(pending)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "take_run(): pending must be a list");
        return NULL;
    }
    char *oieb = (char *)(uintptr_t)addr;
    uint64_t pos = words[R_READ_POS], expected = words[R_EXPECTED];
    uint64_t copied = 0, k = 0;
    while (HOTPATH_LITTLE_ENDIAN && k < max_frames && (copied == 0 || copied < max_bytes) &&
           pos <= size && size - pos >= layout.header_size) {
        if (words[R_POSTS] > 0) {
            words[R_POSTS] -= 1;
        } else if (sem_trywait(sem_w) != 0) {
            break; /* no post (EAGAIN) or a signal (EINTR): the caller waits its own way */
        }
        const char *frame = oieb + base + pos;
        uint64_t header[2];
        memcpy(header, frame, sizeof header);
        uint64_t n = header[0];
        if (n == 0 || n > limit || header[1] != expected ||
            n > size - pos - layout.header_size || n > (uint64_t)PY_SSIZE_T_MAX) {
            words[R_POSTS] += 1; /* the post stays ours: the Python path reads that frame */
            break;
        }
        /* Straight onto `pending` (no Python code runs in here: a signal handler cannot come
         * between two frames): a frame that cannot be appended stays in the ring, its post
         * counted, and the frames before it are accounted below; the next call reports the
         * shortage. */
        PyObject *data = PyBytes_FromStringAndSize(frame + layout.header_size, (Py_ssize_t)n);
        if (data == NULL || PyList_Append(pending, data) < 0) {
            Py_XDECREF(data);
            words[R_POSTS] += 1;
            PyErr_Clear();
            break;
        }
        Py_DECREF(data);
        copied += n;
        expected += 1;
        k += 1;
        pos += n + layout.header_size; /* at the ring's end the loop's test ends the run */
    }
    if (k > 0) {
        words[R_READ_POS] = pos >= size ? 0 : pos;
        words[R_COUNT] += k;
        words[R_FIRST] += k;
        words[R_EXPECTED] = expected;
        words[R_FRAMES] += k;
        words[R_BYTES] += copied;
        __atomic_store_n((uint64_t *)(oieb + layout.off_read_pos), words[R_READ_POS],
                         __ATOMIC_RELEASE);
        __atomic_store_n((uint64_t *)(oieb + layout.off_read_count), words[R_COUNT],
                         __ATOMIC_RELEASE);
        words[R_WITHHELD] += copied + k * layout.header_size;
        give_back_words(oieb, words, sem_r);
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(k);
}

/* --- the writer's commit ---------------------------------------------------------------- */

/* The writer's state words, an array('Q') owned by the Writer (writer.py, ring.py):
 *
 *   [0] write_pos  ring offset where the next frame goes, in [0, size]  (ring.py: WriterRing)
 *   [1] seq        sequence number of the next frame
 *   [2] written    entries written, frames and wraps: payload_written_count
 *   [3] frames     frames written
 *   [4] bytes      data bytes written
 *   [5] done       1 if the last `put` published its frame, 0 if it declined
 */
enum { W_WRITE_POS, W_SEQ, W_WRITTEN, W_FRAMES, W_BYTES, W_DONE, W_WORDS };

typedef struct {
    PyObject_HEAD
    char *oieb;         /* first byte of the mapping */
    uint64_t base;      /* payload ring offset in the mapping */
    uint64_t size;      /* payload ring bytes */
    sem_t *sem;         /* our handle on sem-w, NULL: the caller posts */
    Py_buffer state;    /* the writer's state words (holds the array) */
    int has_state;
    uint64_t *sleepers; /* a pool's sleepers word (pool.py), NULL: no bell */
    int bell;           /* the place's bell (a FIFO's writing end, non-blocking) */
} Publisher;

static int
Publisher_init(Publisher *self, PyObject *args, PyObject *kwds)
{
    unsigned long long addr, base, size, sem;
    PyObject *state;
    if (!PyArg_ParseTuple(args, "KKKKO:Publisher", &addr, &base, &size, &sem, &state)) {
        return -1;
    }
    if (check_configured() < 0 || check_address(addr) < 0) {
        return -1;
    }
    if (size < layout.header_size + 1) {
        PyErr_SetString(PyExc_ValueError, "Publisher(): ring too small for a frame");
        return -1;
    }
    if (self->has_state) {
        PyErr_SetString(PyExc_RuntimeError, "Publisher() initialised twice");
        return -1;
    }
    uint64_t *words;
    if (state_words(state, &self->state, W_WORDS, &words) < 0) {
        return -1;
    }
    self->has_state = 1;
    self->oieb = (char *)(uintptr_t)addr;
    self->base = base;
    self->size = size;
    self->sem = (sem_t *)(uintptr_t)sem;
    self->sleepers = NULL;
    self->bell = -1;
    return 0;
}

static void
Publisher_dealloc(Publisher *self)
{
    if (self->has_state) {
        PyBuffer_Release(&self->state);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A pool's bell (transports/zerobuffer/pool.py): after the publish, a full fence, then one
 * byte to the bell if a reader is armed to sleep on it. A full FIFO (EAGAIN) has rung already;
 * a reader gone (EPIPE, SIGPIPE is ignored by Python) is its own business. */
static void
ring_bell(Publisher *self)
{
    if (self->sleepers == NULL) {
        return;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(self->sleepers, __ATOMIC_SEQ_CST) != 0) {
        char byte = 1;
        ssize_t ignored = write(self->bell, &byte, 1);
        (void)ignored;
    }
}

/* The protocol's "frame written" steps once the frame's data is in place at header offset
 * `pos` (after a wasted tail of `skip` bytes): the frame header; free -= skip + 16 + n first (a
 * writer killed between these steps then leaks the frame's bytes at worst, instead of leaving
 * space counted free twice); write_pos; written_count; one sem-w post; the state words. */
static void
publish_frame(Publisher *self, uint64_t *w, uint64_t skip, uint64_t pos, uint64_t n)
{
    char *oieb = self->oieb;
    uint64_t total = n + layout.header_size;
    uint64_t header[2] = {n, w[W_SEQ]};
    memcpy(oieb + self->base + pos, header, sizeof header);
    w[W_WRITE_POS] = pos + total;
    w[W_SEQ] += 1;
    w[W_WRITTEN] += skip ? 2 : 1; /* a wrap wasting bytes is an entry too; a counter, wraps */
    w[W_FRAMES] += 1;
    w[W_BYTES] += n;
    w[W_DONE] = 1;
    __atomic_fetch_sub((uint64_t *)(oieb + layout.off_free), skip + total, __ATOMIC_SEQ_CST);
    __atomic_store_n((uint64_t *)(oieb + layout.off_write_pos), w[W_WRITE_POS], __ATOMIC_RELEASE);
    __atomic_store_n((uint64_t *)(oieb + layout.off_written), w[W_WRITTEN], __ATOMIC_RELEASE);
    if (self->sem != NULL) {
        sem_post(self->sem); /* fails only with EOVERFLOW: pending posts wake the reader anyway */
    }
    ring_bell(self);
}

/* `p.put = data`: the usual small frame in one step: when it fits before the ring's end, a
 * reader is attached and the free counter covers it, copy it in and publish it (done = 1);
 * otherwise change nothing (done = 0) and the Python code takes the long way. */
static int
Publisher_set_put(Publisher *self, PyObject *data, void *closure)
{
    if (data == NULL || !PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "Publisher.put takes bytes");
        return -1;
    }
    uint64_t *w = (uint64_t *)self->state.buf;
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(data);
    uint64_t total = n + layout.header_size;
    uint64_t pos = w[W_WRITE_POS], size = self->size;
    char *oieb = self->oieb;
    w[W_DONE] = 0;
    if (!HOTPATH_LITTLE_ENDIAN || n == 0 || pos > size || total > size - pos) {
        return 0;
    }
    if (__atomic_load_n((uint64_t *)(oieb + layout.off_reader_pid), __ATOMIC_ACQUIRE) == 0) {
        return 0;
    }
    uint64_t free_bytes = __atomic_load_n((uint64_t *)(oieb + layout.off_free), __ATOMIC_ACQUIRE);
    if (free_bytes < total || free_bytes > size) {
        return 0;
    }
    memcpy(oieb + self->base + pos + layout.header_size, PyBytes_AS_STRING(data), (size_t)n);
    publish_frame(self, w, 0, pos, n);
    return 0;
}

/* `p.publish = (skip, n)`: publish the frame of n data bytes already in place after a wasted
 * tail of `skip` bytes from write_pos (a wrap marker first when the tail holds a header). The
 * Python code claimed the space (Writer._claim); the bounds are checked again here. */
static int
Publisher_set_publish(Publisher *self, PyObject *value, void *closure)
{
    unsigned long long skip, n;
    if (value == NULL || !PyTuple_Check(value) ||
        !PyArg_ParseTuple(value, "KK:Publisher.publish", &skip, &n)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "Publisher.publish takes (skip, n)");
        }
        return -1;
    }
    uint64_t *w = (uint64_t *)self->state.buf;
    uint64_t size = self->size, start = w[W_WRITE_POS];
    uint64_t total = (uint64_t)n + layout.header_size;
    if (n == 0 || start > size || skip > size - start || total > size) {
        PyErr_SetString(PyExc_ValueError, "Publisher.publish: the frame does not fit the ring");
        return -1;
    }
    uint64_t pos = start + skip >= size ? 0 : start + skip;
    if (total > size - pos) {
        PyErr_SetString(PyExc_ValueError, "Publisher.publish: the frame does not fit the ring");
        return -1;
    }
    if (skip >= layout.header_size) {
        uint64_t marker[2] = {0, 0};
        memcpy(self->oieb + self->base + start, marker, sizeof marker);
    }
    publish_frame(self, w, skip, pos, n);
    return 0;
}

/* `p.bell = (sleepers_addr, fd)`: ring that bell after every publish; (0, -1): none. */
static int
Publisher_set_bell(Publisher *self, PyObject *value, void *closure)
{
    unsigned long long addr;
    int fd;
    if (value == NULL || !PyTuple_Check(value) ||
        !PyArg_ParseTuple(value, "Ki:Publisher.bell", &addr, &fd)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "Publisher.bell takes (sleepers_addr, fd)");
        }
        return -1;
    }
    if (addr != 0 && (check_address(addr) < 0 || fd < 0)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "Publisher.bell: a bell needs a descriptor");
        }
        return -1;
    }
    self->sleepers = addr ? (uint64_t *)(uintptr_t)addr : NULL;
    self->bell = addr ? fd : -1;
    return 0;
}

static PyObject *
Publisher_get_none(Publisher *self, void *closure)
{
    PyErr_SetString(PyExc_AttributeError, "Publisher.put and .publish can only be set");
    return NULL;
}

static PyGetSetDef Publisher_getset[] = {
    {"put", (getter)Publisher_get_none, (setter)Publisher_set_put,
     "Set to bytes: write and publish a small frame if it fits now (state done = 1).", NULL},
    {"publish", (getter)Publisher_get_none, (setter)Publisher_set_publish,
     "Set to (skip, n): publish the frame of n bytes already in place.", NULL},
    {"bell", (getter)Publisher_get_none, (setter)Publisher_set_bell,
     "Set to (sleepers_addr, fd): ring that pool bell after each publish; (0, -1): none.",
     NULL},
    {NULL},
};

static PyTypeObject PublisherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "transports._native.Publisher",
    .tp_basicsize = sizeof(Publisher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Publisher(addr, base, size, sem, state): the writer's commit, as attribute stores.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Publisher_init,
    .tp_dealloc = (destructor)Publisher_dealloc,
    .tp_getset = Publisher_getset,
};

/* --- fan-out (transports/fanout) ----------------------------------------------------------
 *
 * The per-message paths of the fan-out segment (docs/protocol.md "Fan-out"), for the usual
 * small message; everything else (wraps, gaps around pins, joins, waiting for room, "latest",
 * frames a subscriber keeps as views, missed messages, nonsense) stays in the Python code,
 * which these decline to, changing nothing.
 *
 * - FanoutPublisher: `p.put = data` writes and publishes one frame at the write position when
 *   the Python code's last look guarantees room there (the floor), then writes the bells of
 *   the subscribers asleep (`p.bells`); an attribute store, as Publisher.put, so no signal
 *   handler runs between a frame's publication and its counting.
 * - fanout_take: a subscriber copies out a run of consecutive small frames, moves its cursor
 *   past them with one compare-and-swap (the publisher may have moved it: then nothing is
 *   taken) and queues their bytes, in one call.
 * - fanout_claim: a subscriber takes any other frame (its bytes or its frame object, made by
 *   the Python code): queued and claimed in one call, so a signal handler cannot lose it.
 * - fanout_wait: a subscriber's wait, with the GIL released: a short poll of the head, then
 *   armed sleep on its bell.
 * Offsets come from transports/fanout/layout.py through configure_fanout().
 */

static struct {
    int configured;
    uint64_t off_head, off_last, off_seq, off_closed, off_joins, off_pub_armed, off_skips;
    uint64_t s_state, s_read, s_armed, s_last_seq, skip_entries, active;
} fo;

#define FO_ALIGN 64u
#define FO_HEADER 16u
#define FO_MAX_BELLS 64

static inline uint64_t
fo_load(const char *at)
{
    return __atomic_load_n((const uint64_t *)at, __ATOMIC_ACQUIRE);
}

static int
fo_check_configured(void)
{
    if (!fo.configured) {
        PyErr_SetString(PyExc_RuntimeError, "transports._native.configure_fanout() was not called");
        return -1;
    }
    return 0;
}

/* configure_fanout(off_head, off_last, off_seq, off_closed, off_joins, off_pub_armed, off_skips,
 *                  s_state, s_read, s_armed, s_last_seq, skip_entries, active) */
static PyObject *
configure_fanout(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[13];
    if (parse_u64s(args, nargs, 13, "configure_fanout(13 layout numbers)", a) < 0) {
        return NULL;
    }
    for (int i = 0; i < 11; i++) {
        if (a[i] % sizeof(uint64_t) != 0) {
            PyErr_SetString(PyExc_ValueError, "fan-out offsets must be multiples of 8");
            return NULL;
        }
    }
    if (a[11] == 0) {
        PyErr_SetString(PyExc_ValueError, "fan-out skip table must have entries");
        return NULL;
    }
    fo.off_head = a[0];
    fo.off_last = a[1];
    fo.off_seq = a[2];
    fo.off_closed = a[3];
    fo.off_joins = a[4];
    fo.off_pub_armed = a[5];
    fo.off_skips = a[6];
    fo.s_state = a[7];
    fo.s_read = a[8];
    fo.s_armed = a[9];
    fo.s_last_seq = a[10];
    fo.skip_entries = a[11];
    fo.active = a[12];
    fo.configured = 1;
    Py_RETURN_NONE;
}

/* One byte into a bell; a full FIFO (EAGAIN) has rung already, a sleeper gone (EPIPE) is its
 * own business. */
static inline void
fo_ring(int fd)
{
    if (fd >= 0) {
        char byte = 1;
        ssize_t ignored = write(fd, &byte, 1);
        (void)ignored;
    }
}

/* The publisher's state words, an array('Q') owned by FanoutWriter (writer.py):
 *
 *   [0] w       end of the published frames (absolute position; the segment's head)
 *   [1] seq     sequence number of the newest frame
 *   [2] floor   no cursor nor pin is below it (writer.py _lowest): a frame whose old lap ends
 *               at or below it overwrites nothing anyone may read
 *   [3] sample  the next frame start at or past it must be recorded by the Python code (its
 *               table of frame starts, ring.py Entries): put declines there
 *   [4] joins   the segment's joins word when the Python code last looked at the slots
 *   [5] frames  frames published
 *   [6] bytes   data bytes published
 *   [7] done    1 if the last `put` published its frame, 0 if it declined
 */
enum { FW_W, FW_SEQ, FW_FLOOR, FW_SAMPLE, FW_JOINS, FW_FRAMES, FW_BYTES, FW_DONE, FW_WORDS };

typedef struct {
    PyObject_HEAD
    char *seg;       /* first byte of the segment */
    uint64_t base;   /* payload ring offset in the segment */
    uint64_t size;   /* payload ring bytes */
    Py_buffer state; /* the writer's state words (holds the array) */
    int has_state;
    int nbells;
    uint64_t *armed[FO_MAX_BELLS]; /* subscribers' S_ARMED words */
    uint64_t *reads[FO_MAX_BELLS]; /* their S_READ words (cursors) */
    uint64_t rung[FO_MAX_BELLS];   /* the head right after the bell was last written */
    int fds[FO_MAX_BELLS];         /* their bells' writing ends */
} FanoutPublisher;

static int
FanoutPublisher_init(FanoutPublisher *self, PyObject *args, PyObject *kwds)
{
    unsigned long long addr, base, size;
    PyObject *state;
    if (!PyArg_ParseTuple(args, "KKKO:FanoutPublisher", &addr, &base, &size, &state)) {
        return -1;
    }
    if (fo_check_configured() < 0 || check_address(addr) < 0) {
        return -1;
    }
    if (size == 0 || size % FO_ALIGN != 0 || base % FO_ALIGN != 0) {
        PyErr_SetString(PyExc_ValueError, "FanoutPublisher(): ring size and base must be 64-aligned");
        return -1;
    }
    if (self->has_state) {
        PyErr_SetString(PyExc_RuntimeError, "FanoutPublisher() initialised twice");
        return -1;
    }
    uint64_t *words;
    if (state_words(state, &self->state, FW_WORDS, &words) < 0) {
        return -1;
    }
    self->has_state = 1;
    self->seg = (char *)(uintptr_t)addr;
    self->base = base;
    self->size = size;
    self->nbells = 0;
    return 0;
}

static void
FanoutPublisher_dealloc(FanoutPublisher *self)
{
    if (self->has_state) {
        PyBuffer_Release(&self->state);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* After a publish whose head is `head` (and a full fence): the bell of each armed subscriber
 * whose cursor reached the head of this bell's last write (see put below). */
static void
fo_ring_sleepers(FanoutPublisher *self, uint64_t head)
{
    for (int i = 0; i < self->nbells; i++) {
        if (__atomic_load_n(self->armed[i], __ATOMIC_SEQ_CST) != 0 &&
            __atomic_load_n(self->reads[i], __ATOMIC_SEQ_CST) >= self->rung[i]) {
            fo_ring(self->fds[i]);
            self->rung[i] = head;
        }
    }
}

/* `p.put = data`: publish bytes `data` as the next frame if it fits at the write position
 * before the ring's end, below the floor's lap, before the next sample, with no join pending
 * (done = 1): data, frame header, newest start and sequence, the head (a full fence), then the
 * bells of armed subscribers. Otherwise nothing changes (done = 0).
 *
 * A bell is written once per sleep, not once per frame while its subscriber wakes up: not
 * again while the subscriber's cursor is below the head of the last write (`rung`). It cannot
 * be asleep then without that byte still in its bell: it sleeps only after arming and then
 * seeing no frame past its cursor, so a cursor below `rung` means it looked before that
 * frame was published, and the publisher, seeing it armed, wrote the byte after it armed;
 * it drains its bell only after it stopped sleeping. On an oversubscribed machine a woken
 * subscriber may wait milliseconds for a CPU: without this rule every frame published
 * meanwhile cost the publisher a system call. */
static int
FanoutPublisher_set_put(FanoutPublisher *self, PyObject *data, void *closure)
{
    if (data == NULL || !PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "FanoutPublisher.put takes bytes");
        return -1;
    }
    uint64_t *st = (uint64_t *)self->state.buf;
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(data), size = self->size;
    st[FW_DONE] = 0;
    if (!HOTPATH_LITTLE_ENDIAN || n == 0 || n > size / 2) {
        return 0;
    }
    uint64_t t = (FO_HEADER + n + FO_ALIGN - 1) / FO_ALIGN * FO_ALIGN;
    uint64_t w = st[FW_W], off = w % size;
    if (t > size / 2 || size - off < t || w + t > st[FW_FLOOR] + size || w >= st[FW_SAMPLE]) {
        return 0;
    }
    char *seg = self->seg;
    if (fo_load(seg + fo.off_joins) != st[FW_JOINS]) {
        return 0;
    }
    char *frame = seg + self->base + off;
    uint64_t seq = st[FW_SEQ] + 1;
    uint64_t header[2] = {n, seq};
    memcpy(frame + FO_HEADER, PyBytes_AS_STRING(data), (size_t)n);
    memcpy(frame, header, sizeof header);
    __atomic_store_n((uint64_t *)(seg + fo.off_last), w, __ATOMIC_RELAXED);
    __atomic_store_n((uint64_t *)(seg + fo.off_seq), seq, __ATOMIC_RELAXED);
    st[FW_W] = w + t;
    st[FW_SEQ] = seq;
    st[FW_FRAMES] += 1;
    st[FW_BYTES] += n;
    st[FW_DONE] = 1;
    __atomic_fetch_add((uint64_t *)(seg + fo.off_head), t, __ATOMIC_SEQ_CST); /* publishes */
    fo_ring_sleepers(self, w + t);
    return 0;
}

/* `p.head = end`: publish the frames up to `end` (the Python code wrote them and their
 * headers): the segment's head, a full fence, then the bells (as after a put). An attribute
 * store, so no signal handler runs between the publication and the caller's return. */
static int
FanoutPublisher_set_head(FanoutPublisher *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "FanoutPublisher.head takes an int");
        return -1;
    }
    unsigned long long end = PyLong_AsUnsignedLongLong(value);
    if (end == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    __atomic_store_n((uint64_t *)(self->seg + fo.off_head), (uint64_t)end, __ATOMIC_SEQ_CST);
    fo_ring_sleepers(self, (uint64_t)end);
    return 0;
}

/* `p.bells = ((armed_addr, fd), ...)`: the subscribers whose bell a publish writes when armed. */
static int
FanoutPublisher_set_bells(FanoutPublisher *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyTuple_Check(value) || PyTuple_GET_SIZE(value) > FO_MAX_BELLS) {
        PyErr_Format(PyExc_TypeError, "FanoutPublisher.bells takes a tuple of at most %d pairs",
                     FO_MAX_BELLS);
        return -1;
    }
    uint64_t *armed[FO_MAX_BELLS];
    int fds[FO_MAX_BELLS];
    Py_ssize_t count = PyTuple_GET_SIZE(value);
    if (count > 0 && fo_check_configured() < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned long long addr;
        int fd;
        PyObject *pair = PyTuple_GET_ITEM(value, i);
        if (!PyTuple_Check(pair) || !PyArg_ParseTuple(pair, "Ki:FanoutPublisher.bells", &addr, &fd)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "FanoutPublisher.bells: (armed_addr, fd) pairs");
            }
            return -1;
        }
        if (check_address(addr) < 0) {
            return -1;
        }
        armed[i] = (uint64_t *)(uintptr_t)addr;
        fds[i] = fd;
    }
    memcpy(self->armed, armed, sizeof(armed[0]) * (size_t)count);
    memcpy(self->fds, fds, sizeof(fds[0]) * (size_t)count);
    for (Py_ssize_t i = 0; i < count; i++) {
        self->reads[i] = (uint64_t *)((char *)armed[i] - fo.s_armed + fo.s_read);
        self->rung[i] = 0; /* a new set of subscribers: each is rung when next armed */
    }
    self->nbells = (int)count;
    return 0;
}

static PyObject *
FanoutPublisher_get_none(FanoutPublisher *self, void *closure)
{
    PyErr_SetString(PyExc_AttributeError, "FanoutPublisher.put, .bells and .head can only be set");
    return NULL;
}

static PyGetSetDef FanoutPublisher_getset[] = {
    {"put", (getter)FanoutPublisher_get_none, (setter)FanoutPublisher_set_put,
     "Set to bytes: publish them as the next frame if the fast path allows (state done = 1).",
     NULL},
    {"bells", (getter)FanoutPublisher_get_none, (setter)FanoutPublisher_set_bells,
     "Set to ((armed_addr, fd), ...): the bells a publish writes when armed.", NULL},
    {"head", (getter)FanoutPublisher_get_none, (setter)FanoutPublisher_set_head,
     "Set to an end position: publish the frames written up to it, then the bells.", NULL},
    {NULL},
};

static PyTypeObject FanoutPublisherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "transports._native.FanoutPublisher",
    .tp_basicsize = sizeof(FanoutPublisher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FanoutPublisher(addr, base, size, state): a fan-out publisher's small publish.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FanoutPublisher_init,
    .tp_dealloc = (destructor)FanoutPublisher_dealloc,
    .tp_getset = FanoutPublisher_getset,
};

/* A subscriber's state words, an array('Q') owned by FanoutReader (reader.py):
 *
 *   [0] last_seq  sequence number of the last frame taken
 *   [1] skip_idx  skip entries already behind the cursor
 *   [2] frames    frames taken
 *   [3] bytes     data bytes taken
 *   [4] missed    messages skipped (sequence numbers between those taken)
 */
enum { FR_LAST_SEQ, FR_SKIP_IDX, FR_FRAMES, FR_BYTES, FR_MISSED, FR_WORDS };

/* fanout_take(addr, slot, base, size, skip_base, words, limit, max_frames, pending, pub_bell)
 *   -> k.
 * With the slot active and `pending` empty: from the cursor, copy out consecutive frames of
 * 1..limit bytes, each the sequence after the previous one, fitting the ring and the published
 * part, up to max_frames and not across the next skip entry; append their bytes to `pending`;
 * move the cursor past them with one compare-and-swap from where they were read. The
 * publisher overwrites frames only past every cursor (or after moving one), so a successful
 * swap says the copies are whole; a failed one (it moved this cursor) empties `pending` again
 * and returns -1. Then last_seq (the slot's too) and the counters, and the publisher's bell if
 * it waits for room. 0: nothing taken (the Python code reads what is there, if anything). */
static PyObject *
fanout_take(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const char usage[] =
        "fanout_take(addr, slot, base, size, skip_base, words, limit, max_frames, pending, "
        "pub_bell)";
    if (nargs != 10 || !PyList_CheckExact(args[8]) || !PyLong_Check(args[9])) {
        PyErr_Format(PyExc_TypeError, "%s: 10 arguments, pending a list", usage);
        return NULL;
    }
    PyObject *const nums[7] = {args[0], args[1], args[2], args[3], args[4], args[6], args[7]};
    uint64_t a[7];
    if (parse_u64s(nums, 7, 7, usage, a) < 0 || check_address(a[0]) < 0 ||
        check_address(a[1]) < 0 || fo_check_configured() < 0) {
        return NULL;
    }
    int pub_bell = (int)PyLong_AsLong(args[9]);
    if (pub_bell == -1 && PyErr_Occurred()) {
        return NULL;
    }
    char *seg = (char *)(uintptr_t)a[0], *slot = (char *)(uintptr_t)a[1];
    uint64_t base = a[2], size = a[3], skip_base = a[4], limit = a[5], max_frames = a[6];
    PyObject *pending = args[8];
    if (size == 0 || size % FO_ALIGN != 0) {
        PyErr_SetString(PyExc_ValueError, "fanout_take(): ring size must be a multiple of 64");
        return NULL;
    }
    if (PyList_GET_SIZE(pending) != 0) {
        return PyLong_FromLong(0);
    }
    Py_buffer view;
    uint64_t *words;
    if (state_words(args[5], &view, FR_WORDS, &words) < 0) {
        return NULL;
    }
    long result = 0;
    if (!HOTPATH_LITTLE_ENDIAN || fo_load(slot + fo.s_state) != fo.active) {
        goto done;
    }
    uint64_t h = fo_load(seg + fo.off_head), r = fo_load(slot + fo.s_read);
    if (r >= h || h - r > size || r % FO_ALIGN != 0) {
        goto done; /* nothing, or nonsense the Python code reports */
    }
    uint64_t count = fo_load(seg + fo.off_skips), idx = words[FR_SKIP_IDX];
    if (count - idx > fo.skip_entries) {
        idx = count - fo.skip_entries;
    }
    uint64_t next_skip = UINT64_MAX;
    while (idx < count) {
        uint64_t from;
        memcpy(&from, seg + skip_base + (idx % fo.skip_entries) * 16, sizeof from);
        if (from < r) {
            idx += 1;
            continue;
        }
        next_skip = from;
        break;
    }
    words[FR_SKIP_IDX] = idx;
    uint64_t pos = r, last = words[FR_LAST_SEQ], k = 0, copied = 0;
    while (k < max_frames && pos < h && pos < next_skip) {
        uint64_t off = pos % size, header[2];
        if (size - off < FO_HEADER) {
            break;
        }
        memcpy(header, seg + base + off, sizeof header);
        uint64_t n = header[0];
        if (n == 0 || n > limit || header[1] != last + 1 || n > size) {
            break;
        }
        uint64_t total = (FO_HEADER + n + FO_ALIGN - 1) / FO_ALIGN * FO_ALIGN;
        if (total > size - off || total > h - pos || n > (uint64_t)PY_SSIZE_T_MAX) {
            break;
        }
        PyObject *bytes = PyBytes_FromStringAndSize(seg + base + off + FO_HEADER, (Py_ssize_t)n);
        if (bytes == NULL || PyList_Append(pending, bytes) < 0) {
            Py_XDECREF(bytes);
            PyErr_Clear(); /* take what was copied: the next call reports the shortage */
            break;
        }
        Py_DECREF(bytes);
        pos += total;
        last = header[1];
        copied += n;
        k += 1;
    }
    if (k == 0) {
        goto done;
    }
    uint64_t expected = r;
    if (!__atomic_compare_exchange_n((uint64_t *)(slot + fo.s_read), &expected, pos, 0,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        PyList_SetSlice(pending, 0, PyList_GET_SIZE(pending), NULL);
        PyErr_Clear();
        result = -1;
        goto done;
    }
    __atomic_store_n((uint64_t *)(slot + fo.s_last_seq), last, __ATOMIC_RELAXED);
    words[FR_LAST_SEQ] = last;
    words[FR_FRAMES] += k;
    words[FR_BYTES] += copied;
    result = (long)k;
    if (__atomic_load_n((uint64_t *)(seg + fo.off_pub_armed), __ATOMIC_SEQ_CST) != 0) {
        fo_ring(pub_bell);
    }
done:
    PyBuffer_Release(&view);
    return PyLong_FromLong(result);
}

/* fanout_claim(slot, words, r, end, seq, n, pending, item) -> bool: take the frame at the
 * cursor `r` (up to `end`, sequence `seq`, n data bytes) for `item`, its bytes or its frame
 * object: append `item` to `pending`, then move the cursor from `r` to `end` with a
 * compare-and-swap; if the swap fails (the publisher moved the cursor), take `item` off
 * again and return False. Then the sequence words and counters, missed ones included (the
 * sequence numbers skipped before `seq`). One call, so no Python code (no signal handler)
 * runs between the claim and the frame being where the next read hands it out. */
static PyObject *
fanout_claim(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const char usage[] = "fanout_claim(slot, words, r, end, seq, n, pending, item)";
    if (nargs != 8 || !PyList_CheckExact(args[6])) {
        PyErr_Format(PyExc_TypeError, "%s: 8 arguments, pending a list", usage);
        return NULL;
    }
    PyObject *const nums[5] = {args[0], args[2], args[3], args[4], args[5]};
    uint64_t a[5];
    if (parse_u64s(nums, 5, 5, usage, a) < 0 || check_address(a[0]) < 0 ||
        fo_check_configured() < 0) {
        return NULL;
    }
    char *slot = (char *)(uintptr_t)a[0];
    uint64_t r = a[1], end = a[2], seq = a[3], n = a[4];
    PyObject *pending = args[6];
    Py_buffer view;
    uint64_t *words;
    if (state_words(args[1], &view, FR_WORDS, &words) < 0) {
        return NULL;
    }
    if (PyList_Append(pending, args[7]) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint64_t expected = r;
    if (!__atomic_compare_exchange_n((uint64_t *)(slot + fo.s_read), &expected, end, 0,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        Py_ssize_t len = PyList_GET_SIZE(pending);
        if (PyList_SetSlice(pending, len - 1, len, NULL) < 0) {
            PyErr_Clear(); /* cannot fail for a list shrinking by one */
        }
        PyBuffer_Release(&view);
        Py_RETURN_FALSE;
    }
    uint64_t last = words[FR_LAST_SEQ];
    words[FR_MISSED] += seq > last ? seq - last - 1 : 0;
    words[FR_LAST_SEQ] = seq;
    __atomic_store_n((uint64_t *)(slot + fo.s_last_seq), seq, __ATOMIC_RELAXED);
    words[FR_FRAMES] += 1;
    words[FR_BYTES] += n;
    PyBuffer_Release(&view);
    Py_RETURN_TRUE;
}

/* Something for the subscriber: a frame published past its cursor (while active), or the end. */
static inline int
fo_ready(const char *seg, const char *slot)
{
    if (__atomic_load_n((const uint64_t *)(slot + fo.s_state), __ATOMIC_SEQ_CST) == fo.active &&
        __atomic_load_n((const uint64_t *)(slot + fo.s_read), __ATOMIC_SEQ_CST) <
            __atomic_load_n((const uint64_t *)(seg + fo.off_head), __ATOMIC_SEQ_CST)) {
        return 1;
    }
    return __atomic_load_n((const uint64_t *)(seg + fo.off_closed), __ATOMIC_SEQ_CST) != 0;
}

/* fanout_wait(addr, slot, bell, busy_ns, rounds, sleep_ms) -> int, with the GIL released:
 * poll for a frame (or the end) about `busy_ns`, then up to `rounds` times yield the CPU and
 * poll again, but no more once a yield let another task run on this core (the publisher may
 * be waiting for it: spinning on would only delay what we wait for); then, if `sleep_ms` > 0,
 * arm (the slot's armed word + 1), look once more, sleep on the bell up to sleep_ms, disarm
 * and drain the bell. Returns 1 if something is there now, 2 if it came during the first
 * poll, 0 if not (the caller looks at the publisher's liveness and its deadline). A signal
 * ends the sleep early (the caller's handlers then run). */
static PyObject *
fanout_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const char usage[] = "fanout_wait(addr, slot, bell, busy_ns, rounds, sleep_ms)";
    if (nargs != 6 || !PyLong_Check(args[2])) {
        PyErr_Format(PyExc_TypeError, "%s takes 6 ints", usage);
        return NULL;
    }
    PyObject *const nums[5] = {args[0], args[1], args[3], args[4], args[5]};
    uint64_t a[5];
    if (parse_u64s(nums, 5, 5, usage, a) < 0 || check_address(a[0]) < 0 ||
        check_address(a[1]) < 0 || fo_check_configured() < 0) {
        return NULL;
    }
    int bell = (int)PyLong_AsLong(args[2]);
    if (bell == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const char *seg = (const char *)(uintptr_t)a[0];
    char *slot = (char *)(uintptr_t)a[1];
    uint64_t busy_ns = a[2], rounds = a[3], sleep_ms = a[4];
    if (sleep_ms > 3600000u) {
        sleep_ms = 3600000u;
    }
    int result = 0;
    Py_BEGIN_ALLOW_THREADS
    for (uint64_t round = 0;; round++) {
        uint64_t end = now_ns() + busy_ns;
        for (uint32_t i = 1;; i++) {
            if (fo_ready(seg, slot)) {
                result = round == 0 ? 2 : 1;
                break;
            }
            cpu_relax();
            if ((i & 7) == 0 && now_ns() >= end) {
                break;
            }
        }
        if (result || round >= rounds) {
            break;
        }
        uint64_t before = now_ns();
        sched_yield();
        if (now_ns() - before > WAIT_POST_SWITCH_NS) {
            break; /* the core is wanted: sleep rather than take turns with others */
        }
    }
    if (!result && sleep_ms > 0 && bell >= 0) {
        uint64_t *armed = (uint64_t *)(slot + fo.s_armed);
        __atomic_fetch_add(armed, 1, __ATOMIC_SEQ_CST);
        if (!fo_ready(seg, slot)) {
            struct pollfd p = {.fd = bell, .events = POLLIN, .revents = 0};
            (void)poll(&p, 1, (int)sleep_ms);
        }
        __atomic_fetch_sub(armed, 1, __ATOMIC_SEQ_CST);
        char sink[64];
        while (read(bell, sink, sizeof sink) > 0) {
        }
        result = fo_ready(seg, slot);
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(result);
}

/* --- pools (transports/zerobuffer/pool.py) ------------------------------------------------
 *
 * pool_poll(words, busy_ns, rounds) -> answer: a pool reader's spin over its rings, with the
 * GIL released, before it sleeps on their bells. `words` is an array('Q') of pairs (address of a
 * ring's OIEB, the ring's payload size), one per ring in use. The answer is the index of the
 * first pair whose ring has a complete frame past the read position the reader published in
 * the OIEB (the test of Reader.published_unread), plus POOL_SHARED when it turned up right
 * after a yield that ran another task for a short while (the writer probably shares this
 * core); -1 for none. It takes nothing: the caller then reads as usual, checking everything
 * (a peer that writes these words only changes when we look). Polls `busy_ns`, then yields
 * the CPU and polls again up to `rounds` times, no more once a yield shows another task wants
 * this core (as wait_post). The caller keeps the rings mapped for the call (the receiver's
 * close waits for its recv). */
#define POOL_SHARED 64 /* added to pool_poll's answer: found right after a short switch */

static int
pool_any(const uint64_t *w, Py_ssize_t n, uint64_t hdr)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *oieb = (const char *)(uintptr_t)w[2 * i];
        uint64_t wp = __atomic_load_n((const uint64_t *)(oieb + layout.off_write_pos), __ATOMIC_ACQUIRE);
        uint64_t rp = __atomic_load_n((const uint64_t *)(oieb + layout.off_read_pos), __ATOMIC_RELAXED);
        uint64_t size = w[2 * i + 1];
        if (wp > size) {
            continue; /* nonsense: Python's read path says so */
        }
        if (size - wp < hdr) {
            wp = 0;
        }
        if (size - rp < hdr) {
            rp = 0;
        }
        if (wp != rp) {
            return (int)i;
        }
    }
    return -1;
}

static PyObject *
pool_poll(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const char usage[] = "pool_poll(words, busy_ns, rounds)";
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s takes 3 arguments", usage);
        return NULL;
    }
    uint64_t a[2];
    if (parse_u64s(args + 1, 2, 2, usage, a) < 0 || check_configured() < 0) {
        return NULL;
    }
    if (!layout.reader_configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure_reader() was not called");
        return NULL;
    }
    Py_buffer view;
    uint64_t *words;
    if (state_words(args[0], &view, 0, &words) < 0) {
        return NULL;
    }
    Py_ssize_t n = view.len / (Py_ssize_t)(2 * sizeof(uint64_t));
    for (Py_ssize_t i = 0; i < n; i++) {
        if (check_address(words[2 * i]) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    uint64_t busy_ns = a[0], rounds = a[1], hdr = layout.header_size;
    if (busy_ns > 1000000u) {
        busy_ns = 1000000u;
    }
    int found = -1, shared = 0;
    Py_BEGIN_ALLOW_THREADS
    for (uint64_t round = 0;; round++) {
        uint64_t end = now_ns() + busy_ns;
        for (uint32_t i = 1;; i++) {
            found = pool_any(words, n, hdr);
            if (found >= 0) {
                break;
            }
            cpu_relax();
            if ((i & 7) == 0 && now_ns() >= end) {
                break;
            }
        }
        if (found >= 0 || round >= rounds) {
            break;
        }
        uint64_t before = now_ns();
        sched_yield();
        uint64_t took = now_ns() - before;
        if (took > WAIT_POST_SWITCH_NS) {
            found = pool_any(words, n, hdr);
            shared = found >= 0 && took < WAIT_POST_SLICE_NS;
            break; /* the core is wanted: sleep rather than take turns with others */
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromLong(found >= 0 && shared ? found + POOL_SHARED : found);
}

/* --- a held frame's ticket --------------------------------------------------------------- */

/* Ticket(orphans, entry): a held Frame's last word. A Frame's __del__ is Python code, and a
 * signal handler's exception at its first line skips it: the frame would pin its ring space
 * for good. The Frame also holds a Ticket; when the Frame dies, so does the ticket, in C (no
 * signal handler runs there), and an armed ticket appends `entry` (data, view, token) to the
 * reader's orphans, which the reader releases once nothing uses the data. The reader arms the
 * ticket in the step that takes the frame; a release (or a __del__ that ran) disarms it. */
typedef struct {
    PyObject_HEAD
    PyObject *orphans; /* the reader's list of orphans */
    PyObject *entry;   /* (data, view, token) */
    int armed;
} Ticket;

static int
Ticket_init(Ticket *self, PyObject *args, PyObject *kwds)
{
    PyObject *orphans, *entry;
    if (!PyArg_ParseTuple(args, "O!O!:Ticket", &PyList_Type, &orphans, &PyTuple_Type, &entry)) {
        return -1;
    }
    Py_INCREF(orphans);
    Py_INCREF(entry);
    Py_XSETREF(self->orphans, orphans);
    Py_XSETREF(self->entry, entry);
    self->armed = 0;
    return 0;
}

static void
Ticket_dealloc(Ticket *self)
{
    if (self->armed && self->orphans != NULL && self->entry != NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyList_Append(self->orphans, self->entry) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        PyErr_Restore(type, value, tb);
    }
    Py_CLEAR(self->orphans);
    Py_CLEAR(self->entry);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Ticket_members[] = {
    {"armed", T_INT, offsetof(Ticket, armed), 0, "1: the Frame's death makes it an orphan."},
    {NULL},
};

static PyTypeObject TicketType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "transports._native.Ticket",
    .tp_basicsize = sizeof(Ticket),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ticket(orphans, entry): appends entry to orphans when it dies armed.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ticket_init,
    .tp_dealloc = (destructor)Ticket_dealloc,
    .tp_members = Ticket_members,
};

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
 * write-combining buffer (a cache line) at a time; interleaving two lines was slower. */
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
    {"configure_reader", (PyCFunction)(void (*)(void))configure_reader, METH_FASTCALL,
     "configure_reader(off_read_pos, off_read_count): the OIEB words only the reader writes."},
    {"take_run", (PyCFunction)(void (*)(void))take_run, METH_FASTCALL,
     "take_run(addr, base, size, words, limit, max_frames, max_bytes, sem_w, sem_r, pending) -> "
     "frames taken, counted and queued on pending."},
    {"wait_post", (PyCFunction)(void (*)(void))wait_post, METH_FASTCALL,
     "wait_post(sem_w, words, busy_ns, rounds, limit_ns) -> 0-3: the reader's spin, GIL released."},
    {"take_post", (PyCFunction)(void (*)(void))take_post, METH_FASTCALL,
     "take_post(sem_w, words, seconds) -> bool: take one post and count it in the same step."},
    {"give_back", (PyCFunction)(void (*)(void))give_back, METH_FASTCALL,
     "give_back(addr, words, sem_r): free += the withheld bytes (then 0), post sem-r."},
    {"stream_copy", (PyCFunction)(void (*)(void))stream_copy, METH_FASTCALL,
     "stream_copy(dst, src): dst[:] = src with streaming stores, the GIL released."},
    {"configure_fanout", (PyCFunction)(void (*)(void))configure_fanout, METH_FASTCALL,
     "configure_fanout(...): the fan-out segment's layout (transports/fanout/layout.py)."},
    {"fanout_take", (PyCFunction)(void (*)(void))fanout_take, METH_FASTCALL,
     "fanout_take(addr, slot, base, size, skip_base, words, limit, max_frames, pending, "
     "pub_bell) -> frames taken (-1: the publisher moved the cursor)."},
    {"pool_poll", (PyCFunction)(void (*)(void))pool_poll, METH_FASTCALL,
     "pool_poll(words, busy_ns, rounds) -> index or -1: a pool reader's spin, GIL released."},
    {"fanout_claim", (PyCFunction)(void (*)(void))fanout_claim, METH_FASTCALL,
     "fanout_claim(slot, words, r, end, seq, n, pending, item) -> bool: take one frame."},
    {"fanout_wait", (PyCFunction)(void (*)(void))fanout_wait, METH_FASTCALL,
     "fanout_wait(addr, slot, bell, busy_ns, rounds, sleep_ms) -> 0-2: a subscriber's wait."},
    {"sem_attach", (PyCFunction)sem_attach, METH_O,
     "sem_attach(name) -> handle: this process's sem_t of an existing named semaphore."},
    {"sem_detach", (PyCFunction)sem_detach, METH_O,
     "sem_detach(handle): close a handle from sem_attach."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "transports._native",
    "The ZeroBuffer ring's per-frame hot path: u64 atomics, the writer's commit, the reader's accounting.",
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
    if (PyType_Ready(&PublisherType) < 0 || PyType_Ready(&TicketType) < 0 ||
        PyType_Ready(&FanoutPublisherType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&PublisherType);
    if (PyModule_AddObject(module, "Publisher", (PyObject *)&PublisherType) < 0) {
        Py_DECREF(&PublisherType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&TicketType);
    if (PyModule_AddObject(module, "Ticket", (PyObject *)&TicketType) < 0) {
        Py_DECREF(&TicketType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&FanoutPublisherType);
    if (PyModule_AddObject(module, "FanoutPublisher", (PyObject *)&FanoutPublisherType) < 0) {
        Py_DECREF(&FanoutPublisherType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
