/*
 * fake_nvml.c: a fake libnvidia-ml.so.1 for dcwatt's tests and demo.
 *
 * Reads the text state file named by the environment variable
 * DCWATT_FAKE_NVML_STATE (format: docs/interfaces.md, "Fake NVML", and the
 * optional lines in docs/nvml.md; the writer
 * is dcwatt_fake_nvml::write_state) and answers the NVML calls that
 * nvml-wrapper 0.13 makes for dcwatt's agent. Writes nothing.
 *
 * - The file is re-read (under a write lock; calls read under a read lock) whenever its mtime, ctime, size or
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
 * - Optional `set <index> <key> <value...>` lines (after that GPU's `gpu` line)
 *   add readings and faults: instantaneous power, default limit, thresholds
 *   (classic call or field values only), clocks, fans, ECC, violation times,
 *   PCIe link, per-symbol NOT_SUPPORTED, a hang before every call, MIG mode
 *   and instances, XID events for the event API; and Grace-Blackwell: power by
 *   scope (GPU, memory, module), PCI domain/bus, serial, module id, reserved
 *   memory, T.Limit margin and signed offsets, an energy counter skew, PCIe
 *   replays, remapped rows, GPM, NVLink counters, an error code for a GPU or
 *   for one call. A GPU without them answers as before (NOT_SUPPORTED for the
 *   readings it lacks). A global `init_fail 1` line makes nvmlInit answer
 *   DRIVER_NOT_LOADED; `count_fail 1` makes nvmlDeviceGetCount_v2 answer
 *   UNKNOWN.
 * - Every type, constant and prototype comes from NVIDIA's nvml.h
 *   (include/, vendored unchanged); dcwattFakeLayout exports the header's
 *   struct layouts and dcwattFakeCallCount(s) the calls per symbol, for tests.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* Every NVML type, constant and prototype comes from NVIDIA's own header
 * (include/nvml.h, vendored unchanged). The unversioned names (nvmlInit, …)
 * are defined here as well, so the header must not alias them. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include "nvml.h"

#define MAX_GPUS 64
#define UUID_LEN 96
#define NAME_LEN 96
#define DRIVER_LEN 80
#define MAX_FILE_BYTES (1 << 20)
#define MAX_FANS 8
#define MAX_MIG 8
#define MAX_XID 64
#define PROFILE_LEN 32
#define UNSUPPORTED_LEN 1024

/* Optional scalar readings a `set` line gives; absent ones answer NOT_SUPPORTED. */
enum key {
    K_POWER_INSTANT_MW,
    K_POWER_DEFAULT_LIMIT_MW,
    K_THRESHOLD_SHUTDOWN,
    K_THRESHOLD_SLOWDOWN,
    K_THRESHOLD_MEM_MAX,
    K_THRESHOLD_GPU_MAX,
    K_THRESHOLDS_FIELDS_ONLY,
    K_SM_CLOCK_MHZ,
    K_MEM_CLOCK_MHZ,
    K_ECC_CORRECTED,
    K_ECC_UNCORRECTED,
    K_VIOLATION_POWER_NS,
    K_VIOLATION_THERMAL_NS,
    K_PCIE_GEN,
    K_PCIE_WIDTH,
    K_HANG_MS,
    K_MIG_MODE,
    /* Grace-Blackwell: scoped power, PCI location, T.Limit, reserved memory, health. */
    K_MODULE_POWER_MW,
    K_MODULE_POWER_INSTANT_MW,
    K_MEMORY_POWER_MW,
    K_PCI_DOMAIN,
    K_PCI_BUS,
    K_MODULE_ID,
    K_MEM_RESERVED,
    K_TLIMIT_C,
    K_TLIMIT_SHUTDOWN,
    K_TLIMIT_SLOWDOWN,
    K_TLIMIT_MEM_MAX,
    K_TLIMIT_GPU_MAX,
    K_ENERGY_SKEW_PPM,
    K_PCIE_REPLAY,
    K_REMAP_CORR,
    K_REMAP_UNC,
    K_REMAP_PENDING,
    K_REMAP_FAILURE,
    K_GPM_SM_ACTIVE,
    K_GPM_SM_OCCUPANCY,
    K_GPM_TENSOR_ACTIVE,
    K_GPM_DRAM_ACTIVE,
    K_NVLINK_LINKS,
    K_RECOVERY_ACTION,
    K_COUNT
};
static const char *const KEY_NAMES[K_COUNT] = {
    "power_instant_mw", "power_default_limit_mw", "threshold_shutdown", "threshold_slowdown",
    "threshold_mem_max", "threshold_gpu_max", "thresholds_fields_only", "sm_clock_mhz",
    "mem_clock_mhz", "ecc_corrected", "ecc_uncorrected", "violation_power_ns",
    "violation_thermal_ns", "pcie_gen", "pcie_width", "hang_ms", "mig_mode",
    "module_power_mw", "module_power_instant_mw", "memory_power_mw", "pci_domain", "pci_bus", "module_id",
    "mem_reserved_bytes", "tlimit_c", "tlimit_shutdown", "tlimit_slowdown", "tlimit_mem_max", "tlimit_gpu_max",
    "energy_skew_ppm", "pcie_replay", "remapped_corr", "remapped_unc", "remapped_pending", "remapped_failure",
    "gpm_sm_active_pct", "gpm_sm_occupancy_pct", "gpm_tensor_active_pct", "gpm_dram_active_pct",
    "nvlink_links", "recovery_action",
};
/* Keys whose value is signed (T.Limit offsets can be negative); stored as the
 * two's complement in `val`, read back with sval(). */
static int key_signed(enum key k) {
    return k == K_TLIMIT_C || k == K_TLIMIT_SHUTDOWN || k == K_TLIMIT_SLOWDOWN || k == K_TLIMIT_MEM_MAX ||
           k == K_TLIMIT_GPU_MAX || k == K_ENERGY_SKEW_PPM;
}
#define SERIAL_LEN 32
#define MAX_NVLINK_COUNTERS 64

/* Throttle (clocks event) reasons this fake claims to support. */
#define SUPPORTED_THROTTLE_REASONS 0x1ffULL

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
    /* Optional readings and faults from `set` lines. */
    unsigned long long val[K_COUNT];
    unsigned char has[K_COUNT];
    unsigned int fan_count;
    unsigned int fans[MAX_FANS];
    unsigned int mig_count;
    unsigned int mig_gi[MAX_MIG];
    char mig_profile[MAX_MIG][PROFILE_LEN];
    /* `set <i> mig_gpm <gi> <sm> <occ> <tensor> <dram>`: GPM of one instance
     * (nvmlGpmMigSampleGet); an instance without it answers NOT_SUPPORTED. */
    unsigned char mig_gpm_has[MAX_MIG];
    unsigned int mig_gpm[MAX_MIG][4];
    unsigned int xid_count;
    unsigned long long xid_id[MAX_XID];
    unsigned long long xid_code[MAX_XID];
    /* "|sym|sym|": calls that answer NOT_SUPPORTED ("field:N" for a field id). */
    char unsupported[UNSUPPORTED_LEN];
    /* `set <i> fail <symbol> <NAME>`: that call alone answers the error, as
     * "|symbol=code|" entries. */
    char failing[UNSUPPORTED_LEN];
    /* `set <i> serial S`: the board serial ("" : NOT_SUPPORTED). */
    char serial[SERIAL_LEN];
    /* `set <i> error NAME`: every call on the GPU but its identity (UUID,
     * name, PCI info, serial, index, module id) answers this code (0: none). */
    nvmlReturn_t error;
    /* `set <i> nvlink <link> <field id> <value>`: one NVLink error counter
     * (fields 208, 213, 214, 221 with scopeId = link); a link below
     * `nvlink_links` without a line answers 0. */
    unsigned int nvlink_count;
    unsigned int nvlink_link[MAX_NVLINK_COUNTERS];
    unsigned int nvlink_field[MAX_NVLINK_COUNTERS];
    unsigned long long nvlink_value[MAX_NVLINK_COUNTERS];
};

struct state {
    char driver[DRIVER_LEN];
    long long time_ms;
    /* Extrapolate the energy at most this far past time_ms (-1: no limit). */
    long long horizon_ms;
    /* `init_fail 1`: nvmlInit answers DRIVER_NOT_LOADED. */
    int init_fail;
    /* `count_fail 1`: nvmlDeviceGetCount_v2 answers UNKNOWN (a driver that
     * went away under a running agent: it re-initializes NVML). */
    int count_fail;
    unsigned int count;
    struct gpu gpus[MAX_GPUS];
};

/* What nvmlDevice_t points to (the header leaves struct nvmlDevice_st opaque). */
struct nvmlDevice_st {
    unsigned int index;
};

/* What nvmlEventSet_t points to: which GPUs registered for XIDs, and the last event id delivered. */
struct nvmlEventSet_st {
    unsigned long long registered; /* bit per GPU index */
    unsigned long long last_id;
};

/* ---- Call counts per exported symbol (dcwattFakeCallCount), for tests and
 * benchmarks that hold the agent to a budget of NVML calls. ---- */
#define MAX_SYMBOLS 192
static pthread_mutex_t g_calls_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    const char *name;
    unsigned long long count;
} g_calls[MAX_SYMBOLS];
static unsigned int g_call_symbols;
/* Set while an exported function calls another, so that only the symbol the
 * caller called is counted. */
static __thread int t_nested;

static void count_call(const char *name) {
    if (t_nested) return;
    pthread_mutex_lock(&g_calls_mu);
    unsigned int i = 0;
    while (i < g_call_symbols && g_calls[i].name != name && strcmp(g_calls[i].name, name) != 0) i++;
    if (i == g_call_symbols && i < MAX_SYMBOLS) {
        g_calls[i].name = name;
        g_call_symbols++;
    }
    if (i < MAX_SYMBOLS) g_calls[i].count++;
    pthread_mutex_unlock(&g_calls_mu);
}

#define DELEGATE(call)                   \
    do {                                 \
        t_nested++;                      \
        nvmlReturn_t delegated_ = (call); \
        t_nested--;                      \
        return delegated_;               \
    } while (0)

/* How often `name` was called since the library was loaded (or the last
 * dcwattFakeCallCountsReset); NULL: every NVML call together. Not an NVML
 * symbol: only tests and benchmarks call it. */
EXPORT unsigned long long dcwattFakeCallCount(const char *name) {
    unsigned long long n = 0;
    pthread_mutex_lock(&g_calls_mu);
    for (unsigned int i = 0; i < g_call_symbols; i++) {
        if (name == NULL || strcmp(g_calls[i].name, name) == 0) n += g_calls[i].count;
    }
    pthread_mutex_unlock(&g_calls_mu);
    return n;
}

/* Writes "symbol count\n" lines for every symbol called into buf (size n,
 * NUL-terminated, truncated if short); returns the length needed. */
EXPORT unsigned int dcwattFakeCallCounts(char *buf, unsigned int n) {
    pthread_mutex_lock(&g_calls_mu);
    unsigned int need = 0;
    for (unsigned int i = 0; i < g_call_symbols; i++) {
        int w = snprintf(buf != NULL && need < n ? buf + need : NULL, buf != NULL && need < n ? n - need : 0,
                         "%s %llu\n", g_calls[i].name, g_calls[i].count);
        if (w > 0) need += (unsigned int)w;
    }
    pthread_mutex_unlock(&g_calls_mu);
    return need + 1;
}

/* Sets every count to 0. */
EXPORT void dcwattFakeCallCountsReset(void) {
    pthread_mutex_lock(&g_calls_mu);
    for (unsigned int i = 0; i < g_call_symbols; i++) g_calls[i].count = 0;
    pthread_mutex_unlock(&g_calls_mu);
}

/* Calls read the state under the read lock, so the GPU threads of an agent
 * do not queue behind one another (each queueing is a futex wake-up, which a
 * benchmark would charge to the agent); init, shutdown and re-reading the file
 * take the write lock. */
static pthread_rwlock_t g_lock = PTHREAD_RWLOCK_INITIALIZER;
/* Bumped (under g_xid_mu) and broadcast when a re-read brings a new XID event. */
static pthread_mutex_t g_xid_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_xid_changed = PTHREAD_COND_INITIALIZER;
static unsigned long long g_xid_gen;
static unsigned int g_init_count;
static char g_path[4096];
/* The state file's directory (opened at init, -1 if it could not be) and name
 * in it: each call's stat walks one path component instead of the whole path
 * (that walk was half of a GPU read's CPU in the agent's benchmark). */
static int g_dirfd = -1;
static const char *g_base;

/* stat() of the state file. Caller holds g_lock (either way). */
static int stat_state(struct stat *sb) {
    if (g_dirfd >= 0) return fstatat(g_dirfd, g_base, sb, 0);
    return stat(g_path, sb);
}
/* The current state and a spare to parse into; swapped under g_lock. */
static struct state g_states[2];
static struct state *g_st = &g_states[0];
static int g_have_stat;
static struct stat g_stat;
static struct nvmlDevice_st g_handles[MAX_GPUS];
/* MIG device handles: GPU index * MAX_MIG + slot. */
static struct nvmlDevice_st g_mig_handles[MAX_GPUS * MAX_MIG];

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

/* Parses one signed decimal field; advances *p. Returns 0 on success. */
static int parse_sll(char **p, long long *out) {
    char *s = *p;
    while (*s == ' ' || *s == '\t') s++;
    if (*s != '-' && (*s < '0' || *s > '9')) return -1;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || (*end != ' ' && *end != '\t' && *end != '\0')) return -1;
    *out = v;
    *p = end;
    return 0;
}

/* The error codes a `set <i> error NAME` line may give a GPU (NAME without
 * the NVML_ERROR_ prefix, or the number); NVML_SUCCESS when unknown. */
static const struct {
    const char *name;
    nvmlReturn_t code;
} ERROR_NAMES[] = {
    {"NO_PERMISSION", NVML_ERROR_NO_PERMISSION},
    {"INSUFFICIENT_POWER", NVML_ERROR_INSUFFICIENT_POWER},
    {"IRQ_ISSUE", NVML_ERROR_IRQ_ISSUE},
    {"CORRUPTED_INFOROM", NVML_ERROR_CORRUPTED_INFOROM},
    {"GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST},
    {"RESET_REQUIRED", NVML_ERROR_RESET_REQUIRED},
    {"OPERATING_SYSTEM", NVML_ERROR_OPERATING_SYSTEM},
    {"LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH},
    {"IN_USE", NVML_ERROR_IN_USE},
    {"MEMORY", NVML_ERROR_MEMORY},
    {"NOT_READY", NVML_ERROR_NOT_READY},
    {"TIMEOUT", NVML_ERROR_TIMEOUT},
    {"UNKNOWN", NVML_ERROR_UNKNOWN},
};

static nvmlReturn_t error_code(const char *name) {
    for (size_t i = 0; i < sizeof ERROR_NAMES / sizeof ERROR_NAMES[0]; i++) {
        if (strcmp(name, ERROR_NAMES[i].name) == 0) return ERROR_NAMES[i].code;
    }
    char *end = NULL;
    errno = 0;
    long v = strtol(name, &end, 10);
    if (errno != 0 || end == name || *end != '\0' || v <= 0 || v > 999) return NVML_SUCCESS;
    return (nvmlReturn_t)v;
}

/* Parses a "set <index> <key> <value...>" line body into st (the GPU must be present). */
static int parse_set(char *s, struct state *st) {
    unsigned int index;
    char key[64];
    if (parse_uint(&s, &index) != 0 || index >= MAX_GPUS || !st->gpus[index].present) return -1;
    if (parse_word(&s, key, sizeof key) != 0) return -1;
    struct gpu *g = &st->gpus[index];
    for (int k = 0; k < K_COUNT; k++) {
        if (strcmp(key, KEY_NAMES[k]) == 0) {
            if (key_signed((enum key)k)) {
                long long v;
                if (parse_sll(&s, &v) != 0) return -1;
                g->val[k] = (unsigned long long)v;
            } else if (parse_ull(&s, &g->val[k]) != 0) {
                return -1;
            }
            g->has[k] = 1;
            return 0;
        }
    }
    if (strcmp(key, "fan") == 0) {
        if (g->fan_count >= MAX_FANS || parse_uint(&s, &g->fans[g->fan_count]) != 0) return -1;
        if (g->fans[g->fan_count] > 100) return -1;
        g->fan_count++;
    } else if (strcmp(key, "unsupported") == 0) {
        char sym[128];
        if (parse_word(&s, sym, sizeof sym) != 0) return -1;
        size_t used = strlen(g->unsupported);
        if (used == 0) {
            g->unsupported[0] = '|';
            used = 1;
        }
        if (used + strlen(sym) + 2 >= sizeof g->unsupported) return -1;
        snprintf(g->unsupported + used, sizeof g->unsupported - used, "%s|", sym);
    } else if (strcmp(key, "mig_instance") == 0) {
        if (g->mig_count >= MAX_MIG) return -1;
        if (parse_uint(&s, &g->mig_gi[g->mig_count]) != 0) return -1;
        if (parse_word(&s, g->mig_profile[g->mig_count], PROFILE_LEN) != 0) return -1;
        g->mig_count++;
    } else if (strcmp(key, "mig_gpm") == 0) {
        unsigned int gi, v[4];
        if (parse_uint(&s, &gi) != 0) return -1;
        for (int k = 0; k < 4; k++) {
            if (parse_uint(&s, &v[k]) != 0 || v[k] > 100) return -1;
        }
        unsigned int m = 0;
        while (m < g->mig_count && g->mig_gi[m] != gi) m++;
        if (m == g->mig_count) return -1; /* after its mig_instance line */
        memcpy(g->mig_gpm[m], v, sizeof v);
        g->mig_gpm_has[m] = 1;
    } else if (strcmp(key, "nvlink") == 0) {
        unsigned int n = g->nvlink_count;
        if (n >= MAX_NVLINK_COUNTERS || parse_uint(&s, &g->nvlink_link[n]) != 0 ||
            parse_uint(&s, &g->nvlink_field[n]) != 0 || parse_ull(&s, &g->nvlink_value[n]) != 0)
            return -1;
        g->nvlink_count++;
    } else if (strcmp(key, "fail") == 0) {
        char sym[128], name[64];
        if (parse_word(&s, sym, sizeof sym) != 0 || parse_word(&s, name, sizeof name) != 0) return -1;
        nvmlReturn_t code = error_code(name);
        if (code == NVML_SUCCESS) return -1;
        size_t used = strlen(g->failing);
        if (used == 0) {
            g->failing[0] = '|';
            used = 1;
        }
        if (used + strlen(sym) + 8 >= sizeof g->failing) return -1;
        snprintf(g->failing + used, sizeof g->failing - used, "%s=%d|", sym, (int)code);
    } else if (strcmp(key, "serial") == 0) {
        if (parse_word(&s, g->serial, sizeof g->serial) != 0) return -1;
    } else if (strcmp(key, "error") == 0) {
        char name[64];
        if (parse_word(&s, name, sizeof name) != 0) return -1;
        g->error = error_code(name);
        if (g->error == NVML_SUCCESS) return -1;
    } else if (strcmp(key, "xid") == 0) {
        if (g->xid_count >= MAX_XID) return -1;
        if (parse_ull(&s, &g->xid_id[g->xid_count]) != 0) return -1;
        if (parse_ull(&s, &g->xid_code[g->xid_count]) != 0) return -1;
        g->xid_count++;
    } else {
        return -1;
    }
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
        } else if (strncmp(line, "set ", 4) == 0) {
            if (parse_set(line + 4, st) != 0) return -1;
        } else if (strncmp(line, "count_fail ", 11) == 0) {
            char *s = line + 11;
            unsigned long long v;
            if (parse_ull(&s, &v) != 0 || v > 1) return -1;
            st->count_fail = (int)v;
        } else if (strncmp(line, "init_fail ", 10) == 0) {
            char *s = line + 10;
            unsigned long long v;
            if (parse_ull(&s, &v) != 0 || v > 1) return -1;
            st->init_fail = (int)v;
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

/* The highest XID event id in a state (0: none). */
static unsigned long long max_xid_id(const struct state *st) {
    unsigned long long max = 0;
    for (unsigned int i = 0; i < st->count; i++) {
        for (unsigned int j = 0; j < st->gpus[i].xid_count; j++) {
            if (st->gpus[i].xid_id[j] > max) max = st->gpus[i].xid_id[j];
        }
    }
    return max;
}

/* Whether `sb` is the file last read. Caller holds g_lock (either way). */
static int same_file_locked(const struct stat *sb) {
    return g_have_stat && sb->st_ino == g_stat.st_ino && sb->st_size == g_stat.st_size &&
           sb->st_mtim.tv_sec == g_stat.st_mtim.tv_sec && sb->st_mtim.tv_nsec == g_stat.st_mtim.tv_nsec &&
           sb->st_ctim.tv_sec == g_stat.st_ctim.tv_sec && sb->st_ctim.tv_nsec == g_stat.st_ctim.tv_nsec;
}

/*
 * Re-reads the state file if it changed. Caller holds g_lock for writing.
 * Returns 0 when a state is available (fresh or last good), -1 when the file
 * is missing and no state was ever loaded.
 */
static int refresh_locked(void) {
    struct stat sb;
    if (stat_state(&sb) != 0) {
        return g_have_stat ? 0 : -1;
    }
    if (same_file_locked(&sb)) {
        return 0;
    }
    int fd = g_dirfd >= 0 ? openat(g_dirfd, g_base, O_RDONLY | O_CLOEXEC) : open(g_path, O_RDONLY | O_CLOEXEC);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (f == NULL && fd >= 0) close(fd);
    if (f == NULL) {
        return g_have_stat ? 0 : -1;
    }
    /* One buffer for the life of the process: only the pages a file fills
     * are touched. */
    static char *buf; /* under g_lock */
    if (buf == NULL) buf = malloc(MAX_FILE_BYTES + 1);
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
    struct state *spare = g_st == &g_states[0] ? &g_states[1] : &g_states[0];
    if (!too_big && memchr(buf, '\0', n) == NULL && parse_state(buf, spare) == 0) {
        unsigned long long before = max_xid_id(g_st);
        g_st = spare;
        if (max_xid_id(g_st) != before) {
            pthread_mutex_lock(&g_xid_mu);
            g_xid_gen++;
            pthread_cond_broadcast(&g_xid_changed);
            pthread_mutex_unlock(&g_xid_mu);
        }
    } else if (first) {
        /* Never had a good state: zero GPUs. */
        memset(g_st, 0, sizeof *g_st);
        snprintf(g_st->driver, sizeof g_st->driver, "%s", "0.0.0");
    }
    return 0;
}

static nvmlReturn_t do_init(void) {
    const char *path = getenv("DCWATT_FAKE_NVML_STATE");
    if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof g_path) {
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    pthread_rwlock_wrlock(&g_lock);
    nvmlReturn_t ret = NVML_SUCCESS;
    if (g_init_count == 0) {
        /* Handles carry their index; set once here, read without writes. */
        for (unsigned int i = 0; i < MAX_GPUS; i++) g_handles[i].index = i;
        for (unsigned int i = 0; i < MAX_GPUS * MAX_MIG; i++) g_mig_handles[i].index = i;
        snprintf(g_path, sizeof g_path, "%s", path);
        if (g_dirfd >= 0) close(g_dirfd);
        g_dirfd = -1;
        const char *slash = strrchr(g_path, '/');
        if (slash != NULL && slash[1] != '\0') {
            char dir[sizeof g_path];
            size_t len = slash == g_path ? 1 : (size_t)(slash - g_path);
            memcpy(dir, g_path, len);
            dir[len] = '\0';
            g_dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
            g_base = slash + 1;
        }
        g_have_stat = 0;
        memset(g_st, 0, sizeof *g_st);
        if (refresh_locked() != 0 || g_st->init_fail) {
            ret = NVML_ERROR_DRIVER_NOT_LOADED;
            g_have_stat = 0; /* read the file afresh at the next init */
        }
    }
    if (ret == NVML_SUCCESS) g_init_count++;
    pthread_rwlock_unlock(&g_lock);
    return ret;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) {
    count_call(__func__);
    return do_init();
}

EXPORT nvmlReturn_t nvmlInit(void) {
    count_call(__func__);
    return do_init();
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    count_call(__func__);
    (void)flags;
    return do_init();
}

EXPORT nvmlReturn_t nvmlShutdown(void) {
    count_call(__func__);
    pthread_rwlock_wrlock(&g_lock);
    nvmlReturn_t ret = NVML_SUCCESS;
    if (g_init_count == 0) {
        ret = NVML_ERROR_UNINITIALIZED;
    } else {
        g_init_count--;
    }
    pthread_rwlock_unlock(&g_lock);
    return ret;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    count_call(__func__);
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
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

/*
 * Checks initialization and re-reads the state file if it changed (under the
 * write lock); on success returns holding the read lock.
 */
static nvmlReturn_t enter(void) {
    pthread_rwlock_rdlock(&g_lock);
    if (g_init_count == 0) {
        pthread_rwlock_unlock(&g_lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    struct stat sb;
    if (stat_state(&sb) == 0 && !same_file_locked(&sb)) {
        pthread_rwlock_unlock(&g_lock);
        pthread_rwlock_wrlock(&g_lock);
        if (g_init_count > 0) (void)refresh_locked();
        pthread_rwlock_unlock(&g_lock);
        pthread_rwlock_rdlock(&g_lock);
        if (g_init_count == 0) {
            pthread_rwlock_unlock(&g_lock);
            return NVML_ERROR_UNINITIALIZED;
        }
    }
    return NVML_SUCCESS;
}

static void leave(void) { pthread_rwlock_unlock(&g_lock); }

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    count_call(__func__);
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    ret = copy_out(g_st->driver, version, length);
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    count_call(__func__);
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    char buf[DRIVER_LEN + 8];
    snprintf(buf, sizeof buf, "13.%s", g_st->driver);
    ret = copy_out(buf, version, length);
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    count_call(__func__);
    if (version == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *version = 13000;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    count_call(__func__);
    DELEGATE(nvmlSystemGetCudaDriverVersion(version));
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    count_call(__func__);
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    if (g_st->count_fail) {
        leave();
        return NVML_ERROR_UNKNOWN;
    }
    *count = g_st->count;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) {
    count_call(__func__);
    DELEGATE(nvmlDeviceGetCount_v2(count));
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    count_call(__func__);
    if (device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    if (index >= g_st->count) {
        ret = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        *device = &g_handles[index];
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    count_call(__func__);
    DELEGATE(nvmlDeviceGetHandleByIndex_v2(index, device));
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    count_call(__func__);
    if (uuid == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    ret = NVML_ERROR_NOT_FOUND;
    for (unsigned int i = 0; i < g_st->count; i++) {
        if (strcmp(g_st->gpus[i].uuid, uuid) == 0) {
            *device = &g_handles[i];
            ret = g_st->gpus[i].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
            break;
        }
    }
    leave();
    return ret;
}

/* True when `name` is in the GPU's unsupported list. */
static int is_unsupported(const struct gpu *g, const char *name) {
    if (g->unsupported[0] == '\0') return 0;
    char pat[160];
    snprintf(pat, sizeof pat, "|%s|", name);
    return strstr(g->unsupported, pat) != NULL;
}

/* The XID generation now. Caller holds g_lock, so no re-read runs meanwhile. */
static unsigned long long xid_gen_locked(void) {
    pthread_mutex_lock(&g_xid_mu);
    unsigned long long gen = g_xid_gen;
    pthread_mutex_unlock(&g_xid_mu);
    return gen;
}

/* Waits at most `ms` for a re-read that brings a new XID (generation past `seen`). */
static void wait_xid_change(unsigned long long seen, double ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(ms * 1e6);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    pthread_mutex_lock(&g_xid_mu);
    while (g_xid_gen == seen) {
        if (pthread_cond_timedwait(&g_xid_changed, &g_xid_mu, &ts) != 0) break;
    }
    pthread_mutex_unlock(&g_xid_mu);
}

static void sleep_ms(unsigned long long ms) {
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Resolves a handle under the lock. MIG handles resolve to their parent; *mig gets the slot or -1. */
static nvmlReturn_t resolve_locked(nvmlDevice_t device, const struct gpu **out, int *mig) {
    unsigned int index;
    *mig = -1;
    if (device != NULL && device >= &g_handles[0] && device < &g_handles[MAX_GPUS]) {
        index = (unsigned int)(device - &g_handles[0]);
    } else if (device != NULL && device >= &g_mig_handles[0] && device < &g_mig_handles[MAX_GPUS * MAX_MIG]) {
        unsigned int slot = (unsigned int)(device - &g_mig_handles[0]);
        index = slot / MAX_MIG;
        *mig = (int)(slot % MAX_MIG);
    } else {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (index >= g_st->count || !g_st->gpus[index].present || g_st->gpus[index].lost) {
        /* Gone from the file, or marked lost: fallen off the bus. */
        return NVML_ERROR_GPU_IS_LOST;
    }
    if (*mig >= 0 && (unsigned int)*mig >= g_st->gpus[index].mig_count) return NVML_ERROR_INVALID_ARGUMENT;
    *out = &g_st->gpus[index];
    return NVML_SUCCESS;
}

/* The error a `fail` line gives the call `name`, else NVML_SUCCESS. */
static nvmlReturn_t failing_code(const struct gpu *g, const char *name) {
    if (g->failing[0] == '\0') return NVML_SUCCESS;
    char pat[160];
    snprintf(pat, sizeof pat, "|%s=", name);
    const char *hit = strstr(g->failing, pat);
    return hit == NULL ? NVML_SUCCESS : (nvmlReturn_t)atoi(hit + strlen(pat));
}

/* The calls that still answer on a GPU with an injected `error`: its identity. */
static int is_identity(const char *name) {
    static const char *const IDENTITY[] = {"nvmlDeviceGetUUID",   "nvmlDeviceGetName",  "nvmlDeviceGetPciInfo_v3",
                                           "nvmlDeviceGetSerial", "nvmlDeviceGetIndex", "nvmlDeviceGetModuleId"};
    for (size_t i = 0; i < sizeof IDENTITY / sizeof IDENTITY[0]; i++) {
        if (strcmp(name, IDENTITY[i]) == 0) return 1;
    }
    return 0;
}

/*
 * Enters, then resolves a handle to its GPU for the call `name`. A GPU with
 * `hang_ms` sleeps that long first, outside the lock (other GPUs keep
 * answering). On success the lock is held and *out points into *g_st; on
 * failure the lock is released. MIG handles are accepted only when allow_mig.
 */
static nvmlReturn_t enter_call(nvmlDevice_t device, const struct gpu **out, const char *name, int allow_mig,
                               int *mig) {
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    ret = resolve_locked(device, out, mig);
    if (ret == NVML_SUCCESS && (*out)->has[K_HANG_MS] && (*out)->val[K_HANG_MS] > 0) {
        unsigned long long hang = (*out)->val[K_HANG_MS];
        leave();
        sleep_ms(hang);
        ret = enter();
        if (ret != NVML_SUCCESS) return ret;
        ret = resolve_locked(device, out, mig);
    }
    if (ret == NVML_SUCCESS && *mig >= 0 && !allow_mig) ret = NVML_ERROR_NOT_SUPPORTED;
    if (ret == NVML_SUCCESS && is_unsupported(*out, name)) ret = NVML_ERROR_NOT_SUPPORTED;
    if (ret == NVML_SUCCESS && (*out)->error != NVML_SUCCESS && !is_identity(name)) ret = (*out)->error;
    if (ret == NVML_SUCCESS) ret = failing_code(*out, name);
    if (ret != NVML_SUCCESS) leave();
    return ret;
}

static nvmlReturn_t enter_device_named(nvmlDevice_t device, const struct gpu **out, const char *name) {
    int mig;
    return enter_call(device, out, name, 0, &mig);
}

#define enter_device(device, out) enter_device_named((device), (out), __func__)

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    count_call(__func__);
    const struct gpu *g;
    int mig;
    nvmlReturn_t ret = enter_call(device, &g, __func__, 1, &mig);
    if (ret != NVML_SUCCESS) return ret;
    if (mig >= 0) {
        char buf[NAME_LEN + PROFILE_LEN + 8];
        snprintf(buf, sizeof buf, "%s MIG %s", g->name, g->mig_profile[mig]);
        ret = copy_out(buf, name, length);
    } else {
        ret = copy_out(g->name, name, length);
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    count_call(__func__);
    const struct gpu *g;
    int mig;
    nvmlReturn_t ret = enter_call(device, &g, __func__, 1, &mig);
    if (ret != NVML_SUCCESS) return ret;
    if (mig >= 0) {
        /* MIG-<parent uuid without "GPU-">-<gpu instance id> */
        const char *tail = strncmp(g->uuid, "GPU-", 4) == 0 ? g->uuid + 4 : g->uuid;
        char buf[UUID_LEN + 16];
        snprintf(buf, sizeof buf, "MIG-%s-%u", tail, g->mig_gi[mig]);
        ret = copy_out(buf, uuid, length);
    } else {
        ret = copy_out(g->uuid, uuid, length);
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    count_call(__func__);
    if (index == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *index = g->index;
    leave();
    return NVML_SUCCESS;
}

/* A signed key's value. */
static long long sval(const struct gpu *g, enum key k) { return (long long)g->val[k]; }

static unsigned int clamp_u32(unsigned long long v) {
    return v > 0xffffffffULL ? 0xffffffffu : (unsigned int)v;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    count_call(__func__);
    if (power == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *power = clamp_u32(g->power_mw);
    leave();
    return NVML_SUCCESS;
}

/* The energy counter now, mJ. Caller holds g_lock. `energy_skew_ppm` makes
 * the counter run that much faster (or slower) than power × time: a real
 * counter and the 1 s power average never agree exactly. */
static unsigned long long energy_now(const struct gpu *g) {
    double dt_ms = now_ms() - (double)g_st->time_ms;
    if (dt_ms < 0.0) dt_ms = 0.0;
    /* A writer that fell behind must not make the counter step back when its
     * next file (with a lower power) arrives: hold it at the horizon instead. */
    if (g_st->horizon_ms >= 0 && dt_ms > (double)g_st->horizon_ms) dt_ms = (double)g_st->horizon_ms;
    double rate = 1.0;
    if (g->has[K_ENERGY_SKEW_PPM]) rate += (double)sval(g, K_ENERGY_SKEW_PPM) / 1e6;
    if (rate < 0.0) rate = 0.0;
    /* mW * ms / 1000 = mJ; floor keeps the counter an integer that never overshoots. */
    unsigned long long extra = (unsigned long long)((double)g->power_mw * rate * dt_ms / 1000.0);
    return g->energy_mj + extra;
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    count_call(__func__);
    if (energy == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *energy = energy_now(g);
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensor, unsigned int *temp) {
    count_call(__func__);
    if (temp == NULL || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *temp = g->temp_c;
    leave();
    return NVML_SUCCESS;
}

/* A threshold: the `set` value, else the fixed GB300-class default. */
static unsigned int threshold_of(const struct gpu *g, enum key k, unsigned int fallback) {
    return g->has[k] ? clamp_u32(g->val[k]) : fallback;
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, nvmlTemperatureThresholds_t threshold, unsigned int *temp) {
    count_call(__func__);
    if (temp == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (g->has[K_THRESHOLDS_FIELDS_ONLY] && g->val[K_THRESHOLDS_FIELDS_ONLY]) {
        leave();
        return NVML_ERROR_NOT_SUPPORTED;
    }
    switch (threshold) {
    case NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: *temp = threshold_of(g, K_THRESHOLD_SHUTDOWN, 95); break;
    case NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: *temp = threshold_of(g, K_THRESHOLD_SLOWDOWN, 90); break;
    case NVML_TEMPERATURE_THRESHOLD_MEM_MAX: *temp = threshold_of(g, K_THRESHOLD_MEM_MAX, 95); break;
    case NVML_TEMPERATURE_THRESHOLD_GPU_MAX: *temp = threshold_of(g, K_THRESHOLD_GPU_MAX, 87); break;
    default: ret = NVML_ERROR_NOT_SUPPORTED; break;
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    count_call(__func__);
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
    count_call(__func__);
    if (limit == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *limit = clamp_u32(g->power_limit_mw);
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    count_call(__func__);
    DELEGATE(nvmlDeviceGetEnforcedPowerLimit(device, limit));
}

/* Answers one optional scalar: NOT_SUPPORTED when the state has no `set` line for it. */
static nvmlReturn_t get_key(nvmlDevice_t device, const char *name, enum key k, unsigned long long *out) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device_named(device, &g, name);
    if (ret != NVML_SUCCESS) return ret;
    if (g->has[k]) {
        *out = g->val[k];
    } else {
        ret = NVML_ERROR_NOT_SUPPORTED;
    }
    leave();
    return ret;
}

static nvmlReturn_t get_key_u32(nvmlDevice_t device, const char *name, enum key k, unsigned int *out) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long v = 0;
    nvmlReturn_t ret = get_key(device, name, k, &v);
    if (ret == NVML_SUCCESS) *out = clamp_u32(v);
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device, unsigned int *limit) {
    count_call(__func__);
    return get_key_u32(device, __func__, K_POWER_DEFAULT_LIMIT_MW, limit);
}

/* nvmlClockType_t: GRAPHICS 0, SM 1, MEM 2, VIDEO 3. */
EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock) {
    count_call(__func__);
    switch (type) {
    case 1: return get_key_u32(device, __func__, K_SM_CLOCK_MHZ, clock);
    case 2: return get_key_u32(device, __func__, K_MEM_CLOCK_MHZ, clock);
    default: return NVML_ERROR_NOT_SUPPORTED;
    }
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t device, unsigned int *gen) {
    count_call(__func__);
    return get_key_u32(device, __func__, K_PCIE_GEN, gen);
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t device, unsigned int *width) {
    count_call(__func__);
    return get_key_u32(device, __func__, K_PCIE_WIDTH, width);
}

/* errorType: corrected 0, uncorrected 1; counterType (volatile/aggregate) is ignored. */
EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t errorType, nvmlEccCounterType_t counterType,
                                                unsigned long long *count) {
    count_call(__func__);
    (void)counterType;
    switch (errorType) {
    case 0: return get_key(device, __func__, K_ECC_CORRECTED, count);
    case 1: return get_key(device, __func__, K_ECC_UNCORRECTED, count);
    default: return NVML_ERROR_INVALID_ARGUMENT;
    }
}

/* perfPolicyType: power 0, thermal 1. */
EXPORT nvmlReturn_t nvmlDeviceGetViolationStatus(nvmlDevice_t device, nvmlPerfPolicyType_t policy, nvmlViolationTime_t *out) {
    count_call(__func__);
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long ns = 0;
    nvmlReturn_t ret;
    switch (policy) {
    case 0: ret = get_key(device, __func__, K_VIOLATION_POWER_NS, &ns); break;
    case 1: ret = get_key(device, __func__, K_VIOLATION_THERMAL_NS, &ns); break;
    default: return NVML_ERROR_NOT_SUPPORTED;
    }
    if (ret == NVML_SUCCESS) {
        out->referenceTime = (unsigned long long)(now_ms() * 1000.0);
        out->violationTime = ns;
    }
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t device, unsigned int *count) {
    count_call(__func__);
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (g->fan_count == 0) {
        ret = NVML_ERROR_NOT_SUPPORTED; /* liquid-cooled: no fans */
    } else {
        *count = g->fan_count;
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned int fan, unsigned int *speed) {
    count_call(__func__);
    if (speed == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (g->fan_count == 0) {
        ret = NVML_ERROR_NOT_SUPPORTED;
    } else if (fan >= g->fan_count) {
        ret = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        *speed = g->fans[fan];
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    count_call(__func__);
    if (pci == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    memset(pci, 0, sizeof *pci);
    pci->domain = g->has[K_PCI_DOMAIN] ? clamp_u32(g->val[K_PCI_DOMAIN]) : 0;
    pci->bus = g->has[K_PCI_BUS] ? clamp_u32(g->val[K_PCI_BUS]) : 0x18 + g->index * 0x10;
    pci->device = 0;
    pci->pciDeviceId = 0x2b0010de;
    pci->pciSubSystemId = 0x20d010de;
    snprintf(pci->busId, sizeof pci->busId, "%08X:%02X:00.0", pci->domain, pci->bus & 0xffu);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:00.0", pci->domain & 0xffffu, pci->bus & 0xffu);
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    count_call(__func__);
    if (current == NULL || pending == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long mode = 0;
    nvmlReturn_t ret = get_key(device, __func__, K_MIG_MODE, &mode);
    if (ret == NVML_SUCCESS) {
        *current = mode ? 1 : 0;
        *pending = *current;
    }
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    count_call(__func__);
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (!g->has[K_MIG_MODE]) {
        ret = NVML_ERROR_NOT_SUPPORTED;
    } else {
        *count = g->val[K_MIG_MODE] ? g->mig_count : 0;
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index, nvmlDevice_t *mig) {
    count_call(__func__);
    if (mig == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (!g->has[K_MIG_MODE] || !g->val[K_MIG_MODE]) {
        ret = NVML_ERROR_NOT_SUPPORTED;
    } else if (index >= g->mig_count) {
        ret = NVML_ERROR_NOT_FOUND;
    } else {
        unsigned int slot = g->index * MAX_MIG + index;
        *mig = &g_mig_handles[slot];
    }
    leave();
    return ret;
}

/* The GPU instance id of a MIG device handle (a board handle: NOT_SUPPORTED). */
EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    count_call(__func__);
    if (id == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    int mig;
    nvmlReturn_t ret = enter_call(device, &g, __func__, 1, &mig);
    if (ret != NVML_SUCCESS) return ret;
    if (mig < 0) {
        ret = NVML_ERROR_NOT_SUPPORTED;
    } else {
        *id = g->mig_gi[mig];
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *is_mig) {
    count_call(__func__);
    if (is_mig == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = device != NULL && device >= &g_mig_handles[0] && device < &g_mig_handles[MAX_GPUS * MAX_MIG];
    return NVML_SUCCESS;
}

/* ---- Events: XIDs from `set <i> xid <id> <code>` lines, each delivered once per set. ---- */

EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    count_call(__func__);
    if (set == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    nvmlEventSet_t s = calloc(1, sizeof *s);
    if (s == NULL) {
        ret = NVML_ERROR_UNKNOWN;
    } else {
        /* Only events that happen after the set exists are delivered. */
        s->last_id = max_xid_id(g_st);
        *set = s;
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    count_call(__func__);
    if (set == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    free(set);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    count_call(__func__);
    if (types == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    *types = nvmlEventTypeXidCriticalError;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types, nvmlEventSet_t set) {
    count_call(__func__);
    if (set == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if ((types & ~nvmlEventTypeXidCriticalError) != 0) {
        ret = NVML_ERROR_NOT_SUPPORTED;
    } else {
        set->registered |= 1ULL << g->index;
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    count_call(__func__);
    if (set == NULL || data == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    double deadline = now_ms() + (double)timeoutms;
    for (;;) {
        nvmlReturn_t ret = enter();
        if (ret != NVML_SUCCESS) return ret;
        /* The smallest undelivered event id on a registered GPU. */
        int found_gpu = -1;
        unsigned int found_j = 0;
        unsigned long long best = 0;
        for (unsigned int i = 0; i < g_st->count && i < 64; i++) {
            if (!(set->registered & (1ULL << i))) continue;
            const struct gpu *g = &g_st->gpus[i];
            for (unsigned int j = 0; j < g->xid_count; j++) {
                unsigned long long id = g->xid_id[j];
                if (id > set->last_id && (found_gpu < 0 || id < best)) {
                    found_gpu = (int)i;
                    found_j = j;
                    best = id;
                }
            }
        }
        if (found_gpu >= 0) {
            const struct gpu *g = &g_st->gpus[found_gpu];
            set->last_id = best;
            data->device = &g_handles[found_gpu];
            data->eventType = nvmlEventTypeXidCriticalError;
            data->eventData = g->xid_code[found_j];
            data->gpuInstanceId = 0xffffffffu;
            data->computeInstanceId = 0xffffffffu;
            leave();
            return NVML_SUCCESS;
        }
        double left = deadline - now_ms();
        if (left <= 0.0) {
            leave();
            return NVML_ERROR_TIMEOUT;
        }
        /* A real driver blocks in the kernel until an event comes. The fake
         * blocks until a re-read of its state file (by any NVML call, such as
         * the agent's next collection) brings a new XID, or the timeout ends,
         * when it re-reads the file itself. So a waiting thread wakes only
         * for events and timeouts: polling the file here, every 10 ms, was
         * three quarters of the agent's CPU in the benchmarks, and waking on
         * each rewrite (the simulator's 100 ms tick) still half of it. */
        unsigned long long seen = xid_gen_locked();
        leave();
        wait_xid_change(seen, left);
    }
}

/* Clocks-event (throttle) reasons, current or supported, for the call `name`:
 * the NVML 13 names and the deprecated ones answer alike, but each can be
 * made NOT_SUPPORTED on its own (`unsupported <symbol>`). */
static nvmlReturn_t clocks_reasons(nvmlDevice_t device, unsigned long long *reasons, const char *name, int supported) {
    if (reasons == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device_named(device, &g, name);
    if (ret != NVML_SUCCESS) return ret;
    *reasons = supported ? SUPPORTED_THROTTLE_REASONS : g->throttle;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device, unsigned long long *reasons) {
    count_call(__func__);
    return clocks_reasons(device, reasons, __func__, 0);
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device, unsigned long long *reasons) {
    count_call(__func__);
    return clocks_reasons(device, reasons, __func__, 0);
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedClocksEventReasons(nvmlDevice_t device, unsigned long long *reasons) {
    count_call(__func__);
    return clocks_reasons(device, reasons, __func__, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedClocksThrottleReasons(nvmlDevice_t device, unsigned long long *reasons) {
    count_call(__func__);
    return clocks_reasons(device, reasons, __func__, 1);
}

/* Reserved memory (driver, firmware), bytes, at most what is not used. */
static unsigned long long reserved_of(const struct gpu *g) {
    if (!g->has[K_MEM_RESERVED]) return 0;
    unsigned long long r = g->val[K_MEM_RESERVED];
    return r > g->mem_total - g->mem_used ? g->mem_total - g->mem_used : r;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    count_call(__func__);
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    /* The old call counts reserved memory as used. */
    unsigned long long used = g->mem_used + reserved_of(g);
    memory->total = g->mem_total;
    memory->used = used > g->mem_total ? g->mem_total : used;
    memory->free = g->mem_total - memory->used;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    count_call(__func__);
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    unsigned long long reserved = reserved_of(g);
    memory->total = g->mem_total;
    memory->reserved = reserved;
    memory->used = g->mem_used;
    memory->free = g->mem_total - g->mem_used > reserved ? g->mem_total - g->mem_used - reserved : 0;
    leave();
    return NVML_SUCCESS;
}

/* One field of nvmlDeviceGetFieldValues. Caller holds g_lock. */
static void field_value(const struct gpu *g, nvmlFieldValue_t *v) {
    int fields_only = g->has[K_THRESHOLDS_FIELDS_ONLY] && g->val[K_THRESHOLDS_FIELDS_ONLY];
    v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
    v->nvmlReturn = NVML_SUCCESS;
    memset(&v->value, 0, sizeof v->value);
    char field_name[32];
    snprintf(field_name, sizeof field_name, "field:%u", v->fieldId);
    int supported = !is_unsupported(g, field_name);
    int k = -1;      /* an optional key whose value answers */
    int signed_ = 0; /* answer k as a signed int */
    switch (v->fieldId) {
    case NVML_FI_DEV_MEMORY_TEMP: v->value.uiVal = g->mem_temp_c; break;
    /* A GPU without the energy counter (`unsupported
     * nvmlDeviceGetTotalEnergyConsumption`) has no field for it either; the
     * counter is the GPU's only (no module-scope counter is modelled). */
    case NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
    case NVML_FI_DEV_ENERGY:
        supported = supported && v->scopeId == NVML_POWER_SCOPE_GPU &&
                    !is_unsupported(g, "nvmlDeviceGetTotalEnergyConsumption");
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        v->value.ullVal = energy_now(g);
        break;
    case NVML_FI_DEV_ECC_SBE_AGG_TOTAL:
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        k = K_ECC_CORRECTED;
        break;
    case NVML_FI_DEV_ECC_DBE_AGG_TOTAL:
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        k = K_ECC_UNCORRECTED;
        break;
    /* Power by scope (scopeId: NVML_POWER_SCOPE_GPU, _MODULE, _MEMORY). */
    case NVML_FI_DEV_POWER_AVERAGE:
        switch (v->scopeId) {
        /* A GPU without a power sensor (`unsupported nvmlDeviceGetPowerUsage`)
         * answers neither the call nor the field. */
        case NVML_POWER_SCOPE_GPU:
            supported = supported && !is_unsupported(g, "nvmlDeviceGetPowerUsage");
            v->value.uiVal = clamp_u32(g->power_mw);
            break;
        case NVML_POWER_SCOPE_MODULE: k = K_MODULE_POWER_MW; break;
        case NVML_POWER_SCOPE_MEMORY: k = K_MEMORY_POWER_MW; break;
        default: supported = 0; break;
        }
        break;
    case NVML_FI_DEV_POWER_INSTANT:
        switch (v->scopeId) {
        case NVML_POWER_SCOPE_GPU: k = K_POWER_INSTANT_MW; break;
        case NVML_POWER_SCOPE_MODULE: k = K_MODULE_POWER_INSTANT_MW; break;
        default: supported = 0; break; /* memory: N/A in the captures */
        }
        break;
    case NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP:
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        k = K_VIOLATION_POWER_NS;
        break;
    case NVML_FI_DEV_PERF_POLICY_THERMAL:
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        k = K_VIOLATION_THERMAL_NS;
        break;
    case NVML_FI_DEV_PCIE_REPLAY_COUNTER: k = K_PCIE_REPLAY; break;
    case NVML_FI_DEV_GET_GPU_RECOVERY_ACTION: k = K_RECOVERY_ACTION; break;
    /* Remapped rows, as nvmlDeviceGetRemappedRows answers them (supported
     * where `remapped_corr` is set; the other keys default to 0). */
    case NVML_FI_DEV_REMAPPED_COR:
    case NVML_FI_DEV_REMAPPED_UNC:
    case NVML_FI_DEV_REMAPPED_PENDING:
    case NVML_FI_DEV_REMAPPED_FAILURE: {
        static const enum key REMAP[4] = {K_REMAP_CORR, K_REMAP_UNC, K_REMAP_PENDING, K_REMAP_FAILURE};
        enum key rk = REMAP[v->fieldId - NVML_FI_DEV_REMAPPED_COR];
        supported = supported && g->has[K_REMAP_CORR] && !is_unsupported(g, "nvmlDeviceGetRemappedRows");
        unsigned long long x = g->val[rk];
        if (rk == K_REMAP_PENDING || rk == K_REMAP_FAILURE) x = x ? 1 : 0;
        v->value.uiVal = clamp_u32(x);
        break;
    }
    case NVML_FI_DEV_NVLINK_LINK_COUNT: k = K_NVLINK_LINKS; break;
    /* NVLink error counters of Blackwell (the DL replay/recovery/CRC fields
     * 161-163 are "unsupported for Blackwell+" and answer NOT_SUPPORTED). */
    case NVML_FI_DEV_NVLINK_COUNT_RCV_ERRORS:
    case NVML_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_SUCCESSFUL_EVENTS:
    case NVML_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_FAILED_EVENTS:
    case NVML_FI_DEV_NVLINK_COUNT_SYMBOL_ERRORS:
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        if (!g->has[K_NVLINK_LINKS]) {
            supported = 0;
        } else if (v->scopeId >= g->val[K_NVLINK_LINKS]) {
            v->nvmlReturn = NVML_ERROR_INVALID_ARGUMENT;
        } else {
            v->value.ullVal = 0;
            for (unsigned int i = 0; i < g->nvlink_count; i++) {
                if (g->nvlink_link[i] == v->scopeId && g->nvlink_field[i] == v->fieldId)
                    v->value.ullVal = g->nvlink_value[i];
            }
        }
        break;
    /* Thresholds as signed offsets from T.Limit (`tlimit_*`); a GPU with only
     * the legacy `thresholds_fields_only` answers its `threshold_*` values. */
    case NVML_FI_DEV_TEMPERATURE_SHUTDOWN_TLIMIT:
    case NVML_FI_DEV_TEMPERATURE_SLOWDOWN_TLIMIT:
    case NVML_FI_DEV_TEMPERATURE_MEM_MAX_TLIMIT:
    case NVML_FI_DEV_TEMPERATURE_GPU_MAX_TLIMIT: {
        unsigned int i = v->fieldId - NVML_FI_DEV_TEMPERATURE_SHUTDOWN_TLIMIT;
        static const enum key TLIMIT[4] = {K_TLIMIT_SHUTDOWN, K_TLIMIT_SLOWDOWN, K_TLIMIT_MEM_MAX, K_TLIMIT_GPU_MAX};
        static const enum key LEGACY[4] = {K_THRESHOLD_SHUTDOWN, K_THRESHOLD_SLOWDOWN, K_THRESHOLD_MEM_MAX,
                                           K_THRESHOLD_GPU_MAX};
        static const unsigned int LEGACY_DEFAULT[4] = {95, 90, 95, 87};
        if (g->has[TLIMIT[i]]) {
            k = TLIMIT[i];
            signed_ = 1;
        } else {
            supported = supported && fields_only;
            v->value.uiVal = threshold_of(g, LEGACY[i], LEGACY_DEFAULT[i]);
        }
        break;
    }
    default: supported = 0; break;
    }
    if (k >= 0) {
        if (!g->has[k]) {
            supported = 0;
        } else if (signed_) {
            v->valueType = NVML_VALUE_TYPE_SIGNED_INT;
            long long x = sval(g, (enum key)k);
            v->value.siVal = x < INT32_MIN ? INT32_MIN : x > INT32_MAX ? INT32_MAX : (int)x;
        } else if (v->valueType == NVML_VALUE_TYPE_UNSIGNED_LONG_LONG) {
            v->value.ullVal = g->val[k];
        } else {
            v->value.uiVal = clamp_u32(g->val[k]);
        }
    }
    if (!supported) {
        v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        memset(&v->value, 0, sizeof v->value);
    }
}

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values) {
    count_call(__func__);
    if (values == NULL || valuesCount <= 0) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    long long ts_us = (long long)(now_ms() * 1000.0);
    for (int i = 0; i < valuesCount; i++) {
        values[i].timestamp = ts_us;
        values[i].latencyUsec = 0;
        field_value(g, &values[i]);
    }
    leave();
    return NVML_SUCCESS;
}

/* ---- NVML 13: versioned temperature, margin, identity, health. ---- */

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_t *temperature) {
    count_call(__func__);
    if (temperature == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (temperature->version != nvmlTemperature_v1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (temperature->sensorType != NVML_TEMPERATURE_GPU) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    temperature->temperature = (int)clamp_u32(g->temp_c);
    leave();
    return NVML_SUCCESS;
}

/* The margin to the nearest slowdown threshold: `tlimit_c` (nvidia-smi's
 * "GPU T.Limit Temp"), signed. */
EXPORT nvmlReturn_t nvmlDeviceGetMarginTemperature(nvmlDevice_t device, nvmlMarginTemperature_t *margin) {
    count_call(__func__);
    if (margin == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (margin->version != nvmlMarginTemperature_v1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (g->has[K_TLIMIT_C]) {
        long long x = sval(g, K_TLIMIT_C);
        margin->marginTemperature = x < INT32_MIN ? INT32_MIN : x > INT32_MAX ? INT32_MAX : (int)x;
    } else {
        ret = NVML_ERROR_NOT_SUPPORTED;
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length) {
    count_call(__func__);
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    ret = g->serial[0] == '\0' ? NVML_ERROR_NOT_SUPPORTED : copy_out(g->serial, serial, length);
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetModuleId(nvmlDevice_t device, unsigned int *moduleId) {
    count_call(__func__);
    return get_key_u32(device, __func__, K_MODULE_ID, moduleId);
}

EXPORT nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t device, unsigned int *value) {
    count_call(__func__);
    return get_key_u32(device, __func__, K_PCIE_REPLAY, value);
}

EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows, unsigned int *uncRows,
                                              unsigned int *isPending, unsigned int *failureOccurred) {
    count_call(__func__);
    if (corrRows == NULL || uncRows == NULL || isPending == NULL || failureOccurred == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (!g->has[K_REMAP_CORR]) {
        ret = NVML_ERROR_NOT_SUPPORTED;
    } else {
        *corrRows = clamp_u32(g->val[K_REMAP_CORR]);
        *uncRows = clamp_u32(g->val[K_REMAP_UNC]);
        *isPending = g->val[K_REMAP_PENDING] ? 1 : 0;
        *failureOccurred = g->val[K_REMAP_FAILURE] ? 1 : 0;
    }
    leave();
    return ret;
}

/* ---- The layout of the header's structs, for tests/layout.rs. ----
 * One row per struct (field "", its size and alignment), per field (offset
 * and size) and per version constant (field "(version)", the constant): the
 * test compares each with the Rust definition in nvml-wrapper-sys that the
 * agent passes to these calls, so a struct that differs between the real
 * header and the Rust bindings fails a test instead of corrupting memory. */
struct dcwatt_layout_row {
    const char *type;
    const char *field;
    unsigned long long offset; /* struct rows: alignment; version rows: 0 */
    unsigned long long size;   /* struct rows: sizeof; version rows: the constant */
};

#define L_STRUCT(T) {#T, "", _Alignof(T), sizeof(T)}
#define L_FIELD(T, F) {#T, #F, offsetof(T, F), sizeof(((T *)0)->F)}
#define L_VERSION(T, V) {#T, "(version)", 0, V}

static const struct dcwatt_layout_row LAYOUT[] = {
    L_STRUCT(nvmlFieldValue_t),
    L_FIELD(nvmlFieldValue_t, fieldId),
    L_FIELD(nvmlFieldValue_t, scopeId),
    L_FIELD(nvmlFieldValue_t, timestamp),
    L_FIELD(nvmlFieldValue_t, latencyUsec),
    L_FIELD(nvmlFieldValue_t, valueType),
    L_FIELD(nvmlFieldValue_t, nvmlReturn),
    L_FIELD(nvmlFieldValue_t, value),
    L_STRUCT(nvmlValue_t),
    L_STRUCT(nvmlMemory_t),
    L_FIELD(nvmlMemory_t, total),
    L_FIELD(nvmlMemory_t, free),
    L_FIELD(nvmlMemory_t, used),
    L_STRUCT(nvmlMemory_v2_t),
    L_FIELD(nvmlMemory_v2_t, version),
    L_FIELD(nvmlMemory_v2_t, total),
    L_FIELD(nvmlMemory_v2_t, reserved),
    L_FIELD(nvmlMemory_v2_t, free),
    L_FIELD(nvmlMemory_v2_t, used),
    L_VERSION(nvmlMemory_v2_t, nvmlMemory_v2),
    L_STRUCT(nvmlTemperature_v1_t),
    L_FIELD(nvmlTemperature_v1_t, version),
    L_FIELD(nvmlTemperature_v1_t, sensorType),
    L_FIELD(nvmlTemperature_v1_t, temperature),
    L_VERSION(nvmlTemperature_v1_t, nvmlTemperature_v1),
    L_STRUCT(nvmlMarginTemperature_v1_t),
    L_FIELD(nvmlMarginTemperature_v1_t, version),
    L_FIELD(nvmlMarginTemperature_v1_t, marginTemperature),
    L_VERSION(nvmlMarginTemperature_v1_t, nvmlMarginTemperature_v1),
    L_STRUCT(nvmlUtilization_t),
    L_FIELD(nvmlUtilization_t, gpu),
    L_FIELD(nvmlUtilization_t, memory),
    L_STRUCT(nvmlPciInfo_t),
    L_FIELD(nvmlPciInfo_t, busIdLegacy),
    L_FIELD(nvmlPciInfo_t, domain),
    L_FIELD(nvmlPciInfo_t, bus),
    L_FIELD(nvmlPciInfo_t, device),
    L_FIELD(nvmlPciInfo_t, pciDeviceId),
    L_FIELD(nvmlPciInfo_t, pciSubSystemId),
    L_FIELD(nvmlPciInfo_t, busId),
    L_STRUCT(nvmlViolationTime_t),
    L_FIELD(nvmlViolationTime_t, referenceTime),
    L_FIELD(nvmlViolationTime_t, violationTime),
    L_STRUCT(nvmlEventData_t),
    L_FIELD(nvmlEventData_t, device),
    L_FIELD(nvmlEventData_t, eventType),
    L_FIELD(nvmlEventData_t, eventData),
    L_FIELD(nvmlEventData_t, gpuInstanceId),
    L_FIELD(nvmlEventData_t, computeInstanceId),
    L_STRUCT(nvmlGpmMetric_t),
    L_FIELD(nvmlGpmMetric_t, metricId),
    L_FIELD(nvmlGpmMetric_t, nvmlReturn),
    L_FIELD(nvmlGpmMetric_t, value),
    L_FIELD(nvmlGpmMetric_t, metricInfo),
    L_STRUCT(nvmlGpmMetricsGet_t),
    L_FIELD(nvmlGpmMetricsGet_t, version),
    L_FIELD(nvmlGpmMetricsGet_t, numMetrics),
    L_FIELD(nvmlGpmMetricsGet_t, sample1),
    L_FIELD(nvmlGpmMetricsGet_t, sample2),
    L_FIELD(nvmlGpmMetricsGet_t, metrics),
    L_VERSION(nvmlGpmMetricsGet_t, NVML_GPM_METRICS_GET_VERSION),
};

/* The layout rows; *count gets their number. Not an NVML symbol. */
EXPORT const struct dcwatt_layout_row *dcwattFakeLayout(unsigned int *count) {
    if (count != NULL) *count = (unsigned int)(sizeof LAYOUT / sizeof LAYOUT[0]);
    return LAYOUT;
}


/* ---- GPM: samples hold the GPU and the instant they were taken; a metric
 * is the `gpm_*_pct` the GPU's state gives (constant over any interval).
 * Two samples less than 100 ms apart, as NVML documents, answer
 * INVALID_ARGUMENT: a caller that samples too fast is caught. A GPU without
 * any `gpm_*` key answers NOT_SUPPORTED to nvmlGpmSampleGet. A MIG
 * instance's sample (nvmlGpmMigSampleGet) gives its own `mig_gpm` values;
 * metrics between samples of different GPUs or instances are refused. ---- */
struct nvmlGpmSample_st {
    int filled;
    unsigned int gpu;
    /* -1: the board; else the instance's slot (mig_gi[slot] is its id). */
    int mig;
    double t_ms;
};

EXPORT nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *gpmSample) {
    count_call(__func__);
    if (gpmSample == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlGpmSample_t s = calloc(1, sizeof *s);
    if (s == NULL) return NVML_ERROR_MEMORY;
    *gpmSample = s;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t gpmSample) {
    count_call(__func__);
    if (gpmSample == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    free(gpmSample);
    return NVML_SUCCESS;
}

static int has_gpm(const struct gpu *g) {
    return g->has[K_GPM_SM_ACTIVE] || g->has[K_GPM_SM_OCCUPANCY] || g->has[K_GPM_TENSOR_ACTIVE] ||
           g->has[K_GPM_DRAM_ACTIVE];
}

EXPORT nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t gpmSample) {
    count_call(__func__);
    if (gpmSample == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (!has_gpm(g)) {
        ret = NVML_ERROR_NOT_SUPPORTED;
    } else {
        gpmSample->filled = 1;
        gpmSample->gpu = g->index;
        gpmSample->mig = -1;
        gpmSample->t_ms = now_ms();
    }
    leave();
    return ret;
}

/* GPM of the GPU instance `gpuInstanceId` of a board in MIG mode. MIG off
 * (or not supported): NOT_SUPPORTED; no instance with that id: NOT_FOUND; an
 * instance without `mig_gpm` values: NOT_SUPPORTED. */
EXPORT nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t device, unsigned int gpuInstanceId, nvmlGpmSample_t gpmSample) {
    count_call(__func__);
    if (gpmSample == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    unsigned int m = 0;
    while (m < g->mig_count && g->mig_gi[m] != gpuInstanceId) m++;
    if (!g->has[K_MIG_MODE] || !g->val[K_MIG_MODE]) {
        ret = NVML_ERROR_NOT_SUPPORTED;
    } else if (m == g->mig_count) {
        ret = NVML_ERROR_NOT_FOUND;
    } else if (!g->mig_gpm_has[m]) {
        ret = NVML_ERROR_NOT_SUPPORTED;
    } else {
        gpmSample->filled = 1;
        gpmSample->gpu = g->index;
        gpmSample->mig = (int)m;
        gpmSample->t_ms = now_ms();
    }
    leave();
    return ret;
}

EXPORT nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *gpmSupport) {
    count_call(__func__);
    if (gpmSupport == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpmSupport->version != NVML_GPM_SUPPORT_VERSION) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const struct gpu *g;
    nvmlReturn_t ret = enter_device(device, &g);
    if (ret != NVML_SUCCESS) return ret;
    gpmSupport->isSupportedDevice = has_gpm(g) ? 1 : 0;
    leave();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *metricsGet) {
    count_call(__func__);
    if (metricsGet == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (metricsGet->version != NVML_GPM_METRICS_GET_VERSION) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const struct nvmlGpmSample_st *a = metricsGet->sample1, *b = metricsGet->sample2;
    if (a == NULL || b == NULL || !a->filled || !b->filled || a->gpu != b->gpu || a->mig != b->mig ||
        metricsGet->numMetrics > NVML_GPM_METRIC_MAX)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (b->t_ms - a->t_ms < 100.0) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = enter();
    if (ret != NVML_SUCCESS) return ret;
    const struct gpu *g = a->gpu < g_st->count ? &g_st->gpus[a->gpu] : NULL;
    for (unsigned int i = 0; i < metricsGet->numMetrics; i++) {
        nvmlGpmMetric_t *m = &metricsGet->metrics[i];
        int k = -1;
        switch (m->metricId) {
        case NVML_GPM_METRIC_SM_UTIL: k = K_GPM_SM_ACTIVE; break;
        case NVML_GPM_METRIC_SM_OCCUPANCY: k = K_GPM_SM_OCCUPANCY; break;
        case NVML_GPM_METRIC_ANY_TENSOR_UTIL: k = K_GPM_TENSOR_ACTIVE; break;
        case NVML_GPM_METRIC_DRAM_BW_UTIL: k = K_GPM_DRAM_ACTIVE; break;
        default: break;
        }
        m->metricInfo.shortName = NULL;
        m->metricInfo.longName = NULL;
        m->metricInfo.unit = NULL;
        if (a->mig >= 0) {
            /* The instance's values, in K_GPM_* order. */
            int ok = g != NULL && k >= 0 && (unsigned int)a->mig < g->mig_count && g->mig_gpm_has[a->mig];
            m->nvmlReturn = ok ? NVML_SUCCESS : NVML_ERROR_NOT_SUPPORTED;
            m->value = ok ? (double)g->mig_gpm[a->mig][k - K_GPM_SM_ACTIVE] : 0.0;
        } else if (g == NULL || k < 0 || !g->has[k]) {
            m->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            m->value = 0.0;
        } else {
            m->nvmlReturn = NVML_SUCCESS;
            m->value = (double)g->val[k];
        }
    }
    leave();
    return NVML_SUCCESS;
}
