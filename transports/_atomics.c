/* Cross-process atomics on a u64 at a raw address (the ZeroBuffer free-space word).
 *
 * The compiled twin of the libatomic-through-ctypes path in transports/_shm.py: the same
 * sequentially consistent read-modify-write operations, without ctypes' per-call argument
 * conversion (about 0.05 us per call instead of 0.3-0.4 us). Internal: callers pass addresses
 * inside a live mapping; a wrong address crashes the process, as with ctypes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int
parse_u64(PyObject *obj, uint64_t *out)
{
    unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint64_t)value;
    return 0;
}

static int
parse_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage,
           uint64_t *out)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments, got %zd", usage, want, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++) {
        if (parse_u64(args[i], &out[i]) < 0) {
            return -1;
        }
    }
    if (out[0] == 0 || out[0] % sizeof(uint64_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "address must be a non-zero multiple of 8");
        return -1;
    }
    return 0;
}

static PyObject *
fetch_add(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[2];
    if (parse_args(args, nargs, 2, "fetch_add(address, value)", a) < 0) {
        return NULL;
    }
    uint64_t old = __atomic_fetch_add((uint64_t *)(uintptr_t)a[0], a[1], __ATOMIC_SEQ_CST);
    return PyLong_FromUnsignedLongLong(old);
}

static PyObject *
fetch_sub(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[2];
    if (parse_args(args, nargs, 2, "fetch_sub(address, value)", a) < 0) {
        return NULL;
    }
    uint64_t old = __atomic_fetch_sub((uint64_t *)(uintptr_t)a[0], a[1], __ATOMIC_SEQ_CST);
    return PyLong_FromUnsignedLongLong(old);
}

static PyObject *
compare_exchange(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[3];
    if (parse_args(args, nargs, 3, "compare_exchange(address, expected, desired)", a) < 0) {
        return NULL;
    }
    uint64_t seen = a[1];
    int swapped = __atomic_compare_exchange_n((uint64_t *)(uintptr_t)a[0], &seen, a[2], 0,
                                              __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return Py_BuildValue("(NK)", PyBool_FromLong(swapped), (unsigned long long)seen);
}

static PyMethodDef methods[] = {
    {"fetch_add", (PyCFunction)(void (*)(void))fetch_add, METH_FASTCALL,
     "fetch_add(address, value) -> old: atomically add to the u64 at address."},
    {"fetch_sub", (PyCFunction)(void (*)(void))fetch_sub, METH_FASTCALL,
     "fetch_sub(address, value) -> old: atomically subtract from the u64 at address."},
    {"compare_exchange", (PyCFunction)(void (*)(void))compare_exchange, METH_FASTCALL,
     "compare_exchange(address, expected, desired) -> (swapped, seen)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "transports._atomics",
    "Sequentially consistent u64 atomics at raw addresses (shared memory).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__atomics(void)
{
    return PyModule_Create(&module_def);
}
