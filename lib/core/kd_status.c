/* kd_status.c - status code texts and the library version. */
#include "kd_internal.h"

static const char *const kd_status_texts[KD_STATUS_COUNT] = {
    "ok",
    "invalid argument",
    "out of memory",
    "size overflow",
    "shape mismatch",
    "malformed data",
    "I/O error",
    "unsupported",
    "non-finite value",
    "invalid state",
    "unsupported version",
    "not found",
    "checksum mismatch",
    "callback failed",
    "internal error",
};

const char *kd_status_string(kd_status status)
{
    if ((unsigned)status >= KD_STATUS_COUNT) return "unknown status";
    return kd_status_texts[status];
}

unsigned kd_version_number(void) { return KD_VERSION_NUMBER; }

const char *kd_version_string(void) { return KD_VERSION_STRING; }
