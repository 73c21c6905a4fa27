/*
 * A stand-in for AMD's libamd_smi.so, written by devheal from the declarations in amdsmi.h
 * (ROCm/amdsmi 0ceca28f4139dced5e9b5739a3f393780d7add48, include/amd_smi/amdsmi.h): the six
 * functions crates/amdsmi/src/ffi.rs looks up, with the header's signatures, types and struct
 * layouts, answering for a scripted node. It is no part of AMD's library and reads no hardware.
 * crates/amdsmi/tests/c_abi.rs compiles it (cc -shared -fPIC) and loads it through the crate.
 *
 * The node: 2 sockets; socket 0 holds GPUs 0000:c1:00.0 and 0000:c2:00.0, socket 1 holds
 * 0001:3b:1f.7. 0000:c2:00.0 answers AMDSMI_STATUS_NOT_SUPPORTED for its ECC counts.
 *
 * Build options:
 *   -DOMIT_ECC                 leave out amdsmi_get_gpu_total_ecc_count;
 *   -DFAKE_INIT_STATUS=<n>     amdsmi_init answers <n> (an amdsmi_status_t) after checking its flags.
 *
 * Extra export for the test: fake_amdsmi_calls() returns how often amdsmi_init and
 * amdsmi_shut_down ran and the flags amdsmi_init last got.
 */
#include <stddef.h>
#include <stdint.h>

/* amdsmi_status_t (the values used here). */
typedef enum {
    AMDSMI_STATUS_SUCCESS = 0,
    AMDSMI_STATUS_INVAL = 1,
    AMDSMI_STATUS_NOT_SUPPORTED = 2,
    AMDSMI_STATUS_NOT_INIT = 32,
    AMDSMI_STATUS_DRIVER_NOT_LOADED = 34,
} amdsmi_status_t;

/* amdsmi_init_flags_t (the value used here). */
#define AMDSMI_INIT_AMD_GPUS (1 << 1)

typedef void *amdsmi_socket_handle;
typedef void *amdsmi_processor_handle;

/* amdsmi_bdf_t, as the header declares it. */
typedef union {
    struct bdf_ {
        uint64_t function_number : 3;
        uint64_t device_number : 5;
        uint64_t bus_number : 8;
        uint64_t domain_number : 48;
    } bdf;
    uint64_t as_uint;
} amdsmi_bdf_t;

/* amdsmi_error_count_t. */
typedef struct {
    uint64_t correctable_count;
    uint64_t uncorrectable_count;
    uint64_t deferred_count;
    uint64_t reserved[5];
} amdsmi_error_count_t;

_Static_assert(sizeof(amdsmi_bdf_t) == 8, "amdsmi_bdf_t is one 64-bit word");
_Static_assert(sizeof(amdsmi_error_count_t) == 64, "amdsmi_error_count_t is 8 words");

#ifndef FAKE_INIT_STATUS
#define FAKE_INIT_STATUS AMDSMI_STATUS_SUCCESS
#endif

#define EXPORT __attribute__((visibility("default")))

struct gpu {
    uint64_t domain, bus, device, function;
    amdsmi_status_t ecc_status;
    uint64_t correctable, uncorrectable, deferred;
};

struct socket {
    uint32_t gpu_count;
    struct gpu *gpus[2];
};

static struct gpu gpus[3] = {
    {0x0000, 0xc1, 0x00, 0, AMDSMI_STATUS_SUCCESS, 11, 0, 3},
    {0x0000, 0xc2, 0x00, 0, AMDSMI_STATUS_NOT_SUPPORTED, 0, 0, 0},
    {0x0001, 0x3b, 0x1f, 7, AMDSMI_STATUS_SUCCESS, 1234567890123ULL, 42, 7},
};

static struct socket sockets[2] = {
    {2, {&gpus[0], &gpus[1]}},
    {1, {&gpus[2], NULL}},
};

/* The test's view of the call sequence. */
struct fake_calls {
    uint32_t init;
    uint32_t shut_down;
    uint64_t init_flags;
};

static struct fake_calls calls;
static int initialised;

EXPORT struct fake_calls fake_amdsmi_calls(void) { return calls; }

static struct gpu *gpu_of(amdsmi_processor_handle handle) {
    for (size_t i = 0; i < sizeof gpus / sizeof gpus[0]; i++)
        if (handle == &gpus[i]) return &gpus[i];
    return NULL;
}

/* The two-call pattern: a NULL array asks for the count; otherwise at most *count handles are
 * written and *count becomes the number written. */
static amdsmi_status_t list(uint32_t *count, void **handles, void *const *all, uint32_t n) {
    if (count == NULL) return AMDSMI_STATUS_INVAL;
    if (handles == NULL) {
        *count = n;
        return AMDSMI_STATUS_SUCCESS;
    }
    if (*count > n) *count = n;
    for (uint32_t i = 0; i < *count; i++) handles[i] = all[i];
    return AMDSMI_STATUS_SUCCESS;
}

EXPORT amdsmi_status_t amdsmi_init(uint64_t init_flags) {
    calls.init++;
    calls.init_flags = init_flags;
    if (init_flags != AMDSMI_INIT_AMD_GPUS) return AMDSMI_STATUS_INVAL;
    if (FAKE_INIT_STATUS != AMDSMI_STATUS_SUCCESS) return FAKE_INIT_STATUS;
    initialised = 1;
    return AMDSMI_STATUS_SUCCESS;
}

EXPORT amdsmi_status_t amdsmi_shut_down(void) {
    calls.shut_down++;
    if (!initialised) return AMDSMI_STATUS_NOT_INIT;
    initialised = 0;
    return AMDSMI_STATUS_SUCCESS;
}

EXPORT amdsmi_status_t amdsmi_get_socket_handles(uint32_t *socket_count,
                                                 amdsmi_socket_handle *socket_handles) {
    if (!initialised) return AMDSMI_STATUS_NOT_INIT;
    void *all[2] = {&sockets[0], &sockets[1]};
    return list(socket_count, socket_handles, all, 2);
}

EXPORT amdsmi_status_t amdsmi_get_processor_handles(amdsmi_socket_handle socket_handle,
                                                    uint32_t *processor_count,
                                                    amdsmi_processor_handle *processor_handles) {
    if (!initialised) return AMDSMI_STATUS_NOT_INIT;
    struct socket *socket = NULL;
    for (size_t i = 0; i < sizeof sockets / sizeof sockets[0]; i++)
        if (socket_handle == &sockets[i]) socket = &sockets[i];
    if (socket == NULL) return AMDSMI_STATUS_INVAL;
    return list(processor_count, processor_handles, (void *const *)socket->gpus, socket->gpu_count);
}

EXPORT amdsmi_status_t amdsmi_get_gpu_device_bdf(amdsmi_processor_handle processor_handle,
                                                 amdsmi_bdf_t *bdf) {
    if (!initialised) return AMDSMI_STATUS_NOT_INIT;
    struct gpu *gpu = gpu_of(processor_handle);
    if (gpu == NULL || bdf == NULL) return AMDSMI_STATUS_INVAL;
    /* Through the bit-fields, as the library fills it: the test checks devheal's reading of
     * the word against the compiler's layout of the struct. */
    bdf->bdf.function_number = gpu->function;
    bdf->bdf.device_number = gpu->device;
    bdf->bdf.bus_number = gpu->bus;
    bdf->bdf.domain_number = gpu->domain;
    return AMDSMI_STATUS_SUCCESS;
}

#ifndef OMIT_ECC
EXPORT amdsmi_status_t amdsmi_get_gpu_total_ecc_count(amdsmi_processor_handle processor_handle,
                                                      amdsmi_error_count_t *ec) {
    if (!initialised) return AMDSMI_STATUS_NOT_INIT;
    struct gpu *gpu = gpu_of(processor_handle);
    if (gpu == NULL || ec == NULL) return AMDSMI_STATUS_INVAL;
    if (gpu->ecc_status != AMDSMI_STATUS_SUCCESS) return gpu->ecc_status;
    ec->correctable_count = gpu->correctable;
    ec->uncorrectable_count = gpu->uncorrectable;
    ec->deferred_count = gpu->deferred;
    /* The whole struct is the caller's: write the reserved words too. */
    for (size_t i = 0; i < 5; i++) ec->reserved[i] = 0;
    return AMDSMI_STATUS_SUCCESS;
}
#endif
