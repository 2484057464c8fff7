/*
 * task_table.h - the vsplice task table as exported by the test guest.
 *
 * This is the host-visible contract: the vsplice patcher (Rust) reads this
 * table from guest memory while every vCPU is parked, to find each task's
 * kernel stack and saved stack pointer for the stack safety check. The Linux
 * guest agent exports the same shape. All integers are little-endian, all
 * addresses are kernel virtual addresses (for the test guest:
 * physical = virtual - 0xffffffff80000000, Linux's __START_KERNEL_map).
 *
 * Symbol `tg_task_table` is the header immediately followed by the entries
 * (entry i at tg_task_table + header_size + i * entry_size).
 * Symbol `tg_task_count` is a u32 copy of the header's count.
 *
 * Header (64 bytes, version 2; version 1 had on_cpu as a u64 and no
 * switches):
 *   off  size  field
 *   0x00  8    magic        "VSPLTASK" as bytes = 0x4b5341544c505356 as a u64
 *   0x08  4    version      2
 *   0x0c  4    entry_size   64
 *   0x10  4    count        number of valid entries
 *   0x14  4    header_size  64 (offset of entry 0 from the header)
 *   0x18  8    seq          sequence counter: odd while an update is in
 *                           progress (read again after resuming the guest)
 *   0x20  4    nr_cpus      CPUs running tasks
 *   0x24  4    tasks_per_cpu
 *   0x28  8    changes      entry indices appended to the change ring since
 *                           boot (0 and ring_size 0: no ring)
 *   0x30  8    ring         address of the change ring: ring_size u32s
 *   0x38  4    ring_size    entries of the ring, a power of two (<= 4096)
 *   0x3c  4    reserved (0)
 *
 * The change ring: every time the host-visible fields of an entry change
 * after boot (saved_sp, on_cpu, switches: at a switch, the task switched
 * away and the one switched to; a CPU's first task), its index (0-based) is
 * written at ring[changes % ring_size] and changes is bumped, under the
 * same seq as the change. A host that read the table at `changes` == c0
 * and reads it again at c1 (c1 - c0 <= ring_size) learns which entries can
 * differ from ring[c0 % ring_size .. c1 % ring_size]; past ring_size
 * changes the ring has been overwritten and the whole table must be read.
 *
 * Entry (64 bytes):
 *   off  size  field
 *   0x00  8    id           task id (1-based, unique)
 *   0x08  16   name         NUL-terminated, e.g. "worker/1:2" (cpu 1, task 2)
 *   0x18  4    state        0 running, 1 runnable, 2 sleeping
 *   0x1c  4    cpu          CPU index the task always runs on (0 = boot CPU)
 *   0x20  8    stack_base   lowest address of the kernel stack
 *   0x28  8    stack_size   bytes (16384; 4096 for tg.sleepers' tasks)
 *   0x30  8    saved_sp     stack pointer saved at the last switch away;
 *                           valid when on_cpu == 0
 *   0x38  4    on_cpu       1 while the task is the current task of its CPU
 *                           (then its stack pointer is the vCPU's RSP)
 *   0x3c  4    switches     times the task was switched away (wraps at
 *                           2^32): written with saved_sp under the table's
 *                           seq, so equal switches and saved_sp at two reads
 *                           mean the task did not run in between unless it
 *                           is on its CPU at the second (the host's
 *                           incremental check relies on this)
 *
 * A task that is not on its CPU was switched away by the timer interrupt.
 * At saved_sp there are its 15 GPRs (r15 at saved_sp+0x00, then r14, r13,
 * r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax at +0x70), then
 * the interrupt frame: rip at saved_sp+0x78, cs +0x80, rflags +0x88,
 * rsp +0x90, ss +0x98. Everything from saved_sp up to stack_base+stack_size
 * is live stack (return addresses of the interrupted call chain included).
 * A task that is on_cpu with state 2 (sleeping) is halted inside tg_sleep.
 */
#ifndef VSPLICE_TASK_TABLE_H
#define VSPLICE_TASK_TABLE_H

#include <stdint.h>

#define VSPLICE_TASK_MAGIC		0x4b5341544c505356ULL	/* "VSPLTASK" */
#define VSPLICE_TASK_VERSION		2
#define VSPLICE_TASK_NAME_LEN		16

#define VSPLICE_TASK_RUNNING		0
#define VSPLICE_TASK_RUNNABLE		1
#define VSPLICE_TASK_SLEEPING		2

struct vsplice_task_header {
	uint64_t magic;
	uint32_t version;
	uint32_t entry_size;
	uint32_t count;
	uint32_t header_size;
	uint64_t seq;
	uint32_t nr_cpus;
	uint32_t tasks_per_cpu;
	uint64_t changes;
	uint64_t ring;
	uint32_t ring_size;
	uint32_t reserved;
};

struct vsplice_task_entry {
	uint64_t id;
	char name[VSPLICE_TASK_NAME_LEN];
	uint32_t state;
	uint32_t cpu;
	uint64_t stack_base;
	uint64_t stack_size;
	uint64_t saved_sp;
	uint32_t on_cpu;
	uint32_t switches;
};

_Static_assert(sizeof(struct vsplice_task_header) == 64, "header size");
_Static_assert(sizeof(struct vsplice_task_entry) == 64, "entry size");
_Static_assert(__builtin_offsetof(struct vsplice_task_header, seq) == 0x18, "seq");
_Static_assert(__builtin_offsetof(struct vsplice_task_header, changes) == 0x28, "changes");
_Static_assert(__builtin_offsetof(struct vsplice_task_header, ring) == 0x30, "ring");
_Static_assert(__builtin_offsetof(struct vsplice_task_header, ring_size) == 0x38, "ring_size");
_Static_assert(__builtin_offsetof(struct vsplice_task_entry, state) == 0x18, "state");
_Static_assert(__builtin_offsetof(struct vsplice_task_entry, stack_base) == 0x20, "stack_base");
_Static_assert(__builtin_offsetof(struct vsplice_task_entry, saved_sp) == 0x30, "saved_sp");
_Static_assert(__builtin_offsetof(struct vsplice_task_entry, on_cpu) == 0x38, "on_cpu");
_Static_assert(__builtin_offsetof(struct vsplice_task_entry, switches) == 0x3c, "switches");

#endif /* VSPLICE_TASK_TABLE_H */
