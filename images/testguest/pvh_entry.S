/*
 * pvh_entry.S - OPTIONAL 32-bit PVH entry, linked only into
 * testguest-pvh.elf, so that `qemu-system-x86_64 -kernel testguest-pvh.elf`
 * can boot the test guest (QEMU's -kernel cannot do the Linux 64-bit boot
 * protocol). It plays the boot loader: from the PVH hvm_start_info (EBX) it
 * builds a boot_params "zero page" (e820 from the PVH memory map, command
 * line, acpi_rsdp_addr), builds an identity map of 4 GiB with 2 MiB pages
 * and a GDT with CS=0x10 / DS=0x18, enters long mode and jumps to
 * startup_64 with RSI = the zero page, exactly as a 64-bit loader would.
 * Nothing else in the guest knows about PVH.
 */
#include "tg.h"

#define PA(x)			((x) - TG_START_KERNEL_MAP)
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC		0x336ec578

/* hvm_start_info offsets */
#define SI_MAGIC		0
#define SI_VERSION		4
#define SI_CMDLINE		24
#define SI_RSDP			32
#define SI_MEMMAP		40
#define SI_MEMMAP_ENTRIES	48

/* boot_params offsets */
#define BP_ACPI_RSDP		0x070
#define BP_E820_ENTRIES		0x1e8
#define BP_CMD_LINE_PTR		0x228
#define BP_E820_TABLE		0x2d0

	.pushsection .note.Xen, "a", @note
	.balign 4
	.long	4			/* namesz */
	.long	8			/* descsz */
	.long	XEN_ELFNOTE_PHYS32_ENTRY
	.asciz	"Xen"
	.balign 4
	.quad	PA(pvh_start32)
	.balign 4
	.popsection

	.section .head.text, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	movl	$PA(pvh_stack_top), %esp
	movl	%ebx, %esi			/* hvm_start_info */

	/* zero page := 0 */
	movl	$PA(pvh_zero_page), %edi
	movl	$1024, %ecx
	xorl	%eax, %eax
	rep stosl

	cmpl	$HVM_START_MAGIC, SI_MAGIC(%esi)
	jne	pvh_build_tables

	/* acpi_rsdp_addr */
	movl	SI_RSDP(%esi), %eax
	movl	%eax, PA(pvh_zero_page) + BP_ACPI_RSDP
	movl	SI_RSDP+4(%esi), %eax
	movl	%eax, PA(pvh_zero_page) + BP_ACPI_RSDP + 4

	/* command line: copy up to 2047 bytes */
	movl	SI_CMDLINE(%esi), %edx
	testl	%edx, %edx
	jz	1f
	movl	$PA(pvh_cmdline), %edi
	movl	$2047, %ecx
2:	movb	(%edx), %al
	testb	%al, %al
	jz	3f
	movb	%al, (%edi)
	incl	%edx
	incl	%edi
	decl	%ecx
	jnz	2b
3:	movb	$0, (%edi)
	movl	$PA(pvh_cmdline), PA(pvh_zero_page) + BP_CMD_LINE_PTR
1:
	/* memory map (version >= 1): 24-byte PVH entries -> 20-byte e820 */
	cmpl	$1, SI_VERSION(%esi)
	jb	pvh_build_tables
	movl	SI_MEMMAP(%esi), %edx
	movl	SI_MEMMAP_ENTRIES(%esi), %ecx
	cmpl	$128, %ecx
	jbe	4f
	movl	$128, %ecx
4:	movb	%cl, PA(pvh_zero_page) + BP_E820_ENTRIES
	movl	$PA(pvh_zero_page) + BP_E820_TABLE, %edi
	testl	%ecx, %ecx
	jz	pvh_build_tables
5:	movl	0(%edx), %eax
	movl	%eax, 0(%edi)
	movl	4(%edx), %eax
	movl	%eax, 4(%edi)
	movl	8(%edx), %eax
	movl	%eax, 8(%edi)
	movl	12(%edx), %eax
	movl	%eax, 12(%edi)
	movl	16(%edx), %eax
	movl	%eax, 16(%edi)
	addl	$24, %edx
	addl	$20, %edi
	decl	%ecx
	jnz	5b

pvh_build_tables:
	movl	$PA(pvh_pml4), %edi		/* pml4 + pdpt := 0 */
	movl	$2048, %ecx
	xorl	%eax, %eax
	rep stosl
	/* identity map 0..4 GiB: pml4[0] -> pdpt[0..3] -> 4 PDs of 2 MiB pages */
	movl	$PA(pvh_pdpt) + 0x23, PA(pvh_pml4)
	movl	$PA(pvh_pd) + 0x0000 + 0x23, PA(pvh_pdpt) + 0
	movl	$PA(pvh_pd) + 0x1000 + 0x23, PA(pvh_pdpt) + 8
	movl	$PA(pvh_pd) + 0x2000 + 0x23, PA(pvh_pdpt) + 16
	movl	$PA(pvh_pd) + 0x3000 + 0x23, PA(pvh_pdpt) + 24
	movl	$PA(pvh_pd), %edi
	xorl	%eax, %eax			/* physical address of the page */
	xorl	%edx, %edx			/* high dword of the entry */
6:	movl	%eax, %ebx
	orl	$0xe3, %ebx
	movl	%ebx, (%edi)
	movl	%edx, 4(%edi)
	addl	$8, %edi
	addl	$0x200000, %eax
	jnz	6b				/* wraps to 0 after 4 GiB */

	lgdt	PA(pvh_gdt_desc)
	movl	%cr4, %eax
	orl	$0x20, %eax			/* PAE */
	movl	%eax, %cr4
	movl	$PA(pvh_pml4), %eax
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx
	rdmsr
	orl	$0x100, %eax			/* LME */
	wrmsr
	movl	%cr0, %eax
	orl	$0x80000001, %eax		/* PG | PE */
	movl	%eax, %cr0
	ljmp	$TG_KERNEL_CS, $PA(pvh_start64)

	.code64
pvh_start64:
	movl	$TG_KERNEL_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	$PA(pvh_stack_top), %esp
	movl	$PA(pvh_zero_page), %esi
	jmp	startup_64

	.section .rodata
	.balign 16
pvh_gdt:
	.quad	0
	.quad	0
	.quad	0x00af9b000000ffff		/* 0x10: 64-bit code */
	.quad	0x00cf93000000ffff		/* 0x18: data */
pvh_gdt_end:
pvh_gdt_desc:
	.word	pvh_gdt_end - pvh_gdt - 1
	.long	PA(pvh_gdt)

	.section .bss..stacks, "aw", @nobits
	.balign 4096
pvh_pml4:	.skip 4096
pvh_pdpt:	.skip 4096
pvh_pd:		.skip 4 * 4096
pvh_zero_page:	.skip 4096
pvh_cmdline:	.skip 2048
	.balign 16
		.skip 4096
pvh_stack_top:

	.section .note.GNU-stack, "", @progbits
