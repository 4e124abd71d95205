// SPDX-License-Identifier: GPL-2.0
/*
 * usb4vhost - XDomain properties: the tb_property_* API service drivers use
 * (drivers/thunderbolt/property.c's interface) and the format in which a
 * host's property block travels through the cable.
 *
 * Format (little endian, 4-byte aligned): a directory is a sequence of
 * entries; an entry is a 16-byte header {key[8] (NUL padded), type u8
 * (enum tb_property_type), has_uuid u8, reserved u16, len u32} followed by
 * len bytes: a u32 (VALUE), bytes padded to 4 (TEXT, NUL terminated; DATA)
 * or, for a DIRECTORY, its UUID (16 bytes, if has_uuid) and its entries.
 * The block of a host is its root directory's entries.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/export.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/unaligned.h>

#include "usb4vhost.h"

#define VH_PROP_HDR		16
#define VH_PROP_MAX_DEPTH	4

static bool vh_key_valid(const char *key)
{
	return key && *key && strlen(key) <= TB_PROPERTY_KEY_SIZE;
}

static struct tb_property *vh_property_alloc(const char *key,
					     enum tb_property_type type)
{
	struct tb_property *p = kzalloc(sizeof(*p), GFP_KERNEL);

	if (!p)
		return NULL;
	strscpy(p->key, key, sizeof(p->key));
	p->type = type;
	INIT_LIST_HEAD(&p->list);
	return p;
}

static void vh_property_free(struct tb_property *p)
{
	switch (p->type) {
	case TB_PROPERTY_TYPE_DIRECTORY:
		tb_property_free_dir(p->value.dir);
		break;
	case TB_PROPERTY_TYPE_DATA:
		kfree(p->value.data);
		break;
	case TB_PROPERTY_TYPE_TEXT:
		kfree(p->value.text);
		break;
	default:
		break;
	}
	kfree(p);
}

/**
 * tb_property_create_dir() - Create an empty property directory
 * @uuid: UUID of the directory, %NULL for a root directory
 *
 * Return: The directory, %NULL when out of memory.
 */
struct tb_property_dir *tb_property_create_dir(const uuid_t *uuid)
{
	struct tb_property_dir *dir = kzalloc(sizeof(*dir), GFP_KERNEL);

	if (!dir)
		return NULL;
	INIT_LIST_HEAD(&dir->properties);
	if (uuid) {
		dir->uuid = kmemdup(uuid, sizeof(*uuid), GFP_KERNEL);
		if (!dir->uuid) {
			kfree(dir);
			return NULL;
		}
	}
	return dir;
}
EXPORT_SYMBOL_GPL(tb_property_create_dir);

/**
 * tb_property_free_dir() - Free a directory with everything in it
 * @dir: Directory (may be %NULL)
 */
void tb_property_free_dir(struct tb_property_dir *dir)
{
	struct tb_property *p, *tmp;

	if (!dir)
		return;
	list_for_each_entry_safe(p, tmp, &dir->properties, list) {
		list_del(&p->list);
		vh_property_free(p);
	}
	kfree(dir->uuid);
	kfree(dir);
}
EXPORT_SYMBOL_GPL(tb_property_free_dir);

static size_t vh_dir_length(const struct tb_property_dir *dir)
{
	const struct tb_property *p;
	size_t len = dir->uuid ? 4 : 0;

	list_for_each_entry(p, &dir->properties, list) {
		len += 4;
		if (p->type == TB_PROPERTY_TYPE_DIRECTORY)
			len += vh_dir_length(p->value.dir);
		else if (p->type != TB_PROPERTY_TYPE_VALUE)
			len += p->length;
	}
	return len;
}

/**
 * tb_property_add_immediate() - Add an immediate (u32) property
 * @parent: Directory to add it to
 * @key: Key, 1 to 8 characters
 * @value: Value
 *
 * Return: %0, -EINVAL for a bad key, -ENOMEM.
 */
int tb_property_add_immediate(struct tb_property_dir *parent, const char *key,
			      u32 value)
{
	struct tb_property *p;

	if (!vh_key_valid(key))
		return -EINVAL;
	p = vh_property_alloc(key, TB_PROPERTY_TYPE_VALUE);
	if (!p)
		return -ENOMEM;
	p->length = 1;
	p->value.immediate = value;
	list_add_tail(&p->list, &parent->properties);
	return 0;
}
EXPORT_SYMBOL_GPL(tb_property_add_immediate);

/**
 * tb_property_add_text() - Add a text property
 * @parent: Directory to add it to
 * @key: Key, 1 to 8 characters
 * @text: NUL terminated text (copied)
 *
 * Return: %0, -EINVAL for a bad key, -ENOMEM.
 */
int tb_property_add_text(struct tb_property_dir *parent, const char *key,
			 const char *text)
{
	struct tb_property *p;

	if (!vh_key_valid(key))
		return -EINVAL;
	p = vh_property_alloc(key, TB_PROPERTY_TYPE_TEXT);
	if (!p)
		return -ENOMEM;
	p->value.text = kstrdup(text, GFP_KERNEL);
	if (!p->value.text) {
		kfree(p);
		return -ENOMEM;
	}
	p->length = DIV_ROUND_UP(strlen(text) + 1, 4);
	list_add_tail(&p->list, &parent->properties);
	return 0;
}

/**
 * tb_property_add_dir() - Add a directory property
 * @parent: Directory to add it to
 * @key: Key, 1 to 8 characters
 * @dir: Directory; @parent owns it from now on
 *
 * Return: %0, -EINVAL for a bad key, -ENOMEM.
 */
int tb_property_add_dir(struct tb_property_dir *parent, const char *key,
			struct tb_property_dir *dir)
{
	struct tb_property *p;

	if (!vh_key_valid(key))
		return -EINVAL;
	p = vh_property_alloc(key, TB_PROPERTY_TYPE_DIRECTORY);
	if (!p)
		return -ENOMEM;
	p->value.dir = dir;
	p->length = vh_dir_length(dir);
	list_add_tail(&p->list, &parent->properties);
	return 0;
}
EXPORT_SYMBOL_GPL(tb_property_add_dir);

/**
 * tb_property_remove() - Unlink a property from its directory and free it
 * @property: Property; a directory's contents are not freed (the caller
 *	      frees them first, as upstream)
 */
void tb_property_remove(struct tb_property *property)
{
	list_del(&property->list);
	kfree(property);
}
EXPORT_SYMBOL_GPL(tb_property_remove);

/**
 * tb_property_find() - Find a property by key and type
 * @dir: Directory to look in (not recursively)
 * @key: Key
 * @type: Type
 *
 * Return: The property or %NULL.
 */
struct tb_property *tb_property_find(struct tb_property_dir *dir,
				     const char *key,
				     enum tb_property_type type)
{
	struct tb_property *p;

	if (!dir)
		return NULL;
	list_for_each_entry(p, &dir->properties, list) {
		if (p->type == type && !strcmp(key, p->key))
			return p;
	}
	return NULL;
}
EXPORT_SYMBOL_GPL(tb_property_find);

/**
 * tb_property_get_next() - Iterate over a directory
 * @dir: Directory
 * @prev: Previous property, %NULL for the first
 *
 * Return: The next property or %NULL at the end.
 */
struct tb_property *tb_property_get_next(struct tb_property_dir *dir,
					 struct tb_property *prev)
{
	if (prev) {
		if (list_is_last(&prev->list, &dir->properties))
			return NULL;
		return list_next_entry(prev, list);
	}
	return list_first_entry_or_null(&dir->properties, struct tb_property,
					list);
}
EXPORT_SYMBOL_GPL(tb_property_get_next);

static struct tb_property *vh_property_copy(const struct tb_property *p)
{
	struct tb_property *n = vh_property_alloc(p->key, p->type);

	if (!n)
		return NULL;
	n->length = p->length;
	switch (p->type) {
	case TB_PROPERTY_TYPE_DIRECTORY:
		n->value.dir = tb_property_copy_dir(p->value.dir);
		if (!n->value.dir)
			goto err;
		break;
	case TB_PROPERTY_TYPE_DATA:
		n->value.data = kmemdup(p->value.data, p->length * 4,
					GFP_KERNEL);
		if (!n->value.data)
			goto err;
		break;
	case TB_PROPERTY_TYPE_TEXT:
		n->value.text = kstrdup(p->value.text, GFP_KERNEL);
		if (!n->value.text)
			goto err;
		break;
	default:
		n->value.immediate = p->value.immediate;
		break;
	}
	return n;
err:
	kfree(n);
	return NULL;
}

/**
 * tb_property_copy_dir() - Deep copy of a directory
 * @dir: Directory to copy
 *
 * Return: The copy or %NULL when out of memory.
 */
struct tb_property_dir *tb_property_copy_dir(const struct tb_property_dir *dir)
{
	struct tb_property_dir *n;
	struct tb_property *p, *c;

	n = tb_property_create_dir(dir->uuid);
	if (!n)
		return NULL;
	list_for_each_entry(p, &dir->properties, list) {
		c = vh_property_copy(p);
		if (!c) {
			tb_property_free_dir(n);
			return NULL;
		}
		list_add_tail(&c->list, &n->properties);
	}
	return n;
}
EXPORT_SYMBOL_GPL(tb_property_copy_dir);

/**
 * vh_property_merge_dir() - Merge @src into @dst
 * @dst: Directory to update
 * @src: Properties to add; one with the key and type of an existing one
 *	 replaces it
 *
 * How a service driver's local properties join the service's static
 * directory in the published block (upstream: tb_property_merge_dir()).
 *
 * Return: %0 or -ENOMEM.
 */
int vh_property_merge_dir(struct tb_property_dir *dst,
			  const struct tb_property_dir *src)
{
	struct tb_property *p, *old, *n;

	list_for_each_entry(p, &src->properties, list) {
		n = vh_property_copy(p);
		if (!n)
			return -ENOMEM;
		old = tb_property_find(dst, p->key, p->type);
		if (old) {
			list_replace(&old->list, &n->list);
			vh_property_free(old);
		} else {
			list_add_tail(&n->list, &dst->properties);
		}
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* The block in the cable */

static ssize_t vh_format_entries(const struct tb_property_dir *dir, u8 *buf,
				 size_t len, int depth);

static ssize_t vh_format_entry(const struct tb_property *p, u8 *buf,
			       size_t len, int depth)
{
	size_t vlen, n;
	ssize_t sub;
	u8 *v = buf + VH_PROP_HDR;

	if (len < VH_PROP_HDR)
		return -ENOSPC;
	memset(buf, 0, VH_PROP_HDR);
	memcpy(buf, p->key, strnlen(p->key, TB_PROPERTY_KEY_SIZE));
	buf[8] = p->type;
	len -= VH_PROP_HDR;

	switch (p->type) {
	case TB_PROPERTY_TYPE_VALUE:
		if (len < 4)
			return -ENOSPC;
		put_unaligned_le32(p->value.immediate, v);
		vlen = 4;
		break;
	case TB_PROPERTY_TYPE_TEXT:
		n = strlen(p->value.text) + 1;
		vlen = round_up(n, 4);
		if (len < vlen)
			return -ENOSPC;
		memset(v, 0, vlen);
		memcpy(v, p->value.text, n);
		break;
	case TB_PROPERTY_TYPE_DATA:
		vlen = p->length * 4;
		if (len < vlen)
			return -ENOSPC;
		memcpy(v, p->value.data, vlen);
		break;
	case TB_PROPERTY_TYPE_DIRECTORY:
		vlen = 0;
		if (p->value.dir->uuid) {
			if (len < sizeof(uuid_t))
				return -ENOSPC;
			buf[9] = 1;
			memcpy(v, p->value.dir->uuid, sizeof(uuid_t));
			vlen = sizeof(uuid_t);
		}
		sub = vh_format_entries(p->value.dir, v + vlen, len - vlen,
					depth + 1);
		if (sub < 0)
			return sub;
		vlen += sub;
		break;
	default:
		return 0;	/* nothing we can carry: left out */
	}
	put_unaligned_le32(vlen, buf + 12);
	return VH_PROP_HDR + vlen;
}

static ssize_t vh_format_entries(const struct tb_property_dir *dir, u8 *buf,
				 size_t len, int depth)
{
	const struct tb_property *p;
	size_t used = 0;
	ssize_t n;

	if (depth > VH_PROP_MAX_DEPTH)
		return -E2BIG;
	list_for_each_entry(p, &dir->properties, list) {
		n = vh_format_entry(p, buf + used, len - used, depth);
		if (n < 0)
			return n;
		used += n;
	}
	return used;
}

/**
 * vh_property_format() - Serialize a root directory for the cable
 * @dir: Root directory
 * @buf: Output
 * @len: Size of @buf
 *
 * Return: Bytes used, -ENOSPC if it does not fit.
 */
ssize_t vh_property_format(const struct tb_property_dir *dir, u8 *buf,
			   size_t len)
{
	return vh_format_entries(dir, buf, len, 0);
}

static int vh_parse_entries(struct tb_property_dir *dir, const u8 *buf,
			    size_t len, int depth);

static int vh_parse_entry(struct tb_property_dir *dir, const u8 *buf,
			  size_t vlen, int depth)
{
	const u8 *v = buf + VH_PROP_HDR;
	char key[TB_PROPERTY_KEY_SIZE + 1] = {};
	struct tb_property_dir *sub;
	struct tb_property *p;
	const uuid_t *uuid;
	int ret;

	memcpy(key, buf, TB_PROPERTY_KEY_SIZE);
	if (!vh_key_valid(key))
		return -EINVAL;

	switch (buf[8]) {
	case TB_PROPERTY_TYPE_VALUE:
		if (vlen != 4)
			return -EINVAL;
		return tb_property_add_immediate(dir, key,
						 get_unaligned_le32(v));
	case TB_PROPERTY_TYPE_TEXT:
		if (!vlen || v[vlen - 1])
			return -EINVAL;
		return tb_property_add_text(dir, key, v);
	case TB_PROPERTY_TYPE_DATA:
		p = vh_property_alloc(key, TB_PROPERTY_TYPE_DATA);
		if (!p)
			return -ENOMEM;
		p->value.data = kmemdup(v, vlen, GFP_KERNEL);
		if (!p->value.data) {
			kfree(p);
			return -ENOMEM;
		}
		p->length = vlen / 4;
		list_add_tail(&p->list, &dir->properties);
		return 0;
	case TB_PROPERTY_TYPE_DIRECTORY:
		uuid = NULL;
		if (buf[9]) {
			if (vlen < sizeof(uuid_t))
				return -EINVAL;
			uuid = (const uuid_t *)v;
			v += sizeof(uuid_t);
			vlen -= sizeof(uuid_t);
		}
		sub = tb_property_create_dir(uuid);
		if (!sub)
			return -ENOMEM;
		ret = vh_parse_entries(sub, v, vlen, depth + 1);
		if (!ret)
			ret = tb_property_add_dir(dir, key, sub);
		if (ret)
			tb_property_free_dir(sub);
		return ret;
	default:
		return 0;	/* unknown type: skipped */
	}
}

static int vh_parse_entries(struct tb_property_dir *dir, const u8 *buf,
			    size_t len, int depth)
{
	size_t off = 0, vlen;
	int ret;

	if (depth > VH_PROP_MAX_DEPTH)
		return -E2BIG;
	while (off < len) {
		if (len - off < VH_PROP_HDR)
			return -EINVAL;
		vlen = get_unaligned_le32(buf + off + 12);
		if (vlen % 4 || vlen > len - off - VH_PROP_HDR)
			return -EINVAL;
		ret = vh_parse_entry(dir, buf + off, vlen, depth);
		if (ret)
			return ret;
		off += VH_PROP_HDR + vlen;
	}
	return 0;
}

/**
 * vh_property_parse() - Parse a peer's block into a root directory
 * @buf: The block (a private copy: the peer may rewrite the cable's)
 * @len: Its length
 *
 * Return: The root directory, %NULL if the block is malformed or out of
 * memory.
 */
struct tb_property_dir *vh_property_parse(const u8 *buf, size_t len)
{
	struct tb_property_dir *dir = tb_property_create_dir(NULL);

	if (!dir)
		return NULL;
	if (vh_parse_entries(dir, buf, len, 0)) {
		tb_property_free_dir(dir);
		return NULL;
	}
	return dir;
}
