/*
 * startup.c - reset and fault handling for a Cortex-M4F on QEMU's
 * mps2-an386. The reset handler enables the FPU (the library is built for
 * hard float), copies .data from flash, zeroes .bss, opens newlib's
 * semihosting handles (librdimon) and runs main; main's return value leaves
 * QEMU through the semihosting exit call.
 */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __data_load, __data_start, __data_end, __bss_start__, __bss_end__;
extern uint32_t __stack_top;
extern int main(void);
extern void initialise_monitor_handles(void);

void Reset_Handler(void);
void Default_Handler(void);

/* newlib's exit() path may reference these; nothing to run before main. */
void _init(void);
void _fini(void);
void _init(void) {}
void _fini(void) {}

void Default_Handler(void)
{
    /* A fault: leave QEMU with an error through semihosting SYS_EXIT_EXTENDED
     * would need the monitor; spinning keeps the state for a debugger, and the
     * test's timeout reports it. */
    for (;;) {
    }
}

#define CPACR (*(volatile uint32_t *)0xE000ED88u)

void Reset_Handler(void)
{
    CPACR |= 0xFu << 20; /* CP10, CP11: full access to the FPU */
    __asm volatile("dsb\n\tisb" ::: "memory");
    uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end) *dst++ = *src++;
    for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
    initialise_monitor_handles();
    exit(main());
}

typedef void (*vector)(void);

__attribute__((section(".vectors"), used)) static const vector vectors[16] = {
    (vector)(uintptr_t)&__stack_top, /* initial stack pointer */
    Reset_Handler,
    Default_Handler, /* NMI */
    Default_Handler, /* HardFault */
    Default_Handler, /* MemManage */
    Default_Handler, /* BusFault */
    Default_Handler, /* UsageFault */
    0, 0, 0, 0,
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMonitor */
    0,
    Default_Handler, /* PendSV */
    Default_Handler, /* SysTick */
};
