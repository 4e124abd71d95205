/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vhost_cable.h - usb4vhost's dealings with the cable's shared memory
 * (layout: vcable_layout.h) that are not the NHI's: checking the geometry,
 * the side= parameter, watching heartbeats, the counters cable-ctl shows,
 * its rate caps and its frame corruption.
 */
#ifndef VHOST_CABLE_H
#define VHOST_CABLE_H

#include <linux/atomic.h>
#include <linux/device.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/log2.h>
#include <linux/math64.h>
#include <linux/spinlock.h>

#include "vcable_layout.h"

/**
 * struct cable_counters - Frame counters of one side (published to shm)
 * @tx_frames: Frames sent
 * @tx_bytes: Bytes sent
 * @rx_frames: Frames received
 * @rx_bytes: Bytes received
 * @crc_errors: Frames delivered corrupted (cable-ctl corrupt)
 * @close_tx: CLOSE frames sent
 * @close_rx: CLOSE frames received
 * @stale_drops: Frames of an earlier session dropped
 */
struct cable_counters {
	atomic64_t tx_frames;
	atomic64_t tx_bytes;
	atomic64_t rx_frames;
	atomic64_t rx_bytes;
	atomic64_t crc_errors;
	atomic64_t close_tx;
	atomic64_t close_rx;
	atomic64_t stale_drops;
};

static inline void cable_publish_counters(struct usb4vc_side *me,
					  struct cable_counters *n)
{
	WRITE_ONCE(me->tx_frames, atomic64_read(&n->tx_frames));
	WRITE_ONCE(me->tx_bytes, atomic64_read(&n->tx_bytes));
	WRITE_ONCE(me->rx_frames, atomic64_read(&n->rx_frames));
	WRITE_ONCE(me->rx_bytes, atomic64_read(&n->rx_bytes));
	WRITE_ONCE(me->crc_errors, atomic64_read(&n->crc_errors));
	WRITE_ONCE(me->close_tx, atomic64_read(&n->close_tx));
	WRITE_ONCE(me->close_rx, atomic64_read(&n->close_rx));
	WRITE_ONCE(me->stale_drops, atomic64_read(&n->stale_drops));
}

/**
 * struct cable_rate - Token bucket of cable-ctl's rate cap (per sender)
 * @lock: Protects the fields below
 * @rate: Cap in bytes/s, 0 = none
 * @tokens: Bytes that may be sent now (burst: rate / 50)
 * @last_ns: Last refill
 */
struct cable_rate {
	spinlock_t lock;
	u64 rate;
	s64 tokens;
	u64 last_ns;
};

/* Follow a cap cable-ctl set (bytes/s, 0 = none); a new cap starts empty */
static inline void cable_rate_set(struct cable_rate *r, u64 rate)
{
	if (rate == READ_ONCE(r->rate))
		return;
	guard(spinlock)(&r->lock);
	r->rate = rate;
	r->tokens = 0;
	r->last_ns = ktime_get_ns();
}

/* Follow cable-ctl's cap on the whole direction */
static inline void cable_rate_poll(struct cable_rate *r,
				   const struct usb4vc_hdr *hdr)
{
	cable_rate_set(r, READ_ONCE(hdr->rate_bps));
}

static inline bool cable_rate_ok(struct cable_rate *r)
{
	u64 rate = READ_ONCE(r->rate);
	u64 now, burst;

	if (!rate)
		return true;
	guard(spinlock)(&r->lock);
	now = ktime_get_ns();
	burst = max_t(u64, rate / 50, USB4VC_FRAME_SIZE);
	if (now > r->last_ns) {
		u64 add = mul_u64_u64_div_u64(now - r->last_ns, rate,
					      NSEC_PER_SEC);

		r->tokens = min_t(s64, r->tokens + (s64)min_t(u64, add, burst),
				  (s64)burst);
	}
	r->last_ns = now;
	return r->tokens > 0;
}

static inline void cable_rate_take(struct cable_rate *r, size_t bytes)
{
	if (!READ_ONCE(r->rate))
		return;
	guard(spinlock)(&r->lock);
	r->tokens -= bytes;
}

/*
 * cable-ctl corrupt: should the next received frame be damaged? The caller
 * serializes calls per side.
 */
static inline bool cable_should_corrupt(const struct usb4vc_hdr *hdr,
					struct usb4vc_side *me, int rx_dir)
{
	u32 req = READ_ONCE(hdr->corrupt_req[rx_dir]);
	u32 done = READ_ONCE(me->corrupt_done);

	if ((s32)(req - done) <= 0)
		return false;
	WRITE_ONCE(me->corrupt_done, done + 1);
	return true;
}

/* Flip a few bytes spread over the payload, as a bad link would */
static inline void cable_corrupt(u8 *p, u32 len)
{
	u32 i;

	for (i = 0; i < 4; i++)
		p[(len / 4) * i + (i * 7) % max_t(u32, len / 4, 1)] ^= 0xa5;
}

/**
 * struct cable_watch - Tracks a side's heartbeat
 * @nonce: Its claim last seen
 * @hb: Its heartbeat last seen
 * @changes: Heartbeat changes seen since that claim
 * @at: When the heartbeat last changed (jiffies)
 */
struct cable_watch {
	u64 nonce;
	u64 hb;
	unsigned int changes;
	unsigned long at;
};

/* Is the peer there: present, claimed, its heartbeat moving? */
static inline bool cable_peer_alive(struct cable_watch *w,
				    const struct usb4vc_side *peer,
				    unsigned long now, unsigned int timeout_ms)
{
	u32 state = READ_ONCE(peer->state);
	u64 nonce = READ_ONCE(peer->nonce);
	u64 hb = READ_ONCE(peer->heartbeat);

	if (nonce != w->nonce) {
		w->nonce = nonce;
		w->hb = hb;
		w->changes = 0;
		w->at = now;
	} else if (hb != w->hb) {
		w->hb = hb;
		w->changes++;
		w->at = now;
	}
	return state == USB4VC_STATE_PRESENT && nonce && w->changes > 0 &&
	       time_before(now, w->at + msecs_to_jiffies(timeout_ms));
}

/* While claiming: has this slot's heartbeat stood still for @timeout_ms? */
static inline bool cable_slot_stale(struct cable_watch *w,
				    const struct usb4vc_side *area,
				    unsigned int timeout_ms)
{
	u64 hb = READ_ONCE(area->heartbeat);

	if (!w->changes || hb != w->hb) {
		w->changes = 1;
		w->hb = hb;
		w->at = jiffies;
		return false;
	}
	return time_after(jiffies, w->at + msecs_to_jiffies(timeout_ms));
}

/* side=a,b: the n-th comma separated word applies to domain n; -1 = auto */
static inline int cable_side_param(const char *side, int domain)
{
	const char *p = side;
	int i;

	for (i = 0; p && i < domain; i++) {
		p = strchr(p, ',');
		if (p)
			p++;
	}
	if (!p)
		return -1;
	if ((p[0] == 'a' || p[0] == 'b') &&
	    (p[1] == ',' || !p[1] || p[1] == '\n'))
		return p[0] - 'a';
	return -1;
}

/* Is the header cable-ctl wrote usable for a BAR of @size bytes? */
static inline int cable_check_layout(struct device *dev,
				     const struct usb4vc_hdr *hdr, u64 size,
				     u32 *nchanp, u32 *nslotsp)
{
	u64 magic = READ_ONCE(hdr->magic);
	u64 need, stride, desc_bytes;
	u32 nchan, nslots;

	if (magic != USB4VC_MAGIC) {
		dev_err(dev, "shared memory has no virtual USB4 cable header (magic %#llx): run 'cable-ctl --shm FILE init --size BYTES' before starting the VMs\n",
			magic);
		return -ENODEV;
	}
	if (READ_ONCE(hdr->version) != USB4VC_VERSION) {
		dev_err(dev, "shared memory layout version %u, this module speaks %u\n",
			READ_ONCE(hdr->version), USB4VC_VERSION);
		return -ENODEV;
	}
	nchan = READ_ONCE(hdr->nchan);
	nslots = READ_ONCE(hdr->nslots);
	if (!nchan || nchan > USB4VC_MAX_CHAN || nslots < 4 ||
	    !is_power_of_2(nslots) ||
	    READ_ONCE(hdr->frame_size) != USB4VC_FRAME_SIZE ||
	    READ_ONCE(hdr->hdr_size) != USB4VC_HDR_SIZE) {
		dev_err(dev, "invalid cable geometry (nchan %u, nslots %u)\n",
			nchan, nslots);
		return -ENODEV;
	}
	desc_bytes = round_up((u64)nslots * sizeof(struct usb4vc_desc),
			      USB4VC_FRAME_SIZE);
	stride = READ_ONCE(hdr->ring_stride);
	if (stride < desc_bytes + (u64)nslots * USB4VC_FRAME_SIZE) {
		dev_err(dev, "invalid ring stride %llu\n", stride);
		return -ENODEV;
	}
	need = READ_ONCE(hdr->rings_off) + 2ULL * nchan * stride;
	if (READ_ONCE(hdr->rings_off) < USB4VC_HDR_SIZE || need > size) {
		dev_err(dev, "cable layout needs %llu bytes, BAR has %llu\n",
			need, size);
		return -ENODEV;
	}
	*nchanp = nchan;
	*nslotsp = nslots;
	return 0;
}

#endif /* VHOST_CABLE_H */
