// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/* CRC32c arithmetic for SCTP checksums, bounded for the verifier. */
#ifndef SPOKE_CRC32C_H
#define SPOKE_CRC32C_H

/* SCTP's CRC32c covers the SCTP packet but not the addresses: a port
 * translation updates it incrementally. CRC is linear: with the port bytes
 * changed by d at offset k of an L-byte packet, the new CRC is the old one
 * xor the raw (zero-init) CRC of d followed by L-k-2 zero bytes, that is the
 * CRC of d multiplied by x^(8(L-k-2)) modulo the polynomial. Polynomials are
 * reflected, x^0 being the top bit, as in zlib's crc32_combine. Bits
 * select with a multiplication by 0 or 1, not a mask of 0 or -1: the
 * verifier follows a 0-or-1 product as one range, but splits a 0-or-minus-1
 * mask into two paths, 2^n paths for n unknown bits. */
#define CRC32C_POLY 0x82f63b78

/* x2n[k] = x^(2^k) mod P. */
static const __u32 crc32c_x2n[32] = {
	0x40000000, 0x20000000, 0x08000000, 0x00800000, 0x00008000, 0x82f63b78, 0x6ea2d55c, 0x18b8ea18,
	0x510ac59a, 0xb82be955, 0xb8fdb1e7, 0x88e56f72, 0x74c360a4, 0xe4172b16, 0x0d65762a, 0x35d73a62,
	0x28461564, 0xbf455269, 0xe2ea32dc, 0xfe7740e6, 0xf946610b, 0x3c204f8f, 0x538586e3, 0x59726915,
	0x734d5309, 0xbc1ac763, 0x7d0722cc, 0xd289cabe, 0xe94ca9bc, 0x05b74f3f, 0xa51e1f42, 0x40000000,
};

static __always_inline __u32 crc32c_mulmod(__u32 a, __u32 b)
{
	__u32 p = 0;

	for (int i = 0; i < 32; i++) {
		p ^= b * ((a >> (31 - i)) & 1);
		b = (b >> 1) ^ (CRC32C_POLY * (b & 1));
	}
	return p;
}

struct crc32c_pow {
	__u32 x; /* x^(8 * the bits of n seen so far) */
	__u32 n;
};

/* crc32c_pow_step multiplies in x^(8 * 2^i) if bit i of n is set. */
static long crc32c_pow_step(__u64 i, void *ctx)
{
	struct crc32c_pow *s = ctx;
	__u32 t;

	if (i >= 16)
		return 1;
	t = crc32c_mulmod(crc32c_x2n[i + 3], s->x);
	s->x ^= (t ^ s->x) * ((s->n >> i) & 1);
	return 0;
}

/* crc32c_zeros returns crc advanced through n zero bytes, n < 65536. The
 * steps run under bpf_loop, so the verifier checks one of them. */
static __always_inline __u32 crc32c_zeros(__u32 crc, __u32 n)
{
	struct crc32c_pow s = {.x = 1u << 31, .n = n};

	if (bpf_loop(16, crc32c_pow_step, &s, 0) != 16)
		return 0;
	return crc32c_mulmod(s.x, crc);
}

static __always_inline __u32 crc32c_byte(__u32 c, __u8 b)
{
	c ^= b;
	for (int i = 0; i < 8; i++)
		c = (c >> 1) ^ (CRC32C_POLY * (c & 1));
	return c;
}

#endif /* SPOKE_CRC32C_H */
