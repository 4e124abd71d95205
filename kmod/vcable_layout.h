/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vcable_layout.h - shared memory layout of the virtual USB4 cable.
 *
 * The one definition of the layout: the kernel module includes it, the
 * static_asserts below pin every offset, and the host tool qemu/cable-ctl
 * (Rust) has a test that reads these static_asserts and #defines and
 * compares them with its own offsets. Bump USB4VC_VERSION on any
 * incompatible change (fields added in what was zeroed padding are not:
 * older readers ignore them). All fields are little endian. Every field has
 * exactly one writer (the host tool, side "a" or side "b"), because atomic
 * read-modify-write across two TCG guests is not reliable.
 */
#ifndef VCABLE_LAYOUT_H
#define VCABLE_LAYOUT_H

#include <linux/build_bug.h>
#include <linux/stddef.h>
#include <linux/types.h>

#define USB4VC_MAGIC		0x3142435634425355ULL	/* "USB4VCB1" */
#define USB4VC_VERSION		1
#define USB4VC_HDR_SIZE		0x3000
#define USB4VC_FRAME_SIZE	4096
#define USB4VC_MAX_CHAN		32
#define USB4VC_MAX_PROPS	16
#define USB4VC_PROP_NAME	12
#define USB4VC_HOSTNAME		72
#define USB4VC_MIN_HOPID	8
#define USB4VC_XPROP_SIZE	(0x1000 - 0x608)

/* Frame types: the PDF values of the upstream driver */
#define USB4VC_FRAME_DATA	2
#define USB4VC_FRAME_CLOSE	3

/*
 * usb4vhost carries the NHI's start-of-frame PDF in the high byte of the
 * descriptor's type (the low byte is the end-of-frame PDF).
 */
#define USB4VC_TYPE_EOF_MASK	0x00ff
#define USB4VC_TYPE_SOF_SHIFT	8

/* Frame flags, set by the receiver */
#define USB4VC_FLAG_CRC		0x1

/* Side states */
#define USB4VC_STATE_FREE	0
#define USB4VC_STATE_PRESENT	1

/**
 * struct usb4vc_hdr - The cable's header page, written by cable-ctl only
 * @magic: %USB4VC_MAGIC, written last by ``cable-ctl init``
 * @version: %USB4VC_VERSION
 * @hdr_size: %USB4VC_HDR_SIZE (header and both side areas)
 * @total_size: Size of the whole region
 * @nchan: Channels per direction (HopIDs 8 .. 7 + @nchan)
 * @nslots: Frames per channel ring, a power of two
 * @frame_size: %USB4VC_FRAME_SIZE
 * @reserved0: Zero
 * @rings_off: Offset of the first ring
 * @ring_stride: Bytes per ring (descriptors, padded to a frame, and payload)
 * @pad0: Zero
 * @plugged: 1 while the cable is plugged
 * @ctrl_gen: Bumped by cable-ctl on every change
 * @rate_bps: Cap on what each side sends, bytes/s (0 = none)
 * @corrupt_req: Frames to corrupt so far, cumulative: a2b, b2a
 * @pad1: Zero
 * @ring_delay_us: Per ring (direction, channel) delay before the receiver
 *	takes a frame from the cable, microseconds (0 = none)
 * @ring_rate_bps: Per ring cap on what the sender moves into it, bytes/s
 * @pad2: Zero
 */
struct usb4vc_hdr {
	u64 magic;		/* 0x000 USB4VC_MAGIC */
	u32 version;		/* 0x008 USB4VC_VERSION */
	u32 hdr_size;		/* 0x00c USB4VC_HDR_SIZE */
	u64 total_size;		/* 0x010 size of the whole region */
	u32 nchan;		/* 0x018 channels per direction (HopIDs 8..7+nchan) */
	u32 nslots;		/* 0x01c frames per channel ring, power of two */
	u32 frame_size;		/* 0x020 USB4VC_FRAME_SIZE */
	u32 reserved0;		/* 0x024 */
	u64 rings_off;		/* 0x028 offset of the first ring */
	u64 ring_stride;	/* 0x030 bytes per ring (descriptors + payload) */
	u8 pad0[0x100 - 0x38];
	/* Host control: written only by cable-ctl */
	u32 plugged;		/* 0x100 1 = cable plugged, 0 = unplugged */
	u32 ctrl_gen;		/* 0x104 bumped by cable-ctl on every change */
	u64 rate_bps;		/* 0x108 TX rate cap per direction, 0 = none */
	u32 corrupt_req[2];	/* 0x110 cumulative frames to corrupt: a2b, b2a */
	u8 pad1[0x200 - 0x118];
	/* Per ring faults, by direction (0 = a2b, 1 = b2a) and HopID - 8 */
	u32 ring_delay_us[2][USB4VC_MAX_CHAN];	/* 0x200 receiver holds frames */
	u64 ring_rate_bps[2][USB4VC_MAX_CHAN];	/* 0x300 sender's cap */
	u8 pad2[0x1000 - 0x500];
};

/**
 * struct usb4vc_prop - A published stream (for cable-ctl status)
 * @name: Stream name, NUL terminated
 * @in_hopid: Its input HopID as published
 * @out_hopid: Its output HopID as published
 */
struct usb4vc_prop {
	char name[USB4VC_PROP_NAME];	/* stream name, NUL terminated */
	s32 in_hopid;
	s32 out_hopid;
};

/**
 * struct usb4vc_side - One side's area (a at 0x1000, b at 0x2000), written by
 *	that side only
 * @nonce: The owner's claim, 0 = free
 * @heartbeat: Incremented every 100 ms
 * @state: %USB4VC_STATE_FREE or %USB4VC_STATE_PRESENT
 * @session: Bumped on every claim (the peer sees a reload)
 * @uuid: Host UUID (the host router's unique_id)
 * @hostname: Host name, for cable-ctl status
 * @link_up: This side sees the link up
 * @max_hopid: Our maxhopid (also in our property block)
 * @reserved1: Zero
 * @tx_frames: Frames sent (counters refreshed every 100 ms)
 * @tx_bytes: Bytes sent
 * @rx_frames: Frames received
 * @rx_bytes: Bytes received
 * @crc_errors: Frames corrupted on receive
 * @close_tx: CLOSE frames sent
 * @close_rx: CLOSE frames received
 * @stale_drops: Frames of an earlier session dropped
 * @corrupt_done: Frames corrupted so far, against the header's corrupt_req
 *	of the direction we receive
 * @pad_c4: Zero
 * @props_gen: Odd while @props is rewritten
 * @props_count: Entries in @props
 * @props: Streams found in our property block
 * @pad_248: Zero
 * @rx_post: Per channel: non-zero generation while our RX ring is posted
 * @rx_cons: Per channel: our RX consumer index
 * @tx_prod: Per channel: our TX producer index
 * @rx_credit: Per channel: the sender may fill slot tx_prod while it is
 *	before this (one credit per RX buffer our driver posted)
 * @xprop_gen: Odd while @xprop is rewritten
 * @xprop_len: Bytes used in @xprop
 * @xprop: Our XDomain property block (format: kmod/README.md)
 */
struct usb4vc_side {
	u64 nonce;		/* 0x000 owner's claim, 0 = free */
	u64 heartbeat;		/* 0x008 incremented every 100 ms */
	u32 state;		/* 0x010 USB4VC_STATE_* */
	u32 session;		/* 0x014 bumped on every claim */
	u8 uuid[16];		/* 0x018 host UUID (unique_id) */
	char hostname[USB4VC_HOSTNAME];	/* 0x028 */
	u32 link_up;		/* 0x070 this side sees the link up */
	u32 max_hopid;		/* 0x074 our maxhopid */
	u64 reserved1;		/* 0x078 */
	u64 tx_frames;		/* 0x080 counters, updated every 100 ms */
	u64 tx_bytes;		/* 0x088 */
	u64 rx_frames;		/* 0x090 */
	u64 rx_bytes;		/* 0x098 */
	u64 crc_errors;		/* 0x0a0 frames corrupted on receive */
	u64 close_tx;		/* 0x0a8 */
	u64 close_rx;		/* 0x0b0 */
	u64 stale_drops;	/* 0x0b8 frames of an old session dropped */
	u32 corrupt_done;	/* 0x0c0 compared with hdr corrupt_req[rx dir] */
	u8 pad_c4[0x100 - 0xc4];
	u32 props_gen;		/* 0x100 odd while being updated */
	u32 props_count;	/* 0x104 */
	struct usb4vc_prop props[USB4VC_MAX_PROPS];	/* 0x108 */
	u8 pad_248[0x400 - 0x248];
	u32 rx_post[USB4VC_MAX_CHAN];	/* 0x400 RX ring posted: gen, 0 = closed */
	u32 rx_cons[USB4VC_MAX_CHAN];	/* 0x480 RX consumer index */
	u32 tx_prod[USB4VC_MAX_CHAN];	/* 0x500 TX producer index */
	u32 rx_credit[USB4VC_MAX_CHAN];	/* 0x580 E2E credits */
	u32 xprop_gen;			/* 0x600 odd while updating */
	u32 xprop_len;			/* 0x604 bytes used in xprop */
	u8 xprop[USB4VC_XPROP_SIZE];	/* 0x608 */
};

/**
 * struct usb4vc_desc - Descriptor of one frame slot of a ring
 * @len: Payload bytes, 1..4096
 * @type: The frame's eof PDF, its sof PDF in the high byte
 * @flags: %USB4VC_FLAG_CRC, set by the receiver
 * @gen: The receiver's rx_post the sender saw (older sessions are dropped)
 * @seq: The sender's producer index for this frame
 */
struct usb4vc_desc {
	u32 len;		/* payload bytes, 1..4096 (0 for CLOSE) */
	u16 type;		/* USB4VC_FRAME_* */
	u16 flags;		/* USB4VC_FLAG_* */
	u32 gen;		/* receiver's rx_post value seen by the sender */
	u32 seq;		/* sender's producer index */
};

/*
 * Every offset of the layout, checked at compile time. qemu/cable-ctl's
 * layout test parses these lines: keep them one per line, in this form.
 */
static_assert(offsetof(struct usb4vc_hdr, magic) == 0x000);
static_assert(offsetof(struct usb4vc_hdr, version) == 0x008);
static_assert(offsetof(struct usb4vc_hdr, hdr_size) == 0x00c);
static_assert(offsetof(struct usb4vc_hdr, total_size) == 0x010);
static_assert(offsetof(struct usb4vc_hdr, nchan) == 0x018);
static_assert(offsetof(struct usb4vc_hdr, nslots) == 0x01c);
static_assert(offsetof(struct usb4vc_hdr, frame_size) == 0x020);
static_assert(offsetof(struct usb4vc_hdr, rings_off) == 0x028);
static_assert(offsetof(struct usb4vc_hdr, ring_stride) == 0x030);
static_assert(offsetof(struct usb4vc_hdr, plugged) == 0x100);
static_assert(offsetof(struct usb4vc_hdr, ctrl_gen) == 0x104);
static_assert(offsetof(struct usb4vc_hdr, rate_bps) == 0x108);
static_assert(offsetof(struct usb4vc_hdr, corrupt_req) == 0x110);
static_assert(offsetof(struct usb4vc_hdr, ring_delay_us) == 0x200);
static_assert(offsetof(struct usb4vc_hdr, ring_rate_bps) == 0x300);
static_assert(sizeof(struct usb4vc_hdr) == 0x1000);
static_assert(offsetof(struct usb4vc_side, nonce) == 0x000);
static_assert(offsetof(struct usb4vc_side, heartbeat) == 0x008);
static_assert(offsetof(struct usb4vc_side, state) == 0x010);
static_assert(offsetof(struct usb4vc_side, session) == 0x014);
static_assert(offsetof(struct usb4vc_side, uuid) == 0x018);
static_assert(offsetof(struct usb4vc_side, hostname) == 0x028);
static_assert(offsetof(struct usb4vc_side, link_up) == 0x070);
static_assert(offsetof(struct usb4vc_side, max_hopid) == 0x074);
static_assert(offsetof(struct usb4vc_side, tx_frames) == 0x080);
static_assert(offsetof(struct usb4vc_side, crc_errors) == 0x0a0);
static_assert(offsetof(struct usb4vc_side, corrupt_done) == 0x0c0);
static_assert(offsetof(struct usb4vc_side, props_gen) == 0x100);
static_assert(offsetof(struct usb4vc_side, props_count) == 0x104);
static_assert(offsetof(struct usb4vc_side, props) == 0x108);
static_assert(sizeof(struct usb4vc_prop) == 20);
static_assert(offsetof(struct usb4vc_side, rx_post) == 0x400);
static_assert(offsetof(struct usb4vc_side, rx_cons) == 0x480);
static_assert(offsetof(struct usb4vc_side, tx_prod) == 0x500);
static_assert(offsetof(struct usb4vc_side, rx_credit) == 0x580);
static_assert(offsetof(struct usb4vc_side, xprop_gen) == 0x600);
static_assert(offsetof(struct usb4vc_side, xprop_len) == 0x604);
static_assert(offsetof(struct usb4vc_side, xprop) == 0x608);
static_assert(sizeof(struct usb4vc_side) == 0x1000);
static_assert(sizeof(struct usb4vc_desc) == 16);

#endif /* VCABLE_LAYOUT_H */
