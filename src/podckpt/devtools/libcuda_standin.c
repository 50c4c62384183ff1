/* A stand-in for NVIDIA's libcuda.so.1, built by podckpt.devtools.cuda_standin for the tests
 * (tests/agent/test_gpu*.py) and bench/gpu.py --standin, so that the real agent drives the
 * CUDA checkpoint API around real CRIU without a GPU.
 *
 * This tests podckpt's sequencing, not the feature on a GPU: it has the entry points the
 * agent and the test application call, the driver's process states (running -> locked ->
 * checkpointed -> locked -> running) and its rules, and it keeps real state that only CRIU can
 * carry: "GPU memory" is a file in the GPU directory (outside the process, gone with the
 * container), which cuCheckpointProcessCheckpoint copies into an anonymous mapping of the
 * process (so CRIU dumps it) and removes, and cuCheckpointProcessRestore copies back.
 *
 * The GPU directory ($STANDIN_GPU_DIR, default /dev/nvidia-standin) is the container's GPU:
 *   devices      one line per GPU: "name|uuid as 32 hex digits|memory bytes"
 *   driver       cuDriverGetVersion's value (default 13000)
 *   nvidia0      the "device file" a CUDA process holds open until its checkpoint
 *   mem.PID      the GPU memory of process PID
 *   state.PID    the driver's state of PID (0 running, 1 locked, 2 checkpointed)
 *   req.PID / rsp.PID   a request of the caller and the process's answer (see below)
 *   calls.log    one line per checkpoint-API call: "caller=PID fn pid=PID ... -> CUresult"
 *   fail         failures on request, one per line: "FUNCTION CODE|busy|leak [once]"
 *                CODE: the call returns it without doing anything; busy (Lock): a CUDA call
 *                of the process never finishes, so the lock times out; leak (Checkpoint):
 *                the device file stays open (as managed memory would); once: only the next
 *                call, then the line is removed.
 *
 * As in the real driver, the work of the checkpoint API is done by a thread of the target
 * process (the "restore thread"): the caller writes req.PID, the thread (polling every 2 ms)
 * does the work and answers in rsp.PID. A stopped process therefore cannot be restored, as
 * with the real driver. While a process is locked or checkpointed, its CUDA calls block.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct { unsigned char bytes[16]; } CUuuid;
typedef struct { CUuuid oldUuid, newUuid; } CUcheckpointGpuPair;
typedef struct { unsigned int timeoutMs, reserved0; unsigned long long reserved1[7]; } CUcheckpointLockArgs;
typedef struct { CUcheckpointGpuPair *gpuPairs; unsigned int gpuPairsCount; char reserved[52]; } CUcheckpointRestoreArgs;

enum { OK = 0, INVALID_VALUE = 1, NOT_INITIALIZED = 3, NO_DEVICE = 100, INVALID_DEVICE = 101,
       OPERATING_SYSTEM = 304, ILLEGAL_STATE = 401, TIMEOUT = 909, UNKNOWN = 999 };
enum { RUNNING = 0, LOCKED = 1, CHECKPOINTED = 2 };

#define MAXDEV 8
#define BASE 0x100000000ULL
struct device { char name[256]; unsigned char uuid[16]; size_t memory; };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int initialized, has_ctx, state, locking, in_flight;
static int dev_fd = -1, mem_fd = -1, ordinal;
static size_t mem_used;
static unsigned char *host_copy;
static size_t host_len;
static struct device mine; /* the GPU this process's context lives on */

static const char *gpu_dir(void) {
    const char *d = getenv("STANDIN_GPU_DIR");
    return d && *d ? d : "/dev/nvidia-standin";
}

static void path_of(char *out, size_t n, const char *name, int pid) {
    if (pid > 0) snprintf(out, n, "%s/%s.%d", gpu_dir(), name, pid);
    else snprintf(out, n, "%s/%s", gpu_dir(), name);
}

static char *read_file(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    char *buf = calloc(1, 65536);
    ssize_t got = buf ? read(fd, buf, 65535) : -1;
    close(fd);
    if (got < 0) { free(buf); return NULL; }
    return buf;
}

static void write_file(const char *path, const char *text) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (write(fd, text, strlen(text)) < 0) { /* the reader times out */ }
    close(fd);
    rename(tmp, path);
}

static void log_call(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_call(const char *fmt, ...) {
    char line[1024], path[4096];
    int n = snprintf(line, sizeof line, "caller=%d ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    line[n++] = '\n';
    path_of(path, sizeof path, "calls.log", 0);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) { if (write(fd, line, n) < 0) { /* best effort */ } close(fd); }
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The devices of this container's GPU directory; -1 if there is none. */
static int read_devices(struct device *out) {
    char path[4096];
    path_of(path, sizeof path, "devices", 0);
    char *text = read_file(path);
    if (!text) return -1;
    int count = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && count < MAXDEV; line = strtok_r(NULL, "\n", &save)) {
        char *bar1 = strchr(line, '|'), *bar2 = bar1 ? strchr(bar1 + 1, '|') : NULL;
        if (!bar2 || bar2 - bar1 - 1 != 32) continue;
        struct device *d = &out[count];
        memset(d, 0, sizeof *d);
        snprintf(d->name, sizeof d->name, "%.*s", (int)(bar1 - line), line);
        for (int i = 0; i < 16; i++) d->uuid[i] = hexval(bar1[1 + 2 * i]) << 4 | hexval(bar1[2 + 2 * i]);
        d->memory = strtoull(bar2 + 1, NULL, 10);
        count++;
    }
    free(text);
    return count;
}

/* "FUNCTION CODE|busy|leak [once]" lines of the fail file: what to do for fn, "" if nothing. */
static void failure_for(const char *fn, char *what, size_t n) {
    char path[4096];
    what[0] = 0;
    path_of(path, sizeof path, "fail", 0);
    char *text = read_file(path);
    if (!text) return;
    char *kept = calloc(1, strlen(text) + 2);
    int consumed = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[128] = "", action[64] = "", once[16] = "";
        sscanf(line, "%127s %63s %15s", name, action, once);
        if (!what[0] && strcmp(name, fn) == 0) {
            snprintf(what, n, "%s", action);
            if (strcmp(once, "once") == 0) { consumed = 1; continue; }
        }
        strcat(kept, line);
        strcat(kept, "\n");
    }
    if (consumed) write_file(path, kept);
    free(kept);
    free(text);
}

static int injected_code(const char *what) {
    char *end;
    long code = strtol(what, &end, 10);
    return what[0] && *end == 0 ? (int)code : 0;
}

/* -- the application's side -------------------------------------------------------------- */

static void publish_state(void) {
    char path[4096], text[16];
    path_of(path, sizeof path, "state", getpid());
    snprintf(text, sizeof text, "%d\n", state);
    write_file(path, text);
}

static void enter_call(void) {
    pthread_mutex_lock(&mu);
    while (state != RUNNING || locking) pthread_cond_wait(&cv, &mu);
    in_flight++;
    pthread_mutex_unlock(&mu);
}

static void leave_call(void) {
    pthread_mutex_lock(&mu);
    in_flight--;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static int open_gpu(void) {
    char path[4096];
    path_of(path, sizeof path, "nvidia0", 0);
    dev_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    path_of(path, sizeof path, "mem", getpid());
    mem_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    return dev_fd >= 0 && mem_fd >= 0 ? OK : OPERATING_SYSTEM;
}

static int do_lock(unsigned timeout_ms, int busy) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    unsigned wait_ms = timeout_ms ? timeout_ms : 600000;
    deadline.tv_sec += wait_ms / 1000;
    deadline.tv_nsec += (long)(wait_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000; }
    pthread_mutex_lock(&mu);
    if (state != RUNNING) { pthread_mutex_unlock(&mu); return ILLEGAL_STATE; }
    locking = 1;
    int rc = 0;
    while ((in_flight > 0 || busy) && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&cv, &mu, &deadline);
    locking = 0;
    if (in_flight > 0 || busy) {  /* timed out: left RUNNING, as the driver documents */
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        return TIMEOUT;
    }
    state = LOCKED;
    publish_state();
    pthread_mutex_unlock(&mu);
    return OK;
}

static int do_checkpoint(int leak) {
    char path[4096];
    pthread_mutex_lock(&mu);
    if (state != LOCKED) { pthread_mutex_unlock(&mu); return ILLEGAL_STATE; }
    host_len = mem_used;
    host_copy = mmap(NULL, host_len ? host_len : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (host_copy == MAP_FAILED || pread(mem_fd, host_copy, host_len, 0) != (ssize_t)host_len) {
        pthread_mutex_unlock(&mu);
        return OPERATING_SYSTEM;
    }
    close(mem_fd);
    mem_fd = -1;
    path_of(path, sizeof path, "mem", getpid());
    unlink(path);  /* the GPU's memory is freed: the data now lives only in this process */
    if (!leak) { close(dev_fd); dev_fd = -1; }
    state = CHECKPOINTED;
    publish_state();
    pthread_mutex_unlock(&mu);
    return OK;
}

/* pairs: "old=new,..." as hex uuids. */
static int do_restore(const char *pairs) {
    struct device here[MAXDEV];
    pthread_mutex_lock(&mu);
    if (state != CHECKPOINTED) { pthread_mutex_unlock(&mu); return ILLEGAL_STATE; }
    int count = read_devices(here);
    int rc = OK;
    if (count <= ordinal) rc = NO_DEVICE;
    else if (strcmp(here[ordinal].name, mine.name) != 0) rc = INVALID_DEVICE;  /* other chip */
    else if (memcmp(here[ordinal].uuid, mine.uuid, 16) != 0) {
        /* another GPU of the same model: only with a pair old -> this one */
        char want[80];
        char *p = want;
        for (int i = 0; i < 16; i++) p += sprintf(p, "%02x", mine.uuid[i]);
        *p++ = '=';
        for (int i = 0; i < 16; i++) p += sprintf(p, "%02x", here[ordinal].uuid[i]);
        if (!strstr(pairs, want)) rc = INVALID_DEVICE;
    }
    if (rc == OK) rc = open_gpu();
    if (rc == OK && pwrite(mem_fd, host_copy, host_len, 0) != (ssize_t)host_len) rc = OPERATING_SYSTEM;
    if (rc == OK) {
        munmap(host_copy, host_len ? host_len : 1);
        host_copy = NULL;
        mine = here[ordinal];
        state = LOCKED;
        publish_state();
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

static int do_unlock(void) {
    pthread_mutex_lock(&mu);
    if (state != LOCKED) { pthread_mutex_unlock(&mu); return ILLEGAL_STATE; }
    state = RUNNING;
    publish_state();
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return OK;
}

static void *restore_thread(void *unused) {
    (void)unused;
    char req[4096], rsp[4096], state_path[4096];
    struct timespec tick = {0, 2000000};
    for (;;) {
        int pid = getpid();
        path_of(req, sizeof req, "req", pid);
        path_of(rsp, sizeof rsp, "rsp", pid);
        path_of(state_path, sizeof state_path, "state", pid);
        if (access(state_path, F_OK) != 0) {  /* a new container's GPU directory */
            pthread_mutex_lock(&mu);
            publish_state();
            pthread_mutex_unlock(&mu);
        }
        char *text = read_file(req);
        if (text) {
            unlink(req);
            char op[32] = "", arg1[1200] = "", arg2[64] = "";
            sscanf(text, "%31s %1199s %63s", op, arg1, arg2);
            int rc = INVALID_VALUE;
            if (strcmp(op, "lock") == 0) rc = do_lock((unsigned)strtoul(arg1, NULL, 10), strcmp(arg2, "busy") == 0);
            else if (strcmp(op, "checkpoint") == 0) rc = do_checkpoint(strcmp(arg1, "leak") == 0);
            else if (strcmp(op, "restore") == 0) rc = do_restore(arg1);
            else if (strcmp(op, "unlock") == 0) rc = do_unlock();
            char answer[16];
            snprintf(answer, sizeof answer, "%d\n", rc);
            write_file(rsp, answer);
            free(text);
        }
        nanosleep(&tick, NULL);
    }
    return NULL;
}

CUresult cuInit(unsigned int flags) {
    struct device d[MAXDEV];
    (void)flags;
    int count = read_devices(d);
    if (getpid() == 1 || getenv("STANDIN_LOG_ALL")) log_call("cuInit -> %d", count > 0 ? OK : NO_DEVICE);
    if (count <= 0) return NO_DEVICE;
    initialized = 1;
    return OK;
}

CUresult cuDriverGetVersion(int *version) {
    char path[4096];
    if (!version) return INVALID_VALUE;
    path_of(path, sizeof path, "driver", 0);
    char *text = read_file(path);
    *version = text ? atoi(text) : 13000;
    free(text);
    return OK;
}

CUresult cuDeviceGetCount(int *count) {
    struct device d[MAXDEV];
    if (!initialized) return NOT_INITIALIZED;
    if (!count) return INVALID_VALUE;
    int n = read_devices(d);
    *count = n > 0 ? n : 0;
    return OK;
}

CUresult cuDeviceGet(CUdevice *device, int index) {
    int count;
    if (cuDeviceGetCount(&count) != OK) return NOT_INITIALIZED;
    if (!device || index < 0 || index >= count) return INVALID_DEVICE;
    *device = index;
    return OK;
}

static CUresult device_info(CUdevice dev, struct device *out) {
    struct device d[MAXDEV];
    if (!initialized) return NOT_INITIALIZED;
    int n = read_devices(d);
    if (dev < 0 || dev >= n) return INVALID_DEVICE;
    *out = d[dev];
    return OK;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    struct device d;
    CUresult rc = device_info(dev, &d);
    if (rc == OK && name && len > 0) snprintf(name, len, "%s", d.name);
    return rc;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    struct device d;
    CUresult rc = device_info(dev, &d);
    if (rc == OK && bytes) *bytes = d.memory;
    return rc;
}

CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
    struct device d;
    CUresult rc = device_info(dev, &d);
    if (rc == OK && uuid) memcpy(uuid->bytes, d.uuid, 16);
    return rc;
}

CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) { return cuDeviceGetUuid_v2(uuid, dev); }

CUresult cuGetErrorName(CUresult error, const char **name) {
    static const struct { int code; const char *name; } names[] = {
        {OK, "CUDA_SUCCESS"}, {INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE"},
        {NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED"}, {NO_DEVICE, "CUDA_ERROR_NO_DEVICE"},
        {INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE"}, {OPERATING_SYSTEM, "CUDA_ERROR_OPERATING_SYSTEM"},
        {ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE"}, {TIMEOUT, "CUDA_ERROR_TIMEOUT"},
        {UNKNOWN, "CUDA_ERROR_UNKNOWN"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i].code == error) { *name = names[i].name; return OK; }
    return INVALID_VALUE;
}

CUresult cuCtxCreate_v2(void **ctx, unsigned int flags, CUdevice dev) {
    (void)flags;
    pthread_t thread;
    if (!initialized) return NOT_INITIALIZED;
    CUresult rc = device_info(dev, &mine);
    if (rc != OK || has_ctx) return rc != OK ? rc : OK;
    ordinal = dev;
    if ((rc = open_gpu()) != OK) return rc;
    has_ctx = 1;
    publish_state();
    if (pthread_create(&thread, NULL, restore_thread, NULL) != 0) return OPERATING_SYSTEM;
    pthread_detach(thread);
    if (ctx) *ctx = (void *)&mine;
    return OK;
}

CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t size) {
    if (!has_ctx) return NOT_INITIALIZED;
    enter_call();
    size_t offset = mem_used;
    mem_used += (size + 255) & ~(size_t)255;
    CUresult rc = ftruncate(mem_fd, (off_t)mem_used) == 0 ? OK : OPERATING_SYSTEM;
    if (rc == OK) *ptr = BASE + offset;
    leave_call();
    return rc;
}

CUresult cuMemFree_v2(CUdeviceptr ptr) { (void)ptr; return OK; }

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    if (!has_ctx) return NOT_INITIALIZED;
    enter_call();
    CUresult rc = pwrite(mem_fd, src, n, (off_t)(dst - BASE)) == (ssize_t)n ? OK : OPERATING_SYSTEM;
    leave_call();
    return rc;
}

CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    if (!has_ctx) return NOT_INITIALIZED;
    enter_call();
    CUresult rc = pread(mem_fd, dst, n, (off_t)(src - BASE)) == (ssize_t)n ? OK : OPERATING_SYSTEM;
    leave_call();
    return rc;
}

/* -- the caller's side (the agent) ------------------------------------------------------- */

static int alive(int pid) { return kill(pid, 0) == 0 || errno == EPERM; }

/* Ask process pid's restore thread to do op; wait for its answer. */
static CUresult request(int pid, const char *op, const char *arg1, const char *arg2, unsigned wait_ms) {
    char req[4096], rsp[4096], text[4200];
    path_of(req, sizeof req, "req", pid);
    path_of(rsp, sizeof rsp, "rsp", pid);
    unlink(rsp);
    snprintf(text, sizeof text, "%s %s %s\n", op, arg1, arg2);
    write_file(req, text);
    struct timespec tick = {0, 1000000};
    for (unsigned waited = 0; waited < wait_ms; waited++) {
        char *answer = read_file(rsp);
        if (answer) {
            unlink(rsp);
            int rc = atoi(answer);
            free(answer);
            return rc;
        }
        if (!alive(pid)) break;
        nanosleep(&tick, NULL);
    }
    unlink(req);
    return alive(pid) ? OPERATING_SYSTEM : INVALID_VALUE;
}

CUresult cuCheckpointProcessGetState(int pid, int *out) {
    char path[4096];
    path_of(path, sizeof path, "state", pid);
    char *text = NULL;
    for (int i = 0; i < 200 && !text && alive(pid); i++) {
        text = read_file(path);
        if (!text) usleep(1000);
    }
    CUresult rc = text ? OK : NOT_INITIALIZED;
    if (text && out) *out = atoi(text);
    log_call("cuCheckpointProcessGetState pid=%d -> %d state=%d", pid, rc, text ? atoi(text) : -1);
    free(text);
    return rc;
}

CUresult cuCheckpointProcessLock(int pid, CUcheckpointLockArgs *args) {
    char what[64], timeout[32];
    unsigned ms = args ? args->timeoutMs : 0;
    failure_for("cuCheckpointProcessLock", what, sizeof what);
    CUresult rc = injected_code(what);
    if (!rc) {
        snprintf(timeout, sizeof timeout, "%u", ms);
        rc = request(pid, "lock", timeout, strcmp(what, "busy") == 0 ? "busy" : "-", (ms ? ms : 600000) + 30000);
    }
    log_call("cuCheckpointProcessLock pid=%d timeoutMs=%u -> %d", pid, ms, rc);
    return rc;
}

CUresult cuCheckpointProcessCheckpoint(int pid, void *args) {
    char what[64];
    (void)args;
    failure_for("cuCheckpointProcessCheckpoint", what, sizeof what);
    CUresult rc = injected_code(what);
    if (!rc) rc = request(pid, "checkpoint", strcmp(what, "leak") == 0 ? "leak" : "-", "-", 30000);
    log_call("cuCheckpointProcessCheckpoint pid=%d -> %d", pid, rc);
    return rc;
}

CUresult cuCheckpointProcessRestore(int pid, CUcheckpointRestoreArgs *args) {
    char what[64], pairs[1200] = "-";
    failure_for("cuCheckpointProcessRestore", what, sizeof what);
    if (args && args->gpuPairs && args->gpuPairsCount) {
        char *p = pairs;
        for (unsigned i = 0; i < args->gpuPairsCount && i < MAXDEV; i++) {
            for (int j = 0; j < 16; j++) p += sprintf(p, "%02x", args->gpuPairs[i].oldUuid.bytes[j]);
            *p++ = '=';
            for (int j = 0; j < 16; j++) p += sprintf(p, "%02x", args->gpuPairs[i].newUuid.bytes[j]);
            *p++ = ',';
        }
        *p = 0;
    }
    CUresult rc = injected_code(what);
    if (!rc) rc = request(pid, "restore", pairs, "-", 30000);
    log_call("cuCheckpointProcessRestore pid=%d pairs=%s -> %d", pid, pairs, rc);
    return rc;
}

CUresult cuCheckpointProcessUnlock(int pid, void *args) {
    char what[64];
    (void)args;
    failure_for("cuCheckpointProcessUnlock", what, sizeof what);
    CUresult rc = injected_code(what);
    if (!rc) rc = request(pid, "unlock", "-", "-", 30000);
    log_call("cuCheckpointProcessUnlock pid=%d -> %d", pid, rc);
    return rc;
}
