/*
 * A stand-in for Intel Gaudi's libhlml.so, written for devheal's tests from the C API as
 * hlml.h declares it (signatures, struct layouts and return codes as Intel's Python binding
 * habana-pyhlml 1.24.2 reads them: pyhlml/main.py, pyhlml/pyhlml_types_generated.py). It is
 * our own code, not Intel's library: it checks that devheal-hlml calls the library as the
 * header says, on a machine without a Gaudi.
 *
 * Three scripted devices:
 *   #0 serial AM0000001, bus id "0000:19:00.0",      0 uncorrected ECC errors
 *   #1 serial AM0000002, bus id "00000000:B3:00.0",  2 uncorrected ECC errors (NVML-style id)
 *   #2 serial AM0000003, bus id "0001:1a:1f.7",      ECC not supported
 * Built with -DINIT_STATUS=n, hlml_init returns n; with -DEVENTS='"index:type,index:type"',
 * hlml_event_set_wait delivers those events in turn (then times out); with -DOMIT_WAIT, the
 * library has no hlml_event_set_wait; with -DLOST=n, device #n answers HLML_ERROR_AIP_IS_LOST
 * for its serial (a lost device).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef enum {
    HLML_SUCCESS = 0,
    HLML_ERROR_UNINITIALIZED = 1,
    HLML_ERROR_INVALID_ARGUMENT = 2,
    HLML_ERROR_NOT_SUPPORTED = 3,
    HLML_ERROR_TIMEOUT = 10,
    HLML_ERROR_AIP_IS_LOST = 15,
} hlml_return_t;

#define PCI_DOMAIN_LEN 9
#define PCI_ADDR_LEN ((PCI_DOMAIN_LEN) + 10)
#define PCI_LINK_INFO_LEN 10
#define HL_FIELD_MAX_SIZE 32
#define HLML_EVENT_ECC_DERR (1 << 0)
#define HLML_EVENT_CRITICAL_ERR (1 << 1)

typedef void *hlml_device_t;
typedef void *hlml_event_set_t;

typedef struct {
    char link_speed[PCI_LINK_INFO_LEN];
    char link_width[PCI_LINK_INFO_LEN];
    char link_max_speed[PCI_LINK_INFO_LEN];
    char link_max_width[PCI_LINK_INFO_LEN];
} hlml_pci_cap_t;

typedef struct {
    unsigned int bus;
    char bus_id[PCI_ADDR_LEN];
    unsigned int device;
    unsigned int domain;
    unsigned int pci_device_id;
    hlml_pci_cap_t caps;
    unsigned int pci_rev;
    unsigned int pci_subsys_id;
} hlml_pci_info_t;

typedef struct {
    void *device;
    unsigned long long event_type;
} hlml_event_data_t;

struct fake_device {
    const char *serial;
    const char *bus_id;
    unsigned int domain, bus, dev;
    long long uncorrected; /* -1: not supported */
    unsigned long long registered;
};

static struct fake_device devices[3] = {
    {"AM0000001", "0000:19:00.0", 0, 0x19, 0, 0, 0},
    {"AM0000002", "00000000:B3:00.0", 0, 0xb3, 0, 2, 0},
    {"AM0000003", "0001:1a:1f.7", 1, 0x1a, 0x1f, -1, 0},
};

#ifndef INIT_STATUS
#define INIT_STATUS 0
#endif
#ifndef LOST
#define LOST -1
#endif
#ifndef EVENTS
#define EVENTS ""
#endif

static int initialised, inits, shutdowns, sets_created, sets_freed;
static int event_set_token;
static const char *events_left;

/* Read back by the test. */
void fake_hlml_counts(int *out) {
    out[0] = inits;
    out[1] = shutdowns;
    out[2] = sets_created;
    out[3] = sets_freed;
}

hlml_return_t hlml_init(void) {
    inits++;
    if (INIT_STATUS != 0) return (hlml_return_t)INIT_STATUS;
    initialised = 1;
    events_left = EVENTS;
    return HLML_SUCCESS;
}

hlml_return_t hlml_shutdown(void) {
    shutdowns++;
    initialised = 0;
    return HLML_SUCCESS;
}

hlml_return_t hlml_device_get_count(unsigned int *count) {
    if (!initialised) return HLML_ERROR_UNINITIALIZED;
    if (!count) return HLML_ERROR_INVALID_ARGUMENT;
    *count = 3;
    return HLML_SUCCESS;
}

hlml_return_t hlml_device_get_handle_by_index(unsigned int index, hlml_device_t *device) {
    if (!initialised) return HLML_ERROR_UNINITIALIZED;
    if (index >= 3 || !device) return HLML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return HLML_SUCCESS;
}

static struct fake_device *of(hlml_device_t device) {
    for (int i = 0; i < 3; i++)
        if (device == &devices[i]) return &devices[i];
    return NULL;
}

hlml_return_t hlml_device_get_serial(hlml_device_t device, char *serial, unsigned int length) {
    struct fake_device *d = of(device);
    if (!initialised) return HLML_ERROR_UNINITIALIZED;
    /* The caller must offer the header's HL_FIELD_MAX_SIZE. */
    if (!d || !serial || length != HL_FIELD_MAX_SIZE) return HLML_ERROR_INVALID_ARGUMENT;
    if (d - devices == LOST) return HLML_ERROR_AIP_IS_LOST;
    memset(serial, 'x', length); /* what a NUL after the serial must end */
    snprintf(serial, length, "%s", d->serial);
    return HLML_SUCCESS;
}

hlml_return_t hlml_device_get_pci_info(hlml_device_t device, hlml_pci_info_t *pci) {
    struct fake_device *d = of(device);
    if (!initialised) return HLML_ERROR_UNINITIALIZED;
    if (!d || !pci) return HLML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof(*pci));
    pci->bus = d->bus;
    snprintf(pci->bus_id, sizeof(pci->bus_id), "%s", d->bus_id);
    pci->device = d->dev;
    pci->domain = d->domain;
    pci->pci_device_id = 0x1020;
    snprintf(pci->caps.link_speed, PCI_LINK_INFO_LEN, "16.0 GT/s");
    pci->pci_rev = 1;
    pci->pci_subsys_id = 0xffffffff; /* the last field: a layout the caller got wrong spills */
    return HLML_SUCCESS;
}

hlml_return_t hlml_device_get_total_ecc_errors(hlml_device_t device, unsigned int error_type,
                                                unsigned int counter_type, unsigned long long *count) {
    struct fake_device *d = of(device);
    if (!initialised) return HLML_ERROR_UNINITIALIZED;
    /* Only uncorrected (1), volatile (0) is scripted. */
    if (!d || !count || error_type != 1 || counter_type != 0) return HLML_ERROR_INVALID_ARGUMENT;
    if (d->uncorrected < 0) return HLML_ERROR_NOT_SUPPORTED;
    *count = (unsigned long long)d->uncorrected;
    return HLML_SUCCESS;
}

hlml_return_t hlml_event_set_create(hlml_event_set_t *set) {
    if (!initialised) return HLML_ERROR_UNINITIALIZED;
    if (!set) return HLML_ERROR_INVALID_ARGUMENT;
    sets_created++;
    *set = &event_set_token;
    return HLML_SUCCESS;
}

hlml_return_t hlml_event_set_free(hlml_event_set_t set) {
    if (set != &event_set_token) return HLML_ERROR_INVALID_ARGUMENT;
    sets_freed++;
    return HLML_SUCCESS;
}

hlml_return_t hlml_device_register_events(hlml_device_t device, unsigned long long event_types,
                                           hlml_event_set_t set) {
    struct fake_device *d = of(device);
    if (!initialised) return HLML_ERROR_UNINITIALIZED;
    if (!d || set != &event_set_token) return HLML_ERROR_INVALID_ARGUMENT;
    if (event_types != (HLML_EVENT_CRITICAL_ERR | HLML_EVENT_ECC_DERR)) return HLML_ERROR_INVALID_ARGUMENT;
    d->registered = event_types;
    return HLML_SUCCESS;
}

#ifndef OMIT_WAIT
hlml_return_t hlml_event_set_wait(hlml_event_set_t set, hlml_event_data_t *data, unsigned int timeout) {
    if (!initialised) return HLML_ERROR_UNINITIALIZED;
    if (set != &event_set_token || !data) return HLML_ERROR_INVALID_ARGUMENT;
    while (events_left && *events_left) {
        unsigned int index = 0;
        unsigned long long type = 0;
        int used = 0;
        if (sscanf(events_left, "%u:%llu%n", &index, &type, &used) != 2) return HLML_ERROR_INVALID_ARGUMENT;
        events_left += used;
        if (*events_left == ',') events_left++;
        if (index < 3 && (devices[index].registered & type)) {
            data->device = &devices[index];
            data->event_type = type;
            return HLML_SUCCESS;
        }
    }
    usleep(timeout * 1000u); /* as the library: no event within the timeout */
    return HLML_ERROR_TIMEOUT;
}
#endif
