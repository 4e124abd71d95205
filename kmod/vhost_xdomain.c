// SPDX-License-Identifier: GPL-2.0
/*
 * usb4vhost - the XDomain side of the core (drivers/thunderbolt/xdomain.c's
 * interface): the peer host N-1 and its services N-1.M on the bus, HopID
 * allocation bounded by each side's maxhopid, DMA paths, the local property
 * directories service drivers register, and the property exchange with the
 * peer: our block (registered directories merged with each service's
 * local_properties) is published in our side of the cable; a change of the
 * peer's block updates each service's remote_properties and emits
 * KOBJ_CHANGE on it, adds services that appeared and removes those gone.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/export.h>
#include <linux/pci_ids.h>
#include <linux/slab.h>
#include <linux/utsname.h>

#include "usb4vhost.h"

#define VH_PATH_MIN_HOPID	USB4VC_MIN_HOPID
/* What the root directory of our block says about this host */
#define VH_VENDOR_ID		PCI_VENDOR_ID_INTEL
#define VH_VENDOR_NAME		"Intel Corp."
#define VH_DEVICE_ID		0x1
#define VH_DEVICE_RV		0x80000100
/* A peer that publishes no maxhopid (upstream: XDOMAIN_DEFAULT_MAX_HOPID) */
#define VH_DEFAULT_MAX_HOPID	15
/* Coalesces property changes before publishing them (upstream: 50 ms) */
#define VH_PUBLISH_DELAY_MS	20

/* Directories registered with tb_register_property_dir() */
static DEFINE_MUTEX(vh_local_lock);
static struct tb_property_dir *vh_local_dir;

/* ------------------------------------------------------------------ */
/* XDomain device N-1 */

static ssize_t device_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%#x\n", container_of(dev, struct tb_xdomain, dev)->device);
}
static DEVICE_ATTR_RO(device);

static ssize_t vendor_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%#x\n", container_of(dev, struct tb_xdomain, dev)->vendor);
}
static DEVICE_ATTR_RO(vendor);

/* The names come from the peer's properties and change with them */
static ssize_t device_name_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	struct tb_xdomain *xd = container_of(dev, struct tb_xdomain, dev);

	guard(mutex)(&xd->lock);
	return sysfs_emit(buf, "%s\n", xd->device_name ?: "");
}
static DEVICE_ATTR_RO(device_name);

static ssize_t vendor_name_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	struct tb_xdomain *xd = container_of(dev, struct tb_xdomain, dev);

	guard(mutex)(&xd->lock);
	return sysfs_emit(buf, "%s\n", xd->vendor_name ?: "");
}
static DEVICE_ATTR_RO(vendor_name);

static ssize_t maxhopid_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct tb_xdomain *xd = container_of(dev, struct tb_xdomain, dev);

	return sysfs_emit(buf, "%d\n", xd->remote_max_hopid);
}
static DEVICE_ATTR_RO(maxhopid);

static ssize_t unique_id_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	struct tb_xdomain *xd = container_of(dev, struct tb_xdomain, dev);

	return sysfs_emit(buf, "%pUb\n", xd->remote_uuid);
}
static DEVICE_ATTR_RO(unique_id);

static ssize_t speed_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	struct tb_xdomain *xd = container_of(dev, struct tb_xdomain, dev);

	return sysfs_emit(buf, "%u.0 Gb/s\n", xd->link_speed);
}
static DEVICE_ATTR(rx_speed, 0444, speed_show, NULL);
static DEVICE_ATTR(tx_speed, 0444, speed_show, NULL);

static ssize_t lanes_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	struct tb_xdomain *xd = container_of(dev, struct tb_xdomain, dev);

	return sysfs_emit(buf, "%u\n",
			  xd->link_width == TB_LINK_WIDTH_SINGLE ? 1 : 2);
}
static DEVICE_ATTR(rx_lanes, 0444, lanes_show, NULL);
static DEVICE_ATTR(tx_lanes, 0444, lanes_show, NULL);

static struct attribute *vh_xdomain_attrs[] = {
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
ATTRIBUTE_GROUPS(vh_xdomain);

static void vh_xdomain_release(struct device *dev)
{
	struct tb_xdomain *xd = container_of(dev, struct tb_xdomain, dev);

	tb_property_free_dir(xd->remote_properties);
	ida_destroy(&xd->service_ids);
	ida_destroy(&xd->in_hopids);
	ida_destroy(&xd->out_hopids);
	kfree(xd->remote_uuid);
	kfree(xd->device_name);
	kfree(xd->vendor_name);
	kfree(xd);
}

const struct device_type tb_xdomain_type = {
	.name = "thunderbolt_xdomain",
	.groups = vh_xdomain_groups,
	.release = vh_xdomain_release,
};
EXPORT_SYMBOL_GPL(tb_xdomain_type);

/* ------------------------------------------------------------------ */
/* Service device N-1.M */

static ssize_t key_show(struct device *dev, struct device_attribute *attr,
			char *buf)
{
	return sysfs_emit(buf, "%s\n", tb_to_service(dev)->key);
}
static DEVICE_ATTR_RO(key);

static int vh_modalias(const struct tb_service *svc, char *buf, size_t size)
{
	return snprintf(buf, size, "tbsvc:k%sp%08Xv%08Xr%08X", svc->key,
			svc->prtcid, svc->prtcvers, svc->prtcrevs);
}

static ssize_t modalias_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	char alias[64];

	vh_modalias(tb_to_service(dev), alias, sizeof(alias));
	return sysfs_emit(buf, "%s\n", alias);
}
static DEVICE_ATTR_RO(modalias);

#define VH_SVC_ATTR(field, fmt)						\
static ssize_t field##_show(struct device *dev,				\
			    struct device_attribute *attr, char *buf)	\
{									\
	return sysfs_emit(buf, fmt "\n", tb_to_service(dev)->field);	\
}									\
static DEVICE_ATTR_RO(field)

VH_SVC_ATTR(prtcid, "%u");
VH_SVC_ATTR(prtcvers, "%u");
VH_SVC_ATTR(prtcrevs, "%u");
VH_SVC_ATTR(prtcstns, "0x%08x");

static struct attribute *vh_service_attrs[] = {
	&dev_attr_key.attr,
	&dev_attr_modalias.attr,
	&dev_attr_prtcid.attr,
	&dev_attr_prtcvers.attr,
	&dev_attr_prtcrevs.attr,
	&dev_attr_prtcstns.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vh_service);

static int vh_service_uevent(const struct device *dev,
			     struct kobj_uevent_env *env)
{
	char alias[64];

	vh_modalias(container_of(dev, struct tb_service, dev), alias,
		    sizeof(alias));
	return add_uevent_var(env, "MODALIAS=%s", alias);
}

static void vh_service_release(struct device *dev)
{
	struct tb_service *svc = tb_to_service(dev);
	struct tb_xdomain *xd = tb_service_parent(svc);

	tb_property_free_dir(svc->remote_properties);
	tb_property_free_dir(svc->local_properties);
	ida_free(&xd->service_ids, svc->id);
	kfree(svc->key);
	kfree(svc);
	put_device(&xd->dev);
}

const struct device_type tb_service_type = {
	.name = "thunderbolt_service",
	.groups = vh_service_groups,
	.uevent = vh_service_uevent,
	.release = vh_service_release,
};
EXPORT_SYMBOL_GPL(tb_service_type);

static u32 vh_dir_u32(struct tb_property_dir *dir, const char *key)
{
	struct tb_property *p = tb_property_find(dir, key,
						 TB_PROPERTY_TYPE_VALUE);

	return p ? p->value.immediate : 0;
}

/* A directory of the peer's block became a service */
static void vh_service_add(struct tb_xdomain *xd, struct tb_property *p)
{
	struct tb_service *svc;
	int id;

	svc = kzalloc(sizeof(*svc), GFP_KERNEL);
	if (!svc)
		return;
	id = ida_alloc(&xd->service_ids, GFP_KERNEL);
	svc->key = kstrdup(p->key, GFP_KERNEL);
	svc->remote_properties = tb_property_copy_dir(p->value.dir);
	if (id < 0 || !svc->key || !svc->remote_properties) {
		if (id >= 0)
			ida_free(&xd->service_ids, id);
		tb_property_free_dir(svc->remote_properties);
		kfree(svc->key);
		kfree(svc);
		return;
	}
	svc->id = id;
	svc->prtcid = vh_dir_u32(p->value.dir, "prtcid");
	svc->prtcvers = vh_dir_u32(p->value.dir, "prtcvers");
	svc->prtcrevs = vh_dir_u32(p->value.dir, "prtcrevs");
	svc->prtcstns = vh_dir_u32(p->value.dir, "prtcstns");
	mutex_init(&svc->lock);

	device_initialize(&svc->dev);
	svc->dev.bus = &tb_bus_type;
	svc->dev.type = &tb_service_type;
	svc->dev.parent = get_device(&xd->dev);
	if (dev_set_name(&svc->dev, "%s.%d", dev_name(&xd->dev), id) ||
	    device_add(&svc->dev)) {
		dev_err(&xd->dev, "failed to add service %s\n", p->key);
		put_device(&svc->dev);
	}
}

static int vh_find_service(struct device *dev, const void *data)
{
	const struct tb_property *p = data;
	struct tb_service *svc = tb_to_service(dev);

	return svc && !strcmp(svc->key, p->key);
}

static int vh_remove_missing_service(struct device *dev, void *data)
{
	struct tb_service *svc = tb_to_service(dev);

	if (svc && (!data || !tb_property_find(data, svc->key,
					       TB_PROPERTY_TYPE_DIRECTORY)))
		device_unregister(dev);
	return 0;
}

static void vh_services_update(struct tb_xdomain *xd,
			       struct tb_property_dir *root)
{
	struct tb_property *p;
	struct device *dev;

	device_for_each_child_reverse(&xd->dev, root,
				      vh_remove_missing_service);
	tb_property_for_each(root, p) {
		struct tb_service *svc;

		if (p->type != TB_PROPERTY_TYPE_DIRECTORY)
			continue;
		dev = device_find_child(&xd->dev, p, vh_find_service);
		if (!dev) {
			vh_service_add(xd, p);
			continue;
		}
		svc = tb_to_service(dev);
		scoped_guard(mutex, &svc->lock) {
			struct tb_property_dir *dir;

			dir = tb_property_copy_dir(p->value.dir);
			if (dir) {
				tb_property_free_dir(svc->remote_properties);
				svc->remote_properties = dir;
			}
		}
		kobject_uevent(&dev->kobj, KOBJ_CHANGE);
		put_device(dev);
	}
}

/* ------------------------------------------------------------------ */
/* HopIDs and paths */

/**
 * tb_xdomain_alloc_in_hopid() - Allocate an input HopID
 * @xd: XDomain
 * @hopid: Wanted HopID, or -1 for the lowest free one
 *
 * Return: The HopID (the lowest free one at or above @hopid), -EINVAL
 * outside 8..local maxhopid, -ENOSPC when none is free.
 */
int tb_xdomain_alloc_in_hopid(struct tb_xdomain *xd, int hopid)
{
	if (hopid < 0)
		hopid = VH_PATH_MIN_HOPID;
	if (hopid < VH_PATH_MIN_HOPID || hopid > xd->local_max_hopid)
		return -EINVAL;
	return ida_alloc_range(&xd->in_hopids, hopid, xd->local_max_hopid,
			       GFP_KERNEL);
}
EXPORT_SYMBOL_GPL(tb_xdomain_alloc_in_hopid);

/**
 * tb_xdomain_alloc_out_hopid() - Allocate an output HopID
 * @xd: XDomain
 * @hopid: Wanted HopID, or -1 for the lowest free one
 *
 * Return: The HopID, -EINVAL outside 8..the peer's maxhopid, -ENOSPC.
 */
int tb_xdomain_alloc_out_hopid(struct tb_xdomain *xd, int hopid)
{
	if (hopid < 0)
		hopid = VH_PATH_MIN_HOPID;
	if (hopid < VH_PATH_MIN_HOPID || hopid > xd->remote_max_hopid)
		return -EINVAL;
	return ida_alloc_range(&xd->out_hopids, hopid, xd->remote_max_hopid,
			       GFP_KERNEL);
}
EXPORT_SYMBOL_GPL(tb_xdomain_alloc_out_hopid);

/**
 * tb_xdomain_release_in_hopid() - Release an input HopID
 * @xd: XDomain
 * @hopid: HopID
 */
void tb_xdomain_release_in_hopid(struct tb_xdomain *xd, int hopid)
{
	ida_free(&xd->in_hopids, hopid);
}
EXPORT_SYMBOL_GPL(tb_xdomain_release_in_hopid);

/**
 * tb_xdomain_release_out_hopid() - Release an output HopID
 * @xd: XDomain
 * @hopid: HopID
 */
void tb_xdomain_release_out_hopid(struct tb_xdomain *xd, int hopid)
{
	ida_free(&xd->out_hopids, hopid);
}
EXPORT_SYMBOL_GPL(tb_xdomain_release_out_hopid);

/**
 * tb_xdomain_enable_paths() - Set up DMA paths to and from the peer
 * @xd: XDomain
 * @transmit_path: Output HopID (-1: none)
 * @transmit_ring: TX ring sending on it
 * @receive_path: Input HopID (-1: none)
 * @receive_ring: RX ring receiving from it
 *
 * Return: %0, -ENOTCONN if unplugged, -EINVAL, -EBUSY.
 */
int tb_xdomain_enable_paths(struct tb_xdomain *xd, int transmit_path,
			    int transmit_ring, int receive_path,
			    int receive_ring)
{
	if (READ_ONCE(xd->is_unplugged))
		return -ENOTCONN;
	if (transmit_path > (int)xd->remote_max_hopid ||
	    receive_path > (int)xd->local_max_hopid)
		return -EINVAL;
	return vh_paths_enable(tb_to_vh(xd->tb), transmit_path, transmit_ring,
			       receive_path, receive_ring);
}
EXPORT_SYMBOL_GPL(tb_xdomain_enable_paths);

/**
 * tb_xdomain_disable_paths() - Tear down paths set up above
 * @xd: XDomain
 * @transmit_path: Output HopID, -1 for all
 * @transmit_ring: TX ring
 * @receive_path: Input HopID, -1 for all
 * @receive_ring: RX ring
 *
 * Return: %0.
 */
int tb_xdomain_disable_paths(struct tb_xdomain *xd, int transmit_path,
			     int transmit_ring, int receive_path,
			     int receive_ring)
{
	vh_paths_disable(tb_to_vh(xd->tb), transmit_path, transmit_ring,
			 receive_path, receive_ring);
	return 0;
}
EXPORT_SYMBOL_GPL(tb_xdomain_disable_paths);

/* ------------------------------------------------------------------ */
/* Local properties */

static void vh_publish_soon(struct vh_host *h)
{
	mod_delayed_work(h->wq, &h->publish_work,
			 msecs_to_jiffies(VH_PUBLISH_DELAY_MS));
}

/**
 * vh_publish_all() - Republish the property block of every host
 */
void vh_publish_all(void)
{
	struct vh_host *h;

	guard(mutex)(&vh_hosts_lock);
	list_for_each_entry(h, &vh_hosts, node)
		vh_publish_soon(h);
}

/**
 * tb_register_property_dir() - Publish a service directory to peers
 * @key: Key (e.g. "stream"): peers see a service with this key
 * @dir: Directory (prtcid, prtcvers, ...); still owned by the caller
 *
 * Return: %0, -EINVAL (bad key), -EEXIST, -ENOMEM.
 */
int tb_register_property_dir(const char *key, struct tb_property_dir *dir)
{
	int ret;

	if (!key || strlen(key) > TB_PROPERTY_KEY_SIZE)
		return -EINVAL;
	scoped_guard(mutex, &vh_local_lock) {
		if (tb_property_find(vh_local_dir, key,
				     TB_PROPERTY_TYPE_DIRECTORY))
			return -EEXIST;
		ret = tb_property_add_dir(vh_local_dir, key, dir);
		if (ret)
			return ret;
	}
	vh_publish_all();
	return 0;
}
EXPORT_SYMBOL_GPL(tb_register_property_dir);

/**
 * tb_unregister_property_dir() - Withdraw a directory registered above
 * @key: Its key
 * @dir: The directory (not freed)
 */
void tb_unregister_property_dir(const char *key, struct tb_property_dir *dir)
{
	struct tb_property *p;

	scoped_guard(mutex, &vh_local_lock) {
		p = tb_property_find(vh_local_dir, key,
				     TB_PROPERTY_TYPE_DIRECTORY);
		if (p && p->value.dir == dir)
			tb_property_remove(p);
	}
	vh_publish_all();
}
EXPORT_SYMBOL_GPL(tb_unregister_property_dir);

/**
 * tb_service_properties_changed() - The driver changed local_properties
 * @svc: Service
 *
 * Publishes the updated block to the peer (shortly, coalesced).
 */
void tb_service_properties_changed(struct tb_service *svc)
{
	struct tb_xdomain *xd = tb_service_parent(svc);

	if (READ_ONCE(xd->is_unplugged))
		return;
	vh_publish_soon(tb_to_vh(xd->tb));
}
EXPORT_SYMBOL_GPL(tb_service_properties_changed);

static int vh_merge_service(struct device *dev, void *data)
{
	struct tb_service *svc = tb_to_service(dev);
	struct tb_property *p;

	if (!svc)
		return 0;
	guard(mutex)(&svc->lock);
	p = tb_property_find(data, svc->key, TB_PROPERTY_TYPE_DIRECTORY);
	if (p && svc->local_properties)
		return vh_property_merge_dir(p->value.dir,
					     svc->local_properties);
	return 0;
}

/*
 * What the root directory of every host's block says about the host
 * (upstream: tb_xdomain_init() and finalize_property_block()); the peer's
 * XDomain device takes its vendor, device, names and maxhopid from it.
 */
static int vh_add_identity(struct vh_host *h, struct tb_property_dir *root)
{
	int ret;

	ret = tb_property_add_immediate(root, "vendorid", VH_VENDOR_ID);
	if (!ret)
		ret = tb_property_add_text(root, "vendorid", VH_VENDOR_NAME);
	if (!ret)
		ret = tb_property_add_immediate(root, "deviceid", VH_DEVICE_ID);
	if (!ret)
		ret = tb_property_add_text(root, "deviceid",
					   init_utsname()->nodename);
	if (!ret)
		ret = tb_property_add_immediate(root, "devicerv", VH_DEVICE_RV);
	if (!ret)
		ret = tb_property_add_immediate(root, "maxhopid",
						USB4VC_MIN_HOPID + h->nchan - 1);
	return ret;
}

/* The block of this host: identity, registered directories + services' additions */
static struct tb_property_dir *vh_local_block(struct vh_host *h)
{
	struct tb_property_dir *root;

	scoped_guard(mutex, &vh_local_lock)
		root = tb_property_copy_dir(vh_local_dir);
	if (!root)
		return NULL;
	if (vh_add_identity(h, root) ||
	    (h->xd && device_for_each_child(&h->xd->dev, root,
					    vh_merge_service))) {
		tb_property_free_dir(root);
		return NULL;
	}
	return root;
}

/* The v1 table of published streams, for cable-ctl status */
static void vh_publish_streams(struct vh_host *h, struct tb_property_dir *root)
{
	struct usb4vc_side *me = h->me;
	struct tb_property *svc, *p;
	u32 gen, n = 0;

	gen = READ_ONCE(me->props_gen);
	WRITE_ONCE(me->props_gen, gen | 1);
	smp_wmb();
	memset(me->props, 0, sizeof(me->props));
	svc = tb_property_find(root, "stream", TB_PROPERTY_TYPE_DIRECTORY);
	if (svc) {
		tb_property_for_each(svc->value.dir, p) {
			struct usb4vc_prop *e = &me->props[n];

			if (p->type != TB_PROPERTY_TYPE_DIRECTORY)
				continue;
			if (n == USB4VC_MAX_PROPS)
				break;
			strscpy(e->name, p->key, sizeof(e->name));
			e->in_hopid = vh_dir_u32(p->value.dir, "inhopid");
			e->out_hopid = vh_dir_u32(p->value.dir, "outhopid");
			n++;
		}
	}
	WRITE_ONCE(me->props_count, n);
	smp_wmb();
	WRITE_ONCE(me->props_gen, (gen | 1) + 1);
}

/**
 * vh_publish_work() - Write this host's property block into the cable
 * @work: vh_host::publish_work
 */
void vh_publish_work(struct work_struct *work)
{
	struct vh_host *h = container_of(to_delayed_work(work),
					 struct vh_host, publish_work);
	struct tb_property_dir *root __free(vh_dir) = NULL;
	u8 *buf __free(kfree) = kzalloc(USB4VC_XPROP_SIZE, GFP_KERNEL);
	ssize_t len;
	u32 gen;

	if (!buf)
		return;
	guard(mutex)(&h->mgmt_lock);
	root = vh_local_block(h);
	if (!root || !h->me)
		return;
	len = vh_property_format(root, buf, USB4VC_XPROP_SIZE);
	if (len < 0) {
		dev_warn(&h->pdev->dev, "local property block does not fit the cable (%zd)\n",
			 len);
		return;
	}
	gen = READ_ONCE(h->me->xprop_gen);
	WRITE_ONCE(h->me->xprop_gen, gen | 1);
	smp_wmb();
	memcpy(h->me->xprop, buf, len);
	WRITE_ONCE(h->me->xprop_len, len);
	smp_wmb();
	WRITE_ONCE(h->me->xprop_gen, (gen | 1) + 1);
	vh_publish_streams(h, root);
}

/* ------------------------------------------------------------------ */
/* The peer's properties */

/* A consistent private copy of the peer's block; returns its length */
static ssize_t vh_peer_block(struct vh_host *h, u8 *buf)
{
	struct usb4vc_side *peer = h->peer;
	int tries;

	for (tries = 0; tries < 200; tries++) {
		u32 gen = READ_ONCE(peer->xprop_gen), len;

		if (gen & 1) {
			usleep_range(500, 1000);
			continue;
		}
		smp_rmb();
		len = READ_ONCE(peer->xprop_len);
		if (len > USB4VC_XPROP_SIZE)
			return -EINVAL;
		memcpy(buf, peer->xprop, len);
		smp_rmb();
		if (READ_ONCE(peer->xprop_gen) == gen)
			return len;
	}
	return -EAGAIN;
}

/*
 * Take the peer's identity from its block (upstream: populate_properties())
 * and make the block the XDomain's remote_properties. Consumes @root.
 */
static int vh_xdomain_populate(struct vh_host *h, struct tb_xdomain *xd,
			       struct tb_property_dir *root)
{
	struct tb_property *dev_id, *vendor_id, *p;
	const char *dname = NULL, *vname = NULL;
	unsigned int max_hopid = VH_DEFAULT_MAX_HOPID;

	dev_id = tb_property_find(root, "deviceid", TB_PROPERTY_TYPE_VALUE);
	vendor_id = tb_property_find(root, "vendorid", TB_PROPERTY_TYPE_VALUE);
	if (!dev_id || !vendor_id) {
		/* Not published yet: the peer's next block brings it */
		tb_property_free_dir(root);
		return -EAGAIN;
	}
	p = tb_property_find(root, "deviceid", TB_PROPERTY_TYPE_TEXT);
	if (p)
		dname = kstrdup(p->value.text, GFP_KERNEL);
	p = tb_property_find(root, "vendorid", TB_PROPERTY_TYPE_TEXT);
	if (p)
		vname = kstrdup(p->value.text, GFP_KERNEL);
	p = tb_property_find(root, "maxhopid", TB_PROPERTY_TYPE_VALUE);
	if (p)
		max_hopid = p->value.immediate;

	guard(mutex)(&xd->lock);
	xd->device = dev_id->value.immediate;
	xd->vendor = vendor_id->value.immediate;
	swap(xd->device_name, dname);
	swap(xd->vendor_name, vname);
	/* The peer's input HopIDs, as far as the cable has channels for them */
	xd->remote_max_hopid = clamp(max_hopid, (unsigned int)USB4VC_MIN_HOPID,
				     USB4VC_MIN_HOPID + h->nchan - 1);
	tb_property_free_dir(xd->remote_properties);
	xd->remote_properties = root;
	kfree(dname);
	kfree(vname);
	return 0;
}

/* The peer's block was read for the first time: its XDomain appears */
static int vh_xdomain_add(struct vh_host *h, struct tb_property_dir *root)
{
	struct tb_xdomain *xd;
	int ret;

	xd = kzalloc(sizeof(*xd), GFP_KERNEL);
	if (!xd) {
		tb_property_free_dir(root);
		return -ENOMEM;
	}
	xd->tb = &h->tb;
	xd->local_uuid = &h->uuid;
	xd->route = 1;
	xd->local_max_hopid = USB4VC_MIN_HOPID + h->nchan - 1;
	mutex_init(&xd->lock);
	xd->link_speed = 20;
	xd->link_width = TB_LINK_WIDTH_DUAL;
	xd->link_usb4 = true;
	ida_init(&xd->service_ids);
	ida_init(&xd->in_hopids);
	ida_init(&xd->out_hopids);
	device_initialize(&xd->dev);
	xd->dev.parent = h->host_dev;
	xd->dev.bus = &tb_bus_type;
	xd->dev.type = &tb_xdomain_type;
	ret = vh_xdomain_populate(h, xd, root);
	if (ret)
		goto err_put;
	ret = -ENOMEM;
	xd->remote_uuid = kmemdup(h->peer->uuid, sizeof(uuid_t), GFP_KERNEL);
	if (!xd->remote_uuid)
		goto err_put;
	ret = dev_set_name(&xd->dev, "%d-1", h->index);
	if (!ret)
		ret = device_add(&xd->dev);
	if (ret)
		goto err_put;
	h->xd = xd;
	h->peer_session = READ_ONCE(h->link_session);
	WRITE_ONCE(h->me->link_up, 1);
	dev_info(&h->pdev->dev, "link up: %s (peer %s, side %c)\n",
		 dev_name(&xd->dev), xd->device_name, 'a' + h->side);
	return 0;

err_put:
	put_device(&xd->dev);	/* frees what populate took */
	return ret;
}

/**
 * vh_xprop_work() - Read the peer's property block: the XDomain appears
 *	with the first one; later ones update it and its services
 * @work: vh_host::xprop_work
 */
void vh_xprop_work(struct work_struct *work)
{
	struct vh_host *h = container_of(work, struct vh_host, xprop_work);
	u8 *buf __free(kfree) = kmalloc(USB4VC_XPROP_SIZE, GFP_KERNEL);
	struct tb_property_dir *root;
	ssize_t len;
	int ret;

	if (!buf)
		return;
	guard(mutex)(&h->mgmt_lock);
	if (!h->me || !READ_ONCE(h->link_want))
		return;
	len = vh_peer_block(h, buf);
	root = len < 0 ? NULL : vh_property_parse(buf, len);
	if (!root) {
		dev_warn(&h->pdev->dev, "cannot read the peer's property block (%zd)\n",
			 len);
		return;
	}
	if (h->xd) {
		ret = vh_xdomain_populate(h, h->xd, root);
		if (!ret)
			kobject_uevent(&h->xd->dev.kobj, KOBJ_CHANGE);
	} else {
		ret = vh_xdomain_add(h, root);
	}
	/* remote_properties change only here, under mgmt_lock */
	if (!ret)
		vh_services_update(h->xd, h->xd->remote_properties);
	else if (ret != -EAGAIN)
		dev_err(&h->pdev->dev, "cannot add the peer's XDomain (%d)\n", ret);
}

/* ------------------------------------------------------------------ */
/* Link up and down */

/**
 * vh_xdomain_remove() - The peer is gone: unplug its XDomain
 * @h: Host (mgmt_lock held)
 *
 * Marks the XDomain unplugged (service drivers see that), tears the paths
 * down, removes the services (their drivers' remove runs) and the XDomain.
 */
void vh_xdomain_remove(struct vh_host *h)
{
	struct tb_xdomain *xd = h->xd;

	if (!xd)
		return;
	WRITE_ONCE(xd->is_unplugged, true);
	vh_engine_link_down(h);
	device_for_each_child_reverse(&xd->dev, NULL,
				      vh_remove_missing_service);
	h->xd = NULL;
	if (h->me)
		WRITE_ONCE(h->me->link_up, 0);
	dev_info(&h->pdev->dev, "link down: %s\n", dev_name(&xd->dev));
	device_unregister(&xd->dev);
}

/**
 * vh_link_work() - Bring the XDomain down, or have it come up, as the
 *	poller saw the link
 * @work: vh_host::link_work
 */
void vh_link_work(struct work_struct *work)
{
	struct vh_host *h = container_of(work, struct vh_host, link_work);
	bool want = READ_ONCE(h->link_want);
	u32 session = READ_ONCE(h->link_session);

	scoped_guard(mutex, &h->mgmt_lock) {
		if (h->xd && (!want || session != h->peer_session))
			vh_xdomain_remove(h);
		if (h->xd || !want || !h->me)
			return;
	}
	/* The XDomain appears once the peer's block has been read */
	queue_work(h->wq, &h->xprop_work);
	vh_publish_soon(h);
}

/**
 * vh_xdomain_init() - Create the root of the local property directories
 *
 * Return: %0 or -ENOMEM.
 */
int vh_xdomain_init(void)
{
	vh_local_dir = tb_property_create_dir(NULL);
	return vh_local_dir ? 0 : -ENOMEM;
}

/**
 * vh_xdomain_exit() - Free it
 */
void vh_xdomain_exit(void)
{
	tb_property_free_dir(vh_local_dir);
	vh_local_dir = NULL;
}
