/* SPDX-License-Identifier: GPL-2.0 */
/*
 * usb4vhost - a virtual USB4 host (NHI, domain, XDomain) over a QEMU
 * ivshmem "cable", so that the kernel's own thunderbolt_stream.ko runs on
 * top of it unchanged. Internal interfaces between the parts:
 *
 *   vhost_ivshmem.c  PCI driver, claiming a side of the cable, heartbeat,
 *                    the poller thread ("the hardware")
 *   vhost_nhi.c      tb_ring_* (NHI rings) and the DMA engine that moves
 *                    ring frames through the cable
 *   vhost_domain.c   the thunderbolt bus, domainN, the host router, service
 *                    drivers, the thunderbolt ConfigFS subsystem
 *   vhost_xdomain.c  the XDomain peer and its services, HopIDs, paths, the
 *                    XDomain property exchange
 *   vhost_property.c tb_property_* and the property block format in shm
 */
#ifndef USB4VHOST_H
#define USB4VHOST_H

#include <linux/cleanup.h>
#include <linux/kthread.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/spinlock.h>
#include <linux/thunderbolt.h>
#include <linux/uuid.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "vcable_layout.h"
#include "vhost_cable.h"

/* Rings per direction of the emulated NHI (Intel: 12, ring 0 is control) */
#define VH_HOP_COUNT		12
#define VH_MAX_HOSTS		8
#define VH_HOSTNAME		USB4VC_HOSTNAME

/**
 * struct ring_desc - Emulated NHI ring descriptor
 * @phys: DMA address of the frame buffer
 * @length: Frame length in bytes (%0 means 4096)
 * @eof: End of frame PDF
 * @sof: Start of frame PDF
 * @flags: &enum ring_desc_flags
 * @time: Unused, zero
 *
 * The same layout as the hardware's, so that tb_ring::descriptors points
 * at what its name says. Written by the ring functions (posting) and the
 * DMA engine (completion), both under tb_ring::lock.
 */
struct ring_desc {
	u64 phys;
	u32 length:12;
	u32 eof:4;
	u32 sof:4;
	u32 flags:12;
	u32 time;
} __packed;

/**
 * struct vh_ring - A ring of the emulated NHI
 * @ring: The ring as its user sees it
 * @host: Host the ring belongs to
 * @hw: Index of the next descriptor the DMA engine processes; the engine
 *	owns the descriptors from @hw up to tb_ring::head
 * @chan: Cable channel (HopID - 8) of the path the ring is routed to, or
 *	-1 while no path is enabled for it
 */
struct vh_ring {
	struct tb_ring ring;
	struct vh_host *host;
	int hw;
	int chan;
};

#define to_vh_ring(r) container_of(r, struct vh_ring, ring)

/**
 * struct vh_chan - One cable channel (a HopID) as the DMA engine sees it
 * @tx: TX ring whose frames leave on output HopID (chan + 8), or %NULL
 * @rx: RX ring that receives on input HopID (chan + 8), or %NULL
 * @rx_gen: Our rx_post value for this channel while @rx is running
 * @rx_seen: Index of the next frame of the peer's ring to be stamped in
 *	vh_host::rx_seen_ns (all before it have been seen in the cable)
 * @rate: cable-ctl's cap on what we send on this channel
 */
struct vh_chan {
	struct vh_ring *tx;
	struct vh_ring *rx;
	u32 rx_gen;
	u32 rx_seen;
	struct cable_rate rate;
};

/**
 * struct vh_host - One virtual USB4 host: an ivshmem cable end
 * @pdev: The ivshmem PCI device (also the NHI's DMA device)
 * @base: Mapped shared memory
 * @size: Size of @base
 * @hdr: Cable header (in @base)
 * @me: Our side's area, %NULL while no side is claimed
 * @peer: The other side's area
 * @side: 0 = a, 1 = b, -1 = not claimed
 * @forced_side: Side given by the side= parameter, -1 = automatic
 * @nchan: Channels per direction (HopIDs 8 .. 7 + @nchan)
 * @nslots: Frames per channel ring in shm
 * @nonce: Our claim of a side
 * @session: Our session number (bumped per claim)
 * @uuid: This host's UUID (host router unique_id)
 * @index: Domain number (domainN)
 * @node: Entry in the list of hosts
 * @poller: The poller thread: the cable's "hardware"
 * @poll_wait: Wakes the poller early (new ring work queued)
 * @poll_kick: Set when @poll_wait was kicked
 * @peer_watch: The peer's heartbeat
 * @peer_session: The peer's session when the link came up
 * @hb_next: When to beat our heartbeat next (jiffies)
 * @slot_watch: Heartbeats of both slots while claiming
 * @announced_wait: "both sides in use" was logged
 * @link_want: The poller's view: the link should be up
 * @link_session: Peer session @link_want refers to
 * @peer_xprop_gen: Peer property block generation last handled
 * @wq: Ordered workqueue for XDomain management (tb::wq)
 * @link_work: Brings the XDomain up or down to match @link_want
 * @xprop_work: Re-reads the peer's property block
 * @publish_work: Publishes our property block
 * @mgmt_lock: Serializes the works above and device teardown
 * @xd: The XDomain of the peer while the link is up
 * @host_dev: Host router device (N-0)
 * @nhi: The emulated NHI (tb::nhi points here)
 * @tx_rings: TX rings by hop (nhi.tx_rings)
 * @rx_rings: RX rings by hop (nhi.rx_rings)
 * @chan: Channels, by HopID - 8
 * @hw_lock: Protects @chan, the rings' routes and engine passes
 * @rate: cable-ctl's TX rate cap on the whole direction
 * @rx_seen_ns: When each frame slot of the peer's rings was first seen
 *	filled (ktime ns), @nslots per channel: cable-ctl delay counts from it
 * @n: Counters published in our side area
 * @tb: The domain; must stay last (flexible array in struct tb)
 */
struct vh_host {
	struct pci_dev *pdev;
	void *base;
	resource_size_t size;
	struct usb4vc_hdr *hdr;
	struct usb4vc_side *me;
	struct usb4vc_side *peer;
	int side;
	int forced_side;
	u32 nchan;
	u32 nslots;
	u64 nonce;
	u32 session;
	uuid_t uuid;
	int index;
	struct list_head node;

	struct task_struct *poller;
	wait_queue_head_t poll_wait;
	atomic_t poll_kick;
	struct cable_watch peer_watch;
	u32 peer_session;
	unsigned long hb_next;
	struct cable_watch slot_watch[2];
	bool announced_wait;
	bool link_want;
	u32 link_session;
	u32 peer_xprop_gen;

	struct workqueue_struct *wq;
	struct work_struct link_work;
	struct work_struct xprop_work;
	struct delayed_work publish_work;
	struct mutex mgmt_lock;
	struct tb_xdomain *xd;
	struct device *host_dev;

	struct tb_nhi nhi;
	struct tb_ring *tx_rings[VH_HOP_COUNT];
	struct tb_ring *rx_rings[VH_HOP_COUNT];
	struct vh_chan chan[USB4VC_MAX_CHAN];
	struct mutex hw_lock;

	struct cable_rate rate;
	u64 *rx_seen_ns;
	struct cable_counters n;

	struct tb tb;
};

static inline struct vh_host *tb_to_vh(struct tb *tb)
{
	return container_of(tb, struct vh_host, tb);
}

static inline struct vh_host *nhi_to_vh(struct tb_nhi *nhi)
{
	return container_of(nhi, struct vh_host, nhi);
}

static inline void *vh_ring_base(struct vh_host *h, int dir, u32 chan)
{
	return h->base + READ_ONCE(h->hdr->rings_off) +
	       (u64)(dir * h->nchan + chan) * READ_ONCE(h->hdr->ring_stride);
}

static inline struct usb4vc_desc *vh_slot_desc(struct vh_host *h, int dir,
					       u32 chan, u32 idx)
{
	struct usb4vc_desc *d = vh_ring_base(h, dir, chan);

	return &d[idx & (h->nslots - 1)];
}

static inline void *vh_slot_payload(struct vh_host *h, int dir, u32 chan,
				    u32 idx)
{
	size_t desc_bytes = round_up(h->nslots * sizeof(struct usb4vc_desc),
				     USB4VC_FRAME_SIZE);

	return vh_ring_base(h, dir, chan) + desc_bytes +
	       (size_t)(idx & (h->nslots - 1)) * USB4VC_FRAME_SIZE;
}

/* vhost_main.c */
extern unsigned int vh_poll_max_us;
extern unsigned int vh_hb_timeout_ms;
extern struct mutex vh_hosts_lock;
extern struct list_head vh_hosts;

/* vhost_ivshmem.c */
int vh_pci_register(void);
void vh_pci_unregister(void);
void vh_kick(struct vh_host *h);

/* vhost_nhi.c */
void vh_nhi_init(struct vh_host *h);
bool vh_engine_run(struct vh_host *h);
void vh_engine_link_down(struct vh_host *h);
int vh_paths_enable(struct vh_host *h, int tx_path, int tx_ring,
		    int rx_path, int rx_ring);
void vh_paths_disable(struct vh_host *h, int tx_path, int tx_ring,
		      int rx_path, int rx_ring);

/* vhost_domain.c */
extern const struct bus_type tb_bus_type;
void vh_domain_prepare(struct vh_host *h);
int vh_domain_add(struct vh_host *h);
void vh_domain_remove(struct vh_host *h);
int vh_domain_init(void);
void vh_domain_exit(void);

/* vhost_xdomain.c */
void vh_link_work(struct work_struct *work);
void vh_xprop_work(struct work_struct *work);
void vh_publish_work(struct work_struct *work);
void vh_xdomain_remove(struct vh_host *h);
void vh_publish_all(void);
int vh_xdomain_init(void);
void vh_xdomain_exit(void);

/* A property directory freed when its variable goes out of scope */
DEFINE_FREE(vh_dir, struct tb_property_dir *, if (_T) tb_property_free_dir(_T))

/* vhost_property.c */
int vh_property_merge_dir(struct tb_property_dir *dst,
			  const struct tb_property_dir *src);
ssize_t vh_property_format(const struct tb_property_dir *dir, u8 *buf,
			   size_t len);
struct tb_property_dir *vh_property_parse(const u8 *buf, size_t len);

#endif /* USB4VHOST_H */
