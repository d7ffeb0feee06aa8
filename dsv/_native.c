/* dsv._native: the loops that run once per file of a dataset, in C.
 *
 * Optional: dsv works the same without it (setup.py builds it when a compiler is there;
 * dsv/native.py falls back to Python). Each function does exactly what its Python twin
 * in dsv/native.py does, and tests/test_native.py holds them to it. Every list argument
 * is copied into a tuple on entry, so nothing a caller (or the code an argument runs)
 * does to its lists meanwhile can reach memory this module reads.
 *
 * stat_names(dir_fd, names, prefix, file_kind, link_kind) -> (files, links, dirs, others)
 *     lstat each of `names` (str) relative to the open directory `dir_fd`, never following
 *     a link. files: [(prefix + name, (size, mtime_ns, ino, mode & 0o7777, kind))] of the
 *     regular files (kind = file_kind) and symlinks (kind = link_kind), in the order of
 *     `names`; links: [prefix + name] of the symlinks; dirs: [name] of the directories;
 *     others: [name] of everything else. A name gone since it was listed is left out; any
 *     other failure raises OSError. The syscalls run without the GIL, on two threads for
 *     a large directory.
 *
 * cut_marks(run, modulus) -> [int]
 *     For each (rel, stat) of `run` whose CRC-32 of rel (UTF-8, surrogateescape) is a
 *     multiple of `modulus`: its index + 1 (where worktree._cuts may cut a long run).
 *
 * run_payload(run, after) -> bytes | None
 *     What a run's scan digest hashes after its header: "\0".join([after, *rels])
 *     (UTF-8, surrogateescape), "\0", the kinds (ASCII), then each (size, mtime_ns, ino,
 *     mode) packed "<qqQq"; None when a stat value is no int or does not fit its field.
 *
 * write_new_files(dir_fd, names, datas, modes) -> [stat | errno]
 *     Create each of `names` (plain names) in the open directory `dir_fd` with
 *     O_CREAT | O_EXCL | O_NOFOLLOW (never through anything already there) and its mode,
 *     and write its bytes (a bytes-like object) whole. For each, in order: its
 *     (size, mtime_ns, ino, mode & 0o7777) once written, or the errno that stopped it
 *     (EEXIST: something was there, left as it was; a failed write removes the file it
 *     made). Names with a "/" or that are "", "." or "..": EINVAL. The first failure
 *     other than EEXIST ends the batch: the names after it are ECANCELED, not made. No
 *     GIL held while the files are made.
 *
 * pread_many(fds, offsets, lengths) -> [bytes]
 *     pread(fds[i], lengths[i], offsets[i]) for each i, without the GIL: the packed
 *     objects a checkout places, read in one go (one wait for the GIL a batch instead of
 *     one an object). A short read (the file ends early) gives fewer bytes, as
 *     os.pread does; the first failure raises OSError.
 *
 * read_files(root_fd, rels, sizes) -> [bytes]
 *     Each file's whole content. `rels` are paths under the open directory `root_fd`
 *     ("a/b/c", no empty, "." or ".." part: EINVAL); every part is opened relative to the
 *     one before with O_NOFOLLOW, so no link is followed anywhere in a path (ELOOP or
 *     ENOTDIR), and a run of files in one directory opens that directory once. Each file
 *     must be a regular file (else EINVAL: never a FIFO or device put in its place) and
 *     is read with one read() of size + 1 bytes, to its end if that found it grown since
 *     its size was taken. The first failure raises OSError. The syscalls run without the
 *     GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef __APPLE__
#define MTIME(st) ((st).st_mtimespec)
#else
#define MTIME(st) ((st).st_mtim)
#endif

/* ---- arguments -------------------------------------------------------------------- */

/* A list argument as a tuple of its items now (a new reference), or NULL. */
static PyObject *frozen(PyObject *list) { return PyList_AsTuple(list); }

/* Names, encoded as os.stat encodes them (the filesystem encoding, surrogateescape). */
typedef struct {
    Py_ssize_t n;
    PyObject **encoded; /* owned bytes objects */
} Names;

static void names_free(Names *names) {
    if (names->encoded) {
        for (Py_ssize_t i = 0; i < names->n; i++)
            Py_XDECREF(names->encoded[i]);
        PyMem_Free(names->encoded);
    }
    names->encoded = NULL;
    names->n = 0;
}

/* Encode the str items of `tuple`; -1 with an error set (ValueError for a NUL). */
static int names_encode(PyObject *tuple, Names *names) {
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    names->n = 0;
    names->encoded = PyMem_Calloc(n ? (size_t)n : 1, sizeof(PyObject *));
    if (!names->encoded) {
        PyErr_NoMemory();
        return -1;
    }
    names->n = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(tuple, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "names must be str");
            return -1;
        }
        PyObject *raw = PyUnicode_EncodeFSDefault(name);
        if (!raw)
            return -1;
        names->encoded[i] = raw;
        if ((Py_ssize_t)strlen(PyBytes_AS_STRING(raw)) != PyBytes_GET_SIZE(raw)) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            return -1;
        }
    }
    return 0;
}

static const char *name_at(Names *names, Py_ssize_t i) {
    return PyBytes_AS_STRING(names->encoded[i]);
}

/* ---- results ---------------------------------------------------------------------- */

/* A stat's mtime in ns as an int: exact also where it does not fit 64 bits (as Python's
   st_mtime_ns, which the twin reads). */
static PyObject *mtime_ns(const struct stat *st) {
    long long sec = (long long)MTIME(*st).tv_sec, ns = (long long)MTIME(*st).tv_nsec, total;
    if (!__builtin_mul_overflow(sec, 1000000000LL, &total) &&
        !__builtin_add_overflow(total, ns, &total))
        return PyLong_FromLongLong(total);
    PyObject *s = PyLong_FromLongLong(sec), *billion = PyLong_FromLong(1000000000L);
    PyObject *n = PyLong_FromLongLong(ns), *scaled = NULL, *result = NULL;
    if (s && billion && n && (scaled = PyNumber_Multiply(s, billion)))
        result = PyNumber_Add(scaled, n);
    Py_XDECREF(s);
    Py_XDECREF(billion);
    Py_XDECREF(n);
    Py_XDECREF(scaled);
    return result;
}

/* Take a new tuple of ints and strs, or of such tuples, out of the cycle collector's
   sight: it can be in no cycle, and the collector would untrack it at its first look
   anyway (CPython's _PyTuple_MaybeUntrack). A walk makes two such tuples a file; left
   tracked, the collections they set off cost a 200,000-file commit about a tenth of
   its time. */
static void untracked(PyObject *t) {
    if (t && PyObject_GC_IsTracked(t))
        PyObject_GC_UnTrack(t);
}

/* (size, mtime_ns, ino, mode & 0o7777[, kind]) of `st` (kind NULL: a 4-tuple). */
static PyObject *stat_tuple(const struct stat *st, PyObject *kind) {
    PyObject *t = PyTuple_New(kind ? 5 : 4);
    if (!t)
        return NULL;
    PyTuple_SET_ITEM(t, 0, PyLong_FromLongLong((long long)st->st_size));
    PyTuple_SET_ITEM(t, 1, mtime_ns(st));
    PyTuple_SET_ITEM(t, 2, PyLong_FromUnsignedLongLong((unsigned long long)st->st_ino));
    PyTuple_SET_ITEM(t, 3, PyLong_FromLong((long)(st->st_mode & 07777)));
    if (kind) {
        Py_INCREF(kind);
        PyTuple_SET_ITEM(t, 4, kind);
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        if (!PyTuple_GET_ITEM(t, i)) {
            Py_DECREF(t);
            return NULL;
        }
    }
    untracked(t);
    return t;
}

/* ---- syscalls, retried when a signal interrupts them ------------------------------- */

static int open_at(int dir_fd, const char *name, int flags, mode_t mode) {
    int fd;
    do
        fd = openat(dir_fd, name, flags, mode);
    while (fd < 0 && errno == EINTR);
    return fd;
}

static int lstat_at(int dir_fd, const char *name, struct stat *st) {
    int rc;
    do
        rc = fstatat(dir_fd, name, st, AT_SYMLINK_NOFOLLOW);
    while (rc != 0 && errno == EINTR);
    return rc;
}

static int fstat_fd(int fd, struct stat *st) {
    int rc;
    do
        rc = fstat(fd, st);
    while (rc != 0 && errno == EINTR);
    return rc;
}

/* ---- stat_names ------------------------------------------------------------------- */

typedef struct {
    int err; /* 0, or the errno of its lstat */
    struct stat st;
} Stat;

typedef struct {
    int dir_fd;
    Names *names;
    Stat *stats;
    Py_ssize_t start, stop;
} StatJob;

static void *stat_range(void *arg) {
    StatJob *job = arg;
    for (Py_ssize_t i = job->start; i < job->stop; i++) {
        if (lstat_at(job->dir_fd, name_at(job->names, i), &job->stats[i].st) != 0)
            job->stats[i].err = errno;
    }
    return NULL;
}

/* A directory this large has its lstats split between two threads: the syscall (a
   lookup in the directory) is the whole cost, and it runs on both cores. */
#define SPLIT_STATS 4096

static PyObject *stat_names(PyObject *Py_UNUSED(self), PyObject *args) {
    int dir_fd;
    PyObject *list, *prefix, *file_kind, *link_kind;
    if (!PyArg_ParseTuple(args, "iO!UOO:stat_names", &dir_fd, &PyList_Type, &list,
                          &prefix, &file_kind, &link_kind))
        return NULL;
    PyObject *tuple = frozen(list);
    if (!tuple)
        return NULL;
    Names names = {0, NULL};
    Stat *stats = NULL;
    PyObject *files = NULL, *links = NULL, *dirs = NULL, *others = NULL, *result = NULL;
    if (names_encode(tuple, &names) < 0)
        goto done;
    stats = PyMem_Calloc(names.n ? (size_t)names.n : 1, sizeof(Stat));
    if (!stats) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    StatJob first = {dir_fd, &names, stats, 0, names.n}, second = first;
    pthread_t helper;
    int split = names.n >= SPLIT_STATS && sysconf(_SC_NPROCESSORS_ONLN) > 1;
    if (split) {
        first.stop = second.start = names.n / 2;
        split = pthread_create(&helper, NULL, stat_range, &second) == 0;
        if (!split)
            first.stop = names.n; /* no thread to be had: all of it here */
    }
    stat_range(&first);
    if (split)
        pthread_join(helper, NULL);
    Py_END_ALLOW_THREADS

    files = PyList_New(0), links = PyList_New(0), dirs = PyList_New(0);
    others = PyList_New(0);
    if (!files || !links || !dirs || !others)
        goto done;
    for (Py_ssize_t i = 0; i < names.n; i++) {
        PyObject *name = PyTuple_GET_ITEM(tuple, i);
        Stat *s = &stats[i];
        if (s->err == ENOENT)
            continue; /* removed since it was listed */
        if (s->err) {
            errno = s->err;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
            goto done;
        }
        mode_t kind = s->st.st_mode & S_IFMT;
        if (kind != S_IFREG && kind != S_IFLNK) {
            if (PyList_Append(kind == S_IFDIR ? dirs : others, name) < 0)
                goto done;
            continue;
        }
        PyObject *rel = PyUnicode_Concat(prefix, name);
        PyObject *fs = rel ? stat_tuple(&s->st, kind == S_IFREG ? file_kind : link_kind)
                           : NULL;
        PyObject *entry = fs ? PyTuple_Pack(2, rel, fs) : NULL;
        untracked(entry);
        int bad = !entry || PyList_Append(files, entry) < 0 ||
                  (kind == S_IFLNK && PyList_Append(links, rel) < 0);
        Py_XDECREF(entry);
        Py_XDECREF(fs);
        Py_XDECREF(rel);
        if (bad)
            goto done;
    }
    result = PyTuple_Pack(4, files, links, dirs, others);
done:
    Py_XDECREF(files);
    Py_XDECREF(links);
    Py_XDECREF(dirs);
    Py_XDECREF(others);
    PyMem_Free(stats);
    names_free(&names);
    Py_DECREF(tuple);
    return result;
}

/* ---- cut_marks and run_payload ---------------------------------------------------- */

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_of(const char *data, Py_ssize_t length) {
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < length; i++)
        c = crc_table[(c ^ (unsigned char)data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* A path's bytes as dsv hashes it: UTF-8, surrogateescape. An ASCII str lends its own
   bytes; any other is encoded into a new bytes object, returned in *owner (no UTF-8 copy
   is cached in the str, which a commit keeps for every path). */
static const char *path_bytes(PyObject *rel, Py_ssize_t *length, PyObject **owner) {
    *owner = NULL;
    if (!PyUnicode_Check(rel)) {
        PyErr_SetString(PyExc_TypeError, "a run's paths must be str");
        return NULL;
    }
    if (PyUnicode_IS_ASCII(rel)) {
        *length = PyUnicode_GET_LENGTH(rel);
        return (const char *)PyUnicode_DATA(rel);
    }
    *owner = PyUnicode_AsEncodedString(rel, "utf-8", "surrogateescape");
    if (!*owner)
        return NULL;
    *length = PyBytes_GET_SIZE(*owner);
    return PyBytes_AS_STRING(*owner);
}

/* run[i] as (rel, stat) with a stat tuple of 5; NULL (error set) otherwise. */
static PyObject *run_item(PyObject *run, Py_ssize_t i, PyObject **stat) {
    PyObject *item = PyTuple_GET_ITEM(run, i);
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
        !PyTuple_Check(PyTuple_GET_ITEM(item, 1)) ||
        PyTuple_GET_SIZE(PyTuple_GET_ITEM(item, 1)) != 5) {
        PyErr_SetString(PyExc_TypeError, "a run holds (path, (size, mtime, ino, mode, kind))");
        return NULL;
    }
    *stat = PyTuple_GET_ITEM(item, 1);
    return PyTuple_GET_ITEM(item, 0);
}

static PyObject *cut_marks(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *list;
    Py_ssize_t modulus;
    if (!PyArg_ParseTuple(args, "O!n:cut_marks", &PyList_Type, &list, &modulus))
        return NULL;
    if (modulus <= 0 || (unsigned long long)modulus > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "modulus out of range");
        return NULL;
    }
    PyObject *run = frozen(list);
    if (!run)
        return NULL;
    PyObject *marks = PyList_New(0);
    for (Py_ssize_t i = 0; marks && i < PyTuple_GET_SIZE(run); i++) {
        PyObject *stat, *owner, *rel = run_item(run, i, &stat);
        Py_ssize_t length;
        const char *data = rel ? path_bytes(rel, &length, &owner) : NULL;
        if (!data) {
            Py_CLEAR(marks);
            break;
        }
        uint32_t crc = crc32_of(data, length);
        Py_XDECREF(owner);
        if (crc % (uint32_t)modulus == 0) {
            PyObject *mark = PyLong_FromSsize_t(i + 1);
            if (!mark || PyList_Append(marks, mark) < 0)
                Py_CLEAR(marks);
            Py_XDECREF(mark);
        }
    }
    Py_DECREF(run);
    return marks;
}

/* Growable bytes. */
typedef struct {
    char *data;
    size_t length, cap;
} Buffer;

static int buffer_put(Buffer *buf, const void *data, size_t length) {
    if (length > SIZE_MAX / 4 - buf->length) {
        PyErr_NoMemory();
        return -1;
    }
    if (buf->length + length > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 4096;
        while (cap < buf->length + length)
            cap *= 2;
        char *more = PyMem_Realloc(buf->data, cap);
        if (!more) {
            PyErr_NoMemory();
            return -1;
        }
        buf->data = more;
        buf->cap = cap;
    }
    memcpy(buf->data + buf->length, data, length);
    buf->length += length;
    return 0;
}

static void put_le64(unsigned char *out, uint64_t value) {
    for (int k = 0; k < 8; k++)
        out[k] = (unsigned char)(value >> (8 * k));
}

/* The four stat values of every item packed "<qqQq" into `stats`: 1 when all fit, 0
   when one is no int or does not fit (struct.error in the twin), -1 on an error. */
static int pack_stats(PyObject *run, Buffer *stats) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(run); i++) {
        PyObject *stat;
        if (!run_item(run, i, &stat))
            return -1;
        unsigned char packed[32];
        for (int f = 0; f < 4; f++) {
            PyObject *value = PyTuple_GET_ITEM(stat, f);
            uint64_t word;
            if (!PyLong_Check(value))
                return 0;
            if (f == 2) { /* the inode: unsigned (a negative one is OverflowError too) */
                word = PyLong_AsUnsignedLongLong(value);
                if (word == (uint64_t)-1 && PyErr_Occurred()) {
                    if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                        return -1;
                    PyErr_Clear();
                    return 0;
                }
            } else {
                int overflow = 0;
                long long signed_value = PyLong_AsLongLongAndOverflow(value, &overflow);
                if (signed_value == -1 && PyErr_Occurred())
                    return -1;
                if (overflow)
                    return 0;
                word = (uint64_t)signed_value;
            }
            put_le64(packed + 8 * f, word);
        }
        if (buffer_put(stats, packed, sizeof packed) < 0)
            return -1;
    }
    return 1;
}

static PyObject *run_payload(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *list, *after;
    if (!PyArg_ParseTuple(args, "O!U:run_payload", &PyList_Type, &list, &after))
        return NULL;
    PyObject *run = frozen(list);
    if (!run)
        return NULL;
    Buffer names = {NULL, 0, 0}, kinds = {NULL, 0, 0}, stats = {NULL, 0, 0};
    PyObject *result = NULL, *owner = NULL;
    Py_ssize_t length;
    int fits = pack_stats(run, &stats); /* first, as the twin packs them first */
    if (fits <= 0) {
        if (fits == 0) {
            Py_INCREF(Py_None);
            result = Py_None;
        }
        goto done;
    }
    const char *data = path_bytes(after, &length, &owner);
    if (!data || buffer_put(&names, data, (size_t)length) < 0)
        goto done;
    Py_CLEAR(owner);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(run); i++) {
        PyObject *stat, *rel = run_item(run, i, &stat);
        if (!rel || buffer_put(&names, "\0", 1) < 0)
            goto done;
        if (!(data = path_bytes(rel, &length, &owner)) ||
            buffer_put(&names, data, (size_t)length) < 0)
            goto done;
        Py_CLEAR(owner);
        PyObject *kind = PyTuple_GET_ITEM(stat, 4);
        if (!PyUnicode_Check(kind) || !PyUnicode_IS_ASCII(kind)) {
            PyErr_SetString(PyUnicode_Check(kind) ? PyExc_ValueError : PyExc_TypeError,
                            "a kind must be ASCII str");
            goto done;
        }
        if (buffer_put(&kinds, PyUnicode_DATA(kind), (size_t)PyUnicode_GET_LENGTH(kind)) < 0)
            goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(names.length + 1 + kinds.length
                                                          + stats.length));
    if (result) {
        char *out = PyBytes_AS_STRING(result);
        if (names.length)
            memcpy(out, names.data, names.length);
        out[names.length] = '\0';
        if (kinds.length)
            memcpy(out + names.length + 1, kinds.data, kinds.length);
        if (stats.length)
            memcpy(out + names.length + 1 + kinds.length, stats.data, stats.length);
    }
done:
    Py_XDECREF(owner);
    PyMem_Free(names.data);
    PyMem_Free(kinds.data);
    PyMem_Free(stats.data);
    Py_DECREF(run);
    return result;
}

/* ---- write_new_files -------------------------------------------------------------- */

typedef struct {
    int err;
    struct stat st;
} Written;

/* Create `name` in `dir_fd` holding `length` bytes of `data`; no GIL held. */
static void write_one(int dir_fd, const char *name, const char *data, size_t length,
                      mode_t mode, Written *out) {
    if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        out->err = EINVAL;
        return;
    }
    int fd = open_at(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     mode);
    if (fd < 0) {
        out->err = errno;
        return;
    }
    size_t done = 0;
    while (done < length) {
        ssize_t put = write(fd, data + done, length - done);
        if (put < 0) {
            if (errno == EINTR)
                continue;
            out->err = errno;
            break;
        }
        done += (size_t)put;
    }
    if (!out->err && fstat_fd(fd, &out->st) != 0)
        out->err = errno;
    if (close(fd) != 0 && errno != EINTR && !out->err) /* (Linux: closed even then) */
        out->err = errno;
    if (out->err)
        unlinkat(dir_fd, name, 0); /* (made just now by O_EXCL: ours) */
}

static PyObject *write_new_files(PyObject *Py_UNUSED(self), PyObject *args) {
    int dir_fd;
    PyObject *name_list, *data_list, *mode_list;
    if (!PyArg_ParseTuple(args, "iO!O!O!:write_new_files", &dir_fd, &PyList_Type,
                          &name_list, &PyList_Type, &data_list, &PyList_Type, &mode_list))
        return NULL;
    PyObject *names_t = frozen(name_list), *datas = frozen(data_list);
    PyObject *modes = frozen(mode_list), *result = NULL;
    Names names = {0, NULL};
    Py_buffer *views = NULL;
    mode_t *mode_of = NULL;
    Written *written = NULL;
    Py_ssize_t held = 0, n = 0;
    if (!names_t || !datas || !modes)
        goto done;
    n = PyTuple_GET_SIZE(names_t);
    if (PyTuple_GET_SIZE(datas) != n || PyTuple_GET_SIZE(modes) != n) {
        PyErr_SetString(PyExc_ValueError, "names, datas and modes differ in length");
        goto done;
    }
    views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    mode_of = PyMem_Calloc(n ? (size_t)n : 1, sizeof(mode_t));
    written = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Written));
    if (!views || !mode_of || !written) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *mode = PyTuple_GET_ITEM(modes, i);
        long value = PyLong_Check(mode) ? PyLong_AsLong(mode) : -1;
        if (value == -1 && PyErr_Occurred())
            goto done;
        if (value < 0 || value > 07777) {
            PyErr_SetString(PyExc_ValueError, "a mode out of range");
            goto done;
        }
        mode_of[i] = (mode_t)value;
    }
    if (names_encode(names_t, &names) < 0)
        goto done;
    for (; held < n; held++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(datas, held), &views[held], PyBUF_SIMPLE) < 0)
            goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    int stopped = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (stopped) {
            written[i].err = ECANCELED;
            continue;
        }
        write_one(dir_fd, name_at(&names, i), views[i].buf, (size_t)views[i].len, mode_of[i],
                  &written[i]);
        stopped = written[i].err && written[i].err != EEXIST;
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        Written *w = &written[i];
        PyObject *item = w->err ? PyLong_FromLong(w->err) : stat_tuple(&w->st, NULL);
        if (!item)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, item);
    }
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(mode_of);
    PyMem_Free(written);
    names_free(&names);
    Py_XDECREF(names_t);
    Py_XDECREF(datas);
    Py_XDECREF(modes);
    return result;
}

/* ---- read_files ------------------------------------------------------------------- */

typedef struct {
    int err;      /* 0, or the errno of its open or read */
    char *data;   /* malloc'ed */
    size_t length;
} Read;

#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
#define FILE_FLAGS (O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
#define MAX_READ (1LL << 30)

/* The directory a run of files is read from: `path` (its first `length` bytes, "" for
   the root itself) open as `fd`. */
typedef struct {
    int root_fd, fd;
    char *path;
    size_t length;
} Here;

/* Make `here` the directory `rel[0:length]`, opening each of its parts relative to the
   one before, never following a link. 0, or an errno. No GIL held. */
static int here_enter(Here *here, const char *rel, size_t length) {
    if (here->path && here->length == length && memcmp(here->path, rel, length) == 0)
        return 0;
    if (here->fd != here->root_fd)
        close(here->fd);
    free(here->path);
    here->path = NULL;
    here->fd = here->root_fd;
    char *path = malloc(length + 1);
    if (!path)
        return ENOMEM;
    memcpy(path, rel, length);
    path[length] = '\0';
    int fd = here->root_fd;
    for (char *part = path; length && part;) {
        char *slash = strchr(part, '/');
        if (slash)
            *slash = '\0';
        int next = open_at(fd, part, DIR_FLAGS, 0);
        int err = next < 0 ? errno : 0;
        if (fd != here->root_fd)
            close(fd);
        if (err) {
            free(path);
            return err;
        }
        fd = next;
        if (slash)
            *slash = '/';
        part = slash ? slash + 1 : NULL;
    }
    here->fd = fd;
    here->path = path;
    here->length = length;
    return 0;
}

/* 0 when `rel` is "a/b/c" with no empty, "." or ".." part. */
static int check_rel(const char *rel) {
    const char *part = rel;
    for (;;) {
        const char *end = strchr(part, '/');
        size_t n = end ? (size_t)(end - part) : strlen(part);
        if (n == 0 || (n == 1 && part[0] == '.') || (n == 2 && part[0] == '.' && part[1] == '.'))
            return EINVAL;
        if (!end)
            return 0;
        part = end + 1;
    }
}

/* read() retried on EINTR: bytes read, or -1 with errno. */
static ssize_t read_some(int fd, char *into, size_t length) {
    ssize_t got;
    do
        got = read(fd, into, length);
    while (got < 0 && errno == EINTR);
    return got;
}

/* The whole file `rel` under `here`'s root, expecting `size` bytes; no GIL held. */
static void read_one(Here *here, const char *rel, size_t size, Read *out) {
    if ((out->err = check_rel(rel)))
        return;
    const char *slash = strrchr(rel, '/');
    size_t dir_length = slash ? (size_t)(slash - rel) : 0;
    if ((out->err = here_enter(here, rel, dir_length)))
        return;
    int fd = open_at(here->fd, slash ? slash + 1 : rel, FILE_FLAGS, 0);
    if (fd < 0) {
        out->err = errno;
        return;
    }
    struct stat st;
    if (fstat_fd(fd, &st) != 0)
        out->err = errno;
    else if (!S_ISREG(st.st_mode))
        out->err = EINVAL; /* a FIFO or device put in its place */
    else if (fcntl(fd, F_SETFL, O_RDONLY) != 0) /* (no O_NONBLOCK for a file's reads) */
        out->err = errno;
    size_t cap = size + 1, length = 0;
    char *data = out->err ? NULL : malloc(cap);
    if (!out->err && !data)
        out->err = ENOMEM;
    ssize_t got = out->err ? 0 : read_some(fd, data, cap);
    if (got < 0)
        out->err = errno;
    else
        length = (size_t)got;
    while (!out->err && length == cap) { /* it grew since its size was taken: to its end */
        size_t bigger = cap < ((size_t)1 << 20) ? cap + ((size_t)1 << 20) : cap * 2;
        char *more = bigger > cap ? realloc(data, bigger) : NULL;
        if (!more) {
            out->err = ENOMEM;
            break;
        }
        data = more;
        cap = bigger;
        while ((got = read_some(fd, data + length, cap - length)) > 0) {
            length += (size_t)got;
            if (length == cap)
                break;
        }
        if (got < 0)
            out->err = errno;
        else if (got == 0)
            break;
    }
    close(fd);
    if (out->err) {
        free(data);
        return;
    }
    out->data = data;
    out->length = length;
}

static PyObject *read_files(PyObject *Py_UNUSED(self), PyObject *args) {
    int dir_fd;
    PyObject *rel_list, *size_list;
    if (!PyArg_ParseTuple(args, "iO!O!:read_files", &dir_fd, &PyList_Type, &rel_list,
                          &PyList_Type, &size_list))
        return NULL;
    PyObject *rels = frozen(rel_list), *sizes = frozen(size_list), *result = NULL;
    Names names = {0, NULL};
    size_t *want = NULL;
    Read *reads = NULL;
    Py_ssize_t n = 0;
    if (!rels || !sizes)
        goto done;
    n = PyTuple_GET_SIZE(rels);
    if (PyTuple_GET_SIZE(sizes) != n) {
        PyErr_SetString(PyExc_ValueError, "names and sizes differ in length");
        goto done;
    }
    want = PyMem_Calloc(n ? (size_t)n : 1, sizeof(size_t));
    reads = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Read));
    if (!want || !reads) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *size = PyTuple_GET_ITEM(sizes, i);
        long long value = PyLong_Check(size) ? PyLong_AsLongLong(size) : -1;
        if (value == -1 && PyErr_Occurred())
            goto done;
        if (value < 0 || value > MAX_READ) {
            PyErr_SetString(PyExc_ValueError, "a size out of range");
            goto done;
        }
        want[i] = (size_t)value;
    }
    if (names_encode(rels, &names) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    Here here = {dir_fd, dir_fd, NULL, 0};
    for (Py_ssize_t i = 0; i < n; i++) {
        read_one(&here, name_at(&names, i), want[i], &reads[i]);
        if (reads[i].err)
            break; /* the first failure is the one raised */
    }
    if (here.fd != here.root_fd)
        close(here.fd);
    free(here.path);
    Py_END_ALLOW_THREADS

    result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        if (reads[i].err) {
            errno = reads[i].err;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyTuple_GET_ITEM(rels, i));
            Py_CLEAR(result);
            break;
        }
        PyObject *data = PyBytes_FromStringAndSize(reads[i].data, (Py_ssize_t)reads[i].length);
        if (!data) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, data);
    }
done:
    if (reads) {
        for (Py_ssize_t i = 0; i < n; i++)
            free(reads[i].data);
    }
    PyMem_Free(reads);
    PyMem_Free(want);
    names_free(&names);
    Py_XDECREF(rels);
    Py_XDECREF(sizes);
    return result;
}

/* ---- pread_many ------------------------------------------------------------------- */

static PyObject *pread_many(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *fd_list, *offset_list, *length_list;
    if (!PyArg_ParseTuple(args, "O!O!O!:pread_many", &PyList_Type, &fd_list, &PyList_Type,
                          &offset_list, &PyList_Type, &length_list))
        return NULL;
    PyObject *fds_t = frozen(fd_list), *offsets_t = frozen(offset_list);
    PyObject *lengths_t = frozen(length_list), *result = NULL;
    Py_ssize_t n = 0;
    int *fds = NULL, failed_errno = 0;
    long long *offsets = NULL;
    Py_ssize_t *lengths = NULL, *got = NULL, failed = -1;
    PyObject **datas = NULL;
    if (!fds_t || !offsets_t || !lengths_t)
        goto done;
    n = PyTuple_GET_SIZE(fds_t);
    if (PyTuple_GET_SIZE(offsets_t) != n || PyTuple_GET_SIZE(lengths_t) != n) {
        PyErr_SetString(PyExc_ValueError, "fds, offsets and lengths differ in length");
        goto done;
    }
    size_t slots = n ? (size_t)n : 1;
    fds = PyMem_Calloc(slots, sizeof(int));
    offsets = PyMem_Calloc(slots, sizeof(long long));
    lengths = PyMem_Calloc(slots, sizeof(Py_ssize_t));
    got = PyMem_Calloc(slots, sizeof(Py_ssize_t));
    datas = PyMem_Calloc(slots, sizeof(PyObject *));
    if (!fds || !offsets || !lengths || !got || !datas) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *fd = PyTuple_GET_ITEM(fds_t, i), *off = PyTuple_GET_ITEM(offsets_t, i);
        PyObject *len = PyTuple_GET_ITEM(lengths_t, i);
        if (!PyLong_Check(fd) || !PyLong_Check(off) || !PyLong_Check(len)) {
            PyErr_SetString(PyExc_TypeError, "fds, offsets and lengths must be int");
            goto done;
        }
        long fd_value = PyLong_AsLong(fd);
        offsets[i] = PyLong_AsLongLong(off);
        lengths[i] = PyLong_AsSsize_t(len);
        if (PyErr_Occurred())
            goto done;
        if (fd_value < 0 || fd_value > INT32_MAX || offsets[i] < 0 || lengths[i] < 0 ||
            lengths[i] > MAX_READ) {
            PyErr_SetString(PyExc_ValueError, "an fd, offset or length out of range");
            goto done;
        }
        fds[i] = (int)fd_value;
        /* (the bytes objects are made first, with the GIL: the reads fill them) */
        if (!(datas[i] = PyBytes_FromStringAndSize(NULL, lengths[i])))
            goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        char *into = PyBytes_AS_STRING(datas[i]);
        Py_ssize_t done_bytes = 0;
        while (done_bytes < lengths[i]) {
            ssize_t r = pread(fds[i], into + done_bytes, (size_t)(lengths[i] - done_bytes),
                              (off_t)(offsets[i] + done_bytes));
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                failed = i;
                failed_errno = errno;
                break;
            }
            if (r == 0)
                break; /* the file ends early: fewer bytes, as os.pread gives */
            done_bytes += r;
        }
        got[i] = done_bytes;
        if (failed >= 0)
            break;
    }
    Py_END_ALLOW_THREADS
    if (failed >= 0) {
        errno = failed_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        if (got[i] < lengths[i] && _PyBytes_Resize(&datas[i], got[i]) < 0) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, datas[i]);
        datas[i] = NULL; /* (the list holds it now) */
    }
done:
    if (datas) {
        for (Py_ssize_t i = 0; i < n; i++)
            Py_XDECREF(datas[i]);
    }
    PyMem_Free(datas);
    PyMem_Free(got);
    PyMem_Free(lengths);
    PyMem_Free(offsets);
    PyMem_Free(fds);
    Py_XDECREF(fds_t);
    Py_XDECREF(offsets_t);
    Py_XDECREF(lengths_t);
    return result;
}

/* ---- copying into a writer's buffer ----------------------------------------------- */

/* Copies this big or bigger are made without the GIL: a download copies each range it
   brings into its pack's buffer, and the threads that receive the next ones need the
   GIL meanwhile. A smaller copy keeps it: taking the GIL back after a copy of ~100 us
   cost more than the copy (a clone of 8 x 128 MiB copies ~6,000 chunks of ~170 KiB into
   its files; 2.24-2.53 s with 64 KiB here, 2.14-2.42 s with 1 MiB, alternating). */
#define COPY_UNLOCKED (1 << 20)

static PyObject *copy_into(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer dst, src;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "w*ny*:copy_into", &dst, &offset, &src))
        return NULL;
    PyObject *result = NULL;
    if (offset < 0 || offset > dst.len || src.len > dst.len - offset) {
        PyErr_SetString(PyExc_ValueError, "the bytes do not fit in the buffer there");
    } else {
        char *to = (char *)dst.buf + offset;
        if (src.len >= COPY_UNLOCKED) {
            Py_BEGIN_ALLOW_THREADS
            memmove(to, src.buf, (size_t)src.len);
            Py_END_ALLOW_THREADS
        } else {
            memmove(to, src.buf, (size_t)src.len);
        }
        result = PyLong_FromSsize_t(src.len);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

/* ---- content-defined chunking ----------------------------------------------------- */

/* FastCDC with normalized chunking, cutting where pyfastcdc cuts (dsv/chunking.py passes
   its gear table and masks; tests/test_chunks.py compares the cuts on many inputs). The
   gear hash at position p is the sum of gear[b[p-k]] << k over the bytes since the scan
   began (at most 64 count: older ones are shifted out), so a scan may start anywhere
   after 63 bytes of warm-up and see the same hashes. That is used for speed: LANES
   stretches of the scan run side by side, their hash chains independent (one chain is
   bound by its own latency, a byte a cycle at best; pyfastcdc took 2.7 cycles a byte
   here). The first stretch that matches gives the cut, as one pass would. */

typedef struct {
    const uint64_t *gear;
    size_t min, avg, max;
    uint64_t mask_s, mask_l;
} Cdc;

#define LANES 4
#define LANE_BYTES 4096
#define NO_HIT ((size_t)-1)

/* The hash at position at - 1 of a scan that began at `start` (0 before it). */
static uint64_t warm_up(const uint8_t *b, size_t start, size_t at, const uint64_t *g) {
    uint64_t h = 0;
    for (size_t q = at - start > 63 ? at - 63 : start; q < at; q++)
        h = (h << 1) + g[b[q]];
    return h;
}

/* The first p in [from, to) whose hash (of a scan that began at `start`) has no bit of
   `mask` set, or `to`. */
static size_t first_match(const uint8_t *b, size_t start, size_t from, size_t to,
                          uint64_t mask, const uint64_t *g) {
    size_t p = from;
    while (to - p >= (size_t)LANES * LANE_BYTES) {
        const uint8_t *s0 = b + p, *s1 = s0 + LANE_BYTES, *s2 = s1 + LANE_BYTES,
                      *s3 = s2 + LANE_BYTES;
        uint64_t h0 = warm_up(b, start, p, g),
                 h1 = warm_up(b, start, p + LANE_BYTES, g),
                 h2 = warm_up(b, start, p + 2 * LANE_BYTES, g),
                 h3 = warm_up(b, start, p + 3 * LANE_BYTES, g);
        size_t hit1 = NO_HIT, hit2 = NO_HIT, hit3 = NO_HIT;
        for (size_t i = 0; i < LANE_BYTES; i++) {
            h0 = (h0 << 1) + g[s0[i]];
            h1 = (h1 << 1) + g[s1[i]];
            h2 = (h2 << 1) + g[s2[i]];
            h3 = (h3 << 1) + g[s3[i]];
            if (__builtin_expect(!(h0 & mask) | !(h1 & mask) | !(h2 & mask) | !(h3 & mask),
                                 0)) {
                if (!(h0 & mask))
                    return p + i;   /* (the first stretch: nothing before it matched) */
                if (!(h1 & mask) && hit1 == NO_HIT) hit1 = i;
                if (!(h2 & mask) && hit2 == NO_HIT) hit2 = i;
                if (!(h3 & mask) && hit3 == NO_HIT) hit3 = i;
            }
        }
        if (hit1 != NO_HIT) return p + LANE_BYTES + hit1;
        if (hit2 != NO_HIT) return p + 2 * LANE_BYTES + hit2;
        if (hit3 != NO_HIT) return p + 3 * LANE_BYTES + hit3;
        p += (size_t)LANES * LANE_BYTES;
    }
    uint64_t h = warm_up(b, start, p, g);
    for (; p < to; p++) {
        h = (h << 1) + g[b[p]];
        if (!(h & mask))
            return p;
    }
    return to;
}

/* The length of the chunk that begins `b` (`len` bytes left). */
static size_t cut_one(const uint8_t *b, size_t len, const Cdc *c) {
    size_t remaining = len;
    if (remaining <= c->min)
        return remaining;
    size_t center = c->avg;
    if (remaining > c->max)
        remaining = c->max;
    else if (remaining < center)
        center = remaining;
    size_t start = c->min / 2 * 2, mid = center / 2 * 2, end = remaining / 2 * 2;
    size_t p = first_match(b, start, start, mid, c->mask_s, c->gear);
    if (p < mid)
        return p;
    p = first_match(b, start, mid, end, c->mask_l, c->gear);
    return p < end ? p : remaining;
}

static PyObject *cut_chunks(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data, gear;
    Py_ssize_t min, avg, max;
    unsigned long long mask_s, mask_l;
    if (!PyArg_ParseTuple(args, "y*y*nnnKK:cut_chunks", &data, &gear, &min, &avg, &max,
                          &mask_s, &mask_l))
        return NULL;
    PyObject *result = NULL;
    size_t *lengths = NULL;
    if (gear.len != 256 * (Py_ssize_t)sizeof(uint64_t) || min < 64 || avg < min ||
            max < avg) {
        PyErr_SetString(PyExc_ValueError, "cut_chunks: a gear table of 256 words and "
                        "64 <= min <= avg <= max");
        goto done;
    }
    /* (every chunk but the last is at least min rounded down to even long) */
    size_t room = (size_t)data.len / ((size_t)min / 2 * 2) + 2;
    lengths = PyMem_RawMalloc(room * sizeof(size_t));
    if (lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Cdc c = {(const uint64_t *)gear.buf, (size_t)min, (size_t)avg, (size_t)max,
             (uint64_t)mask_s, (uint64_t)mask_l};
    size_t n = 0, offset = 0, total = (size_t)data.len;
    Py_BEGIN_ALLOW_THREADS
    while (offset < total) {
        size_t length = cut_one((const uint8_t *)data.buf + offset, total - offset, &c);
        lengths[n++] = length;
        offset += length;
    }
    Py_END_ALLOW_THREADS
    result = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; result != NULL && i < n; i++) {
        PyObject *item = PyLong_FromSize_t(lengths[i]);
        if (item == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, (Py_ssize_t)i, item);
    }
done:
    PyMem_RawFree(lengths);
    PyBuffer_Release(&gear);
    PyBuffer_Release(&data);
    return result;
}

/* ---- the module ------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"stat_names", stat_names, METH_VARARGS,
     "lstat names relative to a directory: (files, links, dirs, others)."},
    {"cut_marks", cut_marks, METH_VARARGS,
     "Where a long run may be cut: index + 1 of each path whose CRC-32 divides."},
    {"run_payload", run_payload, METH_VARARGS,
     "The bytes a run's scan digest hashes after its header (None: a value too big)."},
    {"write_new_files", write_new_files, METH_VARARGS,
     "Create files that must not exist yet in a directory: (size, mtime_ns, ino, mode) "
     "or an errno each."},
    {"pread_many", pread_many, METH_VARARGS,
     "pread many (fd, offset, length) ranges at once, without the GIL."},
    {"read_files", read_files, METH_VARARGS,
     "Read whole files under a directory, following no link."},
    {"copy_into", copy_into, METH_VARARGS,
     "Copy bytes into a writable buffer at an offset (large copies without the GIL)."},
    {"cut_chunks", cut_chunks, METH_VARARGS,
     "The lengths of the chunks FastCDC cuts a buffer into, without the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dsv._native",
    "dsv's per-file loops in C (optional: dsv/native.py has their Python twins).", -1,
    methods, NULL, NULL, NULL, NULL,
};

/* What dsv/native.py checks before it uses this module: bump it whenever a function is
   added or changes, so that a build left over from older sources (an editable install
   whose sources moved on) is not used. */
#define ABI 6

PyMODINIT_FUNC PyInit__native(void) {
    crc_init();
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI", ABI) < 0)
        Py_CLEAR(m);
    return m;
}
