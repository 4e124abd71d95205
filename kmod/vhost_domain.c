// SPDX-License-Identifier: GPL-2.0
/*
 * usb4vhost - the thunderbolt bus (drivers/thunderbolt/domain.c's part):
 * the bus type, service driver registration and matching by protocol
 * key/id/version/revision, the domain and host router devices with the
 * sysfs attributes of the real core, and the "thunderbolt" ConfigFS
 * subsystem service drivers register their groups under (configfs.c).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/configfs.h>
#include <linux/export.h>
#include <linux/slab.h>
#include <linux/utsname.h>

#include "usb4vhost.h"

static const char * const vh_security_names[] = {
	[TB_SECURITY_NONE] = "none",
	[TB_SECURITY_USER] = "user",
	[TB_SECURITY_SECURE] = "secure",
	[TB_SECURITY_DPONLY] = "dponly",
	[TB_SECURITY_USBONLY] = "usbonly",
	[TB_SECURITY_NOPCIE] = "nopcie",
};

/* ------------------------------------------------------------------ */
/* Service drivers */

static const struct tb_service_id *vh_service_match(struct device *dev,
						    const struct device_driver *drv)
{
	const struct tb_service_driver *driver;
	const struct tb_service_id *ids;
	struct tb_service *svc;

	svc = tb_to_service(dev);
	if (!svc)
		return NULL;
	driver = container_of(drv, struct tb_service_driver, driver);
	if (!driver->id_table)
		return NULL;
	for (ids = driver->id_table; ids->match_flags; ids++) {
		if ((ids->match_flags & TBSVC_MATCH_PROTOCOL_KEY) &&
		    strcmp(ids->protocol_key, svc->key))
			continue;
		if ((ids->match_flags & TBSVC_MATCH_PROTOCOL_ID) &&
		    ids->protocol_id != svc->prtcid)
			continue;
		if ((ids->match_flags & TBSVC_MATCH_PROTOCOL_VERSION) &&
		    ids->protocol_version != svc->prtcvers)
			continue;
		if ((ids->match_flags & TBSVC_MATCH_PROTOCOL_REVISION) &&
		    ids->protocol_revision != svc->prtcrevs)
			continue;
		return ids;
	}
	return NULL;
}

static int vh_bus_match(struct device *dev, const struct device_driver *drv)
{
	return !!vh_service_match(dev, drv);
}

static int vh_bus_probe(struct device *dev)
{
	struct tb_service *svc = tb_to_service(dev);
	struct tb_service_driver *driver;

	if (!svc)
		return -ENODEV;
	driver = container_of(dev->driver, struct tb_service_driver, driver);
	return driver->probe ? driver->probe(svc) : 0;
}

static void vh_bus_remove(struct device *dev)
{
	struct tb_service *svc = tb_to_service(dev);
	struct tb_service_driver *driver;

	if (!svc || !dev->driver)
		return;
	driver = container_of(dev->driver, struct tb_service_driver, driver);
	if (driver->remove)
		driver->remove(svc);
}

static void vh_bus_shutdown(struct device *dev)
{
	struct tb_service *svc = tb_to_service(dev);
	struct tb_service_driver *driver;

	if (!svc || !dev->driver)
		return;
	driver = container_of(dev->driver, struct tb_service_driver, driver);
	if (driver->shutdown)
		driver->shutdown(svc);
}

const struct bus_type tb_bus_type = {
	.name = "thunderbolt",
	.match = vh_bus_match,
	.probe = vh_bus_probe,
	.remove = vh_bus_remove,
	.shutdown = vh_bus_shutdown,
};

/**
 * tb_register_service_driver() - Register a service driver
 * @drv: Driver; bound to services its id_table matches
 *
 * Return: %0 or negative errno.
 */
int tb_register_service_driver(struct tb_service_driver *drv)
{
	drv->driver.bus = &tb_bus_type;
	return driver_register(&drv->driver);
}
EXPORT_SYMBOL_GPL(tb_register_service_driver);

/**
 * tb_unregister_service_driver() - Unregister a service driver
 * @drv: Driver
 */
void tb_unregister_service_driver(struct tb_service_driver *drv)
{
	driver_unregister(&drv->driver);
}
EXPORT_SYMBOL_GPL(tb_unregister_service_driver);

/* ------------------------------------------------------------------ */
/* domainN */

static ssize_t security_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct tb *tb = container_of(dev, struct tb, dev);

	return sysfs_emit(buf, "%s\n", vh_security_names[tb->security_level]);
}
static DEVICE_ATTR_RO(security);

static ssize_t iommu_dma_protection_show(struct device *dev,
					 struct device_attribute *attr,
					 char *buf)
{
	struct tb *tb = container_of(dev, struct tb, dev);

	return sysfs_emit(buf, "%d\n", tb->nhi->iommu_dma_protection);
}
static DEVICE_ATTR_RO(iommu_dma_protection);

/*
 * As the software connection manager of a USB4 host (it can disapprove
 * switches) at security level user or secure. There is no boot_acl: the
 * real core shows it only for firmware connection managers with a boot ACL.
 */
static ssize_t deauthorization_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	struct tb *tb = container_of(dev, struct tb, dev);

	return sysfs_emit(buf, "%d\n",
			  tb->security_level == TB_SECURITY_USER ||
			  tb->security_level == TB_SECURITY_SECURE);
}
static DEVICE_ATTR_RO(deauthorization);

static struct attribute *vh_domain_attrs[] = {
	&dev_attr_deauthorization.attr,
	&dev_attr_iommu_dma_protection.attr,
	&dev_attr_security.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vh_domain);

static void vh_domain_release(struct device *dev)
{
	struct vh_host *h = tb_to_vh(container_of(dev, struct tb, dev));

	kfree(h);
}

static const struct device_type vh_domain_type = {
	.name = "thunderbolt_domain",
	.groups = vh_domain_groups,
	.release = vh_domain_release,
};

/* ------------------------------------------------------------------ */
/* The host router N-0 */

/**
 * struct vh_switch - The host router (root switch) of a domain
 * @dev: Device N-0
 * @uuid: Its UUID (this host's)
 */
struct vh_switch {
	struct device dev;
	uuid_t uuid;
};

#define to_vh_switch(d) container_of(d, struct vh_switch, dev)

static ssize_t unique_id_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	return sysfs_emit(buf, "%pUb\n", &to_vh_switch(dev)->uuid);
}
static DEVICE_ATTR_RO(unique_id);

static ssize_t device_name_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n", init_utsname()->nodename);
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
	return sysfs_emit(buf, "1\n");
}
static DEVICE_ATTR_RO(authorized);

static ssize_t generation_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "4\n");
}
static DEVICE_ATTR_RO(generation);

static struct attribute *vh_switch_attrs[] = {
	&dev_attr_authorized.attr,
	&dev_attr_device.attr,
	&dev_attr_device_name.attr,
	&dev_attr_generation.attr,
	&dev_attr_unique_id.attr,
	&dev_attr_vendor.attr,
	&dev_attr_vendor_name.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vh_switch);

static void vh_switch_release(struct device *dev)
{
	kfree(to_vh_switch(dev));
}

static const struct device_type vh_switch_type = {
	.name = "thunderbolt_device",
	.groups = vh_switch_groups,
	.release = vh_switch_release,
};

static int vh_switch_add(struct vh_host *h)
{
	struct vh_switch *sw = kzalloc(sizeof(*sw), GFP_KERNEL);
	int ret;

	if (!sw)
		return -ENOMEM;
	sw->uuid = h->uuid;
	device_initialize(&sw->dev);
	sw->dev.parent = &h->tb.dev;
	sw->dev.bus = &tb_bus_type;
	sw->dev.type = &vh_switch_type;
	ret = dev_set_name(&sw->dev, "%d-0", h->index);
	if (!ret)
		ret = device_add(&sw->dev);
	if (ret) {
		put_device(&sw->dev);
		return ret;
	}
	h->host_dev = &sw->dev;
	return 0;
}

/**
 * vh_domain_prepare() - Initialize the domain device of a new host
 * @h: Host, just allocated
 *
 * From here on the domain device owns @h: put_device(&h->tb.dev) frees it.
 */
void vh_domain_prepare(struct vh_host *h)
{
	struct tb *tb = &h->tb;

	mutex_init(&tb->lock);
	tb->nhi = &h->nhi;
	tb->security_level = TB_SECURITY_USER;
	device_initialize(&tb->dev);
	tb->dev.parent = &h->pdev->dev;
	tb->dev.bus = &tb_bus_type;
	tb->dev.type = &vh_domain_type;
}

/**
 * vh_domain_add() - Register domainN and its host router N-0
 * @h: Host, prepared with vh_domain_prepare(), with its index and
 *	workqueue; on failure the device is left initialized, not added
 *
 * Return: %0 or negative errno.
 */
int vh_domain_add(struct vh_host *h)
{
	struct tb *tb = &h->tb;
	int ret;

	tb->wq = h->wq;
	tb->index = h->index;
	ret = dev_set_name(&tb->dev, "domain%d", h->index);
	if (ret)
		return ret;
	ret = device_add(&tb->dev);
	if (ret)
		return ret;
	ret = vh_switch_add(h);
	if (ret) {
		device_del(&tb->dev);
		return ret;
	}
	return 0;
}

/**
 * vh_domain_remove() - Unregister the host router and the domain
 * @h: Host; freed when the last reference to domainN goes (rings hold one)
 */
void vh_domain_remove(struct vh_host *h)
{
	device_unregister(h->host_dev);
	h->host_dev = NULL;
	device_unregister(&h->tb.dev);
}

/* ------------------------------------------------------------------ */
/* ConfigFS subsystem "thunderbolt" */

static const struct config_item_type vh_configfs_root_type = {
	.ct_owner = THIS_MODULE,
};

static struct configfs_subsystem vh_configfs = {
	.su_group = {
		.cg_item = {
			.ci_namebuf = "thunderbolt",
			.ci_type = &vh_configfs_root_type,
		},
	},
};

/**
 * tb_configfs_register_group() - Add a group under thunderbolt/ in ConfigFS
 * @group: Group (e.g. thunderbolt_stream's "stream")
 *
 * Return: %0 or negative errno.
 */
int tb_configfs_register_group(struct config_group *group)
{
	return configfs_register_group(&vh_configfs.su_group, group);
}
EXPORT_SYMBOL_GPL(tb_configfs_register_group);

/**
 * tb_configfs_unregister_group() - Remove a group added above
 * @group: Group
 */
void tb_configfs_unregister_group(struct config_group *group)
{
	configfs_unregister_group(group);
}
EXPORT_SYMBOL_GPL(tb_configfs_unregister_group);

/**
 * vh_domain_init() - Register the bus and the ConfigFS subsystem
 *
 * Return: %0 or negative errno.
 */
int vh_domain_init(void)
{
	int ret;

	ret = bus_register(&tb_bus_type);
	if (ret) {
		pr_err("cannot register the thunderbolt bus (%d)\n", ret);
		return ret;
	}
	config_group_init(&vh_configfs.su_group);
	mutex_init(&vh_configfs.su_mutex);
	ret = configfs_register_subsystem(&vh_configfs);
	if (ret) {
		pr_err("cannot register ConfigFS subsystem 'thunderbolt' (%d): is configfs mounted?\n",
		       ret);
		bus_unregister(&tb_bus_type);
	}
	return ret;
}

/**
 * vh_domain_exit() - Undo vh_domain_init()
 */
void vh_domain_exit(void)
{
	configfs_unregister_subsystem(&vh_configfs);
	bus_unregister(&tb_bus_type);
}
