/*
 * acpi.c - CPU discovery for the test guest: the local APIC IDs of all
 * enabled CPUs, from the ACPI MADT (RSDP -> XSDT/RSDT -> "APIC") or, when
 * there is no usable MADT, from the Intel MultiProcessor table ("_MP_"
 * floating pointer -> "PCMP" configuration table, processor entries).
 *
 * Low memory and firmware tables are reached through the identity map of
 * the first 4 GiB (virtual == physical there).
 */
#include "tg.h"

static const u8 *phys(u64 pa)
{
	/* Opaque to gcc, which otherwise warns about "pointers" from constants. */
	__asm__("" : "+r"(pa));
	return (const u8 *)(uintptr_t)pa;
}

static u8 sum8(const u8 *p, u32 len)
{
	u8 s = 0;

	while (len--)
		s = (u8)(s + *p++);
	return s;
}

static u16 rd16(const u8 *p) { return (u16)(p[0] | (p[1] << 8)); }
static u32 rd32(const u8 *p) { return rd16(p) | ((u32)rd16(p + 2) << 16); }
static u64 rd64(const u8 *p) { return rd32(p) | ((u64)rd32(p + 4) << 32); }

static int add_id(u32 *ids, int n, int max, u32 id)
{
	for (int i = 0; i < n; i++)
		if (ids[i] == id)
			return n;
	if (n < max)
		ids[n++] = id;
	return n;
}

/* ---- ACPI ---- */

#define RSDP_SIG 0x2052545020445352ULL	/* "RSD PTR " */

static const u8 *rsdp_check(u64 pa)
{
	const u8 *p = phys(pa);

	if (rd64(p) != RSDP_SIG || sum8(p, 20) != 0)
		return NULL;
	return p;
}

static const u8 *rsdp_scan(u64 start, u64 end)
{
	for (u64 pa = start; pa + 20 <= end; pa += 16) {
		const u8 *p = rsdp_check(pa);
		if (p)
			return p;
	}
	return NULL;
}

static const u8 *find_rsdp(u64 hint)
{
	const u8 *p;
	u64 ebda;

	if (hint && hint < 0x100000000ULL && (p = rsdp_check(hint)))
		return p;
	/* Like Linux: the first KiB of the EBDA, then the BIOS area. */
	ebda = (u64)rd16(phys(0x40e)) << 4;
	if (ebda >= 0x80000 && ebda < 0xa0000 && (p = rsdp_scan(ebda, ebda + 1024)))
		return p;
	return rsdp_scan(0xe0000, 0x100000);
}

static const u8 *acpi_table(u64 pa, u32 want_sig)
{
	const u8 *t;
	u32 len;

	if (!pa || pa >= 0x100000000ULL)
		return NULL;
	t = phys(pa);
	len = rd32(t + 4);
	if (rd32(t) != want_sig || len < 36 || len > 0x100000 || sum8(t, len) != 0)
		return NULL;
	return t;
}

#define SIG(a, b, c, d) ((u32)(a) | ((u32)(b) << 8) | ((u32)(c) << 16) | ((u32)(d) << 24))

static const u8 *find_madt(const u8 *rsdp)
{
	const u8 *root = NULL;
	u32 esz = 4;

	if (rsdp[15] >= 2 && rd64(rsdp + 24)) {
		root = acpi_table(rd64(rsdp + 24), SIG('X', 'S', 'D', 'T'));
		esz = 8;
	}
	if (!root) {
		root = acpi_table(rd32(rsdp + 16), SIG('R', 'S', 'D', 'T'));
		esz = 4;
	}
	if (!root)
		return NULL;
	for (u32 off = 36; off + esz <= rd32(root + 4); off += esz) {
		u64 pa = esz == 8 ? rd64(root + off) : rd32(root + off);
		const u8 *t = acpi_table(pa, SIG('A', 'P', 'I', 'C'));
		if (t)
			return t;
	}
	return NULL;
}

static int madt_cpus(const u8 *madt, u32 *ids, int max)
{
	u32 len = rd32(madt + 4);
	int n = 0;

	for (u32 off = 44; off + 2 <= len;) {
		const u8 *e = madt + off;
		u8 type = e[0], elen = e[1];

		if (elen < 2 || off + elen > len)
			break;
		if (type == 0 && elen >= 8 && (rd32(e + 4) & 1))	/* local APIC, enabled */
			n = add_id(ids, n, max, e[3]);
		else if (type == 9 && elen >= 16 && (rd32(e + 8) & 1))	/* local x2APIC */
			if (rd32(e + 4) < 255)
				n = add_id(ids, n, max, rd32(e + 4));
		off += elen;
	}
	return n;
}

/* ---- MP table ---- */

#define MP_SIG SIG('_', 'M', 'P', '_')

static const u8 *mpf_scan(u64 start, u64 end)
{
	for (u64 pa = start; pa + 16 <= end; pa += 16) {
		const u8 *p = phys(pa);
		if (rd32(p) == MP_SIG && p[8] == 1 && sum8(p, 16) == 0)
			return p;
	}
	return NULL;
}

static int mp_cpus(u32 *ids, int max)
{
	const u8 *mpf = NULL, *cfg;
	u64 ebda = (u64)rd16(phys(0x40e)) << 4;
	u32 cfg_pa, len, off;
	u16 count;
	int n = 0;

	if (ebda >= 0x80000 && ebda < 0xa0000)
		mpf = mpf_scan(ebda, ebda + 1024);
	if (!mpf)
		mpf = mpf_scan(0x9fc00, 0xa0000);
	if (!mpf)
		mpf = mpf_scan(0xf0000, 0x100000);
	if (!mpf)
		return 0;
	cfg_pa = rd32(mpf + 4);
	if (!cfg_pa)
		return 0;	/* a default configuration: not supported */
	cfg = phys(cfg_pa);
	len = rd16(cfg + 4);
	if (rd32(cfg) != SIG('P', 'C', 'M', 'P') || len < 44 || sum8(cfg, len) != 0)
		return 0;
	count = rd16(cfg + 34);
	off = 44;
	for (u16 i = 0; i < count && off < len; i++) {
		const u8 *e = cfg + off;

		if (e[0] == 0) {		/* processor, 20 bytes */
			if (e[3] & 1)		/* CPU enabled */
				n = add_id(ids, n, max, e[1]);
			off += 20;
		} else if (e[0] <= 4) {		/* bus, I/O APIC, interrupt assignments */
			off += 8;
		} else {
			break;
		}
	}
	return n;
}

int tg_find_cpus(u64 rsdp_hint, int use_acpi, u32 *ids, int max, int *source)
{
	int n;

	if (use_acpi) {
		const u8 *rsdp = find_rsdp(rsdp_hint);
		const u8 *madt = rsdp ? find_madt(rsdp) : NULL;

		if (madt && (n = madt_cpus(madt, ids, max)) > 0) {
			*source = TG_CPU_SOURCE_MADT;
			return n;
		}
	}
	n = mp_cpus(ids, max);
	if (n > 0) {
		*source = TG_CPU_SOURCE_MP;
		return n;
	}
	*source = TG_CPU_SOURCE_NONE;
	return 0;
}
