/*
 * head64.S - 64-bit entry of the vsplice test guest, its page tables, GDT,
 * interrupt entry stubs and the first switch into a task.
 *
 * Entered like Linux through the 64-bit boot protocol
 * (Documentation/arch/x86/boot.rst): long mode, the loader's identity map,
 * CS=0x10/DS=0x18, interrupts off, RSI = physical address of boot_params,
 * RIP = phys_startup_64 (the ELF e_entry). We switch to our own page tables
 * (identity map of the low 4 GiB + the __START_KERNEL_map mapping of the
 * image), jump to the kernel-half virtual address, load our GDT and call
 * tg_main(boot_params_phys).
 */
#include "tg.h"

#define PA(x)		((x) - TG_START_KERNEL_MAP)
#define PTE_TABLE	0x23	/* present, writable, accessed */
#define PDE_LARGE	0xe3	/* present, writable, accessed, dirty, 2 MiB page */
#define PDE_UNCACHED	0x18	/* PWT | PCD, for the MMIO hole above 3 GiB */

	.section .head.text, "ax"
	.code64
	.globl startup_64
	.type startup_64, @function
startup_64:
	cli
	cld
	movq	%rsi, %r15			/* boot_params (physical) */

	/*
	 * Map the image's 2 MiB slots in level2 of the kernel mapping:
	 * PD[phys >> 21] = phys | large page, for _text .. _end. The slots
	 * after _end stay empty (vsplice maps its patch arena into one).
	 * We still run at physical addresses, so RIP-relative leas give
	 * physical addresses.
	 */
	leaq	_text(%rip), %rax
	andq	$~0x1fffff, %rax
	leaq	_end(%rip), %rcx
	leaq	tg_kernel_pd(%rip), %rdi
1:	movq	%rax, %rdx
	shrq	$21, %rdx
	movq	%rax, %r8
	orq	$PDE_LARGE, %r8
	movq	%r8, (%rdi,%rdx,8)
	addq	$0x200000, %rax
	cmpq	%rcx, %rax
	jb	1b

	leaq	tg_pml4(%rip), %rax
	movq	%rax, %cr3

	call	enable_nx_if_supported

	movabsq	$startup_64_high, %rax
	jmp	*%rax
	.size startup_64, . - startup_64

/* Set EFER.NXE when CPUID says NX exists (the patch arena's data slot is NX). */
	.type enable_nx_if_supported, @function
enable_nx_if_supported:
	pushq	%rbx
	movl	$0x80000000, %eax
	cpuid
	cmpl	$0x80000001, %eax
	jb	2f
	movl	$0x80000001, %eax
	cpuid
	btl	$20, %edx
	jnc	2f
	movl	$0xc0000080, %ecx
	rdmsr
	orl	$0x800, %eax
	wrmsr
	movl	$0x800, tg_efer_nx(%rip)	/* the APs' trampoline sets it too */
2:	popq	%rbx
	ret
	.size enable_nx_if_supported, . - enable_nx_if_supported

	.text
	.type startup_64_high, @function
startup_64_high:
	leaq	tg_boot_stacks + TG_BOOT_STACK_SIZE(%rip), %rsp
	call	load_gdt_and_segments

	/* Zero .bss (small; the stacks live in .bss..stacks, not cleared). */
	leaq	__bss_start(%rip), %rdi
	leaq	__bss_stop(%rip), %rcx
	xorl	%eax, %eax
3:	cmpq	%rcx, %rdi
	jae	4f
	movq	%rax, (%rdi)
	addq	$8, %rdi
	jmp	3b
4:
	movq	%r15, %rdi
	call	tg_main
	jmp	halt_loop
	.size startup_64_high, . - startup_64_high

/*
 * Secondary CPUs arrive here from the trampoline in 64-bit mode on our page
 * tables, with RSP = their boot stack (virtual) and EDI = CPU index.
 */
	.globl tg_ap_start64
	.type tg_ap_start64, @function
tg_ap_start64:
	movl	%edi, %r15d
	call	load_gdt_and_segments
	movl	%r15d, %edi
	call	tg_ap_main
	jmp	halt_loop
	.size tg_ap_start64, . - tg_ap_start64

halt_loop:
	cli
	hlt
	jmp	halt_loop

/* lgdt our GDT; reload CS via lretq and the data segments. Clobbers rax. */
	.type load_gdt_and_segments, @function
load_gdt_and_segments:
	lgdt	tg_gdt_desc(%rip)
	movl	$TG_KERNEL_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs		/* GS base is set later through the MSR */
	popq	%rax			/* return address */
	pushq	$TG_KERNEL_CS
	pushq	%rax
	lretq
	.size load_gdt_and_segments, . - load_gdt_and_segments

/* ---------------- interrupts ---------------- */

	.macro SAVE_REGS
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	.endm

	.macro RESTORE_REGS
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rbp
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rbx
	popq	%rax
	.endm

/*
 * LAPIC timer: save all GPRs on the current task's stack, let the C
 * scheduler record this stack pointer and pick the next task of this CPU,
 * continue on the stack it returns (Linux switch_to style).
 */
	.globl tg_timer_entry
	.type tg_timer_entry, @function
tg_timer_entry:
	SAVE_REGS
	movq	%rsp, %rdi
	call	tg_timer_interrupt
	movq	%rax, %rsp
	.globl tg_switch_done
tg_switch_done:
	RESTORE_REGS
	iretq
	.size tg_timer_entry, . - tg_timer_entry

/* Start a CPU's first task from its prepared frame (same shape as above). */
	.globl tg_start_first
	.type tg_start_first, @function
tg_start_first:
	movq	%rdi, %rsp
	RESTORE_REGS
	iretq
	.size tg_start_first, . - tg_start_first

/*
 * tg_park_enter(stack_top, arg, fn): run fn(arg) on a fresh stack (with a
 * 0 return address at its top, like a task's first frame) until it calls
 * tg_park; then return to our caller. Keeps the callee-saved registers.
 * Used once per sleeper at boot (sleepers.c).
 */
	.globl tg_park_enter
	.type tg_park_enter, @function
tg_park_enter:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rsp, tg_park_return_sp(%rip)
	movq	%rdi, %rsp
	movq	%rsi, %rdi
	pushq	$0
	jmp	*%rdx
	.size tg_park_enter, . - tg_park_enter

/*
 * tg_park(u64 *saved_sp): switch the current context out the way the timer
 * switches a task out: an interrupt frame (ss, rsp, rflags, cs, rip = 1f)
 * and the 15 GPRs on this stack, their address stored at *saved_sp (the
 * task table entry's saved_sp); then continue in tg_park_enter's caller.
 * Resumed like any switched-out task (RESTORE_REGS; iretq), it returns to
 * its caller from 1f.
 */
	.globl tg_park
	.type tg_park, @function
tg_park:
	movq	%rsp, %rax
	pushq	$TG_KERNEL_DS
	pushq	%rax
	pushfq
	pushq	$TG_KERNEL_CS
	leaq	1f(%rip), %rax
	pushq	%rax
	SAVE_REGS
	movq	%rsp, (%rdi)
	movq	tg_park_return_sp(%rip), %rsp
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret
1:	ret
	.size tg_park, . - tg_park

	.globl tg_spurious_entry
	.type tg_spurious_entry, @function
tg_spurious_entry:
	iretq
	.size tg_spurious_entry, . - tg_spurious_entry

/*
 * Exception stubs for vectors 0..31, 16 bytes apart: push a 0 error code
 * where the CPU does not push one, push the vector, report and halt.
 */
	.balign 16
	.globl tg_exc_stubs
tg_exc_stubs:
	vec = 0
	.rept 32
	.balign 16
	.if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq	$0
	.endif
	pushq	$vec
	jmp	tg_exc_common
	vec = vec + 1
	.endr

	.type tg_exc_common, @function
tg_exc_common:
	SAVE_REGS
	movq	%rsp, %rdi
	call	tg_exception
	jmp	halt_loop
	.size tg_exc_common, . - tg_exc_common

/* Triple fault on purpose: empty IDT, then an invalid opcode. */
	.globl tg_triple_fault
	.type tg_triple_fault, @function
tg_triple_fault:
	cli
	lidt	tg_null_idt(%rip)
	ud2
	jmp	halt_loop
	.size tg_triple_fault, . - tg_triple_fault

/* ---------------- data ---------------- */

	.section .rodata
	.balign 16
tg_null_idt:
	.word	0
	.quad	0

	.balign 16
	.globl tg_gdt
tg_gdt:
	.quad	0			/* 0x00 null */
	.quad	0			/* 0x08 unused */
	.quad	0x00af9b000000ffff	/* 0x10 __KERNEL_CS: 64-bit code */
	.quad	0x00cf93000000ffff	/* 0x18 __KERNEL_DS */
tg_gdt_end:
	.balign 16
tg_gdt_desc:
	.word	tg_gdt_end - tg_gdt - 1
	.quad	tg_gdt

	.data
	.balign 4
	.globl tg_efer_nx
tg_efer_nx:
	.long	0

/*
 * Page tables, statically built like Linux's init_top_pgt /
 * level3_kernel_pgt / level2_kernel_pgt:
 *   tg_pml4[0]   -> tg_ident_pdpt -> tg_ident_pd[0..3]: identity map of
 *                   0..4 GiB with 2 MiB pages (3..4 GiB uncached: MMIO)
 *   tg_pml4[511] -> tg_kernel_pdpt[510] -> tg_kernel_pd: 2 MiB pages,
 *                   virtual 0xffffffff80000000 + phys for the image only
 *                   (filled in by startup_64); the slots after _end are empty.
 */
	.section .data..page_aligned, "aw"
	.balign 4096
	.globl tg_pml4, init_top_pgt
tg_pml4:
init_top_pgt:
	.quad	PA(tg_ident_pdpt) + PTE_TABLE
	.fill	510, 8, 0
	.quad	PA(tg_kernel_pdpt) + PTE_TABLE
	.size tg_pml4, 4096

	.globl tg_ident_pdpt
tg_ident_pdpt:
	.quad	PA(tg_ident_pd) + 0x0000 + PTE_TABLE
	.quad	PA(tg_ident_pd) + 0x1000 + PTE_TABLE
	.quad	PA(tg_ident_pd) + 0x2000 + PTE_TABLE
	.quad	PA(tg_ident_pd) + 0x3000 + PTE_TABLE
	.fill	508, 8, 0
	.size tg_ident_pdpt, 4096

	.globl tg_kernel_pdpt, level3_kernel_pgt
tg_kernel_pdpt:
level3_kernel_pgt:
	.fill	510, 8, 0
	.quad	PA(tg_kernel_pd) + PTE_TABLE
	.quad	0
	.size tg_kernel_pdpt, 4096

	.globl tg_kernel_pd, level2_kernel_pgt
tg_kernel_pd:
level2_kernel_pgt:
	.fill	512, 8, 0
	.size tg_kernel_pd, 4096

	.globl tg_ident_pd
tg_ident_pd:
	i = 0
	.rept 2048
	.if i >= 1536
	.quad	(i << 21) + PDE_LARGE + PDE_UNCACHED
	.else
	.quad	(i << 21) + PDE_LARGE
	.endif
	i = i + 1
	.endr
	.size tg_ident_pd, 4 * 4096

/* Per-CPU boot stacks (CPU 0 is the BSP); not zeroed, not scanned by anyone. */
	.section .bss..stacks, "aw", @nobits
	.balign 4096
	.globl tg_boot_stacks
tg_boot_stacks:
	.skip	TG_MAX_CPUS * TG_BOOT_STACK_SIZE
	.size tg_boot_stacks, TG_MAX_CPUS * TG_BOOT_STACK_SIZE

	.section .note.GNU-stack, "", @progbits
