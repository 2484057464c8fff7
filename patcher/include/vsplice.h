/*
 * vsplice.h - for authors of vsplice live patches.
 *
 * A patch is one C file compiled with the target kernel's own flags. It
 * defines new functions and says which target functions they replace:
 *
 *     #include <vsplice.h>
 *
 *     static u64 tg_step_b_fixed(u64 x) { return x * 0x10001 + 0x2b; }
 *     VSPLICE_REPLACE(tg_step_b, tg_step_b_fixed);
 *
 * New code may call and reference any target symbol, exported or not: an
 * undefined symbol of the patch object is resolved against the running
 * kernel's symbols when the patch is applied. A local (static) symbol whose
 * name exists more than once in the target must be qualified, never guessed:
 *
 *     extern u64 tg_scale(u64);                     // static in patchable.c
 *     VSPLICE_LOCAL(tg_scale, "file:patchable.c");  // or "pos:2"
 *
 * Qualifiers: "file:NAME" (the symbol from that source file; a path suffix
 * matches) or "pos:N" (the N-th symbol of that name in the target's symbol
 * table, 1-based, like kpatch's sympos).
 *
 * The records below go to .vsplice.* sections that `vsplice patch build`
 * reads into the patch manifest; they are never loaded into the guest.
 */
#ifndef VSPLICE_H
#define VSPLICE_H

#define __VSPLICE_CAT2(a, b) a##b
#define __VSPLICE_CAT(a, b) __VSPLICE_CAT2(a, b)
#define __VSPLICE_UNIQ(p) __VSPLICE_CAT(p, __COUNTER__)

/* One text record: "<kind> <a> <b> <qualifier>", NUL-terminated. */
#define __VSPLICE_RECORD(kind, a, b, qual)                                     \
	static const char __VSPLICE_UNIQ(__vsplice_rec_)[]                     \
	__attribute__((section(".vsplice.records"), used, aligned(1))) =      \
		kind " " #a " " #b " " qual

/* Replace target function `old` by this patch's function `new`. */
#define VSPLICE_REPLACE(old, new) VSPLICE_REPLACE_QUAL(old, new, "")

/* Same, for a local `old` that exists more than once ("file:NAME" or "pos:N"). */
#define VSPLICE_REPLACE_QUAL(old, new, qual)                                   \
	__VSPLICE_RECORD("replace", old, new, qual);                           \
	static void *const __VSPLICE_UNIQ(__vsplice_ref_)                      \
	__attribute__((section(".vsplice.refs"), used)) = (void *)&new

/* The undefined symbol `name` of this patch is target symbol `target` (qualified). */
#define VSPLICE_SYMBOL(name, target, qual) __VSPLICE_RECORD("symbol", name, target, qual)

/* The undefined symbol `name` is the target's local symbol of the same name. */
#define VSPLICE_LOCAL(name, qual) VSPLICE_SYMBOL(name, name, qual)

#endif /* VSPLICE_H */
