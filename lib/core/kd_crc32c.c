/* kd_crc32c.c - CRC-32C (Castagnoli), table-driven slicing-by-8. */
#include "kd_internal.h"

static uint32_t kd_crc_table[8][256];
/* 0: not built, 1: being built by one thread, 2: ready. A compare-and-swap
 * picks the builder; others wait for it (firmware builds are single-threaded
 * and never wait). No pthreads, so the core stays freestanding. */
static int kd_crc_state;

static void kd_crc_build(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        kd_crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = kd_crc_table[0][i];
        for (int t = 1; t < 8; t++) {
            c = kd_crc_table[0][c & 0xffu] ^ (c >> 8);
            kd_crc_table[t][i] = c;
        }
    }
}

static void kd_crc_init(void)
{
    int expected = 0;
    if (__atomic_compare_exchange_n(&kd_crc_state, &expected, 1, 0, __ATOMIC_ACQUIRE,
                                    __ATOMIC_ACQUIRE)) {
        kd_crc_build();
        __atomic_store_n(&kd_crc_state, 2, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&kd_crc_state, __ATOMIC_ACQUIRE) != 2) {
    }
}

uint32_t kd_crc32c(uint32_t crc, const void *data, size_t size)
{
    if (__atomic_load_n(&kd_crc_state, __ATOMIC_ACQUIRE) != 2) kd_crc_init();
    const unsigned char *p = (const unsigned char *)data;
    if (!p) return crc;
    crc = ~crc;
    while (size >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                             (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 |
                      (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        crc = kd_crc_table[7][lo & 0xff] ^ kd_crc_table[6][(lo >> 8) & 0xff] ^
              kd_crc_table[5][(lo >> 16) & 0xff] ^ kd_crc_table[4][lo >> 24] ^
              kd_crc_table[3][hi & 0xff] ^ kd_crc_table[2][(hi >> 8) & 0xff] ^
              kd_crc_table[1][(hi >> 16) & 0xff] ^ kd_crc_table[0][hi >> 24];
        p += 8;
        size -= 8;
    }
    while (size--) crc = kd_crc_table[0][(crc ^ *p++) & 0xffu] ^ (crc >> 8);
    return ~crc;
}
