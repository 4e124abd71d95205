// SPDX-License-Identifier: GPL-2.0
/*
 * usb4vhost - a virtual USB4 host for virtual machines.
 *
 * Stands in for thunderbolt.ko in a VM whose "cable" to another VM is a
 * QEMU ivshmem region: it provides the symbols service drivers import from
 * the thunderbolt core (rings, HopIDs, paths, XDomain properties, service
 * driver registration, ConfigFS), the thunderbolt bus with domainN, the
 * host router, the peer's XDomain and its services, so that the kernel's
 * own, unmodified thunderbolt_stream.ko loads on top and drives the cable
 * as it drives a real USB4 host. See kmod/README.md.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>

#include "usb4vhost.h"

unsigned int vh_poll_max_us = 10000;
module_param_named(poll_max_us, vh_poll_max_us, uint, 0644);
MODULE_PARM_DESC(poll_max_us, "Longest idle polling interval in microseconds (default 10000)");

unsigned int vh_hb_timeout_ms = 1500;
module_param_named(hb_timeout_ms, vh_hb_timeout_ms, uint, 0644);
MODULE_PARM_DESC(hb_timeout_ms, "Peer heartbeat timeout in milliseconds (default 1500)");

DEFINE_MUTEX(vh_hosts_lock);
LIST_HEAD(vh_hosts);

/*
 * The real core exports what we export (loading it beside us fails on the
 * duplicate symbols), plus what we do not: look for one of those.
 */
static bool vh_real_thunderbolt_loaded(void)
{
	void *sym = __symbol_get("tb_xdomain_request");

	if (sym) {
		symbol_put_addr(sym);
		return true;
	}
	return false;
}

static int __init vh_init(void)
{
	int ret;

	if (vh_real_thunderbolt_loaded()) {
		pr_err("the real 'thunderbolt' module is loaded: it owns the thunderbolt bus and ConfigFS subsystem; unload it (and its service drivers) first\n");
		return -EBUSY;
	}
	ret = vh_xdomain_init();
	if (ret)
		return ret;
	ret = vh_domain_init();
	if (ret)
		goto err_xdomain;
	ret = vh_pci_register();
	if (ret)
		goto err_domain;
	return 0;

err_domain:
	vh_domain_exit();
err_xdomain:
	vh_xdomain_exit();
	return ret;
}
module_init(vh_init);

static void __exit vh_exit(void)
{
	vh_pci_unregister();
	vh_domain_exit();
	vh_xdomain_exit();
}
module_exit(vh_exit);

MODULE_DESCRIPTION("Virtual USB4 host over QEMU ivshmem, for the kernel's thunderbolt service drivers");
MODULE_LICENSE("GPL");
