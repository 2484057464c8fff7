/*
 * trampoline.S - real-mode start code for the secondary CPUs (APs).
 *
 * The BSP copies tg_tramp_start..tg_tramp_end to a free, 4 KiB-aligned page
 * below 1 MiB, fills in the data block at TR_DATA (see tg.h) and sends
 * INIT/SIPI/SIPI with that page as the start vector. The AP then goes
 * real mode -> protected mode -> long mode (on the kernel's tg_pml4) and
 * jumps to tg_ap_start64 on its boot stack. The code only uses addresses
 * relative to its own segment / base, so it runs at any page the BSP picks.
 *
 * It is kept in .rodata: it is never executed where it is linked.
 */
#include "tg.h"

	.section .rodata
	.balign 16
	.globl tg_tramp_start, tg_tramp_end, tg_tramp_pm, tg_tramp_lm
	.code16
tg_tramp_start:
	jmp	tr_real			/* 2 bytes, over the data block */
	.balign 8
	.skip	TR_DATA_END - TR_DATA	/* data block, filled by the BSP */

tr_real:
	cli
	movw	%cs, %ax
	movw	%ax, %ds
	movl	$1, TR_STARTED		/* tell the BSP we are running */
	xorl	%ebx, %ebx
	movw	%ax, %bx
	shll	$4, %ebx		/* ebx = linear base of the trampoline */
	lgdtl	TR_GDTR
	movl	%cr0, %eax
	orl	$1, %eax		/* PE */
	movl	%eax, %cr0
	ljmpl	*TR_PM_PTR

	.code32
tg_tramp_pm:
	movl	$TR_SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	movl	%cr4, %eax
	orl	$0x20, %eax		/* PAE */
	movl	%eax, %cr4
	movl	TR_CR3(%ebx), %eax
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx	/* EFER */
	rdmsr
	orl	$0x100, %eax		/* LME */
	orl	TR_EFER_OR(%ebx), %eax	/* NXE when the BSP has it */
	wrmsr
	movl	%cr0, %eax
	orl	$0x80010001, %eax	/* PG | WP | PE */
	movl	%eax, %cr0
	ljmpl	*TR_LM_PTR(%ebx)

	.code64
tg_tramp_lm:
	movl	%ebx, %ebx		/* upper half is undefined after the switch */
	xorl	%eax, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movq	TR_STACK(%rbx), %rsp
	movl	TR_CPU(%rbx), %edi
	movq	TR_ENTRY(%rbx), %rax
	jmp	*%rax
tg_tramp_end:

	.section .note.GNU-stack, "", @progbits
