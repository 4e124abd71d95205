// SPDX-License-Identifier: GPL-2.0
/*
 * usb4vhost - the ivshmem transport: the PCI driver for QEMU's
 * ivshmem-plain device (1af4:1110) whose shared memory is the cable
 * (layout in vcable_layout.h), claiming side a or b of it, the heartbeat,
 * and the poller thread that plays the hardware: it watches the cable
 * (plugged, peer alive, peer restarted, peer properties changed), runs the
 * DMA engine and publishes the counters cable-ctl shows.
 *
 * ivshmem-plain has no interrupts, hence the polling: every 50 us while
 * frames move, backing off to poll_max_us when idle; queuing a frame on a
 * ring wakes the thread at once.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/idr.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/utsname.h>

#include "usb4vhost.h"

#define VH_POLL_MIN_US		50
#define VH_HB_INTERVAL		(HZ / 10)
#define VH_CLAIM_SETTLE_MS	20

static char *side = "auto";
module_param(side, charp, 0444);
MODULE_PARM_DESC(side, "Side per cable, comma separated in domain order: a, b or auto (default)");

static char *uuid;
module_param(uuid, charp, 0444);
MODULE_PARM_DESC(uuid, "UUID of this host (unique_id of the host router), random by default");

static DEFINE_IDA(vh_domains);

static inline struct usb4vc_side *vh_side_area(struct vh_host *h, int s)
{
	return h->base + 0x1000 + s * 0x1000;
}

/**
 * vh_kick() - Wake the poller now (a frame was queued)
 * @h: Host
 */
void vh_kick(struct vh_host *h)
{
	atomic_set(&h->poll_kick, 1);
	wake_up(&h->poll_wait);
}

/* ------------------------------------------------------------------ */
/* Claiming a side */

static void vh_side_init(struct vh_host *h)
{
	struct usb4vc_side *me = h->me;
	u32 i;

	for (i = 0; i < USB4VC_MAX_CHAN; i++)
		WRITE_ONCE(me->rx_post[i], 0);
	WRITE_ONCE(me->link_up, 0);
	WRITE_ONCE(me->max_hopid, USB4VC_MIN_HOPID + h->nchan - 1);
	WRITE_ONCE(me->xprop_len, 0);
	WRITE_ONCE(me->props_count, 0);
	memcpy(me->uuid, &h->uuid, sizeof(me->uuid));
	strscpy(me->hostname, init_utsname()->nodename, sizeof(me->hostname));
	h->session = READ_ONCE(me->session) + 1;
	WRITE_ONCE(me->session, h->session);
	smp_wmb();
	WRITE_ONCE(me->state, USB4VC_STATE_PRESENT);
}

/*
 * No cross-VM atomics under TCG: claim = write our nonce, let it settle,
 * read it back.
 */
static bool vh_try_claim(struct vh_host *h)
{
	int s;

	for (s = 0; s < 2; s++) {
		struct usb4vc_side *area = vh_side_area(h, s);
		bool stale = cable_slot_stale(&h->slot_watch[s], area,
						 vh_hb_timeout_ms);

		if (h->forced_side >= 0 && s != h->forced_side)
			continue;
		if (h->forced_side < 0 && READ_ONCE(area->nonce) &&
		    READ_ONCE(area->state) == USB4VC_STATE_PRESENT && !stale)
			continue;
		WRITE_ONCE(area->nonce, h->nonce);
		msleep(VH_CLAIM_SETTLE_MS);
		if (READ_ONCE(area->nonce) != h->nonce)
			continue;

		scoped_guard(mutex, &h->mgmt_lock) {
			h->peer = vh_side_area(h, 1 - s);
			h->me = area;
			h->side = s;
			vh_side_init(h);
		}
		h->peer_watch.changes = 0;
		h->peer_watch.nonce = 0;
		h->peer_xprop_gen = 0;
		h->hb_next = jiffies;
		dev_info(&h->pdev->dev, "claimed side %c of the cable\n", 'a' + s);
		queue_delayed_work(h->wq, &h->publish_work, 0);
		return true;
	}
	if (!h->announced_wait) {
		h->announced_wait = true;
		dev_info(&h->pdev->dev,
			 "both sides of the cable are in use, waiting for one to become free\n");
	}
	return false;
}

static void vh_release_side(struct vh_host *h)
{
	struct usb4vc_side *me = h->me;
	u32 i;

	if (!me)
		return;
	for (i = 0; i < USB4VC_MAX_CHAN; i++)
		WRITE_ONCE(me->rx_post[i], 0);
	WRITE_ONCE(me->link_up, 0);
	WRITE_ONCE(me->state, USB4VC_STATE_FREE);
	smp_wmb();
	if (READ_ONCE(me->nonce) == h->nonce)
		WRITE_ONCE(me->nonce, 0);
	guard(mutex)(&h->mgmt_lock);
	h->me = NULL;
	h->side = -1;
}

/* ------------------------------------------------------------------ */
/* The poller */

/* One pass; returns true while frames move */
static bool vh_poll_once(struct vh_host *h)
{
	unsigned long now = jiffies;
	bool want, plugged;
	u32 session, pgen, c;

	cable_rate_poll(&h->rate, h->hdr);
	if (h->side < 0) {
		vh_try_claim(h);
		return false;
	}
	for (c = 0; c < h->nchan; c++)
		cable_rate_set(&h->chan[c].rate,
			       READ_ONCE(h->hdr->ring_rate_bps[h->side][c]));
	if (READ_ONCE(h->me->nonce) != h->nonce) {
		dev_warn(&h->pdev->dev, "lost side %c to another VM, claiming again\n",
			 'a' + h->side);
		WRITE_ONCE(h->link_want, false);
		queue_work(h->wq, &h->link_work);
		flush_work(&h->link_work);
		guard(mutex)(&h->mgmt_lock);
		h->me = NULL;
		h->side = -1;
		return false;
	}
	if (time_after_eq(now, h->hb_next)) {
		WRITE_ONCE(h->me->heartbeat, READ_ONCE(h->me->heartbeat) + 1);
		WRITE_ONCE(h->me->state, USB4VC_STATE_PRESENT);
		/* The hostname may be set after the module was loaded */
		strscpy(h->me->hostname, init_utsname()->nodename,
			sizeof(h->me->hostname));
		cable_publish_counters(h->me, &h->n);
		h->hb_next = now + VH_HB_INTERVAL;
	}

	plugged = READ_ONCE(h->hdr->plugged) != 0;
	want = plugged && cable_peer_alive(&h->peer_watch, h->peer, now,
					   vh_hb_timeout_ms);
	session = READ_ONCE(h->peer->session);
	if (want != h->link_want || (want && session != h->link_session)) {
		WRITE_ONCE(h->link_session, session);
		WRITE_ONCE(h->link_want, want);
		if (want)
			h->peer_xprop_gen = 0;
		queue_work(h->wq, &h->link_work);
	}
	if (!want)
		return false;

	pgen = READ_ONCE(h->peer->xprop_gen);
	if (!(pgen & 1) && pgen != h->peer_xprop_gen) {
		h->peer_xprop_gen = pgen;
		queue_work(h->wq, &h->xprop_work);
	}
	return vh_engine_run(h);
}

static int vh_poller(void *data)
{
	struct vh_host *h = data;
	unsigned int us = VH_POLL_MIN_US;

	while (!kthread_should_stop()) {
		unsigned int max = max_t(unsigned int, READ_ONCE(vh_poll_max_us),
					 VH_POLL_MIN_US);

		atomic_set(&h->poll_kick, 0);
		if (vh_poll_once(h)) {
			us = VH_POLL_MIN_US;
			usleep_range(us, us + us / 4);
			continue;
		}
		us = min(us * 2, max);
		if (us <= 2 * VH_POLL_MIN_US)
			usleep_range(us, us + us / 4);
		else
			wait_event_interruptible_timeout(h->poll_wait,
					atomic_read(&h->poll_kick) ||
					kthread_should_stop(),
					usecs_to_jiffies(us));
		if (atomic_read(&h->poll_kick))
			us = VH_POLL_MIN_US;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* PCI driver */

/* A new host; put_device(&h->tb.dev) frees it */
static struct vh_host *vh_host_alloc(struct pci_dev *pdev)
{
	struct vh_host *h = kzalloc(sizeof(*h), GFP_KERNEL);
	unsigned int i;

	if (!h)
		return NULL;
	h->pdev = pdev;
	h->side = -1;
	h->forced_side = -1;
	h->index = -1;
	INIT_LIST_HEAD(&h->node);
	init_waitqueue_head(&h->poll_wait);
	spin_lock_init(&h->rate.lock);
	mutex_init(&h->mgmt_lock);
	INIT_WORK(&h->link_work, vh_link_work);
	INIT_WORK(&h->xprop_work, vh_xprop_work);
	INIT_DELAYED_WORK(&h->publish_work, vh_publish_work);
	for (i = 0; i < ARRAY_SIZE(h->chan); i++)
		spin_lock_init(&h->chan[i].rate.lock);
	do {
		h->nonce = get_random_u64();
	} while (!h->nonce);
	vh_nhi_init(h);
	vh_domain_prepare(h);
	return h;
}

static int vh_map(struct vh_host *h)
{
	struct pci_dev *pdev = h->pdev;
	int ret;

	ret = pci_enable_device(pdev);
	if (ret)
		return ret;
	ret = pci_request_region(pdev, 2, KBUILD_MODNAME);
	if (ret)
		goto err_disable;
	/* Ring buffers are DMA mapped for this device: no bouncing, please */
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret)
		goto err_region;
	h->size = pci_resource_len(pdev, 2);
	ret = -ENODEV;
	if (h->size < USB4VC_HDR_SIZE)
		goto err_region;
	ret = -ENOMEM;
	h->base = memremap(pci_resource_start(pdev, 2), h->size, MEMREMAP_WB);
	if (!h->base)
		goto err_region;
	h->hdr = h->base;
	ret = cable_check_layout(&pdev->dev, h->hdr, h->size, &h->nchan,
				 &h->nslots);
	if (ret)
		goto err_unmap;
	ret = -ENOMEM;
	h->rx_seen_ns = kvcalloc(h->nchan * h->nslots, sizeof(u64), GFP_KERNEL);
	if (!h->rx_seen_ns)
		goto err_unmap;
	return 0;

err_unmap:
	memunmap(h->base);
err_region:
	pci_release_region(pdev, 2);
err_disable:
	pci_disable_device(pdev);
	return ret;
}

static void vh_unmap(struct vh_host *h)
{
	kvfree(h->rx_seen_ns);
	h->rx_seen_ns = NULL;
	memunmap(h->base);
	pci_release_region(h->pdev, 2);
	pci_disable_device(h->pdev);
}

static int vh_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vh_host *h;
	int ret;

	h = vh_host_alloc(pdev);
	if (!h)
		return -ENOMEM;
	if (uuid && *uuid) {
		ret = uuid_parse(uuid, &h->uuid);
		if (ret) {
			dev_err(&pdev->dev, "invalid uuid= parameter '%s'\n", uuid);
			goto err_put;
		}
	} else {
		uuid_gen(&h->uuid);
	}
	ret = vh_map(h);
	if (ret)
		goto err_put;
	ret = -ENOMEM;
	h->wq = alloc_ordered_workqueue("usb4vhost/%s", 0, pci_name(pdev));
	if (!h->wq)
		goto err_unmap;
	ret = ida_alloc_max(&vh_domains, VH_MAX_HOSTS - 1, GFP_KERNEL);
	if (ret < 0)
		goto err_wq;
	h->index = ret;
	h->forced_side = cable_side_param(side, h->index);
	ret = vh_domain_add(h);
	if (ret)
		goto err_ida;

	pci_set_drvdata(pdev, h);
	scoped_guard(mutex, &vh_hosts_lock)
		list_add_tail(&h->node, &vh_hosts);
	h->poller = kthread_run(vh_poller, h, "usb4vhost/%d", h->index);
	if (IS_ERR(h->poller)) {
		ret = PTR_ERR(h->poller);
		h->poller = NULL;
		dev_err(&pdev->dev, "cannot start the poller (%d)\n", ret);
	}
	dev_info(&pdev->dev, "virtual USB4 host domain%d: %llu KiB cable, %u channels x %u frames, uuid %pUb\n",
		 h->index, (u64)h->size >> 10, h->nchan, h->nslots, &h->uuid);
	return 0;

err_ida:
	ida_free(&vh_domains, h->index);
err_wq:
	destroy_workqueue(h->wq);
err_unmap:
	vh_unmap(h);
err_put:
	put_device(&h->tb.dev);	/* frees h */
	return ret;
}

static void vh_remove(struct pci_dev *pdev)
{
	struct vh_host *h = pci_get_drvdata(pdev);
	int index = h->index;

	if (h->poller)
		kthread_stop(h->poller);
	scoped_guard(mutex, &vh_hosts_lock)
		list_del_init(&h->node);
	cancel_delayed_work_sync(&h->publish_work);
	cancel_work_sync(&h->xprop_work);
	cancel_work_sync(&h->link_work);
	scoped_guard(mutex, &h->mgmt_lock)
		vh_xdomain_remove(h);
	vh_release_side(h);
	/* Rings still open keep the domain (and h) until they are freed */
	scoped_guard(mutex, &h->hw_lock)
		h->nhi.going_away = true;
	destroy_workqueue(h->wq);
	h->tb.wq = NULL;
	/* The poller is gone and no side is held: nothing maps the cable now */
	vh_unmap(h);
	vh_domain_remove(h);	/* may free h */
	/*
	 * Only once "domainN" and "N-0" are unregistered: a host probing meanwhile
	 * would otherwise get the same index and fail on the names still taken.
	 */
	ida_free(&vh_domains, index);
}

static const struct pci_device_id vh_pci_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vh_pci_ids);

static struct pci_driver vh_pci_driver = {
	.name = KBUILD_MODNAME,
	.id_table = vh_pci_ids,
	.probe = vh_probe,
	.remove = vh_remove,
};

/**
 * vh_pci_register() - Register the ivshmem PCI driver
 *
 * Return: %0 or negative errno.
 */
int vh_pci_register(void)
{
	return pci_register_driver(&vh_pci_driver);
}

/**
 * vh_pci_unregister() - Unregister it (removes every host)
 */
void vh_pci_unregister(void)
{
	pci_unregister_driver(&vh_pci_driver);
	ida_destroy(&vh_domains);
}
