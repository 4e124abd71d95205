// SPDX-License-Identifier: GPL-2.0
/*
 * usb4vcable - a virtual USB4 cable between two virtual machines.
 *
 * Two VMs share one QEMU ivshmem-plain region (PCI 1af4:1110). This module
 * turns that region into a "cable" and presents to user space what a host
 * with a real USB4/Thunderbolt cable and the thunderbolt_stream driver
 * presents: the thunderbolt bus in sysfs (domain, host router, XDomain
 * peer and its "stream" service), the ConfigFS tree
 * /sys/kernel/config/thunderbolt/stream and the /dev/tbstreamN character
 * devices with the USB4STREAM semantics.
 *
 * ivshmem-plain has no interrupts: a kernel thread per cable polls the
 * shared memory with an adaptive interval (fast while data moves, backing
 * off to poll_max_us when idle). See kmod/README.md for the layout.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/configfs.h>
#include <linux/delay.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/kref.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/list.h>
#include <linux/cdev.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/random.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/uio.h>
#include <linux/utsname.h>
#include <linux/uuid.h>
#include <linux/wait.h>
#include <linux/xarray.h>

#include "vcable_layout.h"
#include "cable.h"

#define VC_RING_SIZE		256
#define VC_MIN_RING_SIZE	32
#define VC_MAX_RING_SIZE	4096
#define VC_THROTTLING		8192
#define VC_MAX_THROTTLING	16776960
#define VC_KEY_SIZE		8	/* TB_PROPERTY_KEY_SIZE */
#define VC_CLOSE_LEN		256

#define VC_POLL_MIN_US		50
#define VC_HB_INTERVAL		(HZ / 10)
#define VC_CLAIM_SETTLE_MS	20

static char *side = "auto";
module_param(side, charp, 0444);
MODULE_PARM_DESC(side, "Side per cable, comma separated in domain order: a, b or auto (first free slot, default)");

static char *uuid;
module_param(uuid, charp, 0444);
MODULE_PARM_DESC(uuid, "UUID of this host (unique_id of the host router), random by default");

static unsigned int poll_max_us = 10000;
module_param(poll_max_us, uint, 0644);
MODULE_PARM_DESC(poll_max_us, "Longest idle polling interval in microseconds (default 10000)");

static unsigned int hb_timeout_ms = 1500;
module_param(hb_timeout_ms, uint, 0644);
MODULE_PARM_DESC(hb_timeout_ms, "Peer heartbeat timeout in milliseconds (default 1500)");

/* One ivshmem device */
struct vc_cable {
	struct pci_dev *pdev;
	void *base;
	resource_size_t size;
	struct usb4vc_hdr *hdr;
	struct usb4vc_side *me;
	struct usb4vc_side *peer;
	int side;			/* 0 = a, 1 = b, -1 = not claimed */
	int forced_side;		/* -1 = auto */
	u32 nchan;
	u32 nslots;
	u64 nonce;
	u32 session;
	u32 post_gen;
	int domain;
	uuid_t uuid;
	struct device *domain_dev;
	struct device *host_dev;
	struct task_struct *poller;

	/* Poller state */
	struct vc_link *link;
	u32 link_session;
	struct cable_watch peer_watch;
	unsigned long hb_next;
	u32 peer_props_gen;
	struct cable_watch slot_watch[2];
	bool announced_wait;

	/* Published stream properties (shm), protected by props_lock */
	struct mutex props_lock;

	/* Streams with the device open, protected by active_lock */
	spinlock_t active_lock;
	struct list_head active;

	/* TX rate cap */
	struct cable_rate rate;

	/* Receive corruption */
	spinlock_t corrupt_lock;

	struct cable_counters n;
};

/* One plugged cable session with a live peer: the XDomain + service */
struct vc_link {
	struct kref kref;
	struct vc_cable *cable;
	bool unplugged;
	spinlock_t hop_lock;
	unsigned long in_used;
	unsigned long out_used;
	int local_max;
	int remote_max;
	struct device *xd_dev;
	struct device *svc_dev;
	char svc_name[24];
	struct list_head sdevs;		/* attached stream devices (vc_mutex) */
};

/* ConfigFS connection group, e.g. stream/0-1.0 */
struct vc_conn {
	struct config_group group;
	struct vc_link *link;
	struct list_head sdevs;
	struct list_head node;
};

/* ConfigFS stream group + /dev/tbstreamN */
struct vc_sdev {
	struct config_group group;
	struct kref kref;
	struct device *chardev;
	int index;
	int in_hopid;
	int out_hopid;
	int in_owned;
	int out_owned;
	unsigned int ring_size;
	unsigned int throttling;
	int users;
	bool closed;
	bool removed;
	wait_queue_head_t wait;
	atomic_t events;
	struct mutex lock;
	struct list_head conn_node;	/* vc_conn->sdevs (vc_mutex) */
	struct list_head link_node;	/* vc_link->sdevs (vc_mutex) */
	struct vc_link *link;
	char name[VC_KEY_SIZE + 1];

	/* I/O state while started (sdev->lock) */
	bool started;
	bool peer_was_open;
	struct list_head active_node;	/* vc_cable->active */
	struct vc_cable *cable;		/* valid while started */
	u32 rx_chan;
	u32 tx_chan;
	u32 rx_gen;
	u32 rx_off;
	u64 poll_sig;
};

static DEFINE_MUTEX(vc_mutex);	/* conns, links, attach/detach */
static LIST_HEAD(vc_conns);
static DEFINE_IDA(vc_indices);
static DEFINE_IDA(vc_domains);

/*
 * Live object count (links, devices, connections, streams, cables): must be 0
 * at module exit. A cheap leak check where kmemleak is not available.
 */
static atomic_t vc_live_objs = ATOMIC_INIT(0);

static void *vc_zalloc(size_t size)
{
	void *p = kzalloc(size, GFP_KERNEL);

	if (p)
		atomic_inc(&vc_live_objs);
	return p;
}

static void vc_free(void *p)
{
	if (p)
		atomic_dec(&vc_live_objs);
	kfree(p);
}

/*
 * /dev/tbstreamN: a private char device region rather than miscdevice, because
 * misc_open() calls our open() with the global misc_mtx held and open() may
 * block until the peer appears (that would stall every misc device and our own
 * mkdir/rmdir). Minor = index; vc_minors maps it to the stream device.
 */
#define VC_MAX_STREAMS	256
static dev_t vc_devt;
static struct cdev vc_cdev;
static DEFINE_XARRAY(vc_minors);
static const struct class vc_class = {
	.name = "tbstream",
};

/* ------------------------------------------------------------------ */
/* Shared memory helpers */

static inline struct usb4vc_side *vc_side_area(struct vc_cable *c, int s)
{
	return c->base + 0x1000 + s * 0x1000;
}

static inline void *vc_ring(struct vc_cable *c, int dir, u32 chan)
{
	u64 off = READ_ONCE(c->hdr->rings_off) +
		  (u64)(dir * c->nchan + chan) * READ_ONCE(c->hdr->ring_stride);

	return c->base + off;
}

static inline struct usb4vc_desc *vc_desc(struct vc_cable *c, int dir,
					  u32 chan, u32 idx)
{
	struct usb4vc_desc *d = vc_ring(c, dir, chan);

	return &d[idx & (c->nslots - 1)];
}

static inline void *vc_payload(struct vc_cable *c, int dir, u32 chan, u32 idx)
{
	size_t desc_bytes = round_up(c->nslots * sizeof(struct usb4vc_desc),
				     USB4VC_FRAME_SIZE);

	return vc_ring(c, dir, chan) + desc_bytes +
	       (size_t)(idx & (c->nslots - 1)) * USB4VC_FRAME_SIZE;
}

static inline int vc_tx_dir(struct vc_cable *c)
{
	return c->side;
}

static inline int vc_rx_dir(struct vc_cable *c)
{
	return 1 - c->side;
}

/* ------------------------------------------------------------------ */
/* Link reference counting */

static void vc_link_release(struct kref *kref)
{
	vc_free(container_of(kref, struct vc_link, kref));
}

static struct vc_link *vc_link_get(struct vc_link *link)
{
	if (link)
		kref_get(&link->kref);
	return link;
}

static void vc_link_put(struct vc_link *link)
{
	if (link)
		kref_put(&link->kref, vc_link_release);
}

/* ------------------------------------------------------------------ */
/* The thunderbolt bus and its devices */

static int vc_bus_match(struct device *dev, const struct device_driver *drv);

static const struct bus_type vc_bus = {
	.name = "thunderbolt",
	.match = vc_bus_match,
};

struct vc_dev {
	struct device dev;
	uuid_t uuid;
	char name[USB4VC_HOSTNAME];
	int maxhopid;
};

#define to_vc_dev(d) container_of(d, struct vc_dev, dev)

static void vc_dev_release(struct device *dev)
{
	vc_free(to_vc_dev(dev));
}

/* Domain */
static ssize_t security_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "user\n");
}
static DEVICE_ATTR_RO(security);

static ssize_t iommu_dma_protection_show(struct device *dev,
					 struct device_attribute *attr,
					 char *buf)
{
	return sysfs_emit(buf, "%d\n", 1);
}
static DEVICE_ATTR_RO(iommu_dma_protection);

static ssize_t deauthorization_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", 0);
}
static DEVICE_ATTR_RO(deauthorization);

static struct attribute *vc_domain_attrs[] = {
	&dev_attr_deauthorization.attr,
	&dev_attr_iommu_dma_protection.attr,
	&dev_attr_security.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vc_domain);

static const struct device_type vc_domain_type = {
	.name = "thunderbolt_domain",
	.groups = vc_domain_groups,
	.release = vc_dev_release,
};

/* Host router (switch) 0-0 and XDomain 0-1 share some attributes */
static ssize_t unique_id_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	return sysfs_emit(buf, "%pUb\n", &to_vc_dev(dev)->uuid);
}
static DEVICE_ATTR_RO(unique_id);

static ssize_t device_name_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	struct vc_dev *vd = to_vc_dev(dev);

	/* The host router follows the live hostname */
	if (!vd->maxhopid)
		return sysfs_emit(buf, "%s\n", init_utsname()->nodename);
	return sysfs_emit(buf, "%s\n", vd->name);
}
static DEVICE_ATTR_RO(device_name);

static ssize_t vendor_name_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "Intel Corp.\n");
}
static DEVICE_ATTR_RO(vendor_name);

static ssize_t vendor_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%#x\n", 0x8086);
}
static DEVICE_ATTR_RO(vendor);

static ssize_t device_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%#x\n", 0x1);
}
static DEVICE_ATTR_RO(device);

static ssize_t authorized_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", 1);
}
static DEVICE_ATTR_RO(authorized);

static ssize_t generation_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", 4);
}
static DEVICE_ATTR_RO(generation);

static struct attribute *vc_switch_attrs[] = {
	&dev_attr_authorized.attr,
	&dev_attr_device.attr,
	&dev_attr_device_name.attr,
	&dev_attr_generation.attr,
	&dev_attr_unique_id.attr,
	&dev_attr_vendor.attr,
	&dev_attr_vendor_name.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vc_switch);

static const struct device_type vc_switch_type = {
	.name = "thunderbolt_device",
	.groups = vc_switch_groups,
	.release = vc_dev_release,
};

static ssize_t maxhopid_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "%d\n", to_vc_dev(dev)->maxhopid);
}
static DEVICE_ATTR_RO(maxhopid);

static ssize_t speed_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "%u.0 Gb/s\n", 20);
}
static DEVICE_ATTR(rx_speed, 0444, speed_show, NULL);
static DEVICE_ATTR(tx_speed, 0444, speed_show, NULL);

static ssize_t lanes_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "%u\n", 2);
}
static DEVICE_ATTR(rx_lanes, 0444, lanes_show, NULL);
static DEVICE_ATTR(tx_lanes, 0444, lanes_show, NULL);

static struct attribute *vc_xdomain_attrs[] = {
	&dev_attr_device.attr,
	&dev_attr_device_name.attr,
	&dev_attr_maxhopid.attr,
	&dev_attr_rx_lanes.attr,
	&dev_attr_rx_speed.attr,
	&dev_attr_tx_lanes.attr,
	&dev_attr_tx_speed.attr,
	&dev_attr_unique_id.attr,
	&dev_attr_vendor.attr,
	&dev_attr_vendor_name.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vc_xdomain);

static const struct device_type vc_xdomain_type = {
	.name = "thunderbolt_xdomain",
	.groups = vc_xdomain_groups,
	.release = vc_dev_release,
};

/* Service 0-1.0 */
#define VC_SVC_KEY	"stream"
#define VC_PRTCID	1
#define VC_PRTCVERS	1
#define VC_PRTCREVS	0
#define VC_PRTCSTNS	0

static ssize_t key_show(struct device *dev, struct device_attribute *attr,
			char *buf)
{
	return sysfs_emit(buf, "%s\n", VC_SVC_KEY);
}
static DEVICE_ATTR_RO(key);

static ssize_t modalias_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "tbsvc:k%sp%08Xv%08Xr%08X\n", VC_SVC_KEY,
			  VC_PRTCID, VC_PRTCVERS, VC_PRTCREVS);
}
static DEVICE_ATTR_RO(modalias);

static ssize_t prtcid_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%u\n", VC_PRTCID);
}
static DEVICE_ATTR_RO(prtcid);

static ssize_t prtcvers_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "%u\n", VC_PRTCVERS);
}
static DEVICE_ATTR_RO(prtcvers);

static ssize_t prtcrevs_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "%u\n", VC_PRTCREVS);
}
static DEVICE_ATTR_RO(prtcrevs);

static ssize_t prtcstns_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "0x%08x\n", VC_PRTCSTNS);
}
static DEVICE_ATTR_RO(prtcstns);

static struct attribute *vc_service_attrs[] = {
	&dev_attr_key.attr,
	&dev_attr_modalias.attr,
	&dev_attr_prtcid.attr,
	&dev_attr_prtcvers.attr,
	&dev_attr_prtcrevs.attr,
	&dev_attr_prtcstns.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vc_service);

static int vc_service_uevent(const struct device *dev,
			     struct kobj_uevent_env *env)
{
	return add_uevent_var(env, "MODALIAS=tbsvc:k%sp%08Xv%08Xr%08X",
			      VC_SVC_KEY, VC_PRTCID, VC_PRTCVERS, VC_PRTCREVS);
}

static const struct device_type vc_service_type = {
	.name = "thunderbolt_service",
	.groups = vc_service_groups,
	.uevent = vc_service_uevent,
	.release = vc_dev_release,
};

static int vc_bus_match(struct device *dev, const struct device_driver *drv)
{
	return dev->type == &vc_service_type;
}

static int vc_stream_probe(struct device *dev)
{
	return 0;
}

/* Gives 0-1.0 its "driver" link, like the real thunderbolt_stream */
static struct device_driver vc_stream_driver = {
	.name = "thunderbolt_stream",
	.bus = &vc_bus,
	.owner = THIS_MODULE,
	.probe = vc_stream_probe,
	.suppress_bind_attrs = true,
};

static struct device *vc_dev_create(struct device *parent,
				    const struct device_type *type,
				    const char *name)
{
	struct vc_dev *vd;
	int ret;

	vd = vc_zalloc(sizeof(*vd));
	if (!vd)
		return ERR_PTR(-ENOMEM);

	device_initialize(&vd->dev);
	vd->dev.parent = parent;
	vd->dev.bus = &vc_bus;
	vd->dev.type = type;
	ret = dev_set_name(&vd->dev, "%s", name);
	if (ret) {
		put_device(&vd->dev);
		return ERR_PTR(ret);
	}
	return &vd->dev;
}

static int vc_dev_add(struct device *dev)
{
	int ret = device_add(dev);

	if (ret)
		put_device(dev);
	return ret;
}

/* ------------------------------------------------------------------ */
/* Published stream properties (service_update_properties equivalent) */

static void vc_props_write(struct vc_cable *c, struct usb4vc_prop *props,
			   u32 count)
{
	struct usb4vc_side *me = c->me;
	u32 gen = READ_ONCE(me->props_gen);

	WRITE_ONCE(me->props_gen, gen | 1);
	smp_wmb();
	memcpy(me->props, props, sizeof(*props) * USB4VC_MAX_PROPS);
	WRITE_ONCE(me->props_count, count);
	smp_wmb();
	WRITE_ONCE(me->props_gen, (gen | 1) + 1);
}

/* Read a consistent copy of the side's published properties */
static u32 vc_props_read(struct usb4vc_side *s, struct usb4vc_prop *props,
			 u32 *genp)
{
	u32 gen, count;
	int tries;

	for (tries = 0; tries < 1000; tries++) {
		gen = READ_ONCE(s->props_gen);
		if (gen & 1) {
			cpu_relax();
			continue;
		}
		smp_rmb();
		memcpy(props, s->props, sizeof(*props) * USB4VC_MAX_PROPS);
		count = READ_ONCE(s->props_count);
		smp_rmb();
		if (READ_ONCE(s->props_gen) == gen) {
			if (genp)
				*genp = gen;
			return min_t(u32, count, USB4VC_MAX_PROPS);
		}
	}
	return 0;
}

static void vc_props_update(struct vc_cable *c, const char *name,
			    int in_hopid, int out_hopid)
{
	struct usb4vc_prop *props;
	u32 count, i;

	props = kcalloc(USB4VC_MAX_PROPS, sizeof(*props), GFP_KERNEL);
	if (!props)
		return;

	mutex_lock(&c->props_lock);
	if (c->side < 0)
		goto out;
	count = vc_props_read(c->me, props, NULL);
	for (i = 0; i < count; i++) {
		if (!strncmp(props[i].name, name, USB4VC_PROP_NAME))
			break;
	}
	if (in_hopid < USB4VC_MIN_HOPID || out_hopid < USB4VC_MIN_HOPID) {
		if (i == count)
			goto out;
		/* Remove the entry */
		memmove(&props[i], &props[i + 1],
			(count - i - 1) * sizeof(*props));
		count--;
		memset(&props[count], 0, sizeof(*props));
	} else {
		if (i == count) {
			if (count == USB4VC_MAX_PROPS) {
				pr_warn("too many published streams, %s not published\n",
					name);
				goto out;
			}
			count++;
		}
		memset(&props[i], 0, sizeof(*props));
		strscpy(props[i].name, name, sizeof(props[i].name));
		props[i].in_hopid = in_hopid;
		props[i].out_hopid = out_hopid;
	}
	vc_props_write(c, props, count);
out:
	mutex_unlock(&c->props_lock);
	kfree(props);
}

static void vc_props_clear(struct vc_cable *c)
{
	struct usb4vc_prop *props;

	props = kcalloc(USB4VC_MAX_PROPS, sizeof(*props), GFP_KERNEL);
	if (!props)
		return;
	mutex_lock(&c->props_lock);
	if (c->side >= 0)
		vc_props_write(c, props, 0);
	mutex_unlock(&c->props_lock);
	kfree(props);
}

/* service_get_hopids equivalent: reversed lookup in the peer's properties */
static void vc_props_lookup(struct vc_cable *c, const char *name,
			    int *in_hopid, int *out_hopid)
{
	struct usb4vc_prop *props;
	u32 count, i;

	props = kcalloc(USB4VC_MAX_PROPS, sizeof(*props), GFP_KERNEL);
	if (!props)
		return;
	count = vc_props_read(c->peer, props, NULL);
	for (i = 0; i < count; i++) {
		props[i].name[USB4VC_PROP_NAME - 1] = '\0';
		if (strcmp(props[i].name, name))
			continue;
		if (props[i].in_hopid >= USB4VC_MIN_HOPID)
			*out_hopid = props[i].in_hopid;
		if (props[i].out_hopid >= USB4VC_MIN_HOPID)
			*in_hopid = props[i].out_hopid;
		break;
	}
	kfree(props);
}

/* ------------------------------------------------------------------ */
/* HopID allocation (tb_xdomain_alloc_in/out_hopid equivalent) */

static int vc_hopid_alloc(struct vc_link *link, unsigned long *used, int max,
			  int hopid)
{
	int start = hopid < 0 ? USB4VC_MIN_HOPID : hopid;
	int h, ret = -ENOSPC;

	if (start < USB4VC_MIN_HOPID || start > max)
		return -EINVAL;

	spin_lock(&link->hop_lock);
	for (h = start; h <= max; h++) {
		if (!(*used & BIT(h))) {
			ret = h;
			break;
		}
	}
	/* A specific HopID that is taken: report EBUSY, allocate nothing */
	if (ret > 0 && hopid > 0 && ret != hopid)
		ret = -EBUSY;
	else if (ret > 0)
		*used |= BIT(ret);
	spin_unlock(&link->hop_lock);
	return ret;
}

static void vc_hopid_release(struct vc_link *link, unsigned long *used,
			     int hopid)
{
	if (hopid <= 0)
		return;
	spin_lock(&link->hop_lock);
	*used &= ~BIT(hopid);
	spin_unlock(&link->hop_lock);
}

/* sdev->lock held, sdev->link set */
static int vc_sdev_alloc_in(struct vc_sdev *sdev, int hopid)
{
	struct vc_link *link = sdev->link;
	int ret;

	if (sdev->in_hopid > 0 && sdev->in_hopid != hopid) {
		vc_hopid_release(link, &link->in_used, sdev->in_owned);
		sdev->in_owned = 0;
	}
	if (!hopid) {
		sdev->in_hopid = 0;
		return 0;
	}
	ret = vc_hopid_alloc(link, &link->in_used, link->local_max, hopid);
	if (ret < 0)
		return ret;
	sdev->in_hopid = ret;
	sdev->in_owned = ret;
	return 0;
}

static int vc_sdev_alloc_out(struct vc_sdev *sdev, int hopid)
{
	struct vc_link *link = sdev->link;
	int ret;

	if (sdev->out_hopid > 0 && sdev->out_hopid != hopid) {
		vc_hopid_release(link, &link->out_used, sdev->out_owned);
		sdev->out_owned = 0;
	}
	if (!hopid) {
		sdev->out_hopid = 0;
		return 0;
	}
	ret = vc_hopid_alloc(link, &link->out_used, link->remote_max, hopid);
	if (ret < 0)
		return ret;
	sdev->out_hopid = ret;
	sdev->out_owned = ret;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Stream device I/O */

static void vc_sdev_release(struct kref *kref);

static void vc_sdev_put(struct vc_sdev *sdev)
{
	kref_put(&sdev->kref, vc_sdev_release);
}

static struct vc_sdev *vc_sdev_get(struct vc_sdev *sdev)
{
	kref_get(&sdev->kref);
	return sdev;
}

static inline struct vc_sdev *vc_sdev_from_file(struct file *file)
{
	return file->private_data;
}

static inline void vc_sdev_kick(struct vc_sdev *sdev)
{
	atomic_inc(&sdev->events);
	wake_up_interruptible_all(&sdev->wait);
}

/* tbstream_dev_valid() equivalent; lockless reads are fine for the check */
static int vc_sdev_valid(struct vc_sdev *sdev)
{
	struct vc_link *link = READ_ONCE(sdev->link);

	if (!link || READ_ONCE(link->unplugged))
		return -ENXIO;
	if (READ_ONCE(sdev->in_hopid) <= 0 || READ_ONCE(sdev->out_hopid) <= 0)
		return -EINVAL;
	return 0;
}

static inline bool vc_chan_ok(struct vc_cable *c, int hopid)
{
	return hopid >= USB4VC_MIN_HOPID &&
	       hopid < USB4VC_MIN_HOPID + (int)c->nchan;
}

/* Post our RX ring for the stream's input channel. sdev->lock held. */
static int vc_sdev_start_io(struct vc_sdev *sdev)
{
	struct vc_cable *c = sdev->link->cable;
	u32 gen;

	if (c->side < 0)
		return -ENXIO;
	if (!vc_chan_ok(c, sdev->in_hopid) || !vc_chan_ok(c, sdev->out_hopid))
		return -EINVAL;

	sdev->cable = c;
	sdev->rx_chan = sdev->in_hopid - USB4VC_MIN_HOPID;
	sdev->tx_chan = sdev->out_hopid - USB4VC_MIN_HOPID;
	sdev->rx_off = 0;
	sdev->peer_was_open = false;

	gen = ++c->post_gen;
	if (!gen)
		gen = ++c->post_gen;
	sdev->rx_gen = gen;
	/* Drop whatever an earlier session left in the ring */
	WRITE_ONCE(c->me->rx_cons[sdev->rx_chan],
		   READ_ONCE(c->peer->tx_prod[sdev->rx_chan]));
	smp_wmb();
	WRITE_ONCE(c->me->rx_post[sdev->rx_chan], gen);

	spin_lock(&c->active_lock);
	list_add_tail(&sdev->active_node, &c->active);
	spin_unlock(&c->active_lock);
	sdev->started = true;
	return 0;
}

/* sdev->lock held */
static void vc_sdev_stop_io(struct vc_sdev *sdev)
{
	struct vc_cable *c = sdev->cable;

	if (!sdev->started)
		return;
	sdev->started = false;
	if (c->side >= 0 && READ_ONCE(c->me->rx_post[sdev->rx_chan]) ==
	    sdev->rx_gen)
		WRITE_ONCE(c->me->rx_post[sdev->rx_chan], 0);
	spin_lock(&c->active_lock);
	list_del_init(&sdev->active_node);
	spin_unlock(&c->active_lock);
}

static inline bool vc_sdev_io_ok(struct vc_sdev *sdev)
{
	return sdev->started && sdev->link && !READ_ONCE(sdev->link->unplugged);
}

/* Frames in flight on our TX channel */
static inline u32 vc_tx_used(struct vc_sdev *sdev)
{
	struct vc_cable *c = sdev->cable;

	return READ_ONCE(c->me->tx_prod[sdev->tx_chan]) -
	       READ_ONCE(c->peer->rx_cons[sdev->tx_chan]);
}

/*
 * Can we send a DATA frame now? 1 = yes, 0 = wait, <0 = error.
 * sdev->lock held.
 */
static int vc_tx_check(struct vc_sdev *sdev, u32 *gen)
{
	struct vc_cable *c;
	u32 post, cap;

	if (!vc_sdev_io_ok(sdev))
		return -ENXIO;
	c = sdev->cable;
	post = READ_ONCE(c->peer->rx_post[sdev->tx_chan]);
	if (!post)
		return sdev->peer_was_open ? -ENXIO : 0;
	sdev->peer_was_open = true;
	cap = min_t(u32, sdev->ring_size, c->nslots) - 1;
	if (vc_tx_used(sdev) >= cap)
		return 0;
	if (!cable_rate_ok(&c->rate))
		return 0;
	if (gen)
		*gen = post;
	return 1;
}

static void vc_tx_frame(struct vc_sdev *sdev, u32 gen, u16 type, u32 len)
{
	struct vc_cable *c = sdev->cable;
	u32 prod = READ_ONCE(c->me->tx_prod[sdev->tx_chan]);
	struct usb4vc_desc *d = vc_desc(c, vc_tx_dir(c), sdev->tx_chan, prod);

	WRITE_ONCE(d->len, len);
	WRITE_ONCE(d->type, type);
	WRITE_ONCE(d->flags, 0);
	WRITE_ONCE(d->gen, gen);
	WRITE_ONCE(d->seq, prod);
	smp_wmb();
	WRITE_ONCE(c->me->tx_prod[sdev->tx_chan], prod + 1);
}

/* Last close: tell the peer (CLOSE frame), may use the reserved slot */
static void vc_sdev_send_close(struct vc_sdev *sdev)
{
	struct vc_cable *c = sdev->cable;
	u32 post;

	if (!vc_sdev_io_ok(sdev))
		return;
	post = READ_ONCE(c->peer->rx_post[sdev->tx_chan]);
	if (!post || vc_tx_used(sdev) >= c->nslots)
		return;
	memset(vc_payload(c, vc_tx_dir(c), sdev->tx_chan,
			  READ_ONCE(c->me->tx_prod[sdev->tx_chan])),
	       0, VC_CLOSE_LEN);
	vc_tx_frame(sdev, post, USB4VC_FRAME_CLOSE, VC_CLOSE_LEN);
	atomic64_inc(&c->n.close_tx);
}

/* Is a received frame waiting? 1 = yes, 0 = no, <0 = error. lock held. */
static int vc_rx_check(struct vc_sdev *sdev)
{
	struct vc_cable *c;

	if (!vc_sdev_io_ok(sdev))
		return -ENXIO;
	c = sdev->cable;
	return READ_ONCE(c->peer->tx_prod[sdev->rx_chan]) !=
	       READ_ONCE(c->me->rx_cons[sdev->rx_chan]);
}

static void vc_rx_consume(struct vc_sdev *sdev, u32 cons)
{
	struct vc_cable *c = sdev->cable;

	sdev->rx_off = 0;
	smp_mb();
	WRITE_ONCE(c->me->rx_cons[sdev->rx_chan], cons + 1);
}

/* Fault injection: corrupt the payload like a frame with a CRC error */
static bool vc_rx_should_corrupt(struct vc_cable *c)
{
	bool ret;

	spin_lock(&c->corrupt_lock);
	ret = cable_should_corrupt(c->hdr, c->me, vc_rx_dir(c));
	spin_unlock(&c->corrupt_lock);
	return ret;
}

static ssize_t vc_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	struct file *file = iocb->ki_filp;
	struct vc_sdev *sdev = vc_sdev_from_file(file);
	size_t nbytes = 0;
	int ret;

	ret = vc_sdev_valid(sdev);
	if (ret)
		return ret;

	if (mutex_lock_interruptible(&sdev->lock))
		return -ERESTARTSYS;

	for (;;) {
		int seq;

		ret = vc_rx_check(sdev);
		if (ret)
			break;

		seq = atomic_read(&sdev->events);
		mutex_unlock(&sdev->lock);

		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible_timeout(sdev->wait,
				atomic_read(&sdev->events) != seq ||
				READ_ONCE(sdev->closed) ||
				READ_ONCE(sdev->removed), HZ / 10);
		if (ret < 0)
			return ret;

		ret = vc_sdev_valid(sdev);
		if (ret)
			return ret;
		if (READ_ONCE(sdev->closed) || READ_ONCE(sdev->removed))
			return 0;

		if (mutex_lock_interruptible(&sdev->lock))
			return -ERESTARTSYS;
	}
	if (ret < 0) {
		mutex_unlock(&sdev->lock);
		return ret;
	}

	ret = 0;
	while (nbytes < iov_iter_count(to)) {
		struct vc_cable *c = sdev->cable;
		int dir = vc_rx_dir(c);
		struct usb4vc_desc *d;
		u32 cons, len, flags;
		size_t size;
		u8 *p;

		cons = READ_ONCE(c->me->rx_cons[sdev->rx_chan]);
		if (READ_ONCE(c->peer->tx_prod[sdev->rx_chan]) == cons)
			break;
		smp_rmb();
		d = vc_desc(c, dir, sdev->rx_chan, cons);
		if (READ_ONCE(d->gen) != sdev->rx_gen) {
			/* Sent before we (re)opened: the peer saw an old ring */
			atomic64_inc(&c->n.stale_drops);
			vc_rx_consume(sdev, cons);
			continue;
		}
		if (READ_ONCE(d->type) == USB4VC_FRAME_CLOSE) {
			if (!nbytes) {
				atomic64_inc(&c->n.close_rx);
				vc_rx_consume(sdev, cons);
				sdev->closed = true;
			}
			break;
		}

		len = min_t(u32, READ_ONCE(d->len), USB4VC_FRAME_SIZE);
		p = vc_payload(c, dir, sdev->rx_chan, cons);
		if (!sdev->rx_off) {
			flags = READ_ONCE(d->flags);
			if (!(flags & USB4VC_FLAG_CRC) && len &&
			    vc_rx_should_corrupt(c)) {
				cable_corrupt(p, len);
				WRITE_ONCE(d->flags, flags | USB4VC_FLAG_CRC);
				atomic64_inc(&c->n.crc_errors);
				pr_warn_ratelimited("RX CRC error\n");
			}
		}
		if (sdev->rx_off >= len) {
			vc_rx_consume(sdev, cons);
			continue;
		}

		size = min_t(size_t, iov_iter_count(to) - nbytes,
			     len - sdev->rx_off);
		if (copy_to_iter(p + sdev->rx_off, size, to) != size) {
			ret = -EFAULT;
			break;
		}
		sdev->rx_off += size;
		if (sdev->rx_off >= len) {
			atomic64_inc(&c->n.rx_frames);
			vc_rx_consume(sdev, cons);
		}
		atomic64_add(size, &c->n.rx_bytes);
		nbytes += size;
	}

	mutex_unlock(&sdev->lock);
	if (ret)
		return ret;
	return nbytes;
}

static ssize_t vc_write_iter(struct kiocb *iocb, struct iov_iter *from)
{
	struct file *file = iocb->ki_filp;
	struct vc_sdev *sdev = vc_sdev_from_file(file);
	size_t nbytes = 0;
	u32 gen = 0;
	int ret;

	ret = vc_sdev_valid(sdev);
	if (ret)
		return ret;

	if (mutex_lock_interruptible(&sdev->lock))
		return -ERESTARTSYS;

	for (;;) {
		long timeout;
		int seq;

		ret = vc_tx_check(sdev, &gen);
		if (ret)
			break;

		seq = atomic_read(&sdev->events);
		timeout = READ_ONCE(sdev->cable->rate.rate) ? 1 : HZ / 10;
		mutex_unlock(&sdev->lock);

		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible_timeout(sdev->wait,
				atomic_read(&sdev->events) != seq ||
				READ_ONCE(sdev->closed) ||
				READ_ONCE(sdev->removed), timeout);
		if (ret < 0)
			return ret;

		ret = vc_sdev_valid(sdev);
		if (ret)
			return ret;
		if (READ_ONCE(sdev->closed) || READ_ONCE(sdev->removed))
			return -ENXIO;

		if (mutex_lock_interruptible(&sdev->lock))
			return -ERESTARTSYS;
	}
	if (ret < 0) {
		mutex_unlock(&sdev->lock);
		return ret;
	}

	ret = 0;
	while (nbytes < iov_iter_count(from)) {
		struct vc_cable *c = sdev->cable;
		size_t size;
		u32 prod;
		void *p;

		if (nbytes && vc_tx_check(sdev, &gen) <= 0)
			break;	/* ring full: partial write */

		size = min_t(size_t, iov_iter_count(from) - nbytes,
			     USB4VC_FRAME_SIZE);
		prod = READ_ONCE(c->me->tx_prod[sdev->tx_chan]);
		p = vc_payload(c, vc_tx_dir(c), sdev->tx_chan, prod);
		if (copy_from_iter(p, size, from) != size) {
			ret = -EFAULT;
			break;
		}
		vc_tx_frame(sdev, gen, USB4VC_FRAME_DATA, size);
		cable_rate_take(&c->rate, size);
		atomic64_inc(&c->n.tx_frames);
		atomic64_add(size, &c->n.tx_bytes);
		nbytes += size;
	}

	mutex_unlock(&sdev->lock);
	if (ret)
		return ret;
	return nbytes;
}

static __poll_t vc_poll(struct file *file, struct poll_table_struct *wait)
{
	struct vc_sdev *sdev = vc_sdev_from_file(file);
	__poll_t mask = 0;

	poll_wait(file, &sdev->wait, wait);
	mutex_lock(&sdev->lock);
	if (vc_sdev_valid(sdev)) {
		mask |= EPOLLHUP | EPOLLERR;
	} else {
		/* A write that would fail with ENXIO is "writable" too */
		if (vc_tx_check(sdev, NULL))
			mask |= EPOLLOUT | EPOLLWRNORM;
		if (vc_rx_check(sdev) > 0)
			mask |= EPOLLIN | EPOLLRDNORM;
	}
	mutex_unlock(&sdev->lock);
	return mask;
}

static int vc_open(struct inode *inode, struct file *file)
{
	struct vc_sdev *sdev;
	int ret;

	xa_lock(&vc_minors);
	sdev = xa_load(&vc_minors, iminor(inode));
	if (sdev)
		vc_sdev_get(sdev);
	xa_unlock(&vc_minors);
	if (!sdev)
		return -ENXIO;
	file->private_data = sdev;

	if (mutex_lock_interruptible(&sdev->lock)) {
		vc_sdev_put(sdev);
		return -ERESTARTSYS;
	}

	/* Block until the stream is attached, unless O_NONBLOCK */
	while ((ret = vc_sdev_valid(sdev))) {
		int seq = atomic_read(&sdev->events);

		mutex_unlock(&sdev->lock);

		if (ret != -ENXIO || (file->f_flags & O_NONBLOCK))
			goto err_put;

		ret = wait_event_interruptible(sdev->wait,
				atomic_read(&sdev->events) != seq ||
				vc_sdev_valid(sdev) == 0 ||
				READ_ONCE(sdev->removed));
		if (ret)
			goto err_put;
		if (READ_ONCE(sdev->removed)) {
			ret = -ENXIO;
			goto err_put;
		}
		if (mutex_lock_interruptible(&sdev->lock)) {
			ret = -ERESTARTSYS;
			goto err_put;
		}
	}

	if (!sdev->users++) {
		ret = vc_sdev_start_io(sdev);
		if (ret) {
			sdev->users--;
			goto err_unlock;
		}
		sdev->closed = false;
	}

	mutex_unlock(&sdev->lock);
	return 0;

err_unlock:
	mutex_unlock(&sdev->lock);
err_put:
	vc_sdev_put(sdev);
	return ret;
}

static int vc_release(struct inode *inode, struct file *file)
{
	struct vc_sdev *sdev = vc_sdev_from_file(file);

	mutex_lock(&sdev->lock);
	if (--sdev->users == 0) {
		vc_sdev_send_close(sdev);
		vc_sdev_stop_io(sdev);
	}
	mutex_unlock(&sdev->lock);

	vc_sdev_put(sdev);
	return 0;
}

static const struct file_operations vc_fops = {
	.owner = THIS_MODULE,
	.llseek = noop_llseek,
	.read_iter = vc_read_iter,
	.write_iter = vc_write_iter,
	.poll = vc_poll,
	.open = vc_open,
	.release = vc_release,
};

/* ------------------------------------------------------------------ */
/* Attach / detach stream devices to a live link. vc_mutex held. */

static void vc_sdev_attach(struct vc_sdev *sdev, struct vc_link *link)
{
	struct vc_cable *c = link->cable;
	int in, out;

	mutex_lock(&sdev->lock);
	if (sdev->link) {
		mutex_unlock(&sdev->lock);
		return;
	}
	WRITE_ONCE(sdev->link, vc_link_get(link));
	list_add_tail(&sdev->link_node, &link->sdevs);

	/* Adopt the peer's published HopIDs, reversed, only at attach */
	if (sdev->in_hopid <= 0 && sdev->out_hopid <= 0)
		vc_props_lookup(c, sdev->name, &sdev->in_hopid,
				&sdev->out_hopid);
	if (sdev->in_hopid)
		vc_sdev_alloc_in(sdev, sdev->in_hopid);
	if (sdev->out_hopid)
		vc_sdev_alloc_out(sdev, sdev->out_hopid);

	/* Still open from an earlier session: post the ring again */
	if (sdev->users && !sdev->started && vc_sdev_start_io(sdev))
		pr_debug("%s: could not restart I/O\n", sdev->name);

	in = sdev->in_hopid;
	out = sdev->out_hopid;
	mutex_unlock(&sdev->lock);

	vc_props_update(c, sdev->name, in, out);
	vc_sdev_kick(sdev);
}

static void vc_sdev_detach(struct vc_sdev *sdev)
{
	struct vc_link *link;

	mutex_lock(&sdev->lock);
	link = sdev->link;
	if (!link) {
		mutex_unlock(&sdev->lock);
		return;
	}
	vc_sdev_stop_io(sdev);
	vc_hopid_release(link, &link->out_used, sdev->out_owned);
	vc_hopid_release(link, &link->in_used, sdev->in_owned);
	sdev->out_owned = 0;
	sdev->in_owned = 0;
	list_del_init(&sdev->link_node);
	WRITE_ONCE(sdev->link, NULL);
	mutex_unlock(&sdev->lock);

	if (!READ_ONCE(link->unplugged))
		vc_props_update(link->cable, sdev->name, 0, 0);
	vc_link_put(link);
	vc_sdev_kick(sdev);
}

/* ------------------------------------------------------------------ */
/* ConfigFS: stream groups */

static inline struct vc_sdev *to_vc_sdev(struct config_item *item)
{
	return container_of(to_config_group(item), struct vc_sdev, group);
}

static ssize_t vc_sdev_index_show(struct config_item *item, char *buf)
{
	return sysfs_emit(buf, "%d\n", to_vc_sdev(item)->index);
}
CONFIGFS_ATTR_RO(vc_sdev_, index);

static ssize_t vc_sdev_in_hopid_show(struct config_item *item, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(to_vc_sdev(item)->in_hopid));
}

static ssize_t vc_sdev_hopid_store(struct vc_sdev *sdev, const char *buf,
				   size_t count, bool in)
{
	struct vc_cable *c = NULL;
	int ret, hopid, vin, vout;

	ret = kstrtoint(buf, 0, &hopid);
	if (ret)
		return ret;

	mutex_lock(&sdev->lock);
	if (sdev->users) {
		mutex_unlock(&sdev->lock);
		return -EBUSY;
	}
	if (sdev->link) {
		ret = in ? vc_sdev_alloc_in(sdev, hopid) :
			   vc_sdev_alloc_out(sdev, hopid);
		if (ret) {
			mutex_unlock(&sdev->lock);
			return ret;
		}
		c = sdev->link->cable;
	} else if (in) {
		WRITE_ONCE(sdev->in_hopid, hopid);
	} else {
		WRITE_ONCE(sdev->out_hopid, hopid);
	}
	vin = sdev->in_hopid;
	vout = sdev->out_hopid;
	mutex_unlock(&sdev->lock);

	if (c)
		vc_props_update(c, sdev->name, vin, vout);
	return count;
}

static ssize_t vc_sdev_in_hopid_store(struct config_item *item,
				      const char *buf, size_t count)
{
	return vc_sdev_hopid_store(to_vc_sdev(item), buf, count, true);
}
CONFIGFS_ATTR(vc_sdev_, in_hopid);

static ssize_t vc_sdev_out_hopid_show(struct config_item *item, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(to_vc_sdev(item)->out_hopid));
}

static ssize_t vc_sdev_out_hopid_store(struct config_item *item,
				       const char *buf, size_t count)
{
	return vc_sdev_hopid_store(to_vc_sdev(item), buf, count, false);
}
CONFIGFS_ATTR(vc_sdev_, out_hopid);

static ssize_t vc_sdev_ring_size_show(struct config_item *item, char *buf)
{
	return sysfs_emit(buf, "%u\n", to_vc_sdev(item)->ring_size);
}

static ssize_t vc_sdev_ring_size_store(struct config_item *item,
				       const char *buf, size_t count)
{
	struct vc_sdev *sdev = to_vc_sdev(item);
	unsigned int val;
	int ret;

	ret = kstrtouint(buf, 0, &val);
	if (ret)
		return ret;
	if (val < VC_MIN_RING_SIZE || val > VC_MAX_RING_SIZE)
		return -EINVAL;

	mutex_lock(&sdev->lock);
	if (sdev->users)
		ret = -EBUSY;
	else
		sdev->ring_size = val;
	mutex_unlock(&sdev->lock);
	return ret ? ret : count;
}
CONFIGFS_ATTR(vc_sdev_, ring_size);

static ssize_t vc_sdev_throttling_show(struct config_item *item, char *buf)
{
	return sysfs_emit(buf, "%u\n", to_vc_sdev(item)->throttling);
}

static ssize_t vc_sdev_throttling_store(struct config_item *item,
					const char *buf, size_t count)
{
	struct vc_sdev *sdev = to_vc_sdev(item);
	unsigned int val;
	int ret;

	ret = kstrtouint(buf, 0, &val);
	if (ret)
		return ret;
	if (val > VC_MAX_THROTTLING)
		return -EINVAL;

	mutex_lock(&sdev->lock);
	if (sdev->users)
		ret = -EBUSY;
	else
		sdev->throttling = val;
	mutex_unlock(&sdev->lock);
	return ret ? ret : count;
}
CONFIGFS_ATTR(vc_sdev_, throttling);

static struct configfs_attribute *vc_sdev_attrs[] = {
	&vc_sdev_attr_index,
	&vc_sdev_attr_in_hopid,
	&vc_sdev_attr_out_hopid,
	&vc_sdev_attr_ring_size,
	&vc_sdev_attr_throttling,
	NULL,
};

static void vc_sdev_release(struct kref *kref)
{
	struct vc_sdev *sdev = container_of(kref, struct vc_sdev, kref);

	mutex_lock(&vc_mutex);
	vc_sdev_detach(sdev);
	mutex_unlock(&vc_mutex);

	ida_free(&vc_indices, sdev->index);
	vc_free(sdev);
}

static void vc_sdev_item_release(struct config_item *item)
{
	struct vc_sdev *sdev = to_vc_sdev(item);

	xa_erase(&vc_minors, sdev->index);
	if (sdev->chardev)
		device_destroy(&vc_class, MKDEV(MAJOR(vc_devt), sdev->index));
	vc_sdev_put(sdev);
}

static struct configfs_item_operations vc_sdev_item_ops = {
	.release = vc_sdev_item_release,
};

static const struct config_item_type vc_sdev_type = {
	.ct_owner = THIS_MODULE,
	.ct_item_ops = &vc_sdev_item_ops,
	.ct_attrs = vc_sdev_attrs,
};

static inline struct vc_conn *to_vc_conn(struct config_group *group)
{
	return container_of(group, struct vc_conn, group);
}

static struct config_group *vc_sdev_make_group(struct config_group *group,
					       const char *name)
{
	struct vc_conn *conn = to_vc_conn(group);
	struct vc_sdev *sdev;
	int ret, index;

	/* Published as an XDomain property key: at most 8 characters */
	if (strlen(name) > VC_KEY_SIZE)
		return ERR_PTR(-ENAMETOOLONG);

	sdev = vc_zalloc(sizeof(*sdev));
	if (!sdev)
		return ERR_PTR(-ENOMEM);

	index = ida_alloc_max(&vc_indices, VC_MAX_STREAMS - 1, GFP_KERNEL);
	if (index < 0) {
		vc_free(sdev);
		return ERR_PTR(index);
	}

	sdev->index = index;
	sdev->ring_size = VC_RING_SIZE;
	sdev->throttling = VC_THROTTLING;
	strscpy(sdev->name, name, sizeof(sdev->name));
	mutex_init(&sdev->lock);
	init_waitqueue_head(&sdev->wait);
	atomic_set(&sdev->events, 0);
	INIT_LIST_HEAD(&sdev->conn_node);
	INIT_LIST_HEAD(&sdev->link_node);
	INIT_LIST_HEAD(&sdev->active_node);
	kref_init(&sdev->kref);

	config_group_init_type_name(&sdev->group, name, &vc_sdev_type);

	ret = xa_err(xa_store(&vc_minors, index, sdev, GFP_KERNEL));
	if (ret)
		goto err_put;

	mutex_lock(&vc_mutex);
	list_add_tail(&sdev->conn_node, &conn->sdevs);
	if (conn->link)
		vc_sdev_attach(sdev, conn->link);
	mutex_unlock(&vc_mutex);

	sdev->chardev = device_create(&vc_class, NULL,
				      MKDEV(MAJOR(vc_devt), index), sdev,
				      "tbstream%d", index);
	if (IS_ERR(sdev->chardev)) {
		ret = PTR_ERR(sdev->chardev);
		sdev->chardev = NULL;
		mutex_lock(&vc_mutex);
		list_del_init(&sdev->conn_node);
		vc_sdev_detach(sdev);
		mutex_unlock(&vc_mutex);
		goto err_put;
	}
	return &sdev->group;

err_put:
	/* Calls vc_sdev_item_release() */
	config_group_put(&sdev->group);
	return ERR_PTR(ret);
}

static void vc_sdev_drop_item(struct config_group *group,
			      struct config_item *item)
{
	struct vc_sdev *sdev = to_vc_sdev(item);

	mutex_lock(&vc_mutex);
	list_del_init(&sdev->conn_node);
	mutex_unlock(&vc_mutex);

	/* Tell any task that the group is gone */
	WRITE_ONCE(sdev->removed, true);
	vc_sdev_kick(sdev);
	config_item_put(item);
}

static struct configfs_group_operations vc_conn_group_ops = {
	.make_group = vc_sdev_make_group,
	.drop_item = vc_sdev_drop_item,
};

static void vc_conn_release(struct config_item *item)
{
	vc_free(to_vc_conn(to_config_group(item)));
}

static struct configfs_item_operations vc_conn_item_ops = {
	.release = vc_conn_release,
};

static const struct config_item_type vc_conn_type = {
	.ct_owner = THIS_MODULE,
	.ct_group_ops = &vc_conn_group_ops,
	.ct_item_ops = &vc_conn_item_ops,
};

/* Live links by service name. vc_mutex held. */
#define VC_MAX_CABLES	8
static struct vc_cable *vc_cables[VC_MAX_CABLES];

static struct vc_link *vc_find_link(const char *name)
{
	int i;

	for (i = 0; i < VC_MAX_CABLES; i++) {
		struct vc_cable *c = vc_cables[i];

		if (c && c->link && sysfs_streq(name, c->link->svc_name))
			return c->link;
	}
	return NULL;
}

static struct config_group *vc_conn_make_group(struct config_group *group,
					       const char *name)
{
	unsigned int domain, index;
	struct vc_conn *conn;
	u64 route;

	if (sscanf(name, "%u-%llx.%u", &domain, &route, &index) != 3)
		return ERR_PTR(-EINVAL);

	conn = vc_zalloc(sizeof(*conn));
	if (!conn)
		return ERR_PTR(-ENOMEM);
	INIT_LIST_HEAD(&conn->sdevs);
	config_group_init_type_name(&conn->group, name, &vc_conn_type);

	mutex_lock(&vc_mutex);
	conn->link = vc_link_get(vc_find_link(name));
	list_add_tail(&conn->node, &vc_conns);
	mutex_unlock(&vc_mutex);

	return &conn->group;
}

static void vc_conn_drop_item(struct config_group *group,
			      struct config_item *item)
{
	struct vc_conn *conn = to_vc_conn(to_config_group(item));

	mutex_lock(&vc_mutex);
	list_del_init(&conn->node);
	vc_link_put(conn->link);
	conn->link = NULL;
	mutex_unlock(&vc_mutex);
	config_item_put(item);
}

static struct configfs_group_operations vc_stream_group_ops = {
	.make_group = vc_conn_make_group,
	.drop_item = vc_conn_drop_item,
};

static const struct config_item_type vc_stream_type = {
	.ct_owner = THIS_MODULE,
	.ct_group_ops = &vc_stream_group_ops,
};

static const struct config_item_type vc_root_type = {
	.ct_owner = THIS_MODULE,
};

static struct configfs_subsystem vc_subsys = {
	.su_group = {
		.cg_item = {
			.ci_namebuf = "thunderbolt",
			.ci_type = &vc_root_type,
		},
	},
};

static struct config_group vc_stream_group;

/* ------------------------------------------------------------------ */
/* Link up / down (poller thread) */

static void vc_link_up(struct vc_cable *c)
{
	struct usb4vc_side *peer = c->peer;
	struct vc_link *link;
	struct vc_conn *conn;
	struct device *dev;
	char name[16];
	int max;

	link = vc_zalloc(sizeof(*link));
	if (!link)
		return;
	kref_init(&link->kref);
	link->cable = c;
	spin_lock_init(&link->hop_lock);
	INIT_LIST_HEAD(&link->sdevs);
	link->local_max = USB4VC_MIN_HOPID + c->nchan - 1;
	max = READ_ONCE(peer->max_hopid);
	link->remote_max = clamp_t(int, max, USB4VC_MIN_HOPID,
				   link->local_max);

	snprintf(name, sizeof(name), "%d-1", c->domain);
	snprintf(link->svc_name, sizeof(link->svc_name), "%d-1.0", c->domain);

	dev = vc_dev_create(c->host_dev, &vc_xdomain_type, name);
	if (IS_ERR(dev))
		goto err_free;
	memcpy(&to_vc_dev(dev)->uuid, peer->uuid, sizeof(uuid_t));
	memcpy(to_vc_dev(dev)->name, peer->hostname, USB4VC_HOSTNAME);
	to_vc_dev(dev)->name[USB4VC_HOSTNAME - 1] = '\0';
	to_vc_dev(dev)->maxhopid = link->remote_max;
	if (vc_dev_add(dev))
		goto err_free;
	link->xd_dev = dev;

	dev = vc_dev_create(link->xd_dev, &vc_service_type, link->svc_name);
	if (IS_ERR(dev))
		goto err_xd;
	if (vc_dev_add(dev))
		goto err_xd;
	link->svc_dev = dev;

	c->peer_props_gen = READ_ONCE(peer->props_gen);
	vc_props_clear(c);
	WRITE_ONCE(c->me->link_up, 1);

	mutex_lock(&vc_mutex);
	c->link = link;
	c->link_session = READ_ONCE(peer->session);
	list_for_each_entry(conn, &vc_conns, node) {
		struct vc_sdev *sdev;

		if (conn->link ||
		    !sysfs_streq(config_item_name(&conn->group.cg_item),
				 link->svc_name))
			continue;
		conn->link = vc_link_get(link);
		list_for_each_entry(sdev, &conn->sdevs, conn_node)
			vc_sdev_attach(sdev, link);
	}
	mutex_unlock(&vc_mutex);

	dev_info(&c->pdev->dev, "link up: %s (peer %s, side %c)\n", name,
		 to_vc_dev(link->xd_dev)->name, 'a' + c->side);
	return;

err_xd:
	device_unregister(link->xd_dev);
err_free:
	dev_err(&c->pdev->dev, "failed to create the XDomain devices\n");
	vc_free(link);
}

static void vc_link_down(struct vc_cable *c, const char *why)
{
	struct vc_link *link = c->link;
	struct vc_sdev *sdev, *tmp;
	struct vc_conn *conn;
	u32 i;

	if (!link)
		return;

	WRITE_ONCE(link->unplugged, true);

	mutex_lock(&vc_mutex);
	c->link = NULL;
	/*
	 * Attached devices stay allocated while vc_mutex is held: their
	 * release path takes vc_mutex before freeing them.
	 */
	list_for_each_entry_safe(sdev, tmp, &link->sdevs, link_node)
		vc_sdev_detach(sdev);
	list_for_each_entry(conn, &vc_conns, node) {
		if (conn->link == link) {
			conn->link = NULL;
			vc_link_put(link);
		}
	}
	mutex_unlock(&vc_mutex);

	if (c->side >= 0) {
		for (i = 0; i < c->nchan; i++)
			WRITE_ONCE(c->me->rx_post[i], 0);
		WRITE_ONCE(c->me->link_up, 0);
	}
	vc_props_clear(c);

	if (link->svc_dev)
		device_unregister(link->svc_dev);
	device_unregister(link->xd_dev);
	dev_info(&c->pdev->dev, "link down: %s\n", why);
	vc_link_put(link);
}

/* ------------------------------------------------------------------ */
/* Claiming a side of the cable */

static void vc_side_init(struct vc_cable *c)
{
	struct usb4vc_side *me = c->me;
	u32 i;

	for (i = 0; i < USB4VC_MAX_CHAN; i++)
		WRITE_ONCE(me->rx_post[i], 0);
	WRITE_ONCE(me->link_up, 0);
	WRITE_ONCE(me->max_hopid, USB4VC_MIN_HOPID + c->nchan - 1);
	memcpy(me->uuid, &c->uuid, sizeof(me->uuid));
	strscpy(me->hostname, init_utsname()->nodename, sizeof(me->hostname));
	c->session = READ_ONCE(me->session) + 1;
	WRITE_ONCE(me->session, c->session);
	smp_wmb();
	WRITE_ONCE(me->state, USB4VC_STATE_PRESENT);
}

static bool vc_try_claim(struct vc_cable *c)
{
	int s;

	for (s = 0; s < 2; s++) {
		struct usb4vc_side *area = vc_side_area(c, s);
		bool stale = cable_slot_stale(&c->slot_watch[s], area,
						 hb_timeout_ms);

		if (c->forced_side >= 0 && s != c->forced_side)
			continue;
		if (c->forced_side < 0 && READ_ONCE(area->nonce) &&
		    READ_ONCE(area->state) == USB4VC_STATE_PRESENT && !stale)
			continue;

		WRITE_ONCE(area->nonce, c->nonce);
		msleep(VC_CLAIM_SETTLE_MS);
		if (READ_ONCE(area->nonce) != c->nonce)
			continue;

		mutex_lock(&c->props_lock);
		c->me = area;
		c->peer = vc_side_area(c, 1 - s);
		c->side = s;
		vc_side_init(c);
		mutex_unlock(&c->props_lock);
		vc_props_clear(c);
		c->peer_watch.changes = 0;
		c->peer_watch.nonce = 0;
		c->hb_next = jiffies;
		dev_info(&c->pdev->dev, "claimed side %c of the cable\n",
			 'a' + s);
		return true;
	}
	if (!c->announced_wait) {
		c->announced_wait = true;
		dev_info(&c->pdev->dev,
			 "both sides of the cable are in use, waiting for one to become free\n");
	}
	return false;
}

static void vc_release_side(struct vc_cable *c)
{
	u32 i;

	if (c->side < 0)
		return;
	for (i = 0; i < USB4VC_MAX_CHAN; i++)
		WRITE_ONCE(c->me->rx_post[i], 0);
	WRITE_ONCE(c->me->link_up, 0);
	WRITE_ONCE(c->me->state, USB4VC_STATE_FREE);
	smp_wmb();
	if (READ_ONCE(c->me->nonce) == c->nonce)
		WRITE_ONCE(c->me->nonce, 0);
	mutex_lock(&c->props_lock);
	c->side = -1;
	mutex_unlock(&c->props_lock);
}

/* ------------------------------------------------------------------ */
/* The poller */

/* Wake tasks of open streams whose rings moved. Returns true if any did. */
static bool vc_scan_streams(struct vc_cable *c)
{
	struct vc_sdev *sdev;
	bool busy = false;

	spin_lock(&c->active_lock);
	list_for_each_entry(sdev, &c->active, active_node) {
		u64 sig;

		sig = READ_ONCE(c->peer->tx_prod[sdev->rx_chan]);
		sig ^= (u64)READ_ONCE(c->peer->rx_cons[sdev->tx_chan]) << 32;
		sig += (u64)READ_ONCE(c->peer->rx_post[sdev->tx_chan]) * 0x9e37;
		sig ^= (u64)READ_ONCE(c->me->rx_cons[sdev->rx_chan]) << 16;
		if (sig != sdev->poll_sig) {
			sdev->poll_sig = sig;
			busy = true;
			vc_sdev_kick(sdev);
		}
	}
	spin_unlock(&c->active_lock);
	return busy;
}

static bool vc_poll_once(struct vc_cable *c)
{
	struct usb4vc_hdr *hdr = c->hdr;
	unsigned long now = jiffies;
	bool plugged, alive, busy = false;
	u32 pstate, psession, pgen;

	plugged = READ_ONCE(hdr->plugged) != 0;
	cable_rate_poll(&c->rate, hdr);

	if (c->side < 0) {
		vc_try_claim(c);
		return false;
	}

	if (READ_ONCE(c->me->nonce) != c->nonce) {
		dev_warn(&c->pdev->dev, "lost side %c to another VM, claiming again\n",
			 'a' + c->side);
		vc_link_down(c, "side lost");
		mutex_lock(&c->props_lock);
		c->side = -1;
		mutex_unlock(&c->props_lock);
		return false;
	}

	if (time_after_eq(now, c->hb_next)) {
		WRITE_ONCE(c->me->heartbeat, READ_ONCE(c->me->heartbeat) + 1);
		WRITE_ONCE(c->me->state, USB4VC_STATE_PRESENT);
		/* The hostname may be set after the module was loaded */
		strscpy(c->me->hostname, init_utsname()->nodename,
			sizeof(c->me->hostname));
		cable_publish_counters(c->me, &c->n);
		c->hb_next = now + VC_HB_INTERVAL;
	}

	pstate = READ_ONCE(c->peer->state);
	psession = READ_ONCE(c->peer->session);
	alive = cable_peer_alive(&c->peer_watch, c->peer, now, hb_timeout_ms);

	if (c->link) {
		if (!plugged)
			vc_link_down(c, "cable unplugged");
		else if (!alive)
			vc_link_down(c, pstate == USB4VC_STATE_PRESENT ?
				     "peer heartbeat lost" : "peer went away");
		else if (psession != c->link_session)
			vc_link_down(c, "peer restarted");
		if (!c->link)
			return true;
	} else if (plugged && alive) {
		vc_link_up(c);
		return true;
	}

	if (!c->link)
		return false;

	pgen = READ_ONCE(c->peer->props_gen);
	if (!(pgen & 1) && pgen != c->peer_props_gen) {
		c->peer_props_gen = pgen;
		kobject_uevent(&c->link->svc_dev->kobj, KOBJ_CHANGE);
		busy = true;
	}

	if (vc_scan_streams(c))
		busy = true;
	return busy;
}

static int vc_poller(void *data)
{
	struct vc_cable *c = data;
	unsigned int us = VC_POLL_MIN_US;

	while (!kthread_should_stop()) {
		unsigned int max = max_t(unsigned int, READ_ONCE(poll_max_us),
					 VC_POLL_MIN_US);

		if (vc_poll_once(c))
			us = VC_POLL_MIN_US;
		else
			us = min(us * 2, max);
		usleep_range(us, us + us / 4);
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* PCI driver */

static int vc_check_layout(struct vc_cable *c)
{
	return cable_check_layout(&c->pdev->dev, c->hdr, c->size, &c->nchan,
				  &c->nslots);
}

static int vc_domain_create(struct vc_cable *c)
{
	struct device *dev;
	char name[24];
	int ret;

	snprintf(name, sizeof(name), "domain%d", c->domain);
	dev = vc_dev_create(&c->pdev->dev, &vc_domain_type, name);
	if (IS_ERR(dev))
		return PTR_ERR(dev);
	ret = vc_dev_add(dev);
	if (ret)
		return ret;
	c->domain_dev = dev;

	snprintf(name, sizeof(name), "%d-0", c->domain);
	dev = vc_dev_create(c->domain_dev, &vc_switch_type, name);
	if (IS_ERR(dev)) {
		ret = PTR_ERR(dev);
		goto err_domain;
	}
	to_vc_dev(dev)->uuid = c->uuid;
	ret = vc_dev_add(dev);
	if (ret)
		goto err_domain;
	c->host_dev = dev;
	return 0;

err_domain:
	device_unregister(c->domain_dev);
	c->domain_dev = NULL;
	return ret;
}

static int vc_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vc_cable *c;
	int ret;

	c = vc_zalloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->pdev = pdev;
	c->side = -1;
	c->domain = -1;
	mutex_init(&c->props_lock);
	spin_lock_init(&c->active_lock);
	INIT_LIST_HEAD(&c->active);
	spin_lock_init(&c->rate.lock);
	spin_lock_init(&c->corrupt_lock);

	c->forced_side = -1;

	if (uuid && *uuid) {
		ret = uuid_parse(uuid, &c->uuid);
		if (ret) {
			dev_err(&pdev->dev, "invalid uuid= parameter '%s'\n",
				uuid);
			goto err_free;
		}
	} else {
		uuid_gen(&c->uuid);
	}
	do {
		c->nonce = get_random_u64();
	} while (!c->nonce);
	c->post_gen = get_random_u32();

	ret = pci_enable_device(pdev);
	if (ret)
		goto err_free;
	ret = pci_request_region(pdev, 2, KBUILD_MODNAME);
	if (ret)
		goto err_disable;

	c->size = pci_resource_len(pdev, 2);
	if (c->size < USB4VC_HDR_SIZE) {
		dev_err(&pdev->dev, "shared memory BAR too small\n");
		ret = -ENODEV;
		goto err_region;
	}
	c->base = memremap(pci_resource_start(pdev, 2), c->size, MEMREMAP_WB);
	if (!c->base) {
		ret = -ENOMEM;
		goto err_region;
	}
	c->hdr = c->base;

	ret = vc_check_layout(c);
	if (ret)
		goto err_unmap;

	ret = ida_alloc_max(&vc_domains, VC_MAX_CABLES - 1, GFP_KERNEL);
	if (ret < 0)
		goto err_unmap;
	c->domain = ret;
	c->forced_side = cable_side_param(side, c->domain);

	ret = vc_domain_create(c);
	if (ret)
		goto err_ida;

	mutex_lock(&vc_mutex);
	vc_cables[c->domain] = c;
	mutex_unlock(&vc_mutex);

	pci_set_drvdata(pdev, c);
	c->poller = kthread_run(vc_poller, c, "usb4vcable/%d", c->domain);
	if (IS_ERR(c->poller)) {
		ret = PTR_ERR(c->poller);
		goto err_cables;
	}

	dev_info(&pdev->dev, "virtual USB4 cable domain%d: %llu KiB, %u channels x %u frames, uuid %pUb\n",
		 c->domain, (u64)c->size >> 10, c->nchan, c->nslots, &c->uuid);
	return 0;

err_cables:
	mutex_lock(&vc_mutex);
	vc_cables[c->domain] = NULL;
	mutex_unlock(&vc_mutex);
	device_unregister(c->host_dev);
	device_unregister(c->domain_dev);
err_ida:
	ida_free(&vc_domains, c->domain);
err_unmap:
	memunmap(c->base);
err_region:
	pci_release_region(pdev, 2);
err_disable:
	pci_disable_device(pdev);
err_free:
	vc_free(c);
	return ret;
}

static void vc_remove(struct pci_dev *pdev)
{
	struct vc_cable *c = pci_get_drvdata(pdev);

	kthread_stop(c->poller);
	vc_link_down(c, "driver removed");
	vc_release_side(c);

	mutex_lock(&vc_mutex);
	vc_cables[c->domain] = NULL;
	mutex_unlock(&vc_mutex);

	device_unregister(c->host_dev);
	device_unregister(c->domain_dev);
	ida_free(&vc_domains, c->domain);
	memunmap(c->base);
	pci_release_region(pdev, 2);
	pci_disable_device(pdev);
	vc_free(c);
}

static const struct pci_device_id vc_pci_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vc_pci_ids);

static struct pci_driver vc_pci_driver = {
	.name = KBUILD_MODNAME,
	.id_table = vc_pci_ids,
	.probe = vc_probe,
	.remove = vc_remove,
};

/* ------------------------------------------------------------------ */
/* Module */

static bool vc_real_thunderbolt_loaded(void)
{
	void *sym = __symbol_get("tb_register_service_driver");

	if (sym) {
		symbol_put_addr(sym);
		return true;
	}
	return false;
}

static int __init vc_init(void)
{
	int ret;

	if (vc_real_thunderbolt_loaded()) {
		pr_err("the real 'thunderbolt' module is loaded: it owns the thunderbolt bus and ConfigFS subsystem; unload it (and thunderbolt_stream) first\n");
		return -EBUSY;
	}

	ret = bus_register(&vc_bus);
	if (ret) {
		pr_err("cannot register the thunderbolt bus (%d): is another thunderbolt driver loaded?\n",
		       ret);
		return ret;
	}

	ret = driver_register(&vc_stream_driver);
	if (ret)
		goto err_bus;

	ret = alloc_chrdev_region(&vc_devt, 0, VC_MAX_STREAMS, "tbstream");
	if (ret)
		goto err_driver;
	cdev_init(&vc_cdev, &vc_fops);
	vc_cdev.owner = THIS_MODULE;
	ret = cdev_add(&vc_cdev, vc_devt, VC_MAX_STREAMS);
	if (ret)
		goto err_region;
	ret = class_register(&vc_class);
	if (ret)
		goto err_cdev;

	config_group_init(&vc_subsys.su_group);
	mutex_init(&vc_subsys.su_mutex);
	config_group_init_type_name(&vc_stream_group, "stream", &vc_stream_type);
	configfs_add_default_group(&vc_stream_group, &vc_subsys.su_group);
	ret = configfs_register_subsystem(&vc_subsys);
	if (ret) {
		pr_err("cannot register ConfigFS subsystem 'thunderbolt' (%d)\n",
		       ret);
		goto err_class;
	}

	ret = pci_register_driver(&vc_pci_driver);
	if (ret)
		goto err_configfs;
	return 0;

err_configfs:
	configfs_unregister_subsystem(&vc_subsys);
err_class:
	class_unregister(&vc_class);
err_cdev:
	cdev_del(&vc_cdev);
err_region:
	unregister_chrdev_region(vc_devt, VC_MAX_STREAMS);
err_driver:
	driver_unregister(&vc_stream_driver);
err_bus:
	bus_unregister(&vc_bus);
	return ret;
}
module_init(vc_init);

static void __exit vc_exit(void)
{
	pci_unregister_driver(&vc_pci_driver);
	configfs_unregister_subsystem(&vc_subsys);
	class_unregister(&vc_class);
	cdev_del(&vc_cdev);
	unregister_chrdev_region(vc_devt, VC_MAX_STREAMS);
	driver_unregister(&vc_stream_driver);
	bus_unregister(&vc_bus);
	xa_destroy(&vc_minors);
	ida_destroy(&vc_indices);
	ida_destroy(&vc_domains);
	if (atomic_read(&vc_live_objs))
		pr_err("%d objects leaked\n", atomic_read(&vc_live_objs));
}
module_exit(vc_exit);

MODULE_DESCRIPTION("Virtual USB4 cable over QEMU ivshmem with the USB4STREAM user interface");
MODULE_LICENSE("GPL");
