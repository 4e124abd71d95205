// SPDX-License-Identifier: GPL-2.0
/*
 * usb4vhost - the emulated NHI: the tb_ring_* interface of
 * drivers/thunderbolt/nhi.c (frame mode rings with descriptors, frame
 * callbacks from a work item, polling, flush) and, standing in for the
 * NHI's DMA engine and the fabric, the engine that moves frames between
 * the rings and the cable.
 *
 * E2E flow control as on hardware: a TX descriptor completes only when the
 * receiving host has posted an RX buffer for it. The receiver publishes
 * one credit per posted RX buffer (rx_credit, in the sequence of the
 * sender's tx_prod); the sender's engine moves a frame into the cable only
 * against a credit, and the receiver's engine moves it from the cable into
 * the next posted buffer. Nothing is lost, and a slow reader throttles the
 * writer.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/dma-direct.h>
#include <linux/export.h>
#include <linux/random.h>
#include <linux/slab.h>

#include "usb4vhost.h"

#define RING_TYPE(ring) ((ring)->is_tx ? "TX ring" : "RX ring")

static bool ring_full(const struct tb_ring *ring)
{
	return (ring->head + 1) % ring->size == ring->tail;
}

static bool ring_empty(const struct tb_ring *ring)
{
	return ring->head == ring->tail;
}

/* Post queued frames to free descriptors (ring->lock held) */
static void vh_ring_post(struct tb_ring *ring)
{
	struct ring_frame *frame, *n;
	struct ring_desc *d;

	list_for_each_entry_safe(frame, n, &ring->queue, list) {
		if (ring_full(ring))
			break;
		list_move_tail(&frame->list, &ring->in_flight);
		d = &ring->descriptors[ring->head];
		d->phys = frame->buffer_phy;
		d->time = 0;
		d->flags = RING_DESC_POSTED | RING_DESC_INTERRUPT;
		if (ring->is_tx) {
			d->length = frame->size;
			d->eof = frame->eof;
			d->sof = frame->sof;
		}
		ring->head = (ring->head + 1) % ring->size;
	}
}

/* Copy the completion state of descriptor @d into @frame (RX) */
static void vh_frame_complete(struct tb_ring *ring, struct ring_frame *frame,
			      const struct ring_desc *d)
{
	if (ring->is_tx)
		return;
	frame->size = d->length;
	frame->eof = d->eof;
	frame->sof = d->sof;
	frame->flags = d->flags;
}

/* Move completed frames to @done, in order (ring->lock held) */
static void vh_ring_reap(struct tb_ring *ring, struct list_head *done)
{
	struct ring_frame *frame;

	while (!ring_empty(ring)) {
		struct ring_desc *d = &ring->descriptors[ring->tail];

		if (!(d->flags & RING_DESC_COMPLETED))
			break;
		frame = list_first_entry(&ring->in_flight, struct ring_frame,
					 list);
		list_move_tail(&frame->list, done);
		vh_frame_complete(ring, frame, d);
		ring->tail = (ring->tail + 1) % ring->size;
	}
}

/*
 * The ring's interrupt work: hand completed frames to their callbacks, or
 * all frames with canceled = true once the ring is stopped.
 */
static void vh_ring_work(struct work_struct *work)
{
	struct tb_ring *ring = container_of(work, struct tb_ring, work);
	struct ring_frame *frame;
	bool canceled = false;
	LIST_HEAD(done);

	scoped_guard(spinlock_irqsave, &ring->lock) {
		if (!ring->running) {
			list_splice_tail_init(&ring->in_flight, &done);
			list_splice_tail_init(&ring->queue, &done);
			canceled = true;
		} else {
			vh_ring_reap(ring, &done);
			vh_ring_post(ring);
		}
	}

	while (!list_empty(&done)) {
		frame = list_first_entry(&done, struct ring_frame, list);
		/* The callback may re-enqueue the frame */
		list_del_init(&frame->list);
		if (frame->callback)
			frame->callback(ring, frame, canceled);
	}
	wake_up(&ring->wait);
}

/**
 * __tb_ring_enqueue() - Queue a frame on a ring
 * @ring: Ring
 * @frame: Frame with buffer_phy (and for TX size, eof, sof) set
 *
 * Return: %0, -ESHUTDOWN if the ring is not running.
 */
int __tb_ring_enqueue(struct tb_ring *ring, struct ring_frame *frame)
{
	scoped_guard(spinlock_irqsave, &ring->lock) {
		if (!ring->running)
			return -ESHUTDOWN;
		list_add_tail(&frame->list, &ring->queue);
		vh_ring_post(ring);
	}
	vh_kick(to_vh_ring(ring)->host);
	return 0;
}
EXPORT_SYMBOL_GPL(__tb_ring_enqueue);

/**
 * tb_ring_poll() - Take one completed frame off a ring
 * @ring: Ring (normally one with RING_FLAG_NO_INTERRUPT)
 *
 * Return: The frame (its callback is not called) or %NULL.
 */
struct ring_frame *tb_ring_poll(struct tb_ring *ring)
{
	struct ring_frame *frame;
	struct ring_desc *d;

	guard(spinlock_irqsave)(&ring->lock);
	if (!ring->running || ring_empty(ring))
		return NULL;
	d = &ring->descriptors[ring->tail];
	if (!(d->flags & RING_DESC_COMPLETED))
		return NULL;
	frame = list_first_entry(&ring->in_flight, struct ring_frame, list);
	list_del_init(&frame->list);
	vh_frame_complete(ring, frame, d);
	ring->tail = (ring->tail + 1) % ring->size;
	return frame;
}
EXPORT_SYMBOL_GPL(tb_ring_poll);

/* Give @ring its hop (the first free one if @hop < 0); it holds the domain */
static int vh_ring_claim(struct vh_host *h, struct tb_ring *ring, int hop)
{
	struct tb_ring **rings = ring->is_tx ? h->tx_rings : h->rx_rings;

	guard(mutex)(&h->hw_lock);
	if (h->nhi.going_away)
		return -ENODEV;
	if (hop < 0) {
		/* Ring 0 is the control channel's */
		for (hop = 1; hop < VH_HOP_COUNT; hop++) {
			if (!rings[hop])
				break;
		}
	}
	if (hop < 1 || hop >= VH_HOP_COUNT) {
		dev_warn(h->nhi.dev, "invalid hop: %d\n", hop);
		return -EINVAL;
	}
	if (rings[hop]) {
		dev_warn(h->nhi.dev, "%s hop %d already allocated\n",
			 ring->is_tx ? "TX" : "RX", hop);
		return -EBUSY;
	}
	ring->hop = hop;
	rings[hop] = ring;
	get_device(&h->tb.dev);
	return 0;
}

static struct tb_ring *vh_ring_alloc(struct tb_nhi *nhi, int hop, int size,
				     bool transmit, unsigned int flags,
				     int e2e_tx_hop, u16 sof_mask,
				     u16 eof_mask,
				     void (*start_poll)(void *),
				     void *poll_data)
{
	struct vh_host *h = nhi_to_vh(nhi);
	struct vh_ring *vr;
	struct tb_ring *ring;

	if (size < 2)
		return NULL;
	vr = kzalloc(sizeof(*vr), GFP_KERNEL);
	if (!vr)
		return NULL;
	ring = &vr->ring;
	vr->host = h;
	vr->chan = -1;
	spin_lock_init(&ring->lock);
	INIT_LIST_HEAD(&ring->queue);
	INIT_LIST_HEAD(&ring->in_flight);
	INIT_WORK(&ring->work, vh_ring_work);
	init_waitqueue_head(&ring->wait);
	ring->nhi = nhi;
	ring->size = size;
	ring->is_tx = transmit;
	ring->flags = flags;
	ring->e2e_tx_hop = e2e_tx_hop;
	ring->sof_mask = sof_mask;
	ring->eof_mask = eof_mask;
	ring->start_poll = start_poll;
	ring->poll_data = poll_data;
	ring->descriptors = kcalloc(size, sizeof(*ring->descriptors),
				    GFP_KERNEL);
	if (!ring->descriptors)
		goto err_free;
	if (vh_ring_claim(h, ring, hop))
		goto err_desc;
	return ring;

err_desc:
	kfree(ring->descriptors);
err_free:
	kfree(vr);
	return NULL;
}

/**
 * tb_ring_alloc_tx() - Allocate a TX ring
 * @nhi: NHI
 * @hop: Ring (hop) number, -1 for the first free one
 * @size: Descriptors
 * @flags: RING_FLAG_*
 *
 * Return: The ring or %NULL.
 */
struct tb_ring *tb_ring_alloc_tx(struct tb_nhi *nhi, int hop, int size,
				 unsigned int flags)
{
	return vh_ring_alloc(nhi, hop, size, true, flags, 0, 0, 0, NULL, NULL);
}
EXPORT_SYMBOL_GPL(tb_ring_alloc_tx);

/**
 * tb_ring_alloc_rx() - Allocate an RX ring
 * @nhi: NHI
 * @hop: Ring (hop) number, -1 for the first free one
 * @size: Descriptors
 * @flags: RING_FLAG_*
 * @e2e_tx_hop: TX ring the E2E credits go with (the cable carries them)
 * @sof_mask: PDFs that start a frame
 * @eof_mask: PDFs that end a frame
 * @start_poll: Called instead of frame callbacks on an interrupt
 * @poll_data: Its argument
 *
 * Return: The ring or %NULL.
 */
struct tb_ring *tb_ring_alloc_rx(struct tb_nhi *nhi, int hop, int size,
				 unsigned int flags, int e2e_tx_hop,
				 u16 sof_mask, u16 eof_mask,
				 void (*start_poll)(void *), void *poll_data)
{
	return vh_ring_alloc(nhi, hop, size, false, flags, e2e_tx_hop,
			     sof_mask, eof_mask, start_poll, poll_data);
}
EXPORT_SYMBOL_GPL(tb_ring_alloc_rx);

/* Receiving on @c starts: a new session of the channel (hw_lock held) */
static void vh_rx_open(struct vh_host *h, u32 c)
{
	u32 gen, cons;

	if (!h->me)
		return;
	do {
		gen = get_random_u32();
	} while (!gen || gen == h->chan[c].rx_gen);
	/* Frames still in the cable belong to an earlier session: skip them */
	cons = READ_ONCE(h->peer->tx_prod[c]);
	WRITE_ONCE(h->me->rx_cons[c], cons);
	WRITE_ONCE(h->me->rx_credit[c], cons);
	smp_wmb();
	WRITE_ONCE(h->me->rx_post[c], gen);
	h->chan[c].rx_gen = gen;
	h->chan[c].rx_seen = cons;
}

static void vh_rx_close(struct vh_host *h, u32 c)
{
	if (h->me)
		WRITE_ONCE(h->me->rx_post[c], 0);
	h->chan[c].rx_gen = 0;
}

/**
 * tb_ring_start() - Start a ring
 * @ring: Ring
 */
void tb_ring_start(struct tb_ring *ring)
{
	struct vh_ring *vr = to_vh_ring(ring);
	struct vh_host *h = vr->host;

	guard(mutex)(&h->hw_lock);
	scoped_guard(spinlock_irqsave, &ring->lock) {
		if (ring->nhi->going_away)
			return;
		if (ring->running) {
			dev_WARN(ring->nhi->dev, "ring already started\n");
			return;
		}
		ring->head = 0;
		ring->tail = 0;
		vr->hw = 0;
		ring->running = true;
	}
	if (!ring->is_tx && vr->chan >= 0)
		vh_rx_open(h, vr->chan);
}
EXPORT_SYMBOL_GPL(tb_ring_start);

static bool vh_ring_idle(struct tb_ring *ring)
{
	guard(spinlock_irqsave)(&ring->lock);
	return list_empty(&ring->in_flight);
}

/**
 * tb_ring_flush() - Wait until every frame submitted has completed
 * @ring: Ring
 * @timeout_msec: How long to wait at most
 *
 * Return: %true if the ring is empty.
 */
bool tb_ring_flush(struct tb_ring *ring, unsigned int timeout_msec)
{
	if (!wait_event_timeout(ring->wait, vh_ring_idle(ring),
				msecs_to_jiffies(timeout_msec)))
		return false;
	return vh_ring_idle(ring);
}
EXPORT_SYMBOL_GPL(tb_ring_flush);

/* Stop the ring's descriptors (hw_lock held); false if it was not running */
static bool vh_ring_halt(struct vh_ring *vr)
{
	struct tb_ring *ring = &vr->ring;

	guard(spinlock_irqsave)(&ring->lock);
	if (ring->nhi->going_away)
		return false;
	if (!ring->running) {
		dev_WARN(ring->nhi->dev, "%s %d already stopped\n",
			 RING_TYPE(ring), ring->hop);
		return false;
	}
	ring->running = false;
	ring->head = 0;
	ring->tail = 0;
	vr->hw = 0;
	return true;
}

/**
 * tb_ring_stop() - Stop a ring; its frames get canceled callbacks
 * @ring: Ring
 *
 * Returns when all callbacks have run. Not from a callback.
 */
void tb_ring_stop(struct tb_ring *ring)
{
	struct vh_ring *vr = to_vh_ring(ring);
	struct vh_host *h = vr->host;

	scoped_guard(mutex, &h->hw_lock) {
		if (vh_ring_halt(vr) && !ring->is_tx && vr->chan >= 0)
			vh_rx_close(h, vr->chan);
	}
	schedule_work(&ring->work);
	flush_work(&ring->work);
}
EXPORT_SYMBOL_GPL(tb_ring_stop);

/**
 * tb_ring_free() - Free a stopped ring
 * @ring: Ring
 */
void tb_ring_free(struct tb_ring *ring)
{
	struct vh_ring *vr = to_vh_ring(ring);
	struct vh_host *h = vr->host;

	scoped_guard(mutex, &h->hw_lock) {
		if (ring->is_tx)
			h->tx_rings[ring->hop] = NULL;
		else
			h->rx_rings[ring->hop] = NULL;
		if (vr->chan >= 0) {
			if (ring->is_tx) {
				h->chan[vr->chan].tx = NULL;
			} else {
				vh_rx_close(h, vr->chan);
				h->chan[vr->chan].rx = NULL;
			}
			vr->chan = -1;
		}
		if (ring->running)
			dev_WARN(ring->nhi->dev, "%s %d still running\n",
				 RING_TYPE(ring), ring->hop);
	}
	flush_work(&ring->work);
	kfree(ring->descriptors);
	put_device(&h->tb.dev);
	kfree(vr);
}
EXPORT_SYMBOL_GPL(tb_ring_free);

/**
 * tb_ring_throttling() - Set the ring's interrupt throttling interval
 * @ring: Ring (stopped)
 * @interval_nsec: Interval, %0 = none. Accepted and kept; the emulated
 *		   interrupts are not throttled.
 *
 * Return: %0, -EBUSY if the ring is running.
 */
int tb_ring_throttling(struct tb_ring *ring, unsigned int interval_nsec)
{
	guard(spinlock_irqsave)(&ring->lock);
	if (WARN_ON_ONCE(ring->running))
		return -EBUSY;
	ring->interval_nsec = interval_nsec;
	return 0;
}
EXPORT_SYMBOL_GPL(tb_ring_throttling);

/* ------------------------------------------------------------------ */
/* Paths: which ring serves which HopID of the cable */

static struct vh_ring *vh_ring_at(struct tb_ring **rings, int hop)
{
	if (hop < 0 || hop >= VH_HOP_COUNT || !rings[hop])
		return NULL;
	return to_vh_ring(rings[hop]);
}

/**
 * vh_paths_enable() - Route rings to HopIDs (tb_xdomain_enable_paths)
 * @h: Host
 * @tx_path: Output HopID, -1 for none
 * @tx_ring: TX ring (hop) sending on it
 * @rx_path: Input HopID, -1 for none
 * @rx_ring: RX ring (hop) receiving on it
 *
 * Return: %0, -EINVAL (no such ring, HopID out of the cable's range),
 * -EBUSY (HopID already routed).
 */
int vh_paths_enable(struct vh_host *h, int tx_path, int tx_ring,
		    int rx_path, int rx_ring)
{
	struct vh_ring *tx = NULL, *rx = NULL;
	int ct = tx_path - USB4VC_MIN_HOPID, cr = rx_path - USB4VC_MIN_HOPID;

	guard(mutex)(&h->hw_lock);
	if (tx_path >= 0) {
		tx = vh_ring_at(h->tx_rings, tx_ring);
		if (!tx || ct < 0 || ct >= h->nchan)
			return -EINVAL;
		if (h->chan[ct].tx || tx->chan >= 0)
			return -EBUSY;
	}
	if (rx_path >= 0) {
		rx = vh_ring_at(h->rx_rings, rx_ring);
		if (!rx || cr < 0 || cr >= h->nchan)
			return -EINVAL;
		if (h->chan[cr].rx || rx->chan >= 0)
			return -EBUSY;
	}
	if (tx) {
		h->chan[ct].tx = tx;
		tx->chan = ct;
	}
	if (rx) {
		h->chan[cr].rx = rx;
		rx->chan = cr;
		if (rx->ring.running)
			vh_rx_open(h, cr);
	}
	return 0;
}

static void vh_chan_unroute(struct vh_host *h, u32 c, bool tx, bool rx)
{
	struct vh_chan *ch = &h->chan[c];

	if (tx && ch->tx) {
		ch->tx->chan = -1;
		ch->tx = NULL;
	}
	if (rx && ch->rx) {
		vh_rx_close(h, c);
		ch->rx->chan = -1;
		ch->rx = NULL;
	}
}

/**
 * vh_paths_disable() - Undo vh_paths_enable()
 * @h: Host
 * @tx_path: Output HopID, -1 for all
 * @tx_ring: TX ring (unused: the HopID identifies the route)
 * @rx_path: Input HopID, -1 for all
 * @rx_ring: RX ring (unused)
 */
void vh_paths_disable(struct vh_host *h, int tx_path, int tx_ring,
		      int rx_path, int rx_ring)
{
	u32 c;

	guard(mutex)(&h->hw_lock);
	for (c = 0; c < h->nchan; c++) {
		bool tx = tx_path < 0 || tx_path == c + USB4VC_MIN_HOPID;
		bool rx = rx_path < 0 || rx_path == c + USB4VC_MIN_HOPID;

		vh_chan_unroute(h, c, tx, rx);
	}
}

/**
 * vh_engine_link_down() - The fabric is gone: tear every path down
 * @h: Host
 *
 * Frames on TX rings stay pending (they never complete, as on hardware
 * once the peer is gone); the rings themselves belong to their users.
 */
void vh_engine_link_down(struct vh_host *h)
{
	vh_paths_disable(h, -1, -1, -1, -1);
}

/* ------------------------------------------------------------------ */
/* The DMA engine (runs in the poller thread, hw_lock held) */

static void *vh_dma_virt(struct vh_host *h, u64 addr)
{
	return phys_to_virt(dma_to_phys(&h->pdev->dev, addr));
}

/* Move TX descriptors of the ring on channel @c into the cable */
static int vh_engine_tx(struct vh_host *h, u32 c, struct vh_ring *vr)
{
	struct tb_ring *ring = &vr->ring;
	u32 prod = READ_ONCE(h->me->tx_prod[c]);
	int done = 0;

	guard(spinlock_irqsave)(&ring->lock);
	while (ring->running && vr->hw != ring->head) {
		struct ring_desc *d = &ring->descriptors[vr->hw];
		u32 post = READ_ONCE(h->peer->rx_post[c]);
		u32 credit = READ_ONCE(h->peer->rx_credit[c]);
		size_t len = d->length ? d->length : TB_MAX_FRAME_SIZE;
		struct usb4vc_desc *sd;

		if (!post || (s32)(credit - prod) <= 0 ||
		    !cable_rate_ok(&h->rate) || !cable_rate_ok(&h->chan[c].rate))
			break;
		smp_rmb();
		memcpy(vh_slot_payload(h, h->side, c, prod),
		       vh_dma_virt(h, d->phys), len);
		sd = vh_slot_desc(h, h->side, c, prod);
		WRITE_ONCE(sd->len, len);
		WRITE_ONCE(sd->type, d->eof | (d->sof << USB4VC_TYPE_SOF_SHIFT));
		WRITE_ONCE(sd->flags, 0);
		WRITE_ONCE(sd->gen, post);
		WRITE_ONCE(sd->seq, prod);
		smp_wmb();
		WRITE_ONCE(h->me->tx_prod[c], ++prod);
		d->flags |= RING_DESC_COMPLETED;
		vr->hw = (vr->hw + 1) % ring->size;
		cable_rate_take(&h->rate, len);
		cable_rate_take(&h->chan[c].rate, len);
		atomic64_inc(&h->n.tx_frames);
		atomic64_add(len, &h->n.tx_bytes);
		if (d->eof == USB4VC_FRAME_CLOSE)
			atomic64_inc(&h->n.close_tx);
		done++;
	}
	return done;
}

/*
 * cable-ctl delay: stamp the frames that appeared in the peer's ring of
 * channel @c since the last pass; is the frame at @cons to wait still?
 */
static bool vh_rx_delayed(struct vh_host *h, u32 c, u32 cons, u32 prod)
{
	u64 *seen = h->rx_seen_ns + (size_t)c * h->nslots;
	u32 us = READ_ONCE(h->hdr->ring_delay_us[1 - h->side][c]);
	struct vh_chan *ch = &h->chan[c];
	u64 now;

	if (!us) {
		ch->rx_seen = prod;
		return false;
	}
	now = ktime_get_ns();
	/* More than a ring's worth since the last pass: a new session */
	if ((u32)(prod - ch->rx_seen) > h->nslots)
		ch->rx_seen = prod - h->nslots;
	for (; ch->rx_seen != prod; ch->rx_seen++)
		seen[ch->rx_seen & (h->nslots - 1)] = now;
	return cons != prod &&
	       now < seen[cons & (h->nslots - 1)] + (u64)us * NSEC_PER_USEC;
}

/* Move frames from the cable into the posted RX descriptors */
static int vh_engine_rx(struct vh_host *h, u32 c, struct vh_ring *vr)
{
	struct tb_ring *ring = &vr->ring;
	u32 cons = READ_ONCE(h->me->rx_cons[c]);
	int dir = 1 - h->side, done = 0;
	u32 posted, prod;

	guard(spinlock_irqsave)(&ring->lock);
	if (!ring->running || !h->chan[c].rx_gen)
		return 0;
	prod = READ_ONCE(h->peer->tx_prod[c]);
	while (vr->hw != ring->head && prod != cons &&
	       !vh_rx_delayed(h, c, cons, prod)) {
		struct usb4vc_desc *sd = vh_slot_desc(h, dir, c, cons);
		struct ring_desc *d = &ring->descriptors[vr->hw];
		u32 len, type;
		u8 *buf;

		smp_rmb();
		len = READ_ONCE(sd->len);
		type = READ_ONCE(sd->type);
		if (READ_ONCE(sd->gen) != h->chan[c].rx_gen ||
		    READ_ONCE(sd->seq) != cons || !len ||
		    len > USB4VC_FRAME_SIZE) {
			atomic64_inc(&h->n.stale_drops);
			cons++;
			continue;
		}
		buf = vh_dma_virt(h, d->phys);
		memcpy(buf, vh_slot_payload(h, dir, c, cons), len);
		d->flags = RING_DESC_COMPLETED | RING_DESC_INTERRUPT;
		if (cable_should_corrupt(h->hdr, h->me, dir)) {
			cable_corrupt(buf, len);
			d->flags |= RING_DESC_CRC_ERROR;
			atomic64_inc(&h->n.crc_errors);
		}
		d->length = len;	/* 4096 wraps to 0, as in hardware */
		d->eof = type & 0xf;
		d->sof = (type >> USB4VC_TYPE_SOF_SHIFT) & 0xf;
		vr->hw = (vr->hw + 1) % ring->size;
		cons++;
		atomic64_inc(&h->n.rx_frames);
		atomic64_add(len, &h->n.rx_bytes);
		if (d->eof == USB4VC_FRAME_CLOSE)
			atomic64_inc(&h->n.close_rx);
		done++;
	}
	WRITE_ONCE(h->me->rx_cons[c], cons);
	posted = (ring->head - vr->hw + ring->size) % ring->size;
	smp_wmb();
	WRITE_ONCE(h->me->rx_credit[c], cons + min(posted, h->nslots));
	return done;
}

/* Completion interrupt of a ring */
static void vh_ring_interrupt(struct tb_ring *ring)
{
	if (ring->flags & RING_FLAG_NO_INTERRUPT)
		return;
	if (ring->start_poll)
		ring->start_poll(ring->poll_data);
	else
		schedule_work(&ring->work);
}

/**
 * vh_engine_run() - One pass of the DMA engine over every routed channel
 * @h: Host (with a claimed side)
 *
 * Return: %true if any frame moved.
 */
bool vh_engine_run(struct vh_host *h)
{
	bool busy = false;
	u32 c;

	guard(mutex)(&h->hw_lock);
	for (c = 0; c < h->nchan; c++) {
		struct vh_chan *ch = &h->chan[c];

		if (ch->tx && vh_engine_tx(h, c, ch->tx)) {
			vh_ring_interrupt(&ch->tx->ring);
			busy = true;
		}
		if (ch->rx && vh_engine_rx(h, c, ch->rx)) {
			vh_ring_interrupt(&ch->rx->ring);
			busy = true;
		}
	}
	return busy;
}

/**
 * vh_nhi_init() - Set up the emulated NHI of a host
 * @h: Host
 */
void vh_nhi_init(struct vh_host *h)
{
	spin_lock_init(&h->nhi.lock);
	mutex_init(&h->hw_lock);
	h->nhi.dev = &h->pdev->dev;
	h->nhi.tx_rings = h->tx_rings;
	h->nhi.rx_rings = h->rx_rings;
	h->nhi.hop_count = VH_HOP_COUNT;
	h->nhi.iommu_dma_protection = true;
}
