/*
 * fake_nvml.c: a fake libnvidia-ml.so.1 for dcwatt's tests and demo.
 *
 * Reads the text state file named by the environment variable
 * DCWATT_FAKE_NVML_STATE (format: docs/interfaces.md, "Fake NVML"; the writer
 * is dcwatt_fake_nvml::write_state) and answers the NVML calls that
 * nvml-wrapper 0.13 makes for dcwatt's agent. Writes nothing.
 *
 * - The file is re-read (under one mutex) whenever its mtime, ctime, size or
 *   inode changes (each tmp + rename brings a new inode). A file that does not parse keeps the last good state (zero GPUs
 *   if there never was one). A file that vanishes after init keeps the last
 *   good state too; a missing file at init answers DRIVER_NOT_LOADED (9).
 * - The energy counter is extrapolated to the read instant:
 *   energy_mj + power_mw * (now_ms - time_ms) / 1000. A read before time_ms
 *   (the simulator publishes each tick a few ms ahead) reports energy_mj, so
 *   the counter never goes backwards across a file change. An optional
 *   `horizon_ms N` line caps the extrapolation at N ms past time_ms (the
 *   simulator's tick), so a writer that falls behind holds the counter rather
 *   than letting it overshoot and step back.
 * - A GPU marked lost answers GPU_IS_LOST (15) to every per-device call.
 * - Device handles point into a static array indexed by NVML index; they stay
 *   valid for the life of the process.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 64
#define UUID_LEN 96
#define NAME_LEN 96
#define DRIVER_LEN 80
#define MAX_FILE_BYTES (1 << 20)

/* NVML_FI_DEV_MEMORY_TEMP: not in the remapped 251..273 range, same id in every scheme. */
#define FI_DEV_MEMORY_TEMP 82
/* nvmlValueType_t */
#define VALUE_TYPE_UNSIGNED_INT 1
/* nvmlTemperatureThresholds_t, fixed values of a GB300-class part (degrees C). */
#define THRESHOLD_SHUTDOWN 0
#define THRESHOLD_SLOWDOWN 1
#define THRESHOLD_MEM_MAX 2
#define THRESHOLD_GPU_MAX 3
/* Throttle (clocks event) reasons this fake claims to support. */
#define SUPPORTED_THROTTLE_REASONS 0x1ffULL
/* NVML_STRUCT_VERSION(Memory, 2) = sizeof(nvmlMemory_v2_t) | 2 << 24. */
#define MEMORY_V2_VERSION 0x02000028u

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef union {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    long long sllVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t is 40 bytes");
_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t is 40 bytes");

/* One GPU as the state file describes it. */
struct gpu {
    int present;
    unsigned int index;
    char uuid[UUID_LEN];
    unsigned long long power_mw;
    unsigned long long energy_mj;
    unsigned int temp_c;
    unsigned int mem_temp_c;
    unsigned int util_gpu;
    unsigned int util_mem;
    unsigned long long mem_total;
    unsigned long long mem_used;
    unsigned long long power_limit_mw;
    unsigned long long throttle;
    int lost;
    char name[NAME_LEN];
};

struct state {
    char driver[DRIVER_LEN];
    long long time_ms;
    /* Extrapolate the energy at most this far past time_ms (-1: no limit). */
    long long horizon_ms;
    unsigned int count;
    struct gpu gpus[MAX_GPUS];
};

/* A device handle: what nvmlDevice_t points to. */
typedef struct nvmlDevice_st {
    unsigned int index;
} *nvmlDevice_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned int g_init_count;
static char g_path[4096];
static struct state g_state;
static int g_have_stat;
static struct stat g_stat;
static struct nvmlDevice_st g_handles[MAX_GPUS];

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* Parses one unsigned decimal field; advances *p. Returns 0 on success. */
static int parse_ull(char **p, unsigned long long *out) {
    char *s = *p;
    while (*s == ' ' || *s == '\t') s++;
    if (*s < '0' || *s > '9') return -1;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || (*end != ' ' && *end != '\t' && *end != '\0')) return -1;
    *out = v;
    *p = end;
    return 0;
}

static int parse_uint(char **p, unsigned int *out) {
    unsigned long long v;
    if (parse_ull(p, &v) != 0 || v > 0xffffffffULL) return -1;
    *out = (unsigned int)v;
    return 0;
}

/* Copies the next whitespace-delimited word into out (size n). */
static int parse_word(char **p, char *out, size_t n) {
    char *s = *p;
    while (*s == ' ' || *s == '\t') s++;
    size_t len = 0;
    while (s[len] != '\0' && s[len] != ' ' && s[len] != '\t') len++;
    if (len == 0 || len >= n) return -1;
    memcpy(out, s, len);
    out[len] = '\0';
    *p = s + len;
    return 0;
}

/* Parses a "gpu ..." line body (after the keyword) into st. */
static int parse_gpu(char *s, struct state *st) {
    struct gpu g;
    memset(&g, 0, sizeof g);
    unsigned long long lost = 0;
    if (parse_uint(&s, &g.index) != 0 || g.index >= MAX_GPUS) return -1;
    if (parse_word(&s, g.uuid, sizeof g.uuid) != 0) return -1;
    if (parse_ull(&s, &g.power_mw) != 0) return -1;
    if (parse_ull(&s, &g.energy_mj) != 0) return -1;
    if (parse_uint(&s, &g.temp_c) != 0) return -1;
    if (parse_uint(&s, &g.mem_temp_c) != 0) return -1;
    if (parse_uint(&s, &g.util_gpu) != 0 || g.util_gpu > 100) return -1;
    if (parse_uint(&s, &g.util_mem) != 0 || g.util_mem > 100) return -1;
    if (parse_ull(&s, &g.mem_total) != 0) return -1;
    if (parse_ull(&s, &g.mem_used) != 0 || g.mem_used > g.mem_total) return -1;
    if (parse_ull(&s, &g.power_limit_mw) != 0) return -1;
    if (parse_ull(&s, &g.throttle) != 0) return -1;
    if (parse_ull(&s, &lost) != 0 || lost > 1) return -1;
    while (*s == ' ' || *s == '\t') s++;
    size_t len = strlen(s);
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r')) len--;
    if (len == 0 || len >= sizeof g.name) return -1;
    memcpy(g.name, s, len);
    g.name[len] = '\0';
    g.lost = (int)lost;
    g.present = 1;
    if (st->gpus[g.index].present) return -1; /* duplicate index */
    st->gpus[g.index] = g;
    if (g.index + 1 > st->count) st->count = g.index + 1;
    return 0;
}

/* Parses the whole file text into st. Returns 0 when it is a complete, valid state. */
static int parse_state(char *text, struct state *st) {
    memset(st, 0, sizeof *st);
    st->horizon_ms = -1;
    int have_time = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        size_t len = strlen(line);
        if (len > 0 && line[len - 1] == '\r') line[len - 1] = '\0';
        while (*line == ' ' || *line == '\t') line++;
        if (*line == '\0' || *line == '#') continue;
        if (strncmp(line, "driver ", 7) == 0) {
            char *s = line + 7;
            if (parse_word(&s, st->driver, sizeof st->driver) != 0) return -1;
        } else if (strncmp(line, "horizon_ms ", 11) == 0) {
            char *s = line + 11;
            errno = 0;
            char *end = NULL;
            long long v = strtoll(s, &end, 10);
            if (errno != 0 || end == s || v < 0) return -1;
            st->horizon_ms = v;
        } else if (strncmp(line, "time_ms ", 8) == 0) {
            char *s = line + 8;
            while (*s == ' ') s++;
            errno = 0;
            char *end = NULL;
            long long v = strtoll(s, &end, 10);
            if (errno != 0 || end == s) return -1;
            st->time_ms = v;
            have_time = 1;
        } else if (strncmp(line, "gpu ", 4) == 0) {
            if (parse_gpu(line + 4, st) != 0) return -1;
        } else {
            return -1;
        }
    }
    if (!have_time || st->driver[0] == '\0') return -1;
    /* Indices must be 0..count-1 without holes. */
    for (unsigned int i = 0; i < st->count; i++) {
        if (!st->gpus[i].present) return -1;
    }
    return 0;
}

/*
 * Re-reads the state file if it changed. Caller holds g_lock.
 * Returns 0 when a state is available (fresh or last good), -1 when the file
 * is missing and no state was ever loaded.
 */
static int refresh_locked(void) {
    struct stat sb;
    if (stat(g_path, &sb) != 0) {
        return g_have_stat ? 0 : -1;
    }
    if (g_have_stat && sb.st_ino == g_stat.st_ino && sb.st_size == g_stat.st_size &&
        sb.st_mtim.tv_sec == g_stat.st_mtim.tv_sec && sb.st_mtim.tv_nsec == g_stat.st_mtim.tv_nsec &&
        sb.st_ctim.tv_sec == g_stat.st_ctim.tv_sec && sb.st_ctim.tv_nsec == g_stat.st_ctim.tv_nsec) {
        return 0;
    }
    FILE *f = fopen(g_path, "rb");
    if (f == NULL) {
        return g_have_stat ? 0 : -1;
    }
    char *buf = malloc(MAX_FILE_BYTES + 1);
    if (buf == NULL) {
        fclose(f);
        return g_have_stat ? 0 : -1;
    }
    size_t n = fread(buf, 1, MAX_FILE_BYTES, f);
    int too_big = !feof(f);
    fclose(f);
    buf[n] = '\0';
    int first = !g_have_stat;
    g_stat = sb;
    g_have_stat = 1;
    static struct state parsed; /* under g_lock */
    if (!too_big && memchr(buf, '\0', n) == NULL && parse_state(buf, &parsed) == 0) {
        g_state = parsed;
    } else if (first) {
        /* Never had a good state: zero GPUs. */
        memset(&g_state, 0, sizeof g_state);
        snprintf(g_state.driver, sizeof g_state.driver, "%s", "0.0.0");
    }
    free(buf);
    return 0;
}

static nvmlReturn_t do_init(void) {
    const char *path = getenv("DCWATT_FAKE_NVML_STATE");
    if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof g_path) {
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    pthread_mutex_lock(&g_lock);
    nvmlReturn_t ret = NVML_SUCCESS;
    if (g_init_count == 0) {
        snprintf(g_path, sizeof g_path, "%s", path);
        g_have_stat = 0;
        memset(&g_state, 0, sizeof g_state);
        if (refresh_locked() != 0) ret = NVML_ERROR_DRIVER_NOT_LOADED;
    }
    if (ret == NVML_SUCCESS) g_init_count++;
    pthread_mutex_unlock(&g_lock);
    return ret;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return do_init(); }

EXPORT nvmlReturn_t nvmlInit(void) { return do_init(); }

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return do_init();
}

EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&g_lock);
    nvmlReturn_t ret = NVML_SUCCESS;
    if (g_init_count == 0) {
        ret = NVML_ERROR_UNINITIALIZED;
    } else {
        g_init_count--;
    }
    pthread_mutex_unlock(&g_lock);
    return ret;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

/* Copies a string into a caller buffer NVML-style. */
static nvmlReturn_t copy_out(const char *src, char *dst, unsigned int length) {
    if (dst == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    size_t len = strlen(src);
    if (len + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, len + 1);
    return NVML_SUCCESS;
}

/* Refreshes the state under the lock, checking initialization. */
static nvmlReturn_t enter(void) {
    pthread_mutex_lock(&g_lock);
    if (g_init_count == 0) {
        pthread_mutex_unlock(&g_lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    (void)refresh_locked();
    return NVML_SUCCESS;
}

static void leave(void) { pthread_mutex_unlock(&g_lock); }

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    ret = copy_out(g_state.driver, version, length);
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    char buf[DRIVER_LEN + 8];
    snprintf(buf, sizeof buf, "13.%s", g_state.driver);
    ret = copy_out(buf, version, length);
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    if (version == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *version = 13000;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    *count = g_state.count;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    if (index >= g_state.count) {
        ret = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        g_handles[index].index = index;
        *device = &g_handles[index];
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    if (uuid == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    ret = NVML_ERROR_NOT_FOUND;
    for (unsigned int i = 0; i < g_state.count; i++) {
        if (strcmp(g_state.gpus[i].uuid, uuid) == 0) {
            g_handles[i].index = i;
            *device = &g_handles[i];
            ret = g_state.gpus[i].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
            break;
        }
    }
    leave();
    return ret;
}

/*
 * Enters, then resolves a handle to its GPU. On success the lock is held and
 * *out points into g_state; on failure the lock is released.
 */
static nvmlReturn_t enter_device(nvmlDevice_t device, const struct gpu **out) {
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    if (device == NULL || device < &g_handles[0] || device >= &g_handles[MAX_GPUS]) {
        leave();
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    unsigned int index = (unsigned int)(device - &g_handles[0]);
    if (index >= g_state.count || !g_state.gpus[index].present || g_state.gpus[index].lost) {
        /* Gone from the file, or marked lost: fallen off the bus. */
        leave();
        return NVML_ERROR_GPU_IS_LOST;
    }
    *out = &g_state.gpus[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    ret = copy_out(g->name, name, length);
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    ret = copy_out(g->uuid, uuid, length);
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    if (index == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *index = g->index;
    leave();
    return NVML_SUCCESS;
}

static unsigned int clamp_u32(unsigned long long v) {
    return v > 0xffffffffULL ? 0xffffffffu : (unsigned int)v;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    if (power == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *power = clamp_u32(g->power_mw);
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    if (energy == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    double dt_ms = now_ms() - (double)g_state.time_ms;
    if (dt_ms < 0.0) dt_ms = 0.0;
    /* A writer that fell behind must not make the counter step back when its
     * next file (with a lower power) arrives: hold it at the horizon instead. */
    if (g_state.horizon_ms >= 0 && dt_ms > (double)g_state.horizon_ms) dt_ms = (double)g_state.horizon_ms;
    /* mW * ms / 1000 = mJ; floor keeps the counter an integer that never overshoots. */
    unsigned long long extra = (unsigned long long)((double)g->power_mw * dt_ms / 1000.0);
    *energy = g->energy_mj + extra;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    if (temp == NULL || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *temp = g->temp_c;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, int threshold, unsigned int *temp) {
    if (temp == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    switch (threshold) {
    case THRESHOLD_SHUTDOWN: *temp = 95; break;
    case THRESHOLD_SLOWDOWN: *temp = 90; break;
    case THRESHOLD_MEM_MAX: *temp = 95; break;
    case THRESHOLD_GPU_MAX: *temp = 87; break;
    default: ret = NVML_ERROR_NOT_SUPPORTED; break;
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    if (utilization == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    utilization->gpu = g->util_gpu;
    utilization->memory = g->util_mem;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    if (limit == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *limit = clamp_u32(g->power_limit_mw);
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    return nvmlDeviceGetEnforcedPowerLimit(device, limit);
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device, unsigned long long *reasons) {
    if (reasons == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *reasons = g->throttle;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device, unsigned long long *reasons) {
    return nvmlDeviceGetCurrentClocksThrottleReasons(device, reasons);
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedClocksThrottleReasons(nvmlDevice_t device, unsigned long long *reasons) {
    if (reasons == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *reasons = SUPPORTED_THROTTLE_REASONS;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedClocksEventReasons(nvmlDevice_t device, unsigned long long *reasons) {
    return nvmlDeviceGetSupportedClocksThrottleReasons(device, reasons);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    memory->total = g->mem_total;
    memory->used = g->mem_used;
    memory->free = g->mem_total - g->mem_used;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != MEMORY_V2_VERSION) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    memory->total = g->mem_total;
    memory->reserved = 0;
    memory->used = g->mem_used;
    memory->free = g->mem_total - g->mem_used;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values) {
    if (values == NULL || valuesCount <= 0) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    long long ts_us = (long long)(now_ms() * 1000.0);
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *v = &values[i];
        v->timestamp = ts_us;
        v->latencyUsec = 0;
        if (v->fieldId == FI_DEV_MEMORY_TEMP) {
            v->valueType = VALUE_TYPE_UNSIGNED_INT;
            v->nvmlReturn = NVML_SUCCESS;
            memset(&v->value, 0, sizeof v->value);
            v->value.uiVal = g->mem_temp_c;
        } else {
            v->valueType = VALUE_TYPE_UNSIGNED_INT;
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            memset(&v->value, 0, sizeof v->value);
        }
    }
    leave();
    return NVML_SUCCESS;
}
